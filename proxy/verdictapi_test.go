package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func verdictPath(host, repo string, d v1.Hash) string {
	return VerdictsPath + host + "/" + repo + "@" + d.String()
}

func verdictAnswer(t *testing.T, h http.Handler, target string, hdr ...string) (int, VerdictAnswer) {
	t.Helper()
	w := do(h, http.MethodGet, target, hdr...)
	var a VerdictAnswer
	if w.Code != http.StatusUnauthorized {
		dec := json.NewDecoder(w.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("%s: %d, body not a verdict answer: %v", target, w.Code, err)
		}
	}
	return w.Code, a
}

func TestVerdictAPINeedsAdminToken(t *testing.T) {
	t.Parallel()
	const admin = "adm_secret"
	tokens, err := ParseTokenFile(strings.NewReader("ops:" + HashToken(admin)))
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	eng := newEngineSpy(t, pol)
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithAdminTokens(tokens), WithVerdictCache(newMapVerdicts()))
	h := p.AdminHandler()
	target := verdictPath("docker.io", "acme/app", img.digest)
	for _, auth := range []string{"", "Bearer wrong", basicAuth("ops", admin), "Bearer " + admin + "x"} {
		var hdr []string
		if auth != "" {
			hdr = []string{"Authorization", auth}
		}
		w := do(h, http.MethodGet, target, hdr...)
		if w.Code != http.StatusUnauthorized || strings.Contains(w.Body.String(), "decision") {
			t.Fatalf("auth %q: %d %q, want 401 without a verdict", auth, w.Code, w.Body.String())
		}
	}
	// Malformed paths are refused only once authenticated: nothing is
	// learnt without a token, not even which paths parse.
	if w := do(h, http.MethodGet, VerdictsPath+"docker.io/acme/app:v1"); w.Code != http.StatusUnauthorized {
		t.Fatalf("unauthenticated malformed path: %d, want 401", w.Code)
	}
	if eng.calls.Load() != 0 {
		t.Fatalf("unauthenticated requests verified %d times", eng.calls.Load())
	}
	code, a := verdictAnswer(t, h, target, "Authorization", "Bearer "+admin)
	if code != http.StatusOK || a.Decision != VerdictAllow {
		t.Fatalf("with the token: %d %+v", code, a)
	}
}

func TestVerdictAPIRefusesMalformedPaths(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	eng := allowAll()
	p, _ := newTestProxy(t, reg.srv.URL, eng)
	h := p.AdminHandler()
	d := sha([]byte("x")).String()
	for _, target := range []string{
		VerdictsPath + "docker.io/acme/app:v1",
		VerdictsPath + "docker.io/acme/app@latest",
		VerdictsPath + "docker.io/acme/app@sha256:abc",
		VerdictsPath + "docker.io/acme/app@" + strings.ToUpper(d),
		VerdictsPath + "docker.io/acme/app@sha512:" + strings.Repeat("a", 128),
		VerdictsPath + "docker.io/acme/app@" + d + "@" + d,
		VerdictsPath + "docker.io/acme/../../decisions@" + d,
		VerdictsPath + "docker.io/acme/%2e%2e/app@" + d,
		VerdictsPath + "docker.io/acme%2fapp@" + d,
		VerdictsPath + "docker.io//acme/app@" + d,
		VerdictsPath + "docker.io@" + d,
		VerdictsPath + "docker.io/@" + d,
		VerdictsPath + "docker.io/Acme/App@" + d,
		VerdictsPath + "docker.io/acme/app\\x@" + d,
		VerdictsPath + "@" + d,
		VerdictsPath,
	} {
		w := do(h, http.MethodGet, target)
		if w.Code != http.StatusBadRequest {
			t.Errorf("%s: %d %q, want 400", target, w.Code, w.Body.String())
			continue
		}
		var a VerdictAnswer
		if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil || a.Decision != VerdictDeny || a.Reason == "" {
			t.Errorf("%s: answer %q (%v), want a deny with a reason", target, w.Body.String(), err)
		}
	}
	if w := do(h, http.MethodPost, VerdictsPath+"docker.io/acme/app@"+d); w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != http.MethodGet {
		t.Errorf("POST: %d, Allow %q; want 405, Allow GET", w.Code, w.Header().Get("Allow"))
	}
	if w := do(h, http.MethodGet, VerdictsPath+"docker.io/acme/app:v1"); w.Header().Get("Allow") != "" {
		t.Errorf("a 400 says Allow %q", w.Header().Get("Allow"))
	}
	if n := eng.calls.Load(); n != 0 {
		t.Fatalf("malformed requests verified %d times", n)
	}
	if got := counterValue(t, p, "portcullis_verdict_api_total", map[string]string{"decision": "invalid"}); got < 16 {
		t.Fatalf("invalid requests counted %v times", got)
	}
}

