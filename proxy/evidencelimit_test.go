package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// TestEvidenceBudgetDenialThroughTheProxy stuffs a repository with bundles
// an untrusted key signed, each padded to 32 KiB, under a 96 KiB evidence
// budget. The pull is denied with the budget named, counted once per
// verification (not per request its cached denial answers) and never
// served; the one trusted signature listed after the stuffing is never
// reached.
func TestEvidenceBudgetDenialThroughTheProxy(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	const repo = "acme/stuffed"
	img := reg.pushImage(t, repo, "v1")
	trusted, stranger := newKey(t), newKey(t)
	pad := strings.Repeat("x", 32<<10)
	for i := 0; i < 8; i++ {
		spec := fixtures.BundleSpec{PredicateType: "https://example.com/padding/v1", Predicate: map[string]any{"pad": pad, "i": i}}
		if _, err := fixtures.AttachBundle(context.Background(), reg.ref(t, repo, img.digest), stranger, spec); err != nil {
			t.Fatal(err)
		}
	}
	pol := verify.Policy{Boundaries: []verify.Boundary{{
		Name: "images", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", trusted)},
	}}}
	eng, err := verify.New(pol, verify.WithEvidenceLimits(verify.EvidenceLimits{
		TotalBytes: 96 << 10, SignatureBytes: 64 << 10, AttestationBytes: 64 << 10, PredicateDepth: 16,
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithVerdictCache(newMapVerdicts()))
	for i := 0; i < 3; i++ {
		w := do(p, http.MethodGet, manifestPath(repo, "v1"))
		if w.Code != http.StatusForbidden {
			t.Fatalf("stuffed subject = %d: %s", w.Code, w.Body)
		}
		if msg, _ := deniedBody(t, w); !strings.Contains(msg, "evidence budget exceeded") {
			t.Fatalf("denial %q does not name the evidence budget", msg)
		}
	}
	if got := counterValue(t, p, "portcullis_limit_exceeded_total", map[string]string{"limit": verify.LimitEvidenceBytes}); got != 1 {
		t.Errorf("limit_exceeded{evidence_bytes} = %v, want 1 (one verification, two cached answers)", got)
	}
	if d := lastDecision(t, p, img.digest); d.Decision != "deny" {
		t.Errorf("decision = %+v", d)
	}
}

// pushDeclared pushes, under tag ("" by digest only), a manifest shaped
// as evidence of subject (a bundle's artifact type, in-toto layers) whose
// config and layers declare the sizes given: the proxy decides on what a
// manifest declares, so the blobs need not exist.
func pushDeclared(t *testing.T, reg *upstreamRegistry, repo, tag string, subject v1.Descriptor, configSize int64, layerSizes ...int64) v1.Hash {
	t.Helper()
	var layers []v1.Descriptor
	for i, n := range layerSizes {
		layers = append(layers, v1.Descriptor{MediaType: fixtures.MediaTypeInToto, Digest: sha([]byte(fmt.Sprintf("layer %d of %d", i, n))), Size: n})
	}
	raw, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     string(types.OCIManifestSchema1),
		"artifactType":  fixtures.MediaTypeBundleV03,
		"config":        v1.Descriptor{MediaType: fixtures.MediaTypeEmpty, Digest: sha([]byte(fmt.Sprint("config ", configSize))), Size: configSize},
		"layers":        layers,
		"subject":       subject,
	})
	if err != nil {
		t.Fatal(err)
	}
	return reg.putRaw(t, repo, tag, raw)
}

