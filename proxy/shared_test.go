package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/cache/shared"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

var _ SharedState = (*shared.Gating)(nil)

const sharedPrefix = "test:"

// sharedReplica is one proxy of a deployment sharing state through mr,
// with its own client, guard and metrics, as a replica would have.
type sharedReplica struct {
	p   *Proxy
	eng *engineSpy
	reg *prometheus.Registry
}

func newSharedReplica(t *testing.T, mr *miniredis.Miniredis, upstreamURL string, pol verify.Policy) sharedReplica {
	return newSharedReplicaWith(t, mr, upstreamURL, pol, false, nil)
}

// newSharedReplicaWith is newSharedReplica with, when verdicts is set,
// verdicts shared through mr too (as shared.redis sets up), and the shared
// state wrapped by wrap when it is not nil.
func newSharedReplicaWith(t *testing.T, mr *miniredis.Miniredis, upstreamURL string, pol verify.Policy, verdicts bool, wrap func(SharedState) SharedState) sharedReplica {
	t.Helper()
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	reg := prometheus.NewRegistry()
	guard := shared.NewGuard(zap.NewNop(), reg, 5*time.Second)
	g, err := shared.NewGating(c, sharedPrefix, guard)
	if err != nil {
		t.Fatal(err)
	}
	var ss SharedState = g
	if wrap != nil {
		ss = wrap(g)
	}
	var vc VerdictCache = newMapVerdicts()
	if verdicts {
		l1, err := cache.NewVerdicts(100, time.Hour, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if vc, err = shared.NewVerdicts(l1, c, guard, shared.VerdictsOptions{KeyPrefix: sharedPrefix, AllowTTL: time.Hour, DenyTTL: time.Minute, Size: 100}); err != nil {
			t.Fatal(err)
		}
	}
	eng := newEngineSpy(t, pol)
	p, _ := newTestProxy(t, upstreamURL, eng, WithSharedState(ss), WithVerdictCache(vc))
	return sharedReplica{p: p, eng: eng, reg: reg}
}

// do sends a request and waits for the writes to the shared state it
// started, so the next replica's request sees them.
func (r sharedReplica) do(method, target string) (int, []byte) {
	w := do(r.p, method, target)
	r.p.shared.writes.Wait()
	return w.Code, w.Body.Bytes()
}

func (r sharedReplica) sharedErrors(t *testing.T, op, kind string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "portcullis_shared_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsAre(m, map[string]string{"op": op, "kind": kind}) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelsAre(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if want[l.GetName()] != l.GetValue() {
			return false
		}
		n++
	}
	return n == len(want)
}

func sameBytes(body []byte, d v1.Hash) bool {
	h := sha256.Sum256(body)
	return "sha256:"+hex.EncodeToString(h[:]) == d.String()
}

func acmePolicy(mode verify.Mode, t *testing.T) (verify.Policy, func(*upstreamRegistry, string, v1.Hash)) {
	k := newKey(t)
	pol := verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", mode, k)}}
	return pol, func(u *upstreamRegistry, repo string, d v1.Hash) { u.sign(t, repo, d, k) }
}

// TestSharedBlobGating: a manifest allowed on A opens its blobs on B,
// which verifies nothing; a manifest A did not allow opens nothing on B.
func TestSharedBlobGating(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	signed := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", signed.digest)
	unsigned := reg.pushImage(t, "acme/app", "v2")
	a := newSharedReplica(t, mr, reg.srv.URL, pol)
	b := newSharedReplica(t, mr, reg.srv.URL, pol)

	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("signed manifest on A = %d", code)
	}
	for _, l := range append([]v1.Hash{signed.config}, signed.layers...) {
		code, body := b.do(http.MethodGet, blobPath("acme/app", l))
		if code != http.StatusOK || !sameBytes(body, l) {
			t.Errorf("blob %s of A's allowed manifest on B = %d (bytes match: %v)", l, code, sameBytes(body, l))
		}
	}
	if n := b.eng.callsFor(signed.digest); n != 0 {
		t.Errorf("B verified the manifest %d times, want 0", n)
	}

	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v2")); code != http.StatusForbidden {
		t.Fatalf("unsigned manifest on A = %d", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", unsigned.layers[0])); code != http.StatusForbidden {
		t.Errorf("blob of the unsigned manifest on B = %d, want 403", code)
	}
}

