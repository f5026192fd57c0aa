package proxy

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// twoBoundaries is the pattern of models needing more evidence than
// everything else in the same repositories: ModelPack models need a
// signature and a SLSA provenance, anything else only a signature.
func twoBoundaries(k *fixtures.KeySigner, imagesMode verify.Mode) verify.Policy {
	return verify.Policy{Boundaries: []verify.Boundary{
		{
			Name: "models", Repositories: []string{"**"}, ArtifactTypes: []string{fixtures.MediaTypeModelManifest},
			Mode: verify.ModeEnforce, Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)},
			Attestations: []verify.AttestationRule{provenanceRule("release")},
		},
		{
			Name: "images", Repositories: []string{"**"}, Mode: imagesMode, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("release", k)},
		},
	}}
}

// TestIndexDoesNotCoverChildOfAnotherBoundary lists, in one signed index,
// an unsigned model without provenance, a model with both, and an unsigned
// image. The index's signature is all the "images" boundary asks, but the
// models fall in the "models" boundary by their own artifact type and are
// decided there: the unsigned one, and its weights, are not served.
func TestIndexDoesNotCoverChildOfAnotherBoundary(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	const repo = "acme/bundle"
	bare := reg.pushModel(t, repo, "bare", "unsigned weights")
	proven := reg.pushModel(t, repo, "proven", "signed weights")
	reg.attachProvenance(t, repo, proven.desc.Digest, k)
	img := reg.pushImage(t, repo, "img")
	idx := reg.pushRawIndex(t, repo, "v1", bare.desc, proven.desc, reg.describe(t, repo, img.digest))
	reg.sign(t, repo, idx, k)

	v := newEngineSpy(t, twoBoundaries(k, verify.ModeEnforce))
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))

	if w := do(p, http.MethodGet, manifestPath(repo, "v1")); w.Code != http.StatusOK {
		t.Fatalf("signed index = %d: %s", w.Code, w.Body)
	}
	if d := lastDecision(t, p, idx); d.Decision != "allow" || d.Boundary != "images" {
		t.Fatalf("index decision = %+v, want allow in images", d)
	}

	w := do(p, http.MethodGet, manifestPath(repo, bare.desc.Digest.String()))
	msg, detail := deniedBody(t, w)
	if !strings.Contains(msg, `denied by boundary "models"`) || detail["boundary"] != "models" {
		t.Errorf("unsigned model denied with %q (detail %v), want the models boundary", msg, detail)
	}
	if bytes.Contains(w.Body.Bytes(), []byte(fixtures.MediaTypeModelConfig)) {
		t.Error("the denial carries the model's manifest")
	}
	if d := lastDecision(t, p, bare.desc.Digest); d.CoveredBy != "" || d.Decision != "deny" {
		t.Errorf("unsigned model decision = %+v, want its own denial", d)
	}
	if v.callsFor(bare.desc.Digest) != 1 {
		t.Errorf("unsigned model verified %d times, want once on its own", v.callsFor(bare.desc.Digest))
	}
	if w := do(p, http.MethodGet, blobPath(repo, bare.weights[0])); w.Code != http.StatusForbidden {
		t.Errorf("weights of the unsigned model = %d, want 403", w.Code)
	}
	if w := do(p, http.MethodHead, manifestPath(repo, bare.desc.Digest.String())); w.Code != http.StatusForbidden {
		t.Errorf("HEAD of the unsigned model = %d, want 403", w.Code)
	}

	// A model with its own evidence is served, on its own verdict.
	if w := do(p, http.MethodGet, manifestPath(repo, proven.desc.Digest.String())); w.Code != http.StatusOK {
		t.Fatalf("model with provenance = %d: %s", w.Code, w.Body)
	}
	if d := lastDecision(t, p, proven.desc.Digest); d.CoveredBy != "" || d.Boundary != "models" {
		t.Errorf("model with provenance decision = %+v, want its own allow in models", d)
	}
	if w := do(p, http.MethodGet, blobPath(repo, proven.weights[0])); w.Code != http.StatusOK {
		t.Errorf("weights of the allowed model = %d", w.Code)
	}

	// The image is in the index's boundary: served on the index's verdict.
	calls := v.calls.Load()
	w = do(p, http.MethodGet, manifestPath(repo, img.digest.String()))
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), img.raw) {
		t.Fatalf("image child = %d: %s", w.Code, w.Body)
	}
	if d := lastDecision(t, p, img.digest); d.CoveredBy != idx.String() || d.Boundary != "images" {
		t.Errorf("image child decision = %+v, want covered by %s", d, idx)
	}
	if v.calls.Load() != calls {
		t.Error("the covered image was verified again")
	}
}