// TestServedEvidenceBytes: evidence is served unsigned, by digest, whatever
// its layers hold, so a model's weights pushed as "evidence" of a signed
// image must not be served by digest as evidence; within the bound real
// evidence still is.
func TestServedEvidenceBytes(t *testing.T) {
	t.Parallel()
	e := newEvidenceEnv(t)
	reg, k, img, imgDesc := e.reg, e.k, e.img, e.imgDesc
	const repo = evidenceRepo
	tooLarge := "evidence of " + img.digest.String() + " is served only up to"
	newProxy := func(t *testing.T, opts ...Option) *Proxy {
		p, _ := e.proxy(t, opts...)
		return p
	}
	denied := func(t *testing.T, p *Proxy, method, ref, want string) {
		t.Helper()
		e.denied(t, p, method, ref, want)
	}
	saysWhy := func(t *testing.T, p *Proxy, d v1.Hash) {
		t.Helper()
		e.notEvidence(t, p, d, tooLarge)
	}

	t.Run("weights dressed as evidence, by digest", func(t *testing.T) {
		p := newProxy(t)
		d := pushDeclared(t, reg, repo, "", imgDesc, 2, 2<<30)
		want := fmt.Sprintf("%s %d bytes (limits.served_evidence_bytes), and this manifest's config and layers declare %d", tooLarge, DefaultServedEvidenceBytes, 2<<30+2)
		denied(t, p, http.MethodGet, d.String(), want)
		saysWhy(t, p, d)
		// Again with the denial cached (no bytes in hand), and by HEAD.
		denied(t, p, http.MethodGet, d.String(), want)
		denied(t, p, http.MethodHead, d.String(), "")
		saysWhy(t, p, d)
		// The layer's digest names bytes the upstream has: gating, not
		// their absence, keeps them.
		layer := []byte(fmt.Sprintf("layer %d of %d", 0, 2<<30))
		r, err := name.NewRepository(reg.host+"/"+repo, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(r, static.NewLayer(layer, fixtures.MediaTypeInToto)); err != nil {
			t.Fatal(err)
		}
		if w := do(p, http.MethodGet, blobPath(repo, sha(layer))); w.Code != http.StatusForbidden {
			t.Errorf("its layer = %d, want 403", w.Code)
		}
		if got := counterValue(t, p, "portcullis_limit_exceeded_total", map[string]string{"limit": "served_evidence_bytes"}); got != 1 {
			t.Errorf("limit_exceeded{served_evidence_bytes} = %v, want 1 (examined once, then the cached denial)", got)
		}
	})

	t.Run("resolved first by HEAD", func(t *testing.T) {
		p := newProxy(t)
		d := pushDeclared(t, reg, repo, "", imgDesc, 2, 3<<30)
		denied(t, p, http.MethodHead, d.String(), "")
		saysWhy(t, p, d)
	})

	t.Run("sizes that overflow when added", func(t *testing.T) {
		p := newProxy(t)
		// Added in int64 these come to 6 bytes.
		d := pushDeclared(t, reg, repo, "", imgDesc, 2, math.MaxInt64, math.MaxInt64, 4)
		denied(t, p, http.MethodGet, d.String(), fmt.Sprintf("declare %d", int64(math.MaxInt64)))
	})

	t.Run("weights in the config", func(t *testing.T) {
		p := newProxy(t)
		d := pushDeclared(t, reg, repo, "", imgDesc, 1<<30, 100)
		denied(t, p, http.MethodGet, d.String(), tooLarge)
	})

	t.Run("under cosign's tag", func(t *testing.T) {
		p := newProxy(t)
		pushDeclared(t, reg, repo, sigTag(img.digest, ".att"), imgDesc, 2, 256<<20)
		denied(t, p, http.MethodGet, sigTag(img.digest, ".att"), tooLarge)
	})

	t.Run("the bound is inclusive", func(t *testing.T) {
		// Real evidence (its bytes are checked too): {} and a statement of
		// 1000 bytes, 1002 declared.
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, statementOfSize(t, 1000), &imgDesc)
		at := newProxy(t, WithServedEvidenceBytes(1002))
		if w := do(at, http.MethodGet, manifestPath(repo, a.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("at the bound = %d, want 200 as evidence: %s", w.Code, w.Body)
		}
		if got := lastDecision(t, at, a.digest); got.EvidenceOf != img.digest.String() {
			t.Errorf("at the bound: decision = %+v, want evidence of the image", got)
		}
		below := newProxy(t, WithServedEvidenceBytes(1001))
		denied(t, below, http.MethodGet, a.digest.String(), "declare 1002")
		saysWhy(t, below, a.digest)
	})

	t.Run("an empty layer is refused for its bytes, not its size", func(t *testing.T) {
		p := newProxy(t)
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, nil, &imgDesc)
		denied(t, p, http.MethodGet, a.digest.String(), "is not a document of "+fixtures.MediaTypeInToto+": not a JSON object")
	})

	t.Run("an empty config is refused for its bytes, not its size", func(t *testing.T) {
		p := newProxy(t)
		d := pushWithConfig(t, reg, repo, fixtures.MediaTypeEmpty, nil, fixtures.MediaTypeInToto, []byte(shapeStatement), imgDesc)
		denied(t, p, http.MethodGet, d.String(), "its config "+sha(nil).String()+" is not a document of "+fixtures.MediaTypeEmpty)
	})

	t.Run("signed on its own, it is served as content", func(t *testing.T) {
		p := newProxy(t)
		d := pushDeclared(t, reg, repo, "", imgDesc, 2, 2<<30)
		reg.sign(t, repo, d, k)
		if w := do(p, http.MethodGet, manifestPath(repo, d.String())); w.Code != http.StatusOK {
			t.Fatalf("signed = %d, want 200: %s", w.Code, w.Body)
		}
		if got := lastDecision(t, p, d); got.EvidenceOf != "" || got.Decision != "allow" {
			t.Errorf("decision = %+v, want its own allow", got)
		}
	})

	t.Run("bound must be positive", func(t *testing.T) {
		for _, n := range []int64{0, -1} {
			var o options
			if err := WithServedEvidenceBytes(n)(&o); err == nil || o.servedEvidenceBytes != 0 {
				t.Errorf("WithServedEvidenceBytes(%d) accepted: %d", n, o.servedEvidenceBytes)
			}
		}
		var o options
		if err := WithServedEvidenceBytes(1)(&o); err != nil || o.servedEvidenceBytes != 1 {
			t.Errorf("WithServedEvidenceBytes(1) = %v, %d", err, o.servedEvidenceBytes)
		}
	})
}

