package wire

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const (
	ciIssuer  = "https://token.actions.githubusercontent.com"
	ciSubject = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1"
)

type policyEnv struct {
	dir string
	key *fixtures.KeySigner
	ss  *fixtures.Sigstore
}

func newPolicyEnv(t *testing.T) *policyEnv {
	t.Helper()
	dir := t.TempDir()
	key, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := ss.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	writePolicyFile(t, filepath.Join(dir, "keys", "cosign.pub"), key.PublicKeyPEM())
	writePolicyFile(t, filepath.Join(dir, "trusted_root.json"), tr)
	return &policyEnv{dir: dir, key: key, ss: ss}
}

func writePolicyFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// config is what config.Load would return for a portcullis.yaml in dir.
func (e *policyEnv) config() *config.Config {
	return &config.Config{
		Path: filepath.Join(e.dir, "portcullis.yaml"),
		Trust: []config.Trust{
			{Name: "release-keys", Keys: []string{"keys/cosign.pub"}},
			{Name: "sigstore", TrustedRoot: "trusted_root.json"},
		},
		Boundaries: []config.Boundary{{
			Name:  "apps",
			Match: config.Match{Upstream: "hub", Repositories: []string{"acme/**"}},
			Mode:  config.ModeWarn,
			Signatures: config.Signatures{Threshold: 1, Authorities: []config.Authority{
				{Name: "release", Key: "release-keys"},
				{Name: "ci", Keyless: &config.Keyless{Trust: "sigstore", Issuer: ciIssuer, SubjectRegex: "^https://github.com/acme/"}},
			}},
		}},
		Unmatched: config.UnmatchedDeny,
	}
}