// TestSharedBlobGatingWarnServedOpensNothing: a manifest A serves only
// because its boundary warns is not an allow, so another replica enforcing
// the boundary (a policy rolled out to it first) still denies its blobs.
func TestSharedBlobGatingWarnServedOpensNothing(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	warn, _ := acmePolicy(verify.ModeWarn, t)
	enforce, _ := acmePolicy(verify.ModeEnforce, t)
	unsigned := reg.pushImage(t, "acme/app", "v1")
	a := newSharedReplica(t, mr, reg.srv.URL, warn)
	b := newSharedReplica(t, mr, reg.srv.URL, enforce)

	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("unsigned manifest in a warn boundary on A = %d", code)
	}
	if code, _ := a.do(http.MethodGet, blobPath("acme/app", unsigned.layers[0])); code != http.StatusOK {
		t.Fatalf("its blob on A = %d", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", unsigned.layers[0])); code != http.StatusForbidden {
		t.Errorf("its blob on enforcing B = %d, want 403", code)
	}
}

// TestSharedBlobEntryBoundToItsKey copies the entry A wrote for a blob in
// acme/app to the key of the same blob in acme/other: B refuses it and
// counts the refusal, while the genuine entry still opens the blob.
func TestSharedBlobEntryBoundToItsKey(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	signed := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", signed.digest)
	a := newSharedReplica(t, mr, reg.srv.URL, pol)
	b := newSharedReplica(t, mr, reg.srv.URL, pol)

	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("signed manifest on A = %d", code)
	}
	l := signed.layers[0]
	redisKey := func(repo string) string {
		h := sha256.Sum256([]byte(blobKey("docker.io", repo, l)))
		return sharedPrefix + "v1:blob:" + hex.EncodeToString(h[:])
	}
	v, err := mr.Get(redisKey("acme/app"))
	if err != nil {
		t.Fatalf("A recorded no entry for its blob: %v", err)
	}
	if err := mr.Set(redisKey("acme/other"), v); err != nil {
		t.Fatal(err)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/other", l)); code != http.StatusForbidden {
		t.Errorf("blob under a copied entry on B = %d, want 403", code)
	}
	if n := b.sharedErrors(t, "blob_lookup", "invalid"); n != 1 {
		t.Errorf("refused values counted = %v, want 1", n)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", l)); code != http.StatusOK {
		t.Errorf("blob under its own entry on B = %d, want 200", code)
	}
}

// TestSharedCoverage: a signed index allowed on A covers its unsigned
// children on B; a child falling in another boundary by its own artifact
// type is still decided, and denied, on its own there.
func TestSharedCoverage(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	k := newKey(t)
	const repo = "acme/bundle"
	bare := reg.pushModel(t, repo, "bare", "unsigned weights")
	img := reg.pushImage(t, repo, "img")
	idx := reg.pushRawIndex(t, repo, "v1", bare.desc, reg.describe(t, repo, img.digest))
	reg.sign(t, repo, idx, k)
	pol := twoBoundaries(k, verify.ModeEnforce)
	a := newSharedReplica(t, mr, reg.srv.URL, pol)
	b := newSharedReplica(t, mr, reg.srv.URL, pol)

	if code, _ := a.do(http.MethodGet, manifestPath(repo, "v1")); code != http.StatusOK {
		t.Fatalf("signed index on A = %d", code)
	}
	if code, _ := b.do(http.MethodGet, manifestPath(repo, img.digest.String())); code != http.StatusOK {
		t.Fatalf("covered child on B = %d", code)
	}
	if d := lastDecision(t, b.p, img.digest); d.CoveredBy != idx.String() || d.Decision != "allow" {
		t.Errorf("child decision on B = %+v, want an allow covered by %s", d, idx)
	}
	if n := b.eng.callsFor(img.digest); n != 0 {
		t.Errorf("B verified the covered child %d times", n)
	}
	if code, _ := b.do(http.MethodGet, blobPath(repo, img.layers[0])); code != http.StatusOK {
		t.Errorf("blob of the covered child on B = %d", code)
	}
	if code, _ := b.do(http.MethodGet, manifestPath(repo, bare.desc.Digest.String())); code != http.StatusForbidden {
		t.Errorf("unsigned model listed by the index on B = %d, want 403", code)
	}
	if n := b.eng.callsFor(bare.desc.Digest); n != 1 {
		t.Errorf("unsigned model verified %d times on B, want once on its own", n)
	}
}