// statementOfSize is an in-toto statement about nothing, padded with
// spaces to exactly n bytes.
func statementOfSize(t *testing.T, n int) []byte {
	t.Helper()
	b := []byte(shapeStatement)
	if len(b) > n {
		t.Fatalf("a statement takes %d bytes, more than %d", len(b), n)
	}
	return append(b, strings.Repeat(" ", n-len(b))...)
}

// evidenceRepo is where evidenceEnv's image and its evidence are.
const evidenceRepo = "acme/app"

// evidenceEnv is a registry holding a signed image in evidenceRepo, and
// the key that signed it.
type evidenceEnv struct {
	reg     *upstreamRegistry
	k       *fixtures.KeySigner
	img     pushed
	imgDesc v1.Descriptor
}

func newEvidenceEnv(t *testing.T) *evidenceEnv {
	t.Helper()
	e := &evidenceEnv{reg: newRegistry(t), k: newKey(t)}
	e.img = e.reg.pushImage(t, evidenceRepo, "v1")
	e.reg.sign(t, evidenceRepo, e.img.digest, e.k)
	e.imgDesc = e.reg.describe(t, evidenceRepo, e.img.digest)
	return e
}

// proxy is a proxy whose policy allows the image (which it has served)
// and serves its evidence.
func (e *evidenceEnv) proxy(t *testing.T, opts ...Option) (*Proxy, *spy) {
	t.Helper()
	p, s := newTestProxy(t, e.reg.srv.URL, newEngineSpy(t, evidencePolicy(e.k)), append([]Option{WithVerdictCache(newMapVerdicts())}, opts...)...)
	if w := do(p, http.MethodGet, manifestPath(evidenceRepo, "v1")); w.Code != http.StatusOK {
		t.Fatalf("signed image = %d: %s", w.Code, w.Body)
	}
	return p, s
}

// denied requires method on ref to be 403 and, for a GET, its body to
// hold each of wants.
func (e *evidenceEnv) denied(t *testing.T, p *Proxy, method, ref string, wants ...string) {
	t.Helper()
	w := do(p, method, manifestPath(evidenceRepo, ref))
	if w.Code != http.StatusForbidden {
		t.Fatalf("%s %s = %d, want 403: %s", method, ref, w.Code, w.Body)
	}
	for _, want := range wants {
		if method == http.MethodGet && !strings.Contains(w.Body.String(), want) {
			t.Errorf("%s denied with %s, want %q", ref, w.Body, want)
		}
	}
}

// notEvidence requires d's last decision to be a denial that is not
// evidence, with a reason holding why.
func (e *evidenceEnv) notEvidence(t *testing.T, p *Proxy, d v1.Hash, why string) {
	t.Helper()
	got := lastDecision(t, p, d)
	if got.EvidenceOf != "" || got.Decision != "deny" || !slices.ContainsFunc(got.Reasons, func(r string) bool { return strings.Contains(r, why) }) {
		t.Errorf("decision = %+v, want a denial that is not evidence and says %q", got, why)
	}
}
