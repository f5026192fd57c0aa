package wire

import (
	"testing"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
)

// mirrored is the test config with a mirror upstream whose evidence is kept
// on src.example (alias "b"), and a provenance rule.
func (e *policyEnv) mirrored() *config.Config {
	cfg := e.config()
	cfg.Upstreams = []config.Upstream{
		{Name: "hub", URL: "https://mirror.example"},
		{Name: "src.example", URL: "https://src.example", Aliases: []string{"b"}},
	}
	b := &cfg.Boundaries[0]
	b.Signatures.Repository = "b/src/{repository}"
	b.Signatures.RepositoryStripPrefix = "mirror/"
	b.Attestations = []config.Attestation{
		{Name: "provenance", PredicateType: verify.PredicateSLSAProvenanceV1, Authorities: []string{"release"}},
		{Name: "sbom", PredicateType: "https://spdx.dev/Document", Authorities: []string{"release"}, Repository: "src.example/sbom/{repository}"},
	}
	return cfg
}

func TestPolicyEvidenceRepository(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	p, err := Policy(e.mirrored())
	if err != nil {
		t.Fatal(err)
	}
	b := p.Boundaries[0]
	// The alias is a lookup key: the policy names the upstream.
	want := verify.EvidenceRepository{Upstream: "src.example", Repository: "src/{repository}", StripPrefix: "mirror"}
	if b.SignatureRepository == nil || *b.SignatureRepository != want {
		t.Fatalf("signature repository = %+v, want %+v", b.SignatureRepository, want)
	}
	if r := b.Attestations[0].Repository; r != nil {
		t.Errorf("rule without a repository = %+v, want nil (the signatures' place)", r)
	}
	want = verify.EvidenceRepository{Upstream: "src.example", Repository: "sbom/{repository}"}
	if r := b.Attestations[1].Repository; r == nil || *r != want {
		t.Errorf("rule repository = %+v, want %+v", r, want)
	}
	if _, err := verify.New(p); err != nil {
		t.Fatalf("translated policy refused: %v", err)
	}

	cfg := e.mirrored()
	cfg.Boundaries[0].Signatures.Repository = "ghcr.io/src/{repository}"
	if _, err := Policy(cfg); err == nil {
		t.Fatal("an unknown upstream was translated")
	}
}

func TestPolicyFingerprintEvidenceRepository(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	fp := func(cfg *config.Config) string {
		t.Helper()
		p, err := Policy(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return p.Fingerprint
	}
	plain := e.config()
	plain.Upstreams = e.mirrored().Upstreams
	seen := map[string]string{}
	for name, cfg := range map[string]*config.Config{
		"none":     plain,
		"mirrored": e.mirrored(),
		"strip prefix": func() *config.Config {
			c := e.mirrored()
			c.Boundaries[0].Signatures.RepositoryStripPrefix = "other/"
			return c
		}(),
		"rule repository": func() *config.Config {
			c := e.mirrored()
			c.Boundaries[0].Attestations[1].Repository = "b/sbom/{repository}"
			c.Boundaries[0].Attestations[1].RepositoryStripPrefix = "mirror"
			return c
		}(),
		// Upstreams are otherwise not part of the policy, but moving the
		// alias moves where evidence is read from.
		"alias moved": func() *config.Config {
			c := e.mirrored()
			c.Upstreams = append(c.Upstreams, config.Upstream{Name: "other.example", URL: "https://other.example", Aliases: []string{"b"}})
			c.Upstreams[1].Aliases = nil
			return c
		}(),
	} {
		f := fp(cfg)
		if prev, dup := seen[f]; dup {
			t.Errorf("%s and %s share a fingerprint", prev, name)
		}
		seen[f] = name
	}
}
