package tufroot

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	sgtuf "github.com/sigstore/sigstore-go/pkg/tuf"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/tufrepo"
)

func sigstoreRoot(t testing.TB) []byte {
	t.Helper()
	s, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type env struct {
	repo  *tufrepo.Repo
	clk   *clock
	reg   *Registry
	spec  Spec
	start time.Time
}

func newEnv(t testing.TB) *env {
	t.Helper()
	start := time.Now().UTC().Truncate(time.Second)
	e := &env{clk: &clock{t: start}, start: start}
	e.repo = tufrepo.New(t, start, sigstoreRoot(t))
	e.reg = NewRegistry(e.clk.now)
	e.spec = Spec{Trust: "public", URL: e.repo.URL(), Root: e.repo.RootJSON(), CacheDir: t.TempDir(), Refresh: time.Hour, Timeout: 5 * time.Second}
	return e
}

// mustNotTrust fails unless the material trusts nothing at all.
func mustNotTrust(t *testing.T, tm root.TrustedMaterial) {
	t.Helper()
	if len(tm.FulcioCertificateAuthorities()) != 0 || len(tm.RekorLogs()) != 0 || len(tm.CTLogs()) != 0 || len(tm.TimestampingAuthorities()) != 0 {
		t.Fatal("material still trusts authorities or logs")
	}
}

func mustTrust(t *testing.T, tm root.TrustedMaterial) {
	t.Helper()
	if len(tm.FulcioCertificateAuthorities()) == 0 || len(tm.RekorLogs()) == 0 {
		t.Fatal("material trusts no certificate authority or log")
	}
}

// What must not pass first.

func TestExpiredMetadataRefused(t *testing.T) {
	e := newEnv(t)
	// The timestamp expires a day after start; the client lives two days on.
	e.clk.set(e.start.Add(48 * time.Hour))
	s := e.reg.Open(e.spec)
	tm, id, err := s.Material()
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Material error = %v, want an expiry refusal", err)
	}
	if id != "unavailable" {
		t.Fatalf("id = %q", id)
	}
	mustNotTrust(t, tm)
	if st, _ := s.Current(); st != nil {
		t.Fatal("a root was accepted from expired metadata")
	}
}

func TestForeignSigningKeyRefused(t *testing.T) {
	e := newEnv(t)
	// A repository whose metadata is signed by keys the pinned root does
	// not list: another repository's root pins e's.
	other := tufrepo.New(t, e.start, sigstoreRoot(t))
	e.spec.URL = other.URL()
	s := e.reg.Open(e.spec)
	tm, _, err := s.Material()
	if err == nil {
		t.Fatal("a repository signed by unknown keys was accepted")
	}
	mustNotTrust(t, tm)

	// Only the timestamp re-signed by a stranger.
	e2 := newEnv(t)
	e2.repo.SetTimestampKey(tufrepo.NewKey(t))
	if _, _, err := e2.reg.Open(e2.spec).Material(); err == nil || !strings.Contains(err.Error(), "timestamp") {
		t.Fatalf("timestamp signed by an unknown key: err = %v", err)
	}
}

func TestRollbackRefused(t *testing.T) {
	e := newEnv(t)
	old := e.repo.Files()
	e.repo.SetTarget(sigstoreRoot(t)) // version 2 of everything
	s := e.reg.Open(e.spec)
	st, err := s.Current()
	if err != nil || st == nil || st.TimestampVersion != 2 {
		t.Fatalf("state %+v, err %v", st, err)
	}
	e.repo.Restore(old) // serve version 1 again
	res := s.Refresh()
	if res.Err == nil || !strings.Contains(res.Err.Error(), "version") {
		t.Fatalf("rollback accepted: %+v", res)
	}
	if cur, _ := s.Current(); cur.Digest != st.Digest || cur.TimestampVersion != 2 {
		t.Fatal("the rolled back metadata replaced the current root")
	}

	// The same with the cache wiped: the in-memory versions still refuse.
	e.repo.SetTarget(sigstoreRoot(t)) // v3 of targets, snapshot, timestamp
	if r := s.Refresh(); r.Err != nil || !r.Changed {
		t.Fatalf("refresh: %+v", r)
	}
	if err := os.RemoveAll(e.spec.CacheDir); err != nil {
		t.Fatal(err)
	}
	e.repo.Restore(old)
	if r := s.Refresh(); r.Err == nil || !strings.Contains(r.Err.Error(), "rolled back") {
		t.Fatalf("rollback with the cache wiped: %+v", r)
	}
}