// TestSharedStateRedisDown: with Redis gone B neither serves nor denies
// a blob it has not seen opened (a failure is never an allow, and a 403
// would fail the pull of a verified image whose manifest A served): it
// answers 503 UNAVAILABLE with Retry-After on a closing connection. It
// still serves what it can verify itself, and A serves what it verified;
// once Redis is back, sharing resumes without a restart.
func TestSharedStateRedisDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	one := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", one.digest)
	two := reg.pushImage(t, "acme/app", "v2")
	sign(reg, "acme/app", two.digest)
	a := newSharedReplica(t, mr, reg.srv.URL, pol)
	b := newSharedReplica(t, mr, reg.srv.URL, pol)

	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("signed manifest on A = %d", code)
	}
	restart := redistest.Outage(t, mr)
	unsigned := reg.pushImage(t, "acme/app", "unsigned")
	for _, layer := range []v1.Hash{one.layers[0], unsigned.layers[0]} {
		w := do(b.p, http.MethodGet, blobPath("acme/app", layer))
		if w.Code != http.StatusServiceUnavailable {
			t.Errorf("blob %s not opened on B, Redis down = %d, want 503", layer, w.Code)
			continue
		}
		if got := w.Header().Get("Retry-After"); got != "1" {
			t.Errorf("Retry-After = %q, want 1", got)
		}
		if got := w.Header().Get("Connection"); got != "close" {
			t.Errorf("Connection = %q, want close (a retry may reach another replica)", got)
		}
		// The body is the error envelope, not the blob.
		if code := errorCode(t, w); code != CodeUnavailable {
			t.Errorf("error code %q, want %s", code, CodeUnavailable)
		}
	}
	if n := counterValue(t, b.p, "portcullis_blob_gating_undecided_total", nil); n != 2 {
		t.Errorf("portcullis_blob_gating_undecided_total = %v, want 2", n)
	}
	// Without shared state configured the same miss is a denial, as on a
	// single replica.
	single, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol))
	if w := do(single, http.MethodGet, blobPath("acme/app", one.layers[0])); w.Code != http.StatusForbidden {
		t.Errorf("unseen blob on a replica without shared state = %d, want 403", w.Code)
	}
	if n := b.sharedErrors(t, "blob_lookup", "error") + b.sharedErrors(t, "blob_lookup", "timeout"); n == 0 {
		t.Error("the failed lookup was not counted")
	}
	if code, _ := a.do(http.MethodGet, blobPath("acme/app", one.layers[0])); code != http.StatusOK {
		t.Errorf("blob A verified, Redis down = %d", code)
	}
	if code, _ := b.do(http.MethodGet, manifestPath("acme/app", "v2")); code != http.StatusOK {
		t.Errorf("signed manifest on B, Redis down = %d", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", two.layers[0])); code != http.StatusOK {
		t.Errorf("blob of the manifest B verified, Redis down = %d", code)
	}

	restart()
	// The clients find Redis again on their own (their pools retry the
	// dial in the background, the guard's circuit half-opens): pulls go
	// on until B takes A's entry, a bounded number of times.
	three := reg.pushImage(t, "acme/app", "v3")
	sign(reg, "acme/app", three.digest)
	resumed := false
	for range 100 {
		if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v3")); code != http.StatusOK {
			t.Fatalf("signed manifest on A after the outage = %d", code)
		}
		if code, _ := b.do(http.MethodGet, blobPath("acme/app", three.layers[0])); code == http.StatusOK {
			resumed = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !resumed {
		t.Error("sharing did not resume once Redis was back")
	}
}

// TestSharedBlobAfterRevocation: once a revocation is added on B, the
// entries recorded before it no longer open blobs there, whichever
// manifest they came from and whether or not B had read them already;
// what A writes afterwards does again.
func TestSharedBlobAfterRevocation(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	signed := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", signed.digest)
	other := reg.pushImage(t, "acme/app", "v2")
	sign(reg, "acme/app", other.digest)
	a := newSharedReplica(t, mr, reg.srv.URL, pol)
	b := newSharedReplica(t, mr, reg.srv.URL, pol)

	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("signed manifest on A = %d", code)
	}
	// B opens one of its blobs from the shared entry before the
	// revocation: the copy B keeps must not outlive it either.
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", signed.layers[1])); code != http.StatusOK {
		t.Fatalf("blob of a manifest A allowed, on B = %d", code)
	}
	addRevocation(t, b.p, Revocation{Digest: signed.digest.String(), Reason: "poisoned", By: "sec"})
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", signed.layers[0])); code != http.StatusForbidden {
		t.Errorf("blob of a manifest revoked on B, opened by an older entry = %d, want 403", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", signed.layers[1])); code != http.StatusForbidden {
		t.Errorf("blob of a manifest revoked on B, opened there before = %d, want 403", code)
	}
	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v2")); code != http.StatusOK {
		t.Fatalf("second signed manifest on A = %d", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", other.layers[0])); code != http.StatusOK {
		t.Errorf("blob of a manifest A allowed after the revocation = %d, want 200", code)
	}
}