// TestWarnIndexCoversNothing serves an index in a warn boundary (unsigned:
// served with a would-be denial; signed: allowed, still in warn mode). No
// warn-mode verdict covers anything: each child is decided on its own, so
// a model in an enforce boundary is denied and an image reports its own
// would-be denial.
func TestWarnIndexCoversNothing(t *testing.T) {
	t.Parallel()
	for _, signed := range []bool{false, true} {
		t.Run(map[bool]string{false: "unsigned index", true: "signed index"}[signed], func(t *testing.T) {
			t.Parallel()
			reg := newRegistry(t)
			k := newKey(t)
			const repo = "acme/bundle"
			bare := reg.pushModel(t, repo, "bare", "unsigned weights")
			img := reg.pushImage(t, repo, "img")
			idx := reg.pushRawIndex(t, repo, "v1", bare.desc, reg.describe(t, repo, img.digest))
			want := "warn"
			if signed {
				reg.sign(t, repo, idx, k)
				want = "allow"
			}
			v := newEngineSpy(t, twoBoundaries(k, verify.ModeWarn))
			p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()))

			if w := do(p, http.MethodGet, manifestPath(repo, "v1")); w.Code != http.StatusOK {
				t.Fatalf("index in a warn boundary = %d: %s", w.Code, w.Body)
			}
			if d := lastDecision(t, p, idx); d.Decision != want || d.Mode != verify.ModeWarn {
				t.Fatalf("index decision = %+v, want %s in warn mode", d, want)
			}
			w := do(p, http.MethodGet, manifestPath(repo, bare.desc.Digest.String()))
			if msg, _ := deniedBody(t, w); !strings.Contains(msg, `denied by boundary "models"`) {
				t.Errorf("model denied with %q, want the models boundary", msg)
			}
			if w := do(p, http.MethodGet, blobPath(repo, bare.weights[0])); w.Code != http.StatusForbidden {
				t.Errorf("weights of the denied model = %d", w.Code)
			}
			if w := do(p, http.MethodGet, manifestPath(repo, img.digest.String())); w.Code != http.StatusOK {
				t.Fatalf("image in the warn boundary = %d", w.Code)
			}
			d := lastDecision(t, p, img.digest)
			if d.CoveredBy != "" || d.Decision != "warn" || len(d.Reasons) == 0 {
				t.Errorf("image decision = %+v, want its own would-be denial", d)
			}
			if v.callsFor(img.digest) != 1 {
				t.Errorf("image verified %d times, want once on its own", v.callsFor(img.digest))
			}
		})
	}
}

// coverageEnv is a signed index of unsigned images in the "images"
// boundary, pushed identically to two repositories and signed only in
// the first.
type coverageEnv struct {
	reg      *upstreamRegistry
	key      *fixtures.KeySigner
	v        *engineSpy
	p        *Proxy
	idx      v1.Hash
	children []pushed
}

const (
	coveredRepo = "acme/multi"
	otherRepo   = "acme/copy"
)

func newCoverageEnv(t *testing.T, opts ...Option) *coverageEnv {
	t.Helper()
	reg := newRegistry(t)
	ii, err := random.Index(512, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	var idx pushed
	var kids []pushed
	for _, repo := range []string{coveredRepo, otherRepo} {
		idx, kids = reg.writeIndex(t, ii, repo, "v1")
	}
	k := newKey(t)
	reg.sign(t, coveredRepo, idx.digest, k)
	v := newEngineSpy(t, twoBoundaries(k, verify.ModeEnforce))
	p, _ := newTestProxy(t, reg.srv.URL, v, append([]Option{WithVerdictCache(newMapVerdicts())}, opts...)...)
	if w := do(p, http.MethodGet, manifestPath(coveredRepo, "v1")); w.Code != http.StatusOK {
		t.Fatalf("signed index = %d: %s", w.Code, w.Body)
	}
	return &coverageEnv{reg: reg, key: k, v: v, p: p, idx: idx.digest, children: kids}
}

// TestIndexCoversChildOfItsBoundary serves the children of an allowed index
// in the same boundary on the index's verdict: no second verification and
// no evidence fetched for them.
func TestIndexCoversChildOfItsBoundary(t *testing.T) {
	t.Parallel()
	e := newCoverageEnv(t)
	calls := e.v.calls.Load()
	for _, c := range e.children {
		w := do(e.p, http.MethodGet, manifestPath(coveredRepo, c.digest.String()))
		if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), c.raw) {
			t.Fatalf("covered child = %d: %s", w.Code, w.Body)
		}
		// Covered is its own source: not a cache hit, not a verification.
		if d := lastDecision(t, e.p, c.digest); d.CoveredBy != e.idx.String() || d.Decision != "allow" || d.Boundary != "images" || d.Cached {
			t.Errorf("child decision = %+v, want allow covered by %s, not cached", d, e.idx)
		}
		if w := do(e.p, http.MethodGet, blobPath(coveredRepo, c.layers[0])); w.Code != http.StatusOK {
			t.Errorf("blob of a covered child = %d", w.Code)
		}
	}
	if got := e.v.calls.Load(); got != calls {
		t.Errorf("covered children were verified: %d Verify calls, want %d", got, calls)
	}
	labels := map[string]string{"boundary": "images", "decision": "allow", "source": "coverage"}
	if got := counterValue(t, e.p, "portcullis_decisions_total", labels); got != float64(len(e.children)) {
		t.Errorf("decisions{source=coverage} = %v, want %d", got, len(e.children))
	}

}

