package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// evArtifact is an OCI 1.1 artifact manifest pushed by pushArtifact.
type evArtifact struct {
	digest v1.Hash
	raw    []byte
	layer  v1.Hash
}

// pushArtifact pushes an OCI manifest with an empty config and one layer
// of layerType holding content, with artifactType and subject when given,
// under tag ("" pushes it by digest only).
func (u *upstreamRegistry) pushArtifact(t testing.TB, repo, tag, artifactType, layerType string, content []byte, subject *v1.Descriptor) evArtifact {
	t.Helper()
	r, err := name.NewRepository(u.host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	empty := static.NewLayer([]byte("{}"), fixtures.MediaTypeEmpty)
	layer := static.NewLayer(content, types.MediaType(layerType))
	for _, l := range []v1.Layer{empty, layer} {
		if err := remote.WriteLayer(r, l); err != nil {
			t.Fatal(err)
		}
	}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     string(types.OCIManifestSchema1),
		"config":        v1.Descriptor{MediaType: fixtures.MediaTypeEmpty, Digest: sha([]byte("{}")), Size: 2},
		"layers":        []v1.Descriptor{{MediaType: types.MediaType(layerType), Digest: sha(content), Size: int64(len(content))}},
	}
	if artifactType != "" {
		m["artifactType"] = artifactType
	}
	if subject != nil {
		m["subject"] = subject
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return evArtifact{digest: u.putRaw(t, repo, tag, raw), raw: raw, layer: sha(content)}
}

// putRaw pushes the manifest raw as it is, under tag ("" pushes it by
// digest only), and returns its digest.
func (u *upstreamRegistry) putRaw(t testing.TB, repo, tag string, raw []byte) v1.Hash {
	t.Helper()
	r, err := name.NewRepository(u.host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	d := sha(raw)
	ref := name.Reference(r.Digest(d.String()))
	if tag != "" {
		ref = r.Tag(tag)
	}
	if err := remote.Put(ref, rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
	return d
}

// legacySig reads the layer of cosign's sha256-<hex>.sig manifest of d.
func (u *upstreamRegistry) legacySig(t testing.TB, repo string, d v1.Hash) (manifest v1.Hash, raw []byte, layer v1.Hash) {
	t.Helper()
	ref, err := name.NewTag(u.host+"/"+repo+":"+sigTag(d, ".sig"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = img.RawManifest()
	m, err := img.Manifest()
	if err != nil || len(m.Layers) == 0 {
		t.Fatalf("no .sig layers: %v", err)
	}
	return sha(raw), raw, m.Layers[0].Digest
}

func sigTag(d v1.Hash, suffix string) string { return "sha256-" + d.Hex + suffix }

func signLegacy(t testing.TB, u *upstreamRegistry, repo string, d v1.Hash, k fixtures.Signer) {
	t.Helper()
	if err := fixtures.AttachLegacySignature(context.Background(), u.ref(t, repo, d), k, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
}

func evidencePolicy(k *fixtures.KeySigner) verify.Policy {
	return verify.Policy{Boundaries: []verify.Boundary{{
		Name: "images", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", k)},
	}}}
}

// TestEvidenceOfAllowedSubjectIsServed reads an allowed image's signatures
// the way cosign does: the legacy .sig tag (then by digest), and a sigstore
// bundle referrer by digest, each with its blob. Each is served with the
// decision "evidence-of <digest>"; none is verified as content.
func TestEvidenceOfAllowedSubjectIsServed(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	const repo = "acme/app"
	img := reg.pushImage(t, repo, "v1")
	signLegacy(t, reg, repo, img.digest, k)
	bundle, err := fixtures.AttachBundle(context.Background(), reg.ref(t, repo, img.digest), k, fixtures.BundleSpec{})
	if err != nil {
		t.Fatal(err)
	}
	sigDigest, sigRaw, sigLayer := reg.legacySig(t, repo, img.digest)

	v := newEngineSpy(t, evidencePolicy(k))
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))

	w := do(p, http.MethodGet, manifestPath(repo, sigTag(img.digest, ".sig")))
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), sigRaw) {
		t.Fatalf(".sig = %d: %s", w.Code, w.Body)
	}
	d := lastDecision(t, p, sigDigest)
	if d.Decision != "allow" || d.EvidenceOf != img.digest.String() || !slices.Contains(d.Reasons, "evidence-of "+img.digest.String()) {
		t.Errorf(".sig decision = %+v, want allow as evidence of %s", d, img.digest)
	}
	if v.callsFor(sigDigest) != 0 {
		t.Error("the .sig manifest was verified as content")
	}
	if got := testutil.ToFloat64(p.metrics.decisions.WithLabelValues("images", "allow", "enforce", "evidence")); got != 1 {
		t.Errorf("decisions{source=evidence} = %v, want 1", got)
	}
	if w := do(p, http.MethodGet, blobPath(repo, sigLayer)); w.Code != http.StatusOK {
		t.Errorf(".sig layer = %d, want 200 (evidence opens its blobs)", w.Code)
	}
	// Fetched again by digest, it is still known as evidence.
	if w := do(p, http.MethodHead, manifestPath(repo, sigDigest.String())); w.Code != http.StatusOK {
		t.Errorf("HEAD .sig by digest = %d", w.Code)
	}
	if v.callsFor(sigDigest) != 0 {
		t.Error("the .sig manifest was verified as content when fetched by digest")
	}

	// A bundle referrer names its subject: evidence by digest alone.
	w = do(p, http.MethodGet, manifestPath(repo, bundle.String()))
	if w.Code != http.StatusOK || sha(w.Body.Bytes()) != bundle {
		t.Fatalf("bundle referrer = %d: %s", w.Code, w.Body)
	}
	if d := lastDecision(t, p, bundle); d.EvidenceOf != img.digest.String() || d.Decision != "allow" {
		t.Errorf("bundle decision = %+v", d)
	}
	var bm v1.Manifest
	if err := json.Unmarshal(w.Body.Bytes(), &bm); err != nil || len(bm.Layers) != 1 {
		t.Fatalf("bundle manifest: %v", err)
	}
	if w := do(p, http.MethodGet, blobPath(repo, bm.Layers[0].Digest)); w.Code != http.StatusOK {
		t.Errorf("bundle blob = %d", w.Code)
	}
}

// TestEvidenceMustNotPass names what must not be served as evidence, each
// against an allowed image in the same registry.
func TestEvidenceMustNotPass(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k, rogue, other := newKey(t), newKey(t), newKey(t)
	const repo = "acme/app"
	img := reg.pushImage(t, repo, "v1")
	reg.sign(t, repo, img.digest, k)
	signLegacy(t, reg, repo, img.digest, k)
	imgDesc := reg.describe(t, repo, img.digest)

	policy := verify.Policy{Boundaries: []verify.Boundary{
		{
			Name: "strict", Repositories: []string{"strict/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("other", other)},
		},
		evidencePolicy(k).Boundaries[0],
	}}
	v := newEngineSpy(t, policy)
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))
	if w := do(p, http.MethodGet, manifestPath(repo, "v1")); w.Code != http.StatusOK {
		t.Fatalf("signed image = %d: %s", w.Code, w.Body)
	}
	// The positive control: the image's own .sig is served.
	if w := do(p, http.MethodGet, manifestPath(repo, sigTag(img.digest, ".sig"))); w.Code != http.StatusOK {
		t.Fatalf("the allowed image's .sig = %d: %s", w.Code, w.Body)
	}

	denied := func(t *testing.T, path, want string) {
		t.Helper()
		w := do(p, http.MethodGet, path)
		if w.Code != http.StatusForbidden {
			t.Fatalf("%s = %d, want 403: %s", path, w.Code, w.Body)
		}
		if want != "" && !strings.Contains(w.Body.String(), want) {
			t.Errorf("%s denied with %s, want %q", path, w.Body, want)
		}
	}

	t.Run("signature of a denied subject", func(t *testing.T) {
		bad := reg.pushImage(t, repo, "rogue")
		signLegacy(t, reg, repo, bad.digest, rogue)
		// The subject's own reasons come with it.
		denied(t, manifestPath(repo, sigTag(bad.digest, ".sig")), "evidence of "+bad.digest.String()+", which is denied: cosign-legacy sig[0]: signature does not verify with any key of authority")
		_, _, layer := reg.legacySig(t, repo, bad.digest)
		if w := do(p, http.MethodGet, blobPath(repo, layer)); w.Code != http.StatusForbidden {
			t.Errorf("its layer = %d, want 403", w.Code)
		}
	})

	t.Run("the same evidence under a neighbouring repository", func(t *testing.T) {
		// The same image and signature, in a repository whose boundary
		// trusts another key: the image is denied there, and so is its
		// signature, although it is allowed one repository over.
		const strict = "strict/app"
		same := reg.pushImage(t, strict, "v1")
		signLegacy(t, reg, strict, same.digest, k)
		denied(t, manifestPath(strict, sigTag(same.digest, ".sig")), "which is denied")
	})

	t.Run("an image tagged as a signature", func(t *testing.T) {
		img2 := reg.pushImage(t, repo, "v2")
		reg.sign(t, repo, img2.digest, k)
		fake := reg.pushImage(t, repo, sigTag(img2.digest, ".sig"))
		denied(t, manifestPath(repo, sigTag(img2.digest, ".sig")), "no signatures found")
		if w := do(p, http.MethodGet, blobPath(repo, fake.layers[0])); w.Code != http.StatusForbidden {
			t.Errorf("the fake signature's layer = %d, want 403", w.Code)
		}
	})

	t.Run("a referrer with a layer that is not evidence", func(t *testing.T) {
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, string(types.OCILayer), []byte("payload"), &imgDesc)
		denied(t, manifestPath(repo, a.digest.String()), "no signatures found")
		if w := do(p, http.MethodGet, blobPath(repo, a.layer)); w.Code != http.StatusForbidden {
			t.Errorf("its layer = %d, want 403", w.Code)
		}
	})

	t.Run("a model attached as a referrer", func(t *testing.T) {
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeModelManifest, fixtures.MediaTypeModelWeight, []byte("weights"), &imgDesc)
		denied(t, manifestPath(repo, a.digest.String()), "no signatures found")
	})

	t.Run("a model type over signature layers", func(t *testing.T) {
		// A signature's layer, well-formed: only the declared type makes
		// it not evidence.
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeModelManifest, fixtures.MediaTypeSimpleSigning, []byte(shapeSimpleSigning), &imgDesc)
		denied(t, manifestPath(repo, a.digest.String()), "no signatures found")
	})

	t.Run("a tag and a subject that disagree", func(t *testing.T) {
		unsigned := reg.pushImage(t, repo, "unsigned")
		a := reg.pushArtifact(t, repo, sigTag(unsigned.digest, ".sig"), "", fixtures.MediaTypeSimpleSigning, []byte(shapeSimpleSigning), &imgDesc)
		denied(t, manifestPath(repo, sigTag(unsigned.digest, ".sig")), "")
		if d := lastDecision(t, p, a.digest); d.EvidenceOf != "" {
			t.Errorf("decision = %+v, want no evidence", d)
		}
	})

	t.Run("a bundle whose tag and subject disagree", func(t *testing.T) {
		// Evidence by its type, tagged for an unsigned image but naming
		// the allowed one as its subject: it is evidence of neither.
		unsigned := reg.pushImage(t, repo, "unsigned-bundle")
		a := reg.pushArtifact(t, repo, sigTag(unsigned.digest, ".att"), fixtures.MediaTypeBundleV03, fixtures.MediaTypeBundleV03, []byte(shapeBundle), &imgDesc)
		denied(t, manifestPath(repo, sigTag(unsigned.digest, ".att")), "")
		if d := lastDecision(t, p, a.digest); d.EvidenceOf != "" {
			t.Errorf("decision = %+v, want no evidence", d)
		}
	})

	t.Run("evidence under an ordinary tag", func(t *testing.T) {
		// Someone who can push moves a tag a loader pulls to a manifest
		// shaped as evidence of the allowed image, which oras pull would
		// write out. Neither resolving nor fetching the tag may serve it;
		// only a verifier's request for evidence may, by its digest or by
		// cosign's tags. (Its layer is a well-formed statement, so that
		// only the tag rule is tested: other bytes are refused however
		// they are asked for, see TestEvidenceShapeThroughTheProxy.)
		a := reg.pushArtifact(t, repo, "weights", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, []byte(shapeStatement), &imgDesc)
		denied(t, manifestPath(repo, "weights"), "evidence of "+img.digest.String()+" is served only when fetched by digest or by cosign's tags")
		if w := do(p, http.MethodHead, manifestPath(repo, "weights")); w.Code != http.StatusForbidden {
			t.Errorf("HEAD by the tag = %d, want 403", w.Code)
		}
		if d := lastDecision(t, p, a.digest); d.EvidenceOf != "" || d.Decision != "deny" {
			t.Errorf("decision = %+v, want a denial that is not evidence", d)
		}
		if w := do(p, http.MethodGet, blobPath(repo, a.layer)); w.Code != http.StatusForbidden {
			t.Errorf("its layer = %d, want 403", w.Code)
		}
		// The positive control: by digest it is evidence of the image.
		if w := do(p, http.MethodGet, manifestPath(repo, a.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("by digest = %d, want 200 as evidence: %s", w.Code, w.Body)
		}
		// Served as evidence once, the tag still does not serve it, and
		// says why whether or not the bytes are in hand.
		denied(t, manifestPath(repo, "weights"), "served only when fetched by digest or by cosign's tags")
		if w := do(p, http.MethodHead, manifestPath(repo, "weights")); w.Code != http.StatusForbidden {
			t.Errorf("HEAD by the tag after = %d, want 403", w.Code)
		}
		if d := lastDecision(t, p, a.digest); !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, "served only when fetched by digest") }) {
			t.Errorf("HEAD by the tag after: reasons %q do not say why", d.Reasons)
		}
	})

	t.Run("evidence under an ordinary tag, resolved first by HEAD", func(t *testing.T) {
		// As oras and containerd pull: HEAD by tag, then GET by digest.
		// The HEAD must not resolve the tag to what it would then serve
		// as evidence.
		a := reg.pushArtifact(t, repo, "weights-head", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, statementOfSize(t, 400), &imgDesc)
		if w := do(p, http.MethodHead, manifestPath(repo, "weights-head")); w.Code != http.StatusForbidden {
			t.Fatalf("HEAD by the tag = %d, want 403 (digest %s)", w.Code, w.Header().Get("Docker-Content-Digest"))
		}
		if d := lastDecision(t, p, a.digest); d.EvidenceOf != "" || d.Decision != "deny" {
			t.Errorf("decision = %+v, want a denial that is not evidence", d)
		}
		denied(t, manifestPath(repo, "weights-head"), "served only when fetched by digest or by cosign's tags")
	})

	t.Run("a fallback index covers none of its children", func(t *testing.T) {
		unsigned := reg.pushImage(t, repo, "listed")
		reg.pushRawIndex(t, repo, sigTag(img.digest, ""), reg.describe(t, repo, unsigned.digest))
		if w := do(p, http.MethodGet, manifestPath(repo, sigTag(img.digest, ""))); w.Code != http.StatusOK {
			t.Fatalf("fallback index = %d: %s", w.Code, w.Body)
		}
		denied(t, manifestPath(repo, unsigned.digest.String()), "no signatures found")
	})

	t.Run("evidence types off", func(t *testing.T) {
		off, _ := newTestProxy(t, reg.srv.URL, v, WithEvidenceTypes(nil))
		if w := do(off, http.MethodGet, manifestPath(repo, sigTag(img.digest, ".sig"))); w.Code != http.StatusForbidden {
			t.Errorf(".sig with no evidence types = %d, want 403", w.Code)
		}
	})
}

