package verify_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

func TestModelSigning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	files := map[string][]byte{
		"weights/model.safetensors": []byte("weights of the model"),
		"config.json":               []byte(`{"hidden_size": 8}`),
	}
	// layers are the model's layers as PushModel writes them, plus extra.
	layers := func(extra ...fixtures.ModelLayer) []fixtures.ModelLayer {
		return append([]fixtures.ModelLayer{
			{MediaType: fixtures.MediaTypeModelWeight, Path: "config.json", Content: files["config.json"]},
			{MediaType: fixtures.MediaTypeModelWeight, Path: "weights/model.safetensors", Content: files["weights/model.safetensors"]},
		}, extra...)
	}
	payload := []byte("a layer no signed file names")
	payloadDigest := sha256Hex(payload)
	tests := []struct {
		name   string
		signed map[string][]byte
		// layers, when set, are pushed instead of one layer per file.
		layers []fixtures.ModelLayer
		want   string
	}{
		{name: "files match the layers", signed: files},
		{name: "files match the layers, pushed one by one", signed: files, layers: layers()},
		{name: "an extra layer without a file path", signed: files,
			layers: layers(fixtures.ModelLayer{MediaType: "application/vnd.oci.image.layer.v1.tar", Content: payload}),
			want:   "model-signing: layer sha256:" + payloadDigest + " (application/vnd.oci.image.layer.v1.tar) has no org.cncf.model.filepath annotation"},
		{name: "an extra model layer without a file path", signed: files,
			layers: layers(fixtures.ModelLayer{MediaType: fixtures.MediaTypeModelWeight, Content: payload}),
			want:   "model-signing: layer sha256:" + payloadDigest + " (application/vnd.cncf.model.weight.v1.raw) has no org.cncf.model.filepath annotation"},
		{name: "an extra annotated layer not in the signed list", signed: files,
			layers: layers(fixtures.ModelLayer{MediaType: fixtures.MediaTypeModelWeight, Path: "adapter.safetensors", Content: payload}),
			want:   "model-signing: file adapter.safetensors is not signed (layer sha256:" + payloadDigest + ", application/vnd.cncf.model.weight.v1.raw)"},
		{name: "a file differs", signed: map[string][]byte{
			"weights/model.safetensors": []byte("weights someone swapped"),
			"config.json":               files["config.json"],
		}, want: "model-signing: file weights/model.safetensors: signed sha256:"},
		{name: "a layer is not signed", signed: map[string][]byte{"config.json": files["config.json"]},
			want: "model-signing: file weights/model.safetensors is not signed"},
		{name: "a signed file has no layer", signed: map[string][]byte{
			"weights/model.safetensors": files["weights/model.safetensors"],
			"config.json":               files["config.json"],
			"tokenizer.json":            []byte("{}"),
		}, want: "model-signing: signed file tokenizer.json has no layer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			ref, err := e.reg.Ref("ml/llm:v1")
			if err != nil {
				t.Fatal(err)
			}
			var model name.Digest
			if tc.layers != nil {
				model, err = fixtures.PushModelLayers(ctx, ref, fixtures.MediaTypeModelManifest, tc.layers)
			} else {
				model, err = fixtures.PushModel(ctx, ref, files, "")
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := fixtures.AttachLegacySignature(ctx, model, e.key, fixtures.Tamper{}); err != nil {
				t.Fatal(err)
			}
			pred, whole := fixtures.ModelSigningPredicate(tc.signed)
			if _, err := fixtures.AttachBundle(ctx, model, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{
				PredicateType: fixtures.PredicateModelSigning, Predicate: pred, StatementDigest: &whole,
			}); err != nil {
				t.Fatal(err)
			}
			p := policy(1, keyAuthority("release", e.key), keylessAuthority("ci", e.ss, testIssuer, testSubject))
			p.Boundaries[0].Attestations = []verify.AttestationRule{{Name: "model", PredicateType: verify.PredicateModelSigning, Authorities: []string{"ci"}}}
			eng := engine(t, p)
			f := e.reg.Fetcher()
			h, _ := v1.NewHash(model.DigestStr())
			m, err := f.Manifest(ctx, "ml/llm", h.String())
			if err != nil {
				t.Fatal(err)
			}
			v := mustVerify(t, eng, verify.Subject{Upstream: "hub", Repository: "ml/llm", Digest: h,
				ArtifactType: verify.MediaTypeModelPackManifest, Manifest: m.Bytes}, f)
			if v.Artifact != verify.KindModel {
				t.Errorf("artifact = %q, want model", v.Artifact)
			}
			if tc.want != "" {
				wantDenied(t, v, tc.want)
				return
			}
			if !v.Allowed || len(v.Attestations) != 1 || v.Attestations[0].Signer.Authority != "ci" || v.Attestations[0].Name != "OpenSSF model signature" {
				t.Fatalf("verdict = %+v", v)
			}
		})
	}
}