// TestSharedBlobOriginAfterRevocation: a blob entry recorded before a
// revocation opens its blob on another replica only while the decision it
// was recorded with stands: the pulls in progress of everything a
// revocation does not touch go on, whatever the manifest was served on (its
// own verdict, an index's coverage, its subject's as evidence), and what
// it touches closes, whether or not the replica had read the entry before.
func TestSharedBlobOriginAfterRevocation(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	k := newKey(t)
	pol := verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}}
	const repo = "acme/app"
	x := reg.pushImage(t, repo, "x")
	reg.sign(t, repo, x.digest, k)
	y := reg.pushImage(t, repo, "y")
	signLegacy(t, reg, repo, y.digest, k)
	sigDigest, _, sigLayer := reg.legacySig(t, repo, y.digest)
	idx, kids := reg.pushIndex(t, repo, "multi")
	reg.sign(t, repo, idx.digest, k)
	a := newSharedReplicaWith(t, mr, reg.srv.URL, pol, true, nil)
	b := newSharedReplicaWith(t, mr, reg.srv.URL, pol, true, nil)

	for _, ref := range []string{"x", "y", sigTag(y.digest, ".sig"), "multi", kids[0].digest.String(), kids[1].digest.String()} {
		if code, body := a.do(http.MethodGet, manifestPath(repo, ref)); code != http.StatusOK {
			t.Fatalf("%s on A = %d: %s", ref, code, body)
		}
	}
	if d := lastDecision(t, a.p, sigDigest); d.EvidenceOf != y.digest.String() {
		t.Fatalf(".sig decision on A = %+v, want evidence of y", d)
	}
	blob := func(d v1.Hash, want int) {
		t.Helper()
		if code, _ := b.do(http.MethodGet, blobPath(repo, d)); code != want {
			t.Errorf("blob %s on B = %d, want %d", d, code, want)
		}
	}
	// B reads one of x's blobs before any revocation: a copy without the
	// decision, which the next revocation drops and looks up again.
	blob(x.layers[1], http.StatusOK)

	addRevocation(t, b.p, Revocation{Digest: "sha256:" + strings.Repeat("f", 64), Reason: "unrelated", By: "sec"})
	blob(x.layers[0], http.StatusOK)
	blob(x.layers[1], http.StatusOK)
	blob(kids[0].layers[0], http.StatusOK)
	blob(sigLayer, http.StatusOK)

	addRevocation(t, b.p, Revocation{Digest: x.digest.String(), Reason: "poisoned", By: "sec"})
	blob(x.layers[0], http.StatusForbidden) // read before: closed
	blob(x.config, http.StatusForbidden)    // never read: refused
	blob(y.layers[0], http.StatusOK)

	// A child revoked by its own digest, served on its index's verdict,
	// which no revocation names.
	addRevocation(t, b.p, Revocation{Digest: kids[1].digest.String(), Reason: "poisoned", By: "sec"})
	blob(kids[1].layers[0], http.StatusForbidden)
	blob(kids[0].layers[0], http.StatusOK)

	addRevocation(t, b.p, Revocation{Digest: idx.digest.String(), Reason: "poisoned", By: "sec"})
	blob(kids[0].layers[0], http.StatusForbidden)
	blob(kids[0].config, http.StatusForbidden)

	addRevocation(t, b.p, Revocation{Digest: y.digest.String(), Reason: "poisoned", By: "sec"})
	blob(sigLayer, http.StatusForbidden)
	blob(y.config, http.StatusForbidden)
}