// TestExampleListsDefaultEvidenceTypes keeps the documented list (the
// example config) the same as the built-in one.
func TestExampleListsDefaultEvidenceTypes(t *testing.T) {
	_, after, ok := strings.Cut(string(config.Example), "# evidence_types:\n")
	if !ok {
		t.Fatal("the example config does not document evidence_types")
	}
	re := regexp.MustCompile(`(?m)^#   - "([^"]+)"$`)
	var got []string
	for _, line := range strings.Split(after, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			break
		}
		got = append(got, m[1])
	}
	if !slices.Equal(got, DefaultEvidenceTypes) {
		t.Errorf("example lists %q, built in %q", got, DefaultEvidenceTypes)
	}
}

func TestEvidenceTypesMatch(t *testing.T) {
	e := evidenceTypes(DefaultEvidenceTypes)
	for mt, want := range map[string]bool{
		"application/vnd.dev.sigstore.bundle.v0.3+json":        true,
		"application/vnd.dev.sigstore.bundle+json;version=0.1": true,
		"application/vnd.dev.cosign.simplesigning.v1+json":     true,
		"text/spdx+json":                           true,
		"application/vnd.cyclonedx+json":           true,
		"application/vnd.oci.image.layer.v1.tar":   false,
		"application/vnd.cncf.model.weight.v1.raw": false,
		"": false,
	} {
		if got := e.match(mt); got != want {
			t.Errorf("match(%q) = %v, want %v", mt, got, want)
		}
	}
	for _, bad := range []string{"[bad", ""} {
		if _, err := New([]Upstream{{Name: "u", URL: "http://127.0.0.1:1", Insecure: true}}, allowAll(), WithEvidenceTypes([]string{bad})); err == nil {
			t.Errorf("pattern %q was accepted", bad)
		}
	}
}

