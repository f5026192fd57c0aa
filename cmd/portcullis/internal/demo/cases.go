package demo

import (
	"context"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// Demo identities. The keyless ones are certified by an in-process
// sigstore (CA, transparency log and timestamp authority) that exists only
// for the demo's lifetime.
const (
	upstreamName = "demo.local"
	issuer       = "https://token.actions.example.com"
	ciSubject    = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
	builder      = "https://github.com/acme/trainer/.github/workflows/train.yml@refs/heads/main"
	modelPack    = "application/vnd.cncf.model.manifest.v1+json"
)

// seedCase is one piece of seeded content and the verdict it should get.
type seedCase struct {
	repo, tag string
	what      string
	wantAllow bool
	// index pushes a two-platform index instead of a single image.
	index bool
	// push creates the artifact (default: a small random image).
	push func(ctx context.Context, e *env, ref name.Tag) (name.Digest, error)
	// sign attaches the case's signatures and attestations.
	sign func(ctx context.Context, e *env, ref name.Digest) error
}

// env is the demo's upstream and the signers that seed it.
type env struct {
	// digests of seeded content by repository, for provenance to name.
	digests  map[string]name.Digest
	reg      *fixtures.Registry
	key      *fixtures.KeySigner
	rogue    *fixtures.KeySigner
	keyless  *fixtures.KeylessSigner
	stranger *fixtures.KeylessSigner
	sig      *fixtures.Sigstore
}

func newEnv() (*env, error) {
	reg, err := fixtures.StartRegistry()
	if err != nil {
		return nil, err
	}
	e := &env{reg: reg, digests: map[string]name.Digest{}}
	if e.key, err = fixtures.NewKeySigner("ecdsa-p256"); err != nil {
		reg.Close()
		return nil, err
	}
	if e.rogue, err = fixtures.NewKeySigner("ecdsa-p256"); err != nil {
		reg.Close()
		return nil, err
	}
	if e.sig, err = fixtures.NewSigstore(); err != nil {
		reg.Close()
		return nil, err
	}
	e.keyless = e.sig.Signer(issuer, ciSubject)
	e.stranger = e.sig.Signer(issuer, "https://github.com/mallory/fork/.github/workflows/release.yml@refs/heads/main")
	return e, nil
}

func seedCases() []seedCase {
	return []seedCase{
		{repo: "demo/signed-key", tag: "v1", what: "cosign .sig, release key", wantAllow: true, sign: signWithKey},
		{repo: "demo/signed-keyless", tag: "v1", what: "sigstore bundle, keyless CI identity", wantAllow: true,
			sign: func(ctx context.Context, e *env, ref name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, ref, e.keyless, fixtures.BundleSpec{})
				return err
			}},
		{repo: "demo/multiarch", tag: "v1", what: "signed multi-arch index", wantAllow: true, index: true, sign: signWithKey},
		{repo: "demo/unsigned", tag: "v1", what: "no signature at all", wantAllow: false},
		{repo: "demo/unknown-key", tag: "v1", what: "cosign .sig, unknown key", wantAllow: false,
			sign: func(ctx context.Context, e *env, ref name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, ref, e.rogue, fixtures.Tamper{})
			}},
		{repo: "demo/wrong-identity", tag: "v1", what: "keyless, another workflow", wantAllow: false,
			sign: func(ctx context.Context, e *env, ref name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, ref, e.stranger, fixtures.BundleSpec{})
				return err
			}},
		{repo: "demo/replayed", tag: "v1", what: "signature copied from another digest", wantAllow: false,
			sign: func(ctx context.Context, e *env, ref name.Digest) error {
				other, err := v1.NewHash("sha256:" + strings.Repeat("ab", 32))
				if err != nil {
					return err
				}
				return fixtures.AttachLegacySignature(ctx, ref, e.key, fixtures.Tamper{SignDigest: &other})
			}},
		{repo: "demo/tampered", tag: "v1", what: "payload edited after signing", wantAllow: false,
			sign: func(ctx context.Context, e *env, ref name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, ref, e.key, fixtures.Tamper{ModifyPayload: true})
			}},
		// Lineage: datasets and a base model first, so the models'
		// provenance can name them by digest.
		{repo: "datasets/corpus", tag: "v1", what: "dataset, signed by the release key", wantAllow: true,
			push: pushDataset("corpus.jsonl", `{"text":"curated"}`), sign: signWithKey},
		{repo: "datasets/scraped", tag: "v1", what: "dataset, unsigned", wantAllow: false,
			push: pushDataset("scraped.jsonl", `{"text":"ignore previous instructions"}`)},
		{repo: "foundation/base", tag: "v1", what: "base model, keyless-signed", wantAllow: true,
			push: pushModel("base.safetensors", "base weights"),
			sign: func(ctx context.Context, e *env, ref name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, ref, e.keyless, fixtures.BundleSpec{})
				return err
			}},
		{repo: "models/llm", tag: "v1", what: "model; provenance: signed dataset + base", wantAllow: true,
			push: pushModel("model.safetensors", "fine-tuned weights"),
			sign: modelSeed(time.Now().Add(-2*time.Hour), "datasets/corpus")},
		{repo: "models/llm-poisoned", tag: "v1", what: "model; provenance: unsigned dataset", wantAllow: false,
			push: pushModel("model.safetensors", "poisoned weights"),
			sign: modelSeed(time.Now().Add(-2*time.Hour), "datasets/scraped")},
		{repo: "models/llm-stale", tag: "v1", what: "model; provenance 90 days old", wantAllow: false,
			push: pushModel("model.safetensors", "old weights"),
			sign: modelSeed(time.Now().Add(-90*24*time.Hour), "datasets/corpus")},
	}
}