// TestCoverageIsScopedLikeTheVerdict requests the children of a served
// index where its verdict does not hold: in another repository holding the
// same digests, and after the policy changed (the signing key rotated).
// Each time the children are decided on their own, and denied.
func TestCoverageIsScopedLikeTheVerdict(t *testing.T) {
	t.Parallel()
	t.Run("another repository", func(t *testing.T) {
		t.Parallel()
		e := newCoverageEnv(t)
		c := e.children[0]
		w := do(e.p, http.MethodGet, manifestPath(otherRepo, c.digest.String()))
		if msg, _ := deniedBody(t, w); !strings.Contains(msg, `denied by boundary "images"`) {
			t.Errorf("child in another repository denied with %q", msg)
		}
		if d := lastDecision(t, e.p, c.digest); d.CoveredBy != "" || d.Repository != otherRepo {
			t.Errorf("decision = %+v, want the child's own in %s", d, otherRepo)
		}
		if w := do(e.p, http.MethodGet, blobPath(otherRepo, c.layers[0])); w.Code != http.StatusForbidden {
			t.Errorf("blob of the child in another repository = %d", w.Code)
		}
		// Still covered where the index was served.
		if w := do(e.p, http.MethodGet, manifestPath(coveredRepo, c.digest.String())); w.Code != http.StatusOK {
			t.Errorf("child in the index's repository = %d", w.Code)
		}
	})
	t.Run("policy changed", func(t *testing.T) {
		t.Parallel()
		e := newCoverageEnv(t)
		e.v.swap(t, twoBoundaries(newKey(t), verify.ModeEnforce))
		c := e.children[0]
		calls := e.v.callsFor(c.digest)
		deniedBody(t, do(e.p, http.MethodGet, manifestPath(coveredRepo, c.digest.String())))
		if e.v.callsFor(c.digest) != calls+1 {
			t.Error("the child was not verified under the new policy")
		}
		if d := lastDecision(t, e.p, c.digest); d.CoveredBy != "" {
			t.Errorf("decision = %+v, covered across a policy change", d)
		}
	})
}

// TestCoverageEndsWithTheVerdict moves the clock past the coverage TTL:
// the children are then decided on their own. Serving the index again
// from a verdict decided before does not renew the coverage either.
func TestCoverageEndsWithTheVerdict(t *testing.T) {
	t.Parallel()
	const ttl = time.Minute
	e := newCoverageEnv(t, WithCoverageTTL(ttl))
	c := e.children[0]
	path := manifestPath(coveredRepo, c.digest.String())
	if w := do(e.p, http.MethodGet, path); w.Code != http.StatusOK {
		t.Fatalf("covered child = %d", w.Code)
	}
	later := time.Now().Add(ttl + time.Second)
	e.p.coverage.now = func() time.Time { return later }
	deniedBody(t, do(e.p, http.MethodGet, path))
	if d := lastDecision(t, e.p, c.digest); d.CoveredBy != "" {
		t.Errorf("decision after the TTL = %+v, still covered", d)
	}

	if w := do(e.p, http.MethodGet, manifestPath(coveredRepo, "v1")); w.Code != http.StatusOK {
		t.Fatalf("index again = %d", w.Code)
	}
	if d := lastDecision(t, e.p, e.idx); !d.Cached {
		t.Fatalf("index decision = %+v, want the cached verdict", d)
	}
	deniedBody(t, do(e.p, http.MethodGet, manifestPath(coveredRepo, e.children[1].digest.String())))
}

func TestCoverageTTLOption(t *testing.T) {
	t.Parallel()
	if _, err := New([]Upstream{{Name: "docker.io", URL: "https://registry-1.docker.io"}}, allowAll(), WithCoverageTTL(-time.Second)); err == nil {
		t.Error("a negative coverage TTL was accepted")
	}
	e := newCoverageEnv(t, WithCoverageTTL(0))
	deniedBody(t, do(e.p, http.MethodGet, manifestPath(coveredRepo, e.children[0].digest.String())))
}