func TestPolicyTranslation(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	cfg := e.config()
	p, err := Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.InsecureAllowUnmatched || len(p.Boundaries) != 1 || !strings.HasPrefix(p.Fingerprint, "sha256:") {
		t.Fatalf("policy = %+v", p)
	}
	b := p.Boundaries[0]
	if b.Name != "apps" || b.Upstream != "hub" || b.Mode != verify.ModeWarn || b.Threshold != 1 || len(b.Authorities) != 2 {
		t.Fatalf("boundary = %+v", b)
	}
	if k := b.Authorities[0].Key; k == nil || k.TrustName != "release-keys" || len(k.Keys) != 1 ||
		k.Keys[0].Name != "keys/cosign.pub" || string(k.Keys[0].PEM) != string(e.key.PublicKeyPEM()) {
		t.Fatalf("key authority = %+v", b.Authorities[0])
	}
	kl := b.Authorities[1].Keyless
	if kl == nil || kl.TrustedRoot == nil || kl.Issuer != ciIssuer || kl.SubjectRegex != "^https://github.com/acme/" ||
		kl.TlogThreshold != 1 || kl.TimestampThreshold != 1 || kl.SCTThreshold != 1 {
		t.Fatalf("keyless authority = %+v", b.Authorities[1])
	}

	// The translated policy verifies real evidence, the keyless one through
	// the trusted root read from the file. By default a certificate needs
	// an embedded SCT, as cosign requires; the in-memory test CA issues
	// none, so it is denied until insecure_skip_sct says otherwise.
	strict, err := verify.New(p)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Boundaries[0].Signatures.Authorities[1].Keyless.InsecureSkipSCT = true
	p, err = Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Boundaries[0].Authorities[1].Keyless.InsecureSkipSCT {
		t.Fatal("insecure_skip_sct not carried into the policy")
	}
	eng, err := verify.New(p)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := fixtures.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ref, err := reg.Ref("acme/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, err := fixtures.PushImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fixtures.AttachBundle(ctx, d, e.ss.Signer(ciIssuer, ciSubject), fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	h, _ := v1.NewHash(d.DigestStr())
	v, err := eng.Verify(ctx, verify.Subject{Upstream: "hub", Repository: "acme/app", Digest: h}, reg.Fetcher())
	if err != nil {
		t.Fatal(err)
	}
	if !v.Allowed || v.Signers[0].Authority != "ci" {
		t.Fatalf("verdict = %+v", v)
	}
	v, err = strict.Verify(ctx, verify.Subject{Upstream: "hub", Repository: "acme/app", Digest: h}, reg.Fetcher())
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || !strings.Contains(strings.Join(v.Reasons, "; "), "signed certificate timestamp") {
		t.Fatalf("certificate without SCT under the default policy: %+v", v)
	}
}

func TestPolicyDefaultsAndUnmatched(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	cfg := e.config()
	cfg.Boundaries[0].Mode = ""
	cfg.Boundaries[0].Signatures.Threshold = 0
	zero := 0
	cfg.Boundaries[0].Signatures.Authorities[1].Keyless.TlogThreshold = &zero
	cfg.Unmatched = config.UnmatchedInsecureAllow
	p, err := Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := p.Boundaries[0]
	if b.Mode != verify.ModeEnforce || b.Threshold != 1 || !p.InsecureAllowUnmatched {
		t.Fatalf("defaults not applied: %+v", p)
	}
	if kl := b.Authorities[1].Keyless; kl.TlogThreshold != 0 || kl.TimestampThreshold != 1 {
		t.Fatalf("explicit tlog_threshold 0 not kept: %+v", kl)
	}
}

func TestPolicyErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		mut  func(e *policyEnv, c *config.Config)
		want string
	}{
		{"missing key file", func(_ *policyEnv, c *config.Config) { c.Trust[0].Keys = []string{"keys/nope.pub"} }, "nope.pub"},
		{"invalid trusted root", func(e *policyEnv, _ *config.Config) {
			writePolicyFile(t, filepath.Join(e.dir, "trusted_root.json"), []byte(`{"mediaType": 7}`))
		}, "trusted_root"},
		{"key trust without keys", func(_ *policyEnv, c *config.Config) { c.Boundaries[0].Signatures.Authorities[0].Key = "sigstore" }, "has no keys"},
		{"keyless trust without root", func(_ *policyEnv, c *config.Config) {
			c.Boundaries[0].Signatures.Authorities[1].Keyless.Trust = "release-keys"
		}, "has no trusted_root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newPolicyEnv(t)
			cfg := e.config()
			tc.mut(e, cfg)
			if _, err := Policy(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Policy error = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPolicySelectAndLineageIgnore(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	withRules := func(sel string, ignore ...string) *config.Config {
		cfg := e.config()
		cfg.Boundaries[0].Attestations = []config.Attestation{
			{Name: "scan", PredicateType: "https://example.com/scan/v1", Authorities: []string{"release"}, Select: sel},
		}
		cfg.Boundaries[0].Lineage = &config.Lineage{Depth: 2, Require: []string{"dataset*"}, Ignore: ignore}
		return cfg
	}
	policy := func(cfg *config.Config) verify.Policy {
		t.Helper()
		p, err := Policy(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify.New(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	def := policy(withRules(""))
	if got := def.Boundaries[0].Attestations[0].Select; got != verify.SelectNewest {
		t.Errorf("default select = %q, want newest", got)
	}
	if got := policy(withRules(config.SelectNewest)).Boundaries[0].Attestations[0].Select; got != verify.SelectNewest {
		t.Errorf("select = %q, want newest", got)
	}
	anyP := policy(withRules(config.SelectAny))
	if got := anyP.Boundaries[0].Attestations[0].Select; got != verify.SelectAny {
		t.Errorf("select = %q, want any", got)
	}
	if anyP.Fingerprint == def.Fingerprint {
		t.Error("select any kept the fingerprint")
	}
	ign := policy(withRules("", "tokenizer"))
	if l := ign.Boundaries[0].Lineage; l == nil || len(l.Ignore) != 1 || l.Ignore[0] != "tokenizer" || l.Require[0] != "dataset*" {
		t.Errorf("lineage = %+v", ign.Boundaries[0].Lineage)
	}
	if ign.Fingerprint == def.Fingerprint {
		t.Error("lineage.ignore kept the fingerprint")
	}
}

func TestPolicyFingerprint(t *testing.T) {
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
	base := fp(e.config())
	if again := fp(e.config()); again != base {
		t.Fatalf("fingerprint not stable: %s != %s", again, base)
	}

	// Settings that do not change decisions keep the fingerprint.
	cfg := e.config()
	cfg.Listen, cfg.Cache.Verdicts, cfg.Log.Level = ":6000", 5, "debug"
	cfg.Limits.ClientConnections, cfg.Limits.Verifications = 7, 3
	cfg.Upstreams = []config.Upstream{{Name: "hub", URL: "https://registry-1.docker.io"}}
	if got := fp(cfg); got != base {
		t.Errorf("non-policy settings changed the fingerprint")
	}

	cfg = e.config()
	cfg.Boundaries[0].Match.Repositories = []string{"acme/*"}
	if fp(cfg) == base {
		t.Error("a boundary change kept the fingerprint")
	}
	cfg = e.config()
	cfg.Unmatched = config.UnmatchedInsecureAllow
	if fp(cfg) == base {
		t.Error("an unmatched change kept the fingerprint")
	}
	// Evidence limits decide verdicts: a budget denial may be an allow
	// under a larger budget.
	for name, change := range map[string]func(*config.Limits){
		"evidence_bytes":    func(l *config.Limits) { l.EvidenceBytes = 32 << 20 },
		"signature_bytes":   func(l *config.Limits) { l.SignatureBytes = 512 << 10 },
		"attestation_bytes": func(l *config.Limits) { l.AttestationBytes = 2 << 20 },
		"max_evidence":      func(l *config.Limits) { l.MaxEvidence = 10 },
		"predicate_depth":   func(l *config.Limits) { l.PredicateDepth = 8 },
	} {
		cfg = e.config()
		change(&cfg.Limits)
		if fp(cfg) == base {
			t.Errorf("a %s change kept the fingerprint", name)
		}
	}

	// Same paths, new bytes: the key was rotated in place.
	other, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	writePolicyFile(t, filepath.Join(e.dir, "keys", "cosign.pub"), other.PublicKeyPEM())
	rotated := fp(e.config())
	if rotated == base {
		t.Fatal("rotating the key file kept the fingerprint")
	}
	tr, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	trJSON, err := tr.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	writePolicyFile(t, filepath.Join(e.dir, "trusted_root.json"), trJSON)
	if fp(e.config()) == rotated {
		t.Error("replacing trusted_root.json kept the fingerprint")
	}
}

// One public key in two files under two trust entries is one signer: the
// compiled policy (what config check and serve both build) refuses two
// authorities of one boundary holding it, whatever the files are called
// or however the PEM is written.
func TestPolicySharedKeyRefused(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	writePolicyFile(t, filepath.Join(e.dir, "keys", "qa.pub"), append([]byte("qa signing key\n"), e.key.PublicKeyPEM()...))
	cfg := e.config()
	cfg.Trust = append(cfg.Trust, config.Trust{Name: "qa-keys", Keys: []string{"keys/qa.pub"}})
	cfg.Boundaries[0].Signatures.Threshold = 2
	cfg.Boundaries[0].Signatures.Authorities = append(cfg.Boundaries[0].Signatures.Authorities, config.Authority{Name: "qa", Key: "qa-keys"})
	p, err := Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = verify.New(p)
	if want := `authorities "release" and "qa" share one public key (keys/cosign.pub and keys/qa.pub)`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("verify.New error = %v, want one containing %q", err, want)
	}
}

func TestEngineOptionsCarryLimits(t *testing.T) {
	t.Parallel()
	e := newPolicyEnv(t)
	cfg := e.config()
	cfg.SetDefaults()
	p, err := Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.New(p, EngineOptions(cfg)...); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	// The engine sees the configured values: one it must refuse proves
	// they are passed on rather than replaced by its defaults.
	cfg.Limits.PredicateDepth = -1
	if _, err := verify.New(p, EngineOptions(cfg)...); err == nil {
		t.Fatal("a negative predicate depth reached no engine check")
	}
	cfg.Limits.PredicateDepth, cfg.Limits.MaxEvidence = config.DefaultPredicateDepth, -1
	if _, err := verify.New(p, EngineOptions(cfg)...); err == nil {
		t.Fatal("a negative max_evidence reached no engine check")
	}
}