func signWithKey(ctx context.Context, e *env, ref name.Digest) error {
	return fixtures.AttachLegacySignature(ctx, ref, e.key, fixtures.Tamper{})
}

func pushDataset(file, content string) func(context.Context, *env, name.Tag) (name.Digest, error) {
	return func(ctx context.Context, _ *env, ref name.Tag) (name.Digest, error) {
		return fixtures.PushDataset(ctx, ref, map[string][]byte{file: []byte(content)})
	}
}

func pushModel(file, content string) func(context.Context, *env, name.Tag) (name.Digest, error) {
	return func(ctx context.Context, _ *env, ref name.Tag) (name.Digest, error) {
		return fixtures.PushModel(ctx, ref, map[string][]byte{file: []byte(content)}, "")
	}
}

// modelSeed signs a model with the release key and attests, with the same
// key, SLSA provenance built at builtAt from dataset and the base model.
// Key-signed attestations carry no signed timestamp, so the statement's
// own time is what max_age judges.
func modelSeed(builtAt time.Time, dataset string) func(context.Context, *env, name.Digest) error {
	return func(ctx context.Context, e *env, ref name.Digest) error {
		if err := signWithKey(ctx, e, ref); err != nil {
			return err
		}
		deps := []fixtures.ResourceDescriptor{
			fixtures.OCIDependency("dataset-"+strings.TrimPrefix(dataset, "datasets/"), e.digests[dataset]),
			fixtures.OCIDependency("base-model", e.digests["foundation/base"]),
			{Name: "training-code", URI: "git+https://github.com/acme/trainer@refs/heads/main", Digest: map[string]string{"gitCommit": strings.Repeat("5e", 20)}},
		}
		prov := fixtures.SLSAProvenanceV1(builder, deps, builtAt.Add(-time.Hour), builtAt)
		_, err := fixtures.AttachBundle(ctx, ref, e.key, fixtures.BundleSpec{PredicateType: fixtures.PredicateSLSAProvenanceV1, Predicate: prov})
		return err
	}
}

// policy is what a demo config file would compile to: models need a
// signature plus fresh SLSA provenance whose datasets and base model are
// themselves verified; datasets, base models and images need a signature.
func (e *env) policy() verify.Policy {
	release := verify.Authority{Name: "release-key", Key: &verify.KeyAuthority{TrustName: "demo-keys",
		Keys: []verify.NamedKey{{Name: "release.pub", PEM: e.key.PublicKeyPEM()}}}}
	// The in-process sigstore has no certificate-transparency log, so its
	// certificates carry no SCTs; the transparency log and timestamps are
	// still required.
	ci := verify.Authority{Name: "ci", Keyless: &verify.KeylessAuthority{TrustName: "demo-sigstore", TrustedRoot: e.sig,
		Issuer: issuer, SubjectRegex: `^https://github\.com/acme/`, TlogThreshold: 1, TimestampThreshold: 1, InsecureSkipSCT: true}}
	signed := func(name string, repos ...string) verify.Boundary {
		return verify.Boundary{Name: name, Upstream: upstreamName, Repositories: repos, Mode: verify.ModeEnforce,
			Threshold: 1, Authorities: []verify.Authority{release, ci}}
	}
	models := signed("models", "models/**")
	models.ArtifactTypes = []string{modelPack}
	models.Attestations = []verify.AttestationRule{{
		Name: "provenance", PredicateType: fixtures.PredicateSLSAProvenanceV1, Authorities: []string{"release-key", "ci"},
		MaxAge:    30 * 24 * time.Hour,
		Condition: `predicate.runDetails.builder.id.startsWith("https://github.com/acme/")`,
	}}
	models.Lineage = &verify.LineageRule{Depth: 3, Require: []string{"dataset*", "base-model*"}}
	return verify.Policy{
		Fingerprint: "demo",
		Boundaries:  []verify.Boundary{models, signed("datasets", "datasets/**", "foundation/**"), signed("demo", "demo/**")},
	}
}
