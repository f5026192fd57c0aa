package wire

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/tufroot"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/tufrepo"
	"github.com/portcullis-oci/portcullis/verify"
)

// closedURL is an address nothing listens on: a fetch fails at once.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// tufConfig is e's configuration with the sigstore trust entry kept
// through TUF at url instead of read from a file.
func (e *policyEnv) tufConfig(t *testing.T, url string, root []byte) *config.Config {
	t.Helper()
	writePolicyFile(t, filepath.Join(e.dir, "root.json"), root)
	c := e.config()
	c.Trust[1] = config.Trust{Name: "sigstore", TUF: &config.TUF{URL: url, Root: "root.json", CacheDir: "cache",
		Refresh: config.Duration(time.Hour), Timeout: config.Duration(time.Second)}}
	return c
}

// Not run in parallel: the tests swap the process-wide TrustedRoots.
func swapRoots(t *testing.T) {
	prev := TrustedRoots
	TrustedRoots = tufroot.NewRegistry(nil)
	t.Cleanup(func() { TrustedRoots = prev })
}

func TestTUFRootUnavailableRefusesOnlyBoundariesThatNeedIt(t *testing.T) {
	swapRoots(t)
	e := newPolicyEnv(t)
	repo := tufrepo.New(t, time.Now(), []byte("{}"))
	c := e.tufConfig(t, closedURL(t), repo.RootJSON())
	c.Boundaries[0].Mode = config.ModeEnforce
	needs := c.Boundaries[0]
	needs.Name, needs.Match.Repositories = "needs-both", []string{"both/**"}
	needs.Signatures.Threshold = 2
	c.Boundaries = append(c.Boundaries, needs)
	p, err := Policy(c)
	if err != nil {
		t.Fatal(err)
	}
	if p.Boundaries[0].Refused != "" {
		t.Fatalf("a boundary whose key authority can still reach the threshold was refused: %s", p.Boundaries[0].Refused)
	}
	r := p.Boundaries[1].Refused
	if !strings.Contains(r, `trust "sigstore"`) || !strings.Contains(r, "no trusted root") {
		t.Fatalf("refusal %q does not name the trust entry and the error", r)
	}
	// Clients read the refusal: the repository and the network error go
	// to the operator only.
	if strings.Contains(r, "127.0.0.1") {
		t.Fatalf("refusal %q leaks the repository address to clients", r)
	}
	if ps := p.Boundaries[1].Problems; len(ps) != 1 || !strings.Contains(ps[0], "127.0.0.1") {
		t.Fatalf("operator detail missing: %q", ps)
	}
	// The keyless authority trusts nothing either way.
	tm := p.Boundaries[0].Authorities[1].Keyless.TrustedRoot
	if len(tm.FulcioCertificateAuthorities()) != 0 || len(tm.RekorLogs()) != 0 {
		t.Fatal("an unavailable root still trusts authorities")
	}
	if _, err := verify.New(p); err != nil {
		t.Fatalf("the policy must still compile: %v", err)
	}
	// A warn boundary is never refused: it serves and reports.
	c.Boundaries[1].Mode = config.ModeWarn
	if p, err = Policy(c); err != nil || p.Boundaries[1].Refused != "" {
		t.Fatalf("warn boundary: %v %q", err, p.Boundaries[1].Refused)
	}
}

func TestTUFRootInFingerprint(t *testing.T) {
	swapRoots(t)
	e := newPolicyEnv(t)
	tr, err := e.ss.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	repo := tufrepo.New(t, time.Now(), tr)
	c := e.tufConfig(t, repo.URL(), repo.RootJSON())
	c.Limits.UpstreamHeaderBytes = 96 << 10
	p1, err := Policy(c)
	if err != nil {
		t.Fatal(err)
	}
	// The repository's answers are bounded like every other upstream's.
	if n := TrustedRoots.Lookup("sigstore").Spec().MaxHeaderBytes; n != 96<<10 {
		t.Fatalf("TUF fetches bounded to %d header bytes, want limits.upstream_header_bytes (%d)", n, 96<<10)
	}
	if p1.Boundaries[0].Refused != "" || len(p1.Boundaries[0].Authorities[1].Keyless.TrustedRoot.FulcioCertificateAuthorities()) == 0 {
		t.Fatal("root from TUF not in the policy")
	}
	ss, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	other, err := ss.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	repo.SetTarget(other)
	if r := TrustedRoots.Lookup("sigstore").Refresh(); r.Err != nil || !r.Changed {
		t.Fatalf("refresh %+v", r)
	}
	p2, err := Policy(c)
	if err != nil {
		t.Fatal(err)
	}
	if p1.Fingerprint == p2.Fingerprint || p1.Boundaries[0].Fingerprint == p2.Boundaries[0].Fingerprint {
		t.Fatal("a rotated trusted root kept the policy and boundary fingerprints: old verdicts would be reused")
	}
}

func TestTUFPinnedRootMustVerify(t *testing.T) {
	swapRoots(t)
	e := newPolicyEnv(t)
	c := e.tufConfig(t, closedURL(t), []byte(`{"signed": {"_type": "root"}, "signatures": []}`))
	if _, err := Policy(c); err == nil || !strings.Contains(err.Error(), "not a valid TUF root.json") {
		t.Fatalf("a pinned root that does not verify: %v", err)
	}
}