// TestEvidenceOfWarnedSubject: in a warn boundary an unsigned image is
// served with its would-be denial, and so is its SBOM, as evidence of it:
// the SBOM's decision is warn, naming the image's reasons, never an allow.
func TestEvidenceOfWarnedSubject(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	const repo = "acme/trial"
	img := reg.pushImage(t, repo, "v1")
	desc := reg.describe(t, repo, img.digest)
	sbom := reg.pushArtifact(t, repo, "", "application/spdx+json", "application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`), &desc)
	pol := evidencePolicy(k)
	pol.Boundaries[0].Mode = verify.ModeWarn
	p, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol), WithVerdictCache(newMapVerdicts()))
	w := do(p, http.MethodGet, manifestPath(repo, sbom.digest.String()))
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), sbom.raw) {
		t.Fatalf("SBOM of a warned image = %d: %s", w.Code, w.Body)
	}
	d := lastDecision(t, p, sbom.digest)
	if d.Decision != "warn" || d.EvidenceOf != img.digest.String() || !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, "no signatures found") }) {
		t.Errorf("SBOM decision = %+v, want warn as evidence of %s with the image's reasons", d, img.digest)
	}
	if w := do(p, http.MethodGet, blobPath(repo, sbom.layer)); w.Code != http.StatusOK {
		t.Errorf("SBOM layer = %d", w.Code)
	}
}
