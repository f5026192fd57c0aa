package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/tufroot"
	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/wire"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/tufrepo"
)

const (
	tufIssuer  = "https://token.actions.example"
	tufSubject = "https://ci.example/acme/app"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// tufSetup is an upstream with an image signed keylessly by a virtual
// sigstore, a TUF repository publishing that sigstore's trusted root, and
// a configuration whose keyless authority trusts it through TUF.
type tufSetup struct {
	cfgPath string
	repo    *tufrepo.Repo
	clk     *testClock
	signer  []byte // the signing sigstore's trusted_root.json
}

func newTUFSetup(t *testing.T) *tufSetup {
	ctx := context.Background()
	reg, err := fixtures.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	ss, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(reg.Host+"/app/signed:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	d, err := fixtures.PushImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, d, ss.Signer(tufIssuer, tufSubject), fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	ref, err = name.NewTag(reg.Host+"/keys/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := fixtures.PushImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	key, err := fixtures.NewKeySigner("ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, kd, key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	tr, err := ss.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	s := &tufSetup{clk: &testClock{t: time.Now().UTC().Truncate(time.Second)}, signer: tr}
	s.repo = tufrepo.New(t, s.clk.now(), tr)

	// Every root in this test comes from this registry, on the test's
	// clock; the loop looks often.
	prevRoots, prevEvery := wire.TrustedRoots, trustedRootCheckEvery
	wire.TrustedRoots, trustedRootCheckEvery = tufroot.NewRegistry(s.clk.now), 50*time.Millisecond
	t.Cleanup(func() { wire.TrustedRoots, trustedRootCheckEvery = prevRoots, prevEvery })

	dir := t.TempDir()
	for f, b := range map[string][]byte{"root.json": s.repo.RootJSON(), "release.pub": key.PublicKeyPEM()} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: lab.local, url: %q, aliases: [%q], insecure: true, timeout: 5s}
default_upstream: lab.local
trust:
  - name: sigstore
    trusted_root:
      tuf: {url: %q, root: root.json, cache_dir: tuf-cache, refresh: 1h, timeout: 5s}
  - {name: release, keys: [release.pub]}
boundaries:
  - name: apps
    match: {repositories: ["app/**"]}
    signatures:
      authorities:
        - {name: ci, keyless: {trust: sigstore, issuer: %q, subject: %q, insecure_skip_sct: true}}
  - name: keyed
    match: {repositories: ["keys/**"]}
    signatures:
      authorities:
        - {name: release, key: release}
`, reg.URL(), reg.Host, s.repo.URL(), tufIssuer, tufSubject)
	s.cfgPath = filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReload waits for the reload a trusted root change causes.
func waitReload(t *testing.T, r *reloadRun) {
	t.Helper()
	if o := r.next(t); o.result != proxy.ReloadSuccess || o.trigger != "trusted-root" {
		t.Fatalf("reload %+v, want a success triggered by the trusted root", o)
	}
}

// What must not pass: after the repository and the cache both fail past
// the metadata's expiry, a keyless-signed image is denied through the
// proxy with a reason naming the trust entry, while key-signed content
// keeps passing. Before that, a rotated trusted_root.json decides the
// verdicts at once, cached verdicts notwithstanding.
func TestTUFTrustedRootThroughProxy(t *testing.T) {
	s := newTUFSetup(t)
	r := startReloading(t, s.cfgPath, reloadHooks{})
	signed := "http://" + r.addr + "/v2/app/signed/manifests/v1"
	keyed := "http://" + r.addr + "/v2/keys/app/manifests/v1"
	if c, body := getBody(t, signed); c != http.StatusOK {
		t.Fatalf("keyless-signed under the TUF root: %d %s", c, body)
	}

	// The sigstore instance rotates: trusted_root.json no longer holds
	// the CA that signed the image.
	other, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	otherRoot, err := other.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	s.repo.SetTarget(otherRoot)
	s.clk.add(time.Hour)
	waitReload(t, r)
	if c, _ := getBody(t, signed); c != http.StatusForbidden {
		t.Fatalf("signed by a CA the rotated root no longer lists: %d, want 403", c)
	}
	s.repo.SetTarget(s.signer)
	s.clk.add(time.Hour)
	waitReload(t, r)
	if c, body := getBody(t, signed); c != http.StatusOK {
		t.Fatalf("after rotating back: %d %s", c, body)
	}

	// Network gone: the last good root is kept until the timestamp
	// (valid a day from the start) expires.
	s.repo.SetDown(true)
	s.clk.add(time.Hour)
	time.Sleep(10 * trustedRootCheckEvery)
	if c, body := getBody(t, signed); c != http.StatusOK {
		t.Fatalf("last good root not kept while still valid: %d %s", c, body)
	}
	s.clk.add(24 * time.Hour)
	waitReload(t, r)
	c, body := getBody(t, signed)
	if c != http.StatusForbidden || !strings.Contains(body, `trust \"sigstore\"`) || !strings.Contains(body, "expired") {
		t.Fatalf("past expiry: %d %s, want 403 naming the trust entry and the expiry", c, body)
	}
	if c, body := getBody(t, keyed); c != http.StatusOK {
		t.Fatalf("key-signed content under another boundary: %d %s", c, body)
	}
	m := r.metrics(t)
	for _, want := range []string{
		`portcullis_trusted_root_refresh_total{result="failed",trust="sigstore"}`,
		`portcullis_trusted_root_refresh_total{result="updated",trust="sigstore"} 3`,
		`portcullis_trusted_root_usable{trust="sigstore"} 0`,
		`portcullis_trusted_root_expiry_timestamp_seconds{trust="sigstore"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "portcullis_trusted_root"))
		}
	}
	if len(r.events.kinds(proxy.EventTrustedRootRefreshFailed)) == 0 || len(r.events.kinds(proxy.EventTrustedRootUnavailable)) == 0 {
		t.Error("no alert events for the failed refresh and the unavailable root")
	}
}

// With no cache and no network the process starts; keyless authorities
// under the entry deny, naming it, and the rest of the policy works. A
// restart with the repository gone but a cache in place starts from the
// cache and allows.
func TestTUFTrustedRootStartOfflineAndFromCache(t *testing.T) {
	s := newTUFSetup(t)
	s.repo.SetDown(true)
	r := startReloading(t, s.cfgPath, reloadHooks{})
	signed := "http://" + r.addr + "/v2/app/signed/manifests/v1"
	c, body := getBody(t, signed)
	if c != http.StatusForbidden || !strings.Contains(body, `trust \"sigstore\"`) || !strings.Contains(body, "no trusted root") {
		t.Fatalf("no root at all: %d %s, want 403 naming the trust entry", c, body)
	}
	if c, body := getBody(t, "http://"+r.addr+"/v2/keys/app/manifests/v1"); c != http.StatusOK {
		t.Fatalf("key-signed content: %d %s", c, body)
	}
	if logs := r.logs.FilterMessageSnippet("trusted root unavailable").FilterField(zap.String("trust", "sigstore")).All(); len(logs) == 0 || logs[0].Level != zap.ErrorLevel {
		t.Fatalf("the missing root was not logged as an error at start: %+v", logs)
	}
	// The repository comes back: the retry picks it up.
	s.repo.SetDown(false)
	s.clk.add(tufroot.RetryAfterFailure)
	waitReload(t, r)
	if c, body := getBody(t, signed); c != http.StatusOK {
		t.Fatalf("after the repository came back: %d %s", c, body)
	}

	// A restart (a new process: new registry) without the network.
	s.repo.SetDown(true)
	wire.TrustedRoots = tufroot.NewRegistry(s.clk.now)
	r2 := startReloading(t, s.cfgPath, reloadHooks{})
	if c, body := getBody(t, "http://"+r2.addr+"/v2/app/signed/manifests/v1"); c != http.StatusOK {
		t.Fatalf("offline restart from the cache: %d %s", c, body)
	}
	if st, _ := wire.TrustedRoots.Lookup("sigstore").Current(); st == nil || st.From != "cache" {
		t.Fatalf("state after restart: %+v", st)
	}
}