// TestSharedBlobOriginRevokedKey: a revoked key closes, on another
// replica, the blobs of the manifests it signed, not those of others.
func TestSharedBlobOriginRevokedKey(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	k1, k2 := newKey(t), newKey(t)
	b1 := acmeBoundary("images", verify.ModeEnforce, k1)
	b1.Authorities = append(b1.Authorities, keyAuthority("other", k2))
	pol := verify.Policy{Boundaries: []verify.Boundary{b1}}
	const repo = "acme/app"
	one := reg.pushImage(t, repo, "one")
	reg.sign(t, repo, one.digest, k1)
	two := reg.pushImage(t, repo, "two")
	reg.sign(t, repo, two.digest, k2)
	a := newSharedReplicaWith(t, mr, reg.srv.URL, pol, true, nil)
	b := newSharedReplicaWith(t, mr, reg.srv.URL, pol, true, nil)
	for _, tag := range []string{"one", "two"} {
		if code, body := a.do(http.MethodGet, manifestPath(repo, tag)); code != http.StatusOK {
			t.Fatalf("%s on A = %d: %s", tag, code, body)
		}
	}
	addRevocation(t, b.p, Revocation{Key: keyID(t, k1), Reason: "leaked", By: "sec"})
	if code, _ := b.do(http.MethodGet, blobPath(repo, one.layers[0])); code != http.StatusForbidden {
		t.Errorf("blob of the image signed by the revoked key = %d, want 403", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath(repo, two.layers[0])); code != http.StatusOK {
		t.Errorf("blob of the image signed by the other key = %d, want 200", code)
	}
}

// TestSharedBlobWithoutOrigin: an entry recorded before a revocation
// with no origin (a replica that records none) opens nothing. Origins that
// do not name a standing decision are TestStandingOrigin's.
func TestSharedBlobWithoutOrigin(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	a := newSharedReplicaWith(t, mr, reg.srv.URL, pol, true, func(s SharedState) SharedState { return noOrigins{s} })
	b := newSharedReplicaWith(t, mr, reg.srv.URL, pol, true, nil)
	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("manifest on A = %d", code)
	}
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", img.layers[0])); code != http.StatusOK {
		t.Fatalf("blob on B before any revocation = %d, want 200", code)
	}
	addRevocation(t, b.p, Revocation{Digest: "sha256:" + strings.Repeat("e", 64), Reason: "unrelated", By: "sec"})
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", img.layers[1])); code != http.StatusForbidden {
		t.Errorf("blob of an entry without origin after a revocation = %d, want 403", code)
	}
}