func TestOversizedMetadataRefused(t *testing.T) {
	e := newEnv(t)
	e.repo.SetFile("timestamp.json", bytes.Repeat([]byte(" "), maxTimestampBytes+10))
	if _, _, err := e.reg.Open(e.spec).Material(); err == nil {
		t.Fatal("oversized timestamp accepted")
	}
}

// After the cache and the network both fail past expiry, the root that
// was good stops being trusted, in the engine that already holds it too.
func TestFailedRefreshKeepsLastGoodUntilExpiry(t *testing.T) {
	e := newEnv(t)
	s := e.reg.Open(e.spec)
	held, id, err := s.Material()
	if err != nil {
		t.Fatal(err)
	}
	mustTrust(t, held)
	e.repo.SetDown(true)
	e.clk.set(e.start.Add(20 * time.Hour))
	if r := s.Refresh(); r.Err == nil {
		t.Fatal("refresh against a failing repository succeeded")
	}
	tm, id2, err := s.Material()
	if err != nil || id2 != id {
		t.Fatalf("last good root not kept: id %q -> %q, err %v", id, id2, err)
	}
	mustTrust(t, tm)
	mustTrust(t, held)

	e.clk.set(e.start.Add(25 * time.Hour)) // the timestamp expired
	tm, id3, err := s.Material()
	if err == nil || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "last refresh failed") {
		t.Fatalf("err = %v", err)
	}
	if id3 == id {
		t.Fatal("the identity did not change at expiry: cached verdicts would be reused")
	}
	mustNotTrust(t, tm)
	mustNotTrust(t, held)

	// A restart from that cache, still without the network, refuses it.
	reg := NewRegistry(e.clk.now)
	if _, _, err := reg.Open(e.spec).Material(); err == nil {
		t.Fatal("expired cache accepted on restart")
	}
}

// Then what must pass.

func TestInitialFetchAndTargetRotation(t *testing.T) {
	e := newEnv(t)
	s := e.reg.Open(e.spec)
	tm, id1, err := s.Material()
	if err != nil {
		t.Fatal(err)
	}
	mustTrust(t, tm)
	st, _ := s.Current()
	if st.From != "network" || st.RootVersion != 1 || !st.Expires.Equal(e.start.Add(24*time.Hour)) {
		t.Fatalf("state %+v", st)
	}
	if s.Due() {
		t.Fatal("refresh due right after a fetch")
	}
	if r := s.Refresh(); r.Err != nil || r.Changed {
		t.Fatalf("unchanged refresh: %+v", r)
	}
	// A new trusted_root.json (key rotation at the sigstore instance).
	e.repo.SetTarget(sigstoreRoot(t))
	e.clk.set(e.start.Add(time.Hour))
	if !s.Due() {
		t.Fatal("refresh not due after the interval")
	}
	r := s.Refresh()
	if r.Err != nil || !r.Changed {
		t.Fatalf("refresh: %+v", r)
	}
	_, id2, err := s.Material()
	if err != nil || id2 == id1 {
		t.Fatalf("new root not in effect: %q -> %q (%v)", id1, id2, err)
	}
}

