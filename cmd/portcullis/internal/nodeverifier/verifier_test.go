package nodeverifier

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/proxy"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const testToken = "adm_node_secret_7f3a"

// run runs the verifier as containerd would for name@digest, with the
// settings yaml (admin_url and token_file are filled in).
func run(t *testing.T, adminURL, extra, name, digest string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "node-verifier.yaml")
	if !strings.Contains(extra, "timeout:") {
		extra += "timeout: 2s\n"
	}
	doc := fmt.Sprintf("admin_url: %s\ntoken_file: %s\n%s", adminURL, tok, extra)
	if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	desc, _ := json.Marshal(map[string]any{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": 1234})
	var stdout, stderr bytes.Buffer
	code := Main([]string{"--config", cfg, "-name", name, "-digest", digest, "-stdin-media-type", descriptorMediaType},
		func(string) string { return "" }, bytes.NewReader(append(desc, '\n')), &stdout, &stderr)
	if strings.Contains(stdout.String()+stderr.String(), testToken) {
		t.Fatalf("the admin token was printed: %q %q", stdout.String(), stderr.String())
	}
	if n := strings.Count(strings.TrimSpace(stdout.String()), "\n"); n != 0 {
		t.Fatalf("reason is not one line: %q", stdout.String())
	}
	return code, stdout.String(), stderr.String()
}

// closedPort is an address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func answerJSON(digest, decision, reason string) string {
	b, _ := json.Marshal(proxy.VerdictAnswer{Digest: digest, Upstream: "registry.test", Repository: "acme/app", Boundary: "prod", Decision: decision, Reason: reason})
	return string(b)
}

// fakeProxy answers every verdict request with status and body, and
// records what was asked.
func fakeProxy(t *testing.T, status int, body string) (*httptest.Server, *atomic.Pointer[http.Request]) {
	t.Helper()
	var last atomic.Pointer[http.Request]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		last.Store(r.Clone(r.Context()))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &last
}

func TestProxyDownRejectsUnlessFailOpen(t *testing.T) {
	t.Parallel()
	url := closedPort(t)
	code, out, _ := run(t, url, "", "registry.test/acme/app:v1", testDigest)
	if code == ExitAccept || !strings.Contains(out, "cannot be reached (fail closed)") {
		t.Fatalf("proxy down: exit %d %q, want a rejection", code, out)
	}
	code, out, _ = run(t, url, "fail_open: true\n", "registry.test/acme/app:v1", testDigest)
	if code != ExitAccept || !strings.Contains(out, "ACCEPTED WITHOUT VERIFICATION") {
		t.Fatalf("proxy down, fail_open: exit %d %q, want a loud accept", code, out)
	}
	// A name that does not resolve is unreachable too.
	code, out, _ = run(t, "http://localhost:1", "fail_open: true\n", "registry.test/acme/app:v1", testDigest)
	if code != ExitAccept {
		t.Fatalf("refused connection, fail_open: exit %d %q", code, out)
	}
}

// TestBadAnswersReject: whatever the proxy says that is not a clear allow
// for the digest asked rejects, fail_open or not: a proxy that answers
// was reached.
func TestBadAnswersReject(t *testing.T) {
	t.Parallel()
	huge := answerJSON(testDigest, "allow", strings.Repeat("x", DefaultMaxResponseBytes))
	other := "sha256:" + strings.Repeat("f", 64)
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"garbage", 200, "<html>ok</html>", "unusable answer"},
		{"empty", 200, "", "unusable answer"},
		{"oversized", 200, huge, "larger than max_response_bytes"},
		{"unknown field", 200, `{"digest":"` + testDigest + `","decision":"allow","reason":"","allowed":true}`, "unusable answer"},
		{"two objects", 200, answerJSON(testDigest, "allow", "") + answerJSON(testDigest, "allow", ""), "unusable answer"},
		{"deny on 200", 200, answerJSON(testDigest, "deny", "no"), "inconsistent answer"},
		{"allow on 403", 403, answerJSON(testDigest, "allow", "yes"), "inconsistent answer"},
		{"other digest", 200, answerJSON(other, "allow", "signed"), "is about"},
		{"unknown decision", 200, answerJSON(testDigest, "maybe", ""), "inconsistent answer"},
		{"server error", 500, answerJSON(testDigest, "allow", ""), "status 500"},
		{"not found", 404, "404 page not found", "status 404"},
		{"unauthorized", 401, "unauthorized\n", "refused the token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := fakeProxy(t, tc.status, tc.body)
			code, out, _ := run(t, srv.URL, "fail_open: true\n", "registry.test/acme/app:v1", testDigest)
			if code == ExitAccept || !strings.Contains(out, "rejected") || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d %q, want a rejection mentioning %q", code, out, tc.want)
			}
		})
	}
}