func TestVerdictAPIDecides(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	signed := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", signed.digest)
	unsigned := reg.pushImage(t, "acme/app", "v2")
	eng := newEngineSpy(t, pol)
	verdicts := newMapVerdicts()
	core, logs := observer.New(zapcore.InfoLevel)
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithVerdictCache(verdicts), WithLogger(zap.New(core)))
	h := p.AdminHandler()

	code, a := verdictAnswer(t, h, verdictPath("docker.io", "acme/app", signed.digest))
	if code != http.StatusOK || a.Decision != VerdictAllow || a.Boundary != "images" || a.Cached ||
		a.Upstream != "docker.io" || a.Repository != "acme/app" || a.Digest != signed.digest.String() ||
		a.Reason != `allowed by boundary "images"` {
		t.Fatalf("signed: %d %+v", code, a)
	}
	// An alias of the upstream names the same verdict, from the cache.
	code, a = verdictAnswer(t, h, verdictPath("INDEX.docker.io", "acme/app", signed.digest))
	if code != http.StatusOK || a.Decision != VerdictAllow || !a.Cached {
		t.Fatalf("signed again, by alias: %d %+v", code, a)
	}
	if n := eng.callsFor(signed.digest); n != 1 {
		t.Fatalf("signed digest verified %d times, want 1", n)
	}
	if dec := lastDecision(t, p, signed.digest); dec.Decision != "allow" || !dec.Cached {
		t.Fatalf("decision not recorded: %+v", dec)
	}

	for i := range 2 {
		code, a = verdictAnswer(t, h, verdictPath("docker.io", "acme/app", unsigned.digest))
		if code != http.StatusForbidden || a.Decision != VerdictDeny || a.Boundary != "images" ||
			!strings.Contains(a.Reason, "no signatures found") || !strings.Contains(a.Reason, `"images"`) {
			t.Fatalf("unsigned (%d): %d %+v", i, code, a)
		}
	}
	// The denial is kept as a denial: nothing in the cache lets it pass.
	for _, v := range verdicts.m {
		if v.Digest == unsigned.digest.String() && v.Served() {
			t.Fatalf("unsigned digest cached as served: %+v", v)
		}
	}
	if w := do(p, http.MethodGet, manifestPath("acme/app", unsigned.digest.String())); w.Code != http.StatusForbidden {
		t.Fatalf("unsigned pulled through the proxy after a verdict request: %d", w.Code)
	}
	if dec := lastDecision(t, p, unsigned.digest); dec.Decision != "deny" {
		t.Fatalf("deny not recorded: %+v", dec)
	}

	// A registry the proxy does not front is a deny, not a pass.
	code, a = verdictAnswer(t, h, verdictPath("quay.io", "acme/app", signed.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny || !strings.Contains(a.Reason, `unknown registry "quay.io"`) {
		t.Fatalf("unknown host: %d %+v", code, a)
	}
	code, a = verdictAnswer(t, h, verdictPath("127.0.0.1:5999", "acme/app", signed.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny {
		t.Fatalf("unknown host:port: %d %+v", code, a)
	}
	// A digest the upstream does not have.
	code, a = verdictAnswer(t, h, verdictPath("docker.io", "acme/app", sha([]byte("absent"))))
	if code != http.StatusForbidden || a.Decision != VerdictDeny || a.Reason == "" {
		t.Fatalf("absent digest: %d %+v", code, a)
	}
	// A digest of another repository is not this repository's.
	code, a = verdictAnswer(t, h, verdictPath("docker.io", "acme/other", signed.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny {
		t.Fatalf("signed digest asked in another repository: %d %+v", code, a)
	}

	// The operator's log: allows at info, denials at warn, each naming
	// the digest and the decision.
	levels := map[string]map[zapcore.Level]int{}
	for _, e := range logs.FilterMessage("verdict api").All() {
		dec := e.ContextMap()["decision"].(string)
		if levels[dec] == nil {
			levels[dec] = map[zapcore.Level]int{}
		}
		levels[dec][e.Level]++
	}
	if l := levels[VerdictAllow]; l[zapcore.InfoLevel] != 2 || len(l) != 1 {
		t.Errorf("allows logged at %v, want 2 at info", l)
	}
	if l := levels[VerdictDeny]; l[zapcore.WarnLevel] != 6 || len(l) != 1 {
		t.Errorf("denials logged at %v, want 6 at warn", l)
	}

	for decision, want := range map[string]float64{"allow": 2, "deny": 6} {
		if got := counterValue(t, p, "portcullis_verdict_api_total", map[string]string{"decision": decision}); got != want {
			t.Errorf("portcullis_verdict_api_total{decision=%q} = %v, want %v", decision, got, want)
		}
	}
}

func TestVerdictAPIWarnAndDockerHubNames(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	pol := verify.Policy{Boundaries: []verify.Boundary{{
		Name: "hub", Repositories: []string{"library/**"}, Mode: verify.ModeWarn,
		Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)},
	}}}
	img := reg.pushImage(t, "library/busybox", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol))
	// docker.io/busybox, as the mirror path normalises it.
	code, a := verdictAnswer(t, p.AdminHandler(), verdictPath("docker.io", "busybox", img.digest))
	if code != http.StatusOK || a.Decision != VerdictWarn || a.Repository != "library/busybox" ||
		!strings.Contains(a.Reason, "warn mode") {
		t.Fatalf("warn: %d %+v", code, a)
	}
}

func TestVerdictAPIFailsClosed(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, failing(errors.New("policy evaluation failed")))
	code, a := verdictAnswer(t, p.AdminHandler(), verdictPath("docker.io", "acme/app", img.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny || !strings.Contains(a.Reason, "fail closed") {
		t.Fatalf("verifier failing: %d %+v", code, a)
	}
	reg.srv.Close()
	p2, _ := newTestProxy(t, reg.srv.URL, allowAll())
	code, a = verdictAnswer(t, p2.AdminHandler(), verdictPath("docker.io", "acme/app", img.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny {
		t.Fatalf("upstream down: %d %+v", code, a)
	}
}

func TestVerdictAPINotOnPublicListener(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	eng := allowAll()
	p, _ := newTestProxy(t, reg.srv.URL, eng)
	w := do(p, http.MethodGet, verdictPath("docker.io", "acme/app", img.digest))
	if w.Code == http.StatusOK || strings.Contains(w.Body.String(), `"decision"`) || eng.calls.Load() != 0 {
		t.Fatalf("public listener answered the verdict API: %d %q", w.Code, w.Body.String())
	}
}

// TestVerdictAPISharedState: a verdict decided on one replica is answered
// by another from the shared state, without verifying again.
func TestVerdictAPISharedState(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	signed := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", signed.digest)
	unsigned := reg.pushImage(t, "acme/app", "v2")
	a := newFlightReplica(t, mr, reg.srv.URL, pol, 10*time.Second)
	b := newFlightReplica(t, mr, reg.srv.URL, pol, 10*time.Second)

	for _, tc := range []struct {
		d    v1.Hash
		want string
	}{{signed.digest, VerdictAllow}, {unsigned.digest, VerdictDeny}} {
		_, got := verdictAnswer(t, a.p.AdminHandler(), verdictPath("docker.io", "acme/app", tc.d))
		if got.Decision != tc.want || got.Cached {
			t.Fatalf("replica A, %s: %+v", tc.d, got)
		}
		_, got = verdictAnswer(t, b.p.AdminHandler(), verdictPath("docker.io", "acme/app", tc.d))
		if got.Decision != tc.want {
			t.Fatalf("replica B, %s: %+v", tc.d, got)
		}
		if tc.want == VerdictAllow && (!got.Cached || b.eng.callsFor(tc.d) != 0) {
			t.Fatalf("replica B verified %d times an allow decided on A (cached %v)", b.eng.callsFor(tc.d), got.Cached)
		}
	}
}

// TestVerdictClient: the client reads the API's own answers, tells a
// listener nobody holds from one that answers badly, and reads no more than
// its limit.
func TestVerdictClient(t *testing.T) {
	t.Parallel()
	const admin = "adm_secret"
	tokens, err := ParseTokenFile(strings.NewReader("ops:" + HashToken(admin)))
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithAdminTokens(tokens))
	srv := httptest.NewServer(p.AdminHandler())
	t.Cleanup(srv.Close)
	ask := func(url, token string, limit int64) (int, VerdictAnswer, error) {
		c, err := NewVerdictClient(VerdictClientOptions{AdminURL: url, Token: token, Timeout: 2 * time.Second, MaxResponseBytes: limit})
		if err != nil {
			t.Fatal(err)
		}
		return c.Ask(context.Background(), "docker.io", "acme/app", img.digest.String())
	}
	status, a, err := ask(srv.URL+"/", admin, 1<<16)
	if err != nil || status != http.StatusOK || a.Decision != VerdictAllow || a.Digest != img.digest.String() {
		t.Fatalf("allow: %d %+v %v", status, a, err)
	}
	if status, _, err := ask(srv.URL, "wrong", 1<<16); err != nil || status != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d %v", status, err)
	}
	if _, _, err := ask(srv.URL, admin, 16); !errors.Is(err, ErrVerdictTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	var ue *UnreachableError
	if _, _, err := ask(closedURL(t), admin, 1<<16); !errors.As(err, &ue) {
		t.Fatalf("nothing listening: %v, want an UnreachableError", err)
	}
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	t.Cleanup(garbage.Close)
	if _, _, err := ask(garbage.URL, admin, 1<<16); err == nil || errors.As(err, &ue) {
		t.Fatalf("garbage: %v, want a parse error", err)
	}
	tlsSrv := httptest.NewTLSServer(p.AdminHandler())
	t.Cleanup(tlsSrv.Close)
	if _, _, err := ask(tlsSrv.URL, admin, 1<<16); err == nil || errors.As(err, &ue) {
		t.Fatalf("untrusted certificate: %v, want a failure that is not 'unreachable'", err)
	}
}

func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func FuzzParseVerdictPath(f *testing.F) {
	d := "sha256:" + strings.Repeat("a", 64)
	for _, s := range []string{
		VerdictsPath + "docker.io/library/alpine@" + d,
		VerdictsPath + "127.0.0.1:5000/a/b@" + d,
		VerdictsPath + "docker.io/a/../b@" + d,
		VerdictsPath + "docker.io/a%2fb@" + d,
		VerdictsPath + "docker.io/a:latest",
		VerdictsPath + "Docker.IO/a@" + d,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r, err := http.NewRequest(http.MethodGet, "http://admin"+path, nil)
		if err != nil {
			return
		}
		host, repo, digest, perr := parseVerdictPath(r)
		if perr != nil {
			if perr.Status != http.StatusBadRequest {
				t.Fatalf("%q refused with %d", path, perr.Status)
			}
			return
		}
		if !sha256DigestRE.MatchString(digest.String()) || repo == "" || host == "" ||
			strings.Contains(repo, "..") || strings.Contains(repo, "//") || strings.ContainsAny(host, "/@?#%") ||
			validateName(host+"/"+repo) != nil {
			t.Fatalf("accepted %q as %q %q %q", path, host, repo, digest)
		}
		// What was accepted is exactly what was asked, the host's case aside.
		if got := VerdictsPath + host + "/" + repo + "@" + digest.String(); !strings.EqualFold(got, r.URL.EscapedPath()) {
			t.Fatalf("%q parsed as %q", r.URL.EscapedPath(), got)
		}
	})
}

// BenchmarkVerdictAPICached: a node's question about a digest whose
// verdict is cached, next to a cached manifest HEAD through the registry
// listener (the mirror path's warm pull).
func BenchmarkVerdictAPICached(b *testing.B) {
	reg := newRegistry(b)
	img := reg.pushImage(b, "acme/app", "v1")
	p, _ := newTestProxy(b, reg.srv.URL, allowAll(), WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))
	h := p.AdminHandler()
	target := verdictPath("docker.io", "acme/app", img.digest)
	head := manifestPath("acme/app", img.digest.String())
	if w := do(h, http.MethodGet, target); w.Code != http.StatusOK {
		b.Fatalf("verdict: %d", w.Code)
	}
	if w := do(p, http.MethodHead, head); w.Code != http.StatusOK {
		b.Fatalf("head: %d", w.Code)
	}
	b.Run("verdict-api", func(b *testing.B) {
		for b.Loop() {
			if w := do(h, http.MethodGet, target); w.Code != http.StatusOK {
				b.Fatal(w.Code)
			}
		}
	})
	b.Run("manifest-head", func(b *testing.B) {
		for b.Loop() {
			if w := do(p, http.MethodHead, head); w.Code != http.StatusOK {
				b.Fatal(w.Code)
			}
		}
	})
}

// TestVerdictAPIRegistryAddress: a node names images by registry address,
// which maps to the one upstream whose URL has it; an address two
// upstreams share names neither and is denied.
func TestVerdictAPIRegistryAddress(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	signed := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", signed.digest)
	unsigned := reg.pushImage(t, "acme/app", "v2")

	one, err := New([]Upstream{{Name: "internal", URL: reg.srv.URL, Insecure: true}}, newEngineSpy(t, pol), WithTransport(newSpy()))
	if err != nil {
		t.Fatal(err)
	}
	h := one.AdminHandler()
	code, a := verdictAnswer(t, h, verdictPath(reg.host, "acme/app", signed.digest))
	if code != http.StatusOK || a.Decision != VerdictAllow || a.Upstream != "internal" {
		t.Fatalf("signed, by registry address: %d %+v", code, a)
	}
	code, a = verdictAnswer(t, h, verdictPath(reg.host, "acme/app", unsigned.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny || a.Boundary != "images" {
		t.Fatalf("unsigned, by registry address: %d %+v", code, a)
	}

	// newTestProxy configures two upstreams at the same URL.
	two, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol))
	code, a = verdictAnswer(t, two.AdminHandler(), verdictPath(reg.host, "acme/app", signed.digest))
	if code != http.StatusForbidden || a.Decision != VerdictDeny || !strings.Contains(a.Reason, "unknown registry") {
		t.Fatalf("address shared by two upstreams: %d %+v", code, a)
	}
}