func TestModelSigningNeedsTheManifest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	files := map[string][]byte{"w.bin": []byte("w")}
	ref, _ := e.reg.Ref("ml/llm:v1")
	model, err := fixtures.PushModel(ctx, ref, files, "")
	if err != nil {
		t.Fatal(err)
	}
	pred, whole := fixtures.ModelSigningPredicate(files)
	if _, err := fixtures.AttachBundle(ctx, model, e.key, fixtures.BundleSpec{PredicateType: fixtures.PredicateModelSigning, Predicate: pred, StatementDigest: &whole}); err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, model, e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	p := policy(1, keyAuthority("release", e.key))
	p.Boundaries[0].Attestations = []verify.AttestationRule{{Name: "model", PredicateType: verify.PredicateModelSigning}}
	h, _ := v1.NewHash(model.DigestStr())
	// The files are only known from the manifest; without it the
	// signature cannot be tied to this subject.
	v := mustVerify(t, engine(t, p), verify.Subject{Upstream: "hub", Repository: "ml/llm", Digest: h}, e.reg.Fetcher())
	wantDenied(t, v, "model-signing: subject manifest not available")
}

func TestClassifyManifest(t *testing.T) {
	t.Parallel()
	manifest := func(artifactType, config string, layers ...string) []byte {
		m := map[string]any{"schemaVersion": 2, "config": map[string]any{"mediaType": config}}
		if artifactType != "" {
			m["artifactType"] = artifactType
		}
		var ls []any
		for _, l := range layers {
			ls = append(ls, map[string]any{"mediaType": l})
		}
		m["layers"] = ls
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"modelpack by artifactType", manifest(verify.MediaTypeModelPackManifest, "application/vnd.oci.empty.v1+json", "application/vnd.cncf.model.weight.v1.raw"), verify.KindModel},
		{"modelpack by config", manifest("", verify.MediaTypeModelPackConfig, "application/vnd.cncf.model.weight.v1.tar"), verify.KindModel},
		{"modelpack dataset", manifest(verify.MediaTypeModelPackManifest, verify.MediaTypeModelPackConfig, "application/vnd.cncf.model.dataset.v1.raw", "application/vnd.cncf.model.dataset.v1.tar+gzip"), verify.KindDataset},
		{"modelpack model with training data", manifest(verify.MediaTypeModelPackManifest, verify.MediaTypeModelPackConfig, "application/vnd.cncf.model.weight.v1.raw", "application/vnd.cncf.model.dataset.v1.raw"), verify.KindModel},
		{"kitops modelkit", manifest("", verify.MediaTypeKitOpsConfig, "application/vnd.kitops.modelkit.model.v1.tar"), verify.KindModel},
		{"kitops dataset", manifest(verify.MediaTypeKitOpsManifest, verify.MediaTypeKitOpsConfig, "application/vnd.kitops.modelkit.dataset.v1.tar+gzip"), verify.KindDataset},
		{"docker model", manifest("", verify.MediaTypeDockerModelConfig, "application/vnd.docker.ai.gguf.v3"), verify.KindModel},
		{"ollama", manifest("", "application/vnd.docker.container.image.v1+json", "application/vnd.ollama.image.model", "application/vnd.ollama.image.template"), verify.KindModel},
		{"modelpack layers under another config", manifest("", "application/vnd.oci.empty.v1+json", "application/vnd.cncf.model.weight.v1.raw"), verify.KindModel},
		{"modelpack dataset layers under another config", manifest("", "application/vnd.oci.empty.v1+json", "application/vnd.cncf.model.dataset.v1.raw"), verify.KindDataset},
		{"container image", manifest("", "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"), ""},
		{"garbage", []byte("{not json"), ""},
		{"empty", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := verify.ClassifyManifest(tc.b); got != tc.want {
				t.Errorf("ClassifyManifest = %q, want %q", got, tc.want)
			}
		})
	}
	if verify.ArtifactKind(verify.MediaTypeKitOpsManifest) != verify.KindModel || verify.ArtifactKind("application/vnd.oci.image.config.v1+json") != "" {
		t.Error("ArtifactKind misclassifies")
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