func TestDenyPrintsTheProxyReason(t *testing.T) {
	t.Parallel()
	reason := `denied by boundary "prod": no signatures found` + "\n\x1b[31mspoof"
	srv, last := fakeProxy(t, 403, answerJSON(testDigest, "deny", reason))
	code, out, _ := run(t, srv.URL, "", "registry.test/acme/app:v1@"+testDigest, testDigest)
	if code != ExitReject || !strings.Contains(out, `denied by boundary "prod": no signatures found`) || strings.ContainsAny(out, "\x1b") {
		t.Fatalf("deny: exit %d %q", code, out)
	}
	r := last.Load()
	if r.URL.Path != "/v1/verdicts/registry.test/acme/app@"+testDigest || r.Header.Get("Authorization") != "Bearer "+testToken {
		t.Fatalf("asked %s with %q", r.URL.Path, r.Header.Get("Authorization"))
	}
}

func TestAllowAndWarnAccept(t *testing.T) {
	t.Parallel()
	for _, decision := range []string{"allow", "warn"} {
		srv, last := fakeProxy(t, 200, answerJSON(testDigest, decision, "signed by release"))
		code, out, _ := run(t, srv.URL+"/admin/", "", "docker.io/library/busybox:1.36", testDigest)
		if code != ExitAccept || !strings.Contains(out, decision) || !strings.Contains(out, "signed by release") {
			t.Fatalf("%s: exit %d %q", decision, code, out)
		}
		if p := last.Load().URL.Path; p != "/admin/v1/verdicts/docker.io/library/busybox@"+testDigest {
			t.Fatalf("asked %s", p)
		}
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	t.Parallel()
	allow, _ := fakeProxy(t, 200, answerJSON(testDigest, "allow", ""))
	srv := httptest.NewServer(http.RedirectHandler(allow.URL+"/v1/verdicts/x", http.StatusFound))
	t.Cleanup(srv.Close)
	code, out, _ := run(t, srv.URL, "", "registry.test/acme/app", testDigest)
	if code == ExitAccept || !strings.Contains(out, "status 302") {
		t.Fatalf("redirect: exit %d %q", code, out)
	}
}

// TestSlowProxyIsNotUnreachable: a proxy that accepts the connection and
// then does not answer in time rejects the pull even with fail_open.
func TestSlowProxyIsNotUnreachable(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	start := time.Now()
	code, out, _ := run(t, srv.URL, "fail_open: true\ntimeout: 300ms\n", "registry.test/acme/app", testDigest)
	if code == ExitAccept || !strings.Contains(out, "no verdict") {
		t.Fatalf("slow proxy, fail_open: exit %d %q", code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v, timeout 300ms", d)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(answerJSON(testDigest, "allow", "signed")))
	}))
	t.Cleanup(srv.Close)
	// Not trusted: someone else answering is not "unreachable".
	code, out, _ := run(t, srv.URL, "fail_open: true\n", "registry.test/acme/app", testDigest)
	if code == ExitAccept {
		t.Fatalf("untrusted certificate, fail_open: exit %d %q", code, out)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, srv.URL, "ca_file: "+ca+"\n", "registry.test/acme/app", testDigest)
	if code != ExitAccept {
		t.Fatalf("trusted certificate: exit %d %q", code, out)
	}
}

func TestContainerdInputIsChecked(t *testing.T) {
	t.Parallel()
	srv, last := fakeProxy(t, 200, answerJSON(testDigest, "allow", ""))
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("admin_url: "+srv.URL+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	desc := func(d string) string {
		return `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","size":1}`
	}
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
	}{
		{"stdin about another digest", []string{"-name", "r.test/a", "-digest", testDigest, "-stdin-media-type", descriptorMediaType}, desc("sha256:" + strings.Repeat("e", 64))},
		{"stdin not JSON", []string{"-name", "r.test/a", "-digest", testDigest, "-stdin-media-type", descriptorMediaType}, "nope"},
		{"other stdin type", []string{"-name", "r.test/a", "-digest", testDigest, "-stdin-media-type", "application/x-new"}, desc(testDigest)},
		{"sha512", []string{"-name", "r.test/a", "-digest", "sha512:" + strings.Repeat("a", 128), "-stdin-media-type", descriptorMediaType}, desc("sha512:" + strings.Repeat("a", 128))},
		{"no digest", []string{"-name", "r.test/a", "-stdin-media-type", descriptorMediaType}, desc(testDigest)},
		{"unknown flag", []string{"-name", "r.test/a", "-digest", testDigest, "-stdin-media-type", descriptorMediaType, "-new-flag", "x"}, desc(testDigest)},
		{"traversal", []string{"-name", "r.test/a/../../decisions", "-digest", testDigest, "-stdin-media-type", descriptorMediaType}, desc(testDigest)},
		{"query", []string{"-name", "r.test/a?x=1", "-digest", testDigest, "-stdin-media-type", descriptorMediaType}, desc(testDigest)},
	} {
		var stdout bytes.Buffer
		code := Main(append([]string{"--config", cfg}, tc.args...), func(string) string { return "" }, strings.NewReader(tc.stdin), &stdout, &bytes.Buffer{})
		if code == ExitAccept || !strings.Contains(stdout.String(), "rejected") {
			t.Errorf("%s: exit %d %q", tc.name, code, stdout.String())
		}
	}
	if last.Load() != nil {
		t.Fatalf("the proxy was asked about bad input: %s", last.Load().URL)
	}
	// The settings file named by the environment.
	var stdout bytes.Buffer
	env := func(k string) string {
		if k == ConfigEnv {
			return cfg
		}
		return ""
	}
	code := Main([]string{"-name", "r.test/a", "-digest", testDigest, "-stdin-media-type", descriptorMediaType}, env, strings.NewReader(desc(testDigest)), &stdout, &bytes.Buffer{})
	if code != ExitAccept {
		t.Fatalf("settings from $%s: exit %d %q", ConfigEnv, code, stdout.String())
	}
}