// addRevocation puts r in force on p, as the admin API would.
func addRevocation(t *testing.T, p *Proxy, r Revocation) {
	t.Helper()
	if err := r.Normalize(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := p.Revocations().Add(r); err != nil {
		t.Fatal(err)
	}
}

// noOrigins records blobs without their origins.
type noOrigins struct{ SharedState }

func (n noOrigins) RecordBlobs(ctx context.Context, blobs map[string]int64, _ map[string]string, until time.Time) error {
	return n.SharedState.RecordBlobs(ctx, blobs, nil, until)
}

// TestStandingOrigin: an origin read from the shared state is parsed
// strictly and names a standing decision, or opens nothing.
func TestStandingOrigin(t *testing.T) {
	t.Parallel()
	vc := newMapVerdicts()
	p, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll(), WithVerdictCache(vc))
	manifest := "sha256:" + strings.Repeat("1", 64)
	key := strings.Repeat("a", 64)
	vc.Add(key, verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "images", Digest: manifest})
	denied := strings.Repeat("b", 64)
	vc.Add(denied, verify.Verdict{Allowed: false, Mode: verify.ModeEnforce, Boundary: "images", Digest: manifest})
	warned := strings.Repeat("c", 64)
	vc.Add(warned, verify.Verdict{Allowed: false, Mode: verify.ModeWarn, Boundary: "images", Digest: manifest})
	if src := p.standingOrigin(manifest + " " + key); src == nil || src.manifest != manifest || src.verdict.Digest != manifest {
		t.Fatalf("standing origin = %+v", src)
	}
	if src := p.standingOrigin(manifest + " " + warned); src != nil {
		t.Error("a warn-mode denial, served but never recorded as open, stands")
	}
	for name, o := range map[string]string{
		"no separator":       manifest + key,
		"bad digest":         "sha256:12 " + key,
		"short key":          manifest + " " + key[1:],
		"long key":           manifest + " " + key + "a",
		"uppercase key":      manifest + " " + strings.ToUpper(key),
		"two separators":     manifest + " " + key + " ",
		"unknown verdict":    manifest + " " + strings.Repeat("d", 64),
		"denied verdict":     manifest + " " + denied,
		"empty":              "",
		"key before digest":  key + " " + manifest,
		"digest of a number": "sha256:" + strings.Repeat("1", 63) + " " + key,
	} {
		if src := p.standingOrigin(o); src != nil {
			t.Errorf("%s: %q stands", name, o)
		}
	}
	addRevocation(t, p, Revocation{Digest: manifest, Reason: "poisoned", By: "sec"})
	// The verdict is purged by the revocation; put back, as by a
	// verification that raced it, it still does not stand.
	vc.Add(key, verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "images", Digest: manifest})
	if src := p.standingOrigin(manifest + " " + key); src != nil {
		t.Error("the origin of a revoked manifest stands")
	}
	other := strings.Repeat("e", 64)
	vc.Add(other, verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "images", Digest: "sha256:" + strings.Repeat("2", 64)})
	if src := p.standingOrigin(manifest + " " + other); src != nil {
		t.Error("a revoked manifest served on a standing verdict stands")
	}
	if src := p.standingOrigin("sha256:" + strings.Repeat("3", 64) + " " + other); src == nil {
		t.Error("an unrevoked manifest on a standing verdict does not stand")
	}
}

// fakeShared answers every coverage lookup with one entry, as a Redis
// holding whatever was planted there would.
type fakeShared struct {
	parent string
	v      verify.Verdict
	until  time.Time
}

func (f *fakeShared) RecordBlobs(context.Context, map[string]int64, map[string]string, time.Time) error {
	return nil
}
func (f *fakeShared) LookupBlob(context.Context, string) (int64, time.Time, bool, error) {
	return 0, time.Time{}, false, nil
}
func (f *fakeShared) BlobOrigin(context.Context, string) (string, bool) { return "", false }
func (f *fakeShared) RecordCoverage(context.Context, []string, string, verify.Verdict, time.Time) error {
	return nil
}
func (f *fakeShared) LookupCoverage(context.Context, string) (string, verify.Verdict, time.Time, bool) {
	return f.parent, f.v, f.until, true
}