func TestRootRotationAndOfflineRestart(t *testing.T) {
	e := newEnv(t)
	s := e.reg.Open(e.spec)
	if _, _, err := s.Material(); err != nil {
		t.Fatal(err)
	}
	e.repo.RotateRoot() // root v2, new root and timestamp keys
	e.repo.SetTarget(sigstoreRoot(t))
	r := s.Refresh()
	if r.Err != nil || !r.Changed || r.State.RootVersion != 2 {
		t.Fatalf("refresh after root rotation: %+v", r)
	}
	_, id, _ := s.Material()

	// Restart with no network: the cache is verified from the pinned v1
	// root through v2.
	e.repo.SetDown(true)
	reg := NewRegistry(e.clk.now)
	s2 := reg.Open(e.spec)
	tm, id2, err := s2.Material()
	if err != nil || id2 != id {
		t.Fatalf("offline restart: id %q want %q, err %v", id2, id, err)
	}
	mustTrust(t, tm)
	st, _ := s2.Current()
	if st.From != "cache" || st.RootVersion != 2 {
		t.Fatalf("state %+v", st)
	}
	if !s2.Due() {
		t.Fatal("a start from the cache should refresh at once")
	}
	e.repo.SetDown(false)
	if r := s2.Refresh(); r.Err != nil || r.Changed {
		t.Fatalf("refresh after an offline start: %+v", r)
	}
}

// A cache that was tampered with on disk is not trusted.
func TestTamperedCacheRefused(t *testing.T) {
	e := newEnv(t)
	if _, _, err := e.reg.Open(e.spec).Material(); err != nil {
		t.Fatal(err)
	}
	e.repo.SetDown(true)
	other := sigstoreRoot(t)
	if err := writeFile(e.spec.CacheDir+"/targets/"+Target, other); err != nil {
		t.Fatal(err)
	}
	if _, _, err := NewRegistry(e.clk.now).Open(e.spec).Material(); err == nil {
		t.Fatal("a trusted_root.json replaced on disk was accepted")
	}
}

// BenchmarkMaterial compares what a keyless verification asks of its
// trusted material, through the expiring wrapper and directly.
func BenchmarkMaterial(b *testing.B) {
	e := newEnv(b)
	s := e.reg.Open(e.spec)
	tm, _, err := s.Material()
	if err != nil {
		b.Fatal(err)
	}
	direct := tm.(*live).TrustedRoot
	for _, c := range []struct {
		name string
		tm   root.TrustedMaterial
	}{{"live", tm}, {"direct", direct}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				_ = c.tm.FulcioCertificateAuthorities()
				_ = c.tm.RekorLogs()
				_ = c.tm.CTLogs()
				_ = c.tm.TimestampingAuthorities()
			}
		})
	}
}

// A reload opens the same entry again: it keeps its source, root and
// schedule, without the network; changed settings make a new source.
func TestRegistryKeepsSourceAcrossOpens(t *testing.T) {
	e := newEnv(t)
	s := e.reg.Open(e.spec)
	e.repo.SetDown(true)
	if s2 := e.reg.Open(e.spec); s2 != s {
		t.Fatal("the same settings made a new source")
	}
	if e.reg.Lookup("public") != s {
		t.Fatal("Lookup")
	}
	spec := e.spec
	spec.Refresh = 2 * time.Hour
	if s3 := e.reg.Open(spec); s3 == s {
		t.Fatal("changed settings kept the old source")
	} else if _, _, err := s3.Material(); err != nil {
		t.Fatalf("the new source did not start from the cache: %v", err)
	}
}

// The public instance's root, as sigstore-go embeds it, is a pinned root
// this package accepts.
func TestPublicRootAccepted(t *testing.T) {
	if err := CheckRoot(sgtuf.DefaultRoot()); err != nil {
		t.Fatal(err)
	}
	if err := CheckRoot([]byte(`{"signed":{"_type":"root"},"signatures":[]}`)); err == nil {
		t.Fatal("an unsigned root accepted")
	}
}

// BenchmarkOpen is a start: with the cache (verified from the pinned
// root, no network) and without (fetched from a local repository).
func BenchmarkOpen(b *testing.B) {
	e := newEnv(b)
	if _, _, err := e.reg.Open(e.spec).Material(); err != nil {
		b.Fatal(err)
	}
	b.Run("cache", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := NewRegistry(e.clk.now).Open(e.spec).Material(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("network", func(b *testing.B) {
		for b.Loop() {
			spec := e.spec
			spec.CacheDir = b.TempDir()
			if _, _, err := NewRegistry(e.clk.now).Open(spec).Material(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