// TestVerdictKeyIncludesFingerprint changes the policy fingerprint between
// two pulls of one digest: the cached verdict of the old policy is not
// used.
func TestVerdictKeyIncludesFingerprint(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	v := allowAll()
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()))
	target := manifestPath("acme/app", img.digest.String())
	for range 2 {
		if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
			t.Fatalf("GET = %d", w.Code)
		}
	}
	if v.calls.Load() != 1 {
		t.Fatalf("Verify calls = %d, want 1 (the second from the cache)", v.calls.Load())
	}
	v.setFingerprint("another-policy")
	if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
		t.Fatalf("GET = %d", w.Code)
	}
	if v.calls.Load() != 2 {
		t.Errorf("Verify calls = %d after the fingerprint changed, want 2", v.calls.Load())
	}
	a := verdictKey("a", "docker.io", "acme/app", img.digest)
	for _, k := range []string{
		verdictKey("b", "docker.io", "acme/app", img.digest),
		verdictKey("a", "ghcr.io", "acme/app", img.digest),
		verdictKey("a", "docker.io", "acme/other", img.digest),
		verdictKey("a", "docker.io", "acme/app", sha([]byte("x"))),
	} {
		if k == a {
			t.Error("two verdict scopes share a key")
		}
	}
}

// lyingManifests wraps the upstream client and hands out other bytes than
// the ones it checked for the digests in lie.
type lyingManifests struct {
	manifestGetter
	lie map[v1.Hash]bool
}

func (l lyingManifests) GetManifest(ctx context.Context, repo, ref string, accept []string) (verify.Manifest, error) {
	m, err := l.manifestGetter.GetManifest(ctx, repo, ref, accept)
	if err == nil && l.lie[m.Digest] {
		m.Bytes = append(bytes.Clone(m.Bytes), '\n')
	}
	return m, err
}

func lieAbout(p *Proxy, upstreamName string, ds ...v1.Hash) {
	u := p.router.byKey[upstreamName]
	l := lyingManifests{manifestGetter: u.manifests, lie: map[v1.Hash]bool{}}
	for _, d := range ds {
		l.lie[d] = true
	}
	u.manifests = l
}

// TestDigestMismatchBeforeServingIsDenied makes the bytes about to be served
// differ from their digest: the answer is a recorded fail-closed denial,
// never the bytes and never a 5xx that would send the client elsewhere.
func TestDigestMismatchBeforeServingIsDenied(t *testing.T) {
	t.Parallel()
	t.Run("verified manifest", func(t *testing.T) {
		t.Parallel()
		reg := newRegistry(t)
		img := reg.pushImage(t, "acme/app", "v1")
		mc := newMapManifests()
		p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithVerdictCache(newMapVerdicts()), WithManifestCache(mc))
		lieAbout(p, "docker.io", img.digest)
		for _, ref := range []string{img.digest.String(), "v1"} {
			w := do(p, http.MethodGet, manifestPath("acme/app", ref))
			checkMismatchDenied(t, p, w, img.digest)
		}
		if _, ok := mc.Get(img.digest.String()); ok {
			t.Error("mismatching bytes were kept in the manifest cache")
		}
		if w := do(p, http.MethodGet, blobPath("acme/app", img.layers[0])); w.Code != http.StatusForbidden {
			t.Errorf("blob of the refused manifest = %d", w.Code)
		}
	})
	t.Run("covered child", func(t *testing.T) {
		t.Parallel()
		reg := newRegistry(t)
		idx, kids := reg.pushIndex(t, "acme/multi", "v1")
		p, _ := newTestProxy(t, reg.srv.URL, allowAll())
		lieAbout(p, "docker.io", kids[0].digest)
		if w := do(p, http.MethodGet, manifestPath("acme/multi", idx.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("index = %d", w.Code)
		}
		checkMismatchDenied(t, p, do(p, http.MethodGet, manifestPath("acme/multi", kids[0].digest.String())), kids[0].digest)
	})
}

func checkMismatchDenied(t *testing.T, p *Proxy, w *httptest.ResponseRecorder, d v1.Hash) {
	t.Helper()
	msg, detail := deniedBody(t, w)
	if !strings.Contains(msg, "fail closed") || detail["reason_code"] != "digest" {
		t.Errorf("denial %q (detail %v), want a fail-closed digest refusal", msg, detail)
	}
	if w.Header().Get("Docker-Content-Digest") != "" {
		t.Error("the refusal carries Docker-Content-Digest")
	}
	dec := lastDecision(t, p, d)
	if dec.Decision != "deny" || len(dec.Reasons) != 1 || !strings.Contains(dec.Reasons[0], "do not match") {
		t.Errorf("decision = %+v, want a recorded denial", dec)
	}
	if got := counterValue(t, p, "portcullis_verification_errors_total", map[string]string{"reason": "digest"}); got == 0 {
		t.Error("the refusal is not counted")
	}
}