// TestSharedCoverageLocalRules: coverage read from the shared state is
// taken only as an enforce-mode allow in a named boundary, about the index
// it names, still in force: anything else leaves the unsigned child to be
// denied on its own.
func TestSharedCoverageLocalRules(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, _ := acmePolicy(verify.ModeEnforce, t)
	child := reg.pushImage(t, "acme/app", "child")
	const parent = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	good := verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "images", Digest: parent, CheckedAt: time.Now()}
	with := func(f func(*verify.Verdict)) verify.Verdict { v := good; f(&v); return v }
	for _, tc := range []struct {
		name   string
		v      verify.Verdict
		parent string
		until  time.Time
		want   int
	}{
		{name: "enforce allow", v: good, parent: parent, until: time.Now().Add(time.Hour), want: http.StatusOK},
		{name: "warn", v: with(func(v *verify.Verdict) { v.Mode = verify.ModeWarn }), parent: parent, until: time.Now().Add(time.Hour), want: http.StatusForbidden},
		{name: "no boundary", v: with(func(v *verify.Verdict) { v.Boundary = "" }), parent: parent, until: time.Now().Add(time.Hour), want: http.StatusForbidden},
		{name: "other boundary", v: with(func(v *verify.Verdict) { v.Boundary = "models" }), parent: parent, until: time.Now().Add(time.Hour), want: http.StatusForbidden},
		{name: "verdict of another digest", v: good, parent: "sha256:2222222222222222222222222222222222222222222222222222222222222222", until: time.Now().Add(time.Hour), want: http.StatusForbidden},
		{name: "ended", v: good, parent: parent, until: time.Now().Add(-time.Second), want: http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol), WithSharedState(&fakeShared{parent: tc.parent, v: tc.v, until: tc.until}))
			if w := do(p, http.MethodGet, manifestPath("acme/app", child.digest.String())); w.Code != tc.want {
				t.Errorf("unsigned child = %d, want %d", w.Code, tc.want)
			}
		})
	}
}

// TestSharedStateLostIsWrittenAgain: Redis restarted without persistence
// (or flushed, or evicting) loses the entries of a manifest A served
// lately. A notices through the shared state's epoch and writes them
// again on its next pull, instead of trusting that it wrote them: B then
// serves the blob. Without that, the original multi-replica denial comes
// back for a quarter of the gating TTL.
func TestSharedStateLostIsWrittenAgain(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	a := newSharedReplica(t, mr, reg.srv.URL, pol)
	b := newSharedReplica(t, mr, reg.srv.URL, pol)
	if code, _ := a.do(http.MethodGet, manifestPath("acme/app", "v1")); code != http.StatusOK {
		t.Fatalf("signed manifest on A = %d", code)
	}
	// Let A see the marker once, then lose everything.
	deadline := time.Now().Add(10 * time.Second)
	for mr.Exists(sharedPrefix+"v1:epoch") == false && time.Now().Before(deadline) {
		a.do(http.MethodGet, manifestPath("acme/app", "v1"))
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the check that set the marker has recorded it
	mr.FlushAll()
	layer := img.layers[0]
	if code, _ := b.do(http.MethodGet, blobPath("acme/app", layer)); code != http.StatusForbidden {
		t.Fatalf("blob on B right after the flush = %d, want 403 (nothing shared)", code)
	}
	served := false
	for time.Now().Before(deadline) && !served {
		a.do(http.MethodGet, manifestPath("acme/app", "v1"))
		code, body := b.do(http.MethodGet, blobPath("acme/app", layer))
		served = code == http.StatusOK && sameBytes(body, layer)
		time.Sleep(100 * time.Millisecond)
	}
	if !served {
		t.Error("after Redis lost its entries, A's warm pulls never wrote them again: B still denies the blob")
	}
}