func TestSplitName(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"docker.io/library/busybox:1.36":             "docker.io library/busybox",
		"busybox":                                    "docker.io busybox",
		"busybox:latest":                             "docker.io busybox",
		"acme/app:v1":                                "docker.io acme/app",
		"index.docker.io/acme/app":                   "docker.io acme/app",
		"127.0.0.1:5000/acme/app:v1@" + testDigest:   "127.0.0.1:5000 acme/app",
		"localhost/app":                              "localhost app",
		"Registry.Example.com/team/app":              "registry.example.com team/app",
		"registry.example.com:443/team/sub/app:v1.2": "registry.example.com:443 team/sub/app",
	} {
		h, r, err := splitName(name)
		if err != nil || h+" "+r != want {
			t.Errorf("%s: %q %q %v, want %q", name, h, r, err, want)
		}
	}
	for _, bad := range []string{"", "registry.test/", "registry.test//a", "registry.test/a/../b", "registry.test/A", "registry.test/a b", "registry.test/a%2f", "a:b:c"} {
		if h, r, err := splitName(bad); err == nil {
			t.Errorf("%q accepted as %q %q", bad, h, r)
		}
	}
}

func TestConfigIsStrict(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ doc, want string }{
		{"", "admin_url is required"},
		{"admin_url: http://127.0.0.1:9090\nfail_closed: true\n", "field fail_closed not found"},
		{"admin_url: http://proxy.internal:9090\n", "insecure_plain_http"},
		{"admin_url: ftp://127.0.0.1\n", "scheme"},
		{"admin_url: https://u:p@proxy.internal\n", "only scheme"},
		{"admin_url: https://proxy.internal\ntimeout: 0s\n", "timeout"},
		{"admin_url: https://proxy.internal\ntimeout: 1h\n", "timeout"},
		{"admin_url: https://proxy.internal\nmax_response_bytes: 10\n", "max_response_bytes"},
		{"admin_url: http://127.0.0.1\nca_file: x.pem\n", "ca_file"},
		{"admin_url: https://proxy.internal\n---\nadmin_url: https://other\n", "more than one"},
	} {
		if _, err := ParseConfig([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error about %q", tc.doc, err, tc.want)
		}
	}
	c, err := ParseConfig([]byte("admin_url: http://proxy.internal:9090/\ninsecure_plain_http: true\n"))
	if err != nil || c.TimeoutDuration() != DefaultTimeout || c.MaxResponseBytes != DefaultMaxResponseBytes || c.FailOpen {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

func FuzzSplitName(f *testing.F) {
	for _, s := range []string{"busybox", "docker.io/library/busybox:1.36", "127.0.0.1:5000/a/b:v1@" + testDigest, "r.test/a/../b", "r.test/a?x#y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		host, repo, err := splitName(name)
		if err != nil {
			return
		}
		if repo == "" || strings.Contains(repo, "..") || strings.Contains(repo, "//") || strings.HasSuffix(repo, "/") ||
			strings.ContainsAny(host+repo, "?#%@\\ ") || strings.Contains(host, "/") || strings.Contains(repo, ":") {
			t.Fatalf("%q accepted as %q %q", name, host, repo)
		}
	})
}

// TestHelpNeverAccepts: help is printed, but exit 0 would accept a pull.
func TestHelpNeverAccepts(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"--help"}, {"-name", "r.test/a", "-h"}, {}} {
		var stdout bytes.Buffer
		if code := Main(args, func(string) string { return "" }, strings.NewReader(""), &stdout, &bytes.Buffer{}); code == ExitAccept {
			t.Fatalf("%q: exit 0 (%q)", args, stdout.String())
		}
	}
}
