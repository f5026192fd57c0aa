package verify_test

import (
	"context"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

func TestBoundaryMatching(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	a := []verify.Authority{keyAuthority("release", k)}
	b := func(name, upstream string, repos []string, types ...string) verify.Boundary {
		return verify.Boundary{Name: name, Upstream: upstream, Repositories: repos, ArtifactTypes: types,
			Mode: verify.ModeEnforce, Threshold: 1, Authorities: a}
	}
	const model = "application/vnd.cncf.model.manifest.v1+json"
	e := engine(t, verify.Policy{Boundaries: []verify.Boundary{
		b("models", "models", []string{"ml/**"}, model),
		b("ml-any", "models", []string{"ml/**"}),
		b("library", "hub", []string{"library/*"}),
		b("acme-deep", "*", []string{"acme/**/app"}),
		b("team", "", []string{"team/*/svc-*"}),
		b("mirror", "mirror", nil), // no repositories: every one
	}})
	tests := []struct {
		upstream, repo, artifactType string
		want                         string
	}{
		{"models", "ml/llama/7b", model, "models"},
		{"models", "ml/llama/7b", "application/vnd.oci.image.config.v1+json", "ml-any"},
		{"models", "ml", model, ""}, // "ml/**" needs at least one segment below ml
		{"hub", "ml/llama", model, ""},
		{"hub", "library/alpine", "", "library"},
		{"hub", "library/alpine/extra", "", ""}, // "*" stays within a segment
		{"other", "library/alpine", "", ""},
		{"any", "acme/app", "", "acme-deep"}, // "**" matches zero segments
		{"any", "acme/a/b/c/app", "", "acme-deep"},
		{"any", "acme/a/b/c/app2", "", ""},
		{"x", "team/blue/svc-api", "", "team"},
		{"x", "team/blue/api", "", ""},
		{"mirror", "any/repo/at/all", "", "mirror"},
	}
	for _, tc := range tests {
		t.Run(tc.upstream+"/"+tc.repo+"/"+tc.artifactType, func(t *testing.T) {
			t.Parallel()
			got, ok := e.Boundary(tc.upstream, tc.repo, tc.artifactType)
			if tc.want == "" {
				if ok {
					t.Fatalf("matched %q, want no match", got.Name)
				}
				return
			}
			if !ok || got.Name != tc.want {
				t.Fatalf("matched %v %v, want %q", got, ok, tc.want)
			}
		})
	}
}

func TestUnmatched(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	p := verify.Policy{Boundaries: []verify.Boundary{{Name: "lib", Upstream: "hub", Repositories: []string{"library/*"},
		Mode: verify.ModeWarn, Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)}}}}
	s := verify.Subject{Upstream: "hub", Repository: "acme/app", Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}}
	// The fetcher must not even be consulted for an unmatched subject.
	f := fixtures.Count(fixtures.Failing(context.DeadlineExceeded))

	v := mustVerify(t, engine(t, p), s, f)
	if v.Allowed || v.Mode != verify.ModeEnforce || v.Served() {
		t.Fatalf("unmatched subject: %+v, want enforced denial", v)
	}
	wantDenied(t, v, "no trust boundary matches hub/acme/app")

	p.InsecureAllowUnmatched = true
	v = mustVerify(t, engine(t, p), s, f)
	if !v.Allowed {
		t.Fatalf("insecure-allow unmatched denied: %+v", v)
	}
	if f.Calls() != 0 {
		t.Errorf("fetcher called %d times for unmatched subjects", f.Calls())
	}

	// A warn boundary reports its mode on denial.
	s.Repository = "library/alpine"
	v, err = engine(t, p).Verify(context.Background(), s, fixtures.NoReferrersAPI(fixtures.Failing(verify.ErrNotFound)))
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || v.Mode != verify.ModeWarn || !v.Served() || v.Boundary != "lib" {
		t.Fatalf("warn boundary verdict: %+v", v)
	}
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	good := func() verify.Boundary {
		return verify.Boundary{Name: "b", Mode: verify.ModeEnforce, Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)}}
	}
	keyless := func(mut func(*verify.KeylessAuthority)) verify.Boundary {
		b := good()
		a := keylessAuthority("ci", ss, testIssuer, testSubject)
		mut(a.Keyless)
		b.Authorities = []verify.Authority{a}
		return b
	}
	tests := []struct {
		name string
		p    verify.Policy
		opts []verify.Option
		want string
	}{
		{"no boundaries", verify.Policy{}, nil, "no trust boundaries"},
		{"no authorities", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary { b := good(); b.Authorities = nil; return b }()}}, nil, "no authorities"},
		{"threshold zero", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary { b := good(); b.Threshold = 0; return b }()}}, nil, "threshold 0 out of range"},
		{"threshold too high", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary { b := good(); b.Threshold = 2; return b }()}}, nil, "threshold 2 out of range"},
		{"key authority without keys", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Authorities = []verify.Authority{{Name: "x", Key: &verify.KeyAuthority{}}}
			return b
		}()}}, nil, "no keys"},
		{"unparsable PEM", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Authorities = []verify.Authority{{Name: "x", Key: &verify.KeyAuthority{Keys: []verify.NamedKey{{Name: "bad.pub", PEM: []byte("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")}}}}}
			return b
		}()}}, nil, `key "bad.pub"`},
		{"both key and keyless", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := keyless(func(*verify.KeylessAuthority) {})
			b.Authorities[0].Key = keyAuthority("x", k).Key
			return b
		}()}}, nil, "exactly one of key and keyless"},
		{"keyless without trusted root", verify.Policy{Boundaries: []verify.Boundary{keyless(func(a *verify.KeylessAuthority) { a.TrustedRoot = nil })}}, nil, "no trusted root"},
		{"keyless without issuer", verify.Policy{Boundaries: []verify.Boundary{keyless(func(a *verify.KeylessAuthority) { a.Issuer = "" })}}, nil, "issuer"},
		{"keyless without subject", verify.Policy{Boundaries: []verify.Boundary{keyless(func(a *verify.KeylessAuthority) { a.Subject = "" })}}, nil, "subject"},
		{"invalid regex", verify.Policy{Boundaries: []verify.Boundary{keyless(func(a *verify.KeylessAuthority) { a.SubjectRegex = "(" })}}, nil, "subject_regex"},
		{"negative tlog threshold", verify.Policy{Boundaries: []verify.Boundary{keyless(func(a *verify.KeylessAuthority) { a.TlogThreshold = -1 })}}, nil, "negative threshold"},
		{"two authorities share a key", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Threshold = 2
			b.Authorities = append(b.Authorities, keyAuthority("qa", k))
			return b
		}()}}, nil, `authorities "release" and "qa" share one public key (release.pub and qa.pub)`},
		{"one key in two PEM files", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Threshold = 2
			other, err := fixtures.NewKeySigner("")
			if err != nil {
				t.Fatal(err)
			}
			// The second file holds another key first, then the same key
			// preceded by text PEM decoding skips: other bytes, one key.
			b.Authorities = append(b.Authorities, verify.Authority{Name: "qa", Key: &verify.KeyAuthority{Keys: []verify.NamedKey{
				{Name: "qa-old.pub", PEM: other.PublicKeyPEM()},
				{Name: "keys/qa.pub", PEM: append([]byte("cosign public key, copied from release\n"), k.PublicKeyPEM()...)},
			}}})
			return b
		}()}}, nil, `authorities "release" and "qa" share one public key (release.pub and keys/qa.pub)`},
		{"bad glob", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary { b := good(); b.Repositories = []string{"a/**b"}; return b }()}}, nil, "whole path segment"},
		{"unknown mode", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary { b := good(); b.Mode = "audit"; return b }()}}, nil, "unknown mode"},
		{"condition does not compile", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Attestations = []verify.AttestationRule{{Name: "prov", PredicateType: verify.PredicateSLSAProvenanceV1, Condition: "predicate.runDetails.builder.id =="}}
			return b
		}()}}, nil, `boundary "b" attestation "prov": condition:`},
		{"condition is not bool", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Attestations = []verify.AttestationRule{{Name: "prov", PredicateType: verify.PredicateSLSAProvenanceV1, Condition: "predicateType"}}
			return b
		}()}}, nil, "not bool"},
		{"condition names an unknown variable", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Attestations = []verify.AttestationRule{{Name: "prov", PredicateType: verify.PredicateSLSAProvenanceV1, Condition: "builder == 'x'"}}
			return b
		}()}}, nil, "undeclared reference"},
		{"attestation rule names unknown authority", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Attestations = []verify.AttestationRule{{Name: "prov", PredicateType: verify.PredicateSLSAProvenanceV1, Authorities: []string{"nobody"}}}
			return b
		}()}}, nil, `unknown authority "nobody"`},
		{"attestation rule without predicate type", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Attestations = []verify.AttestationRule{{Name: "prov"}}
			return b
		}()}}, nil, "no predicate type"},
		{"lineage depth out of range", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Lineage = &verify.LineageRule{Depth: verify.MaxLineageDepth + 1}
			return b
		}()}}, nil, "lineage depth"},
		{"lineage requires with depth 0", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Lineage = &verify.LineageRule{Require: []string{"dataset*"}}
			return b
		}()}}, nil, "depth is 0"},
		{"lineage bad glob", verify.Policy{Boundaries: []verify.Boundary{func() verify.Boundary {
			b := good()
			b.Lineage = &verify.LineageRule{Depth: 1, Require: []string{"data["}}
			return b
		}()}}, nil, "lineage require"},
		{"bad max dependencies", verify.Policy{Boundaries: []verify.Boundary{good()}}, []verify.Option{verify.WithMaxDependencies(0)}, "max dependencies"},
		{"bad max evidence", verify.Policy{Boundaries: []verify.Boundary{good()}}, []verify.Option{verify.WithMaxEvidence(0)}, "max evidence"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := verify.New(tc.p, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := verify.New(verify.Policy{InsecureAllowUnmatched: true}); err != nil {
		t.Errorf("an allow-unmatched policy without boundaries is valid: %v", err)
	}
	if _, err := verify.New(verify.Policy{Boundaries: []verify.Boundary{good()}}, verify.WithMaxDependencies(1), verify.WithMaxEvidence(1)); err != nil {
		t.Errorf("limits of 1 are valid: %v", err)
	}
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	p := policy(1, keyAuthority("release", k))
	if got := engine(t, p).Fingerprint(); got != engine(t, policy(1, keyAuthority("release", k))).Fingerprint() || got == "" {
		t.Errorf("fingerprint not stable: %q", got)
	}
	if engine(t, p).Fingerprint() == engine(t, policy(1, keyAuthority("release", k2))).Fingerprint() {
		t.Error("fingerprint ignores the key")
	}
	ss1, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	ss2, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	if engine(t, policy(1, keylessAuthority("ci", ss1, testIssuer, testSubject))).Fingerprint() ==
		engine(t, policy(1, keylessAuthority("ci", ss2, testIssuer, testSubject))).Fingerprint() {
		t.Error("fingerprint ignores the trusted root")
	}
	withRule := policy(1, keyAuthority("release", k))
	withRule.Boundaries[0].Attestations = []verify.AttestationRule{{Name: "prov", PredicateType: verify.PredicateSLSAProvenanceV1, Condition: "true"}}
	if engine(t, p).Fingerprint() == engine(t, withRule).Fingerprint() {
		t.Error("fingerprint ignores attestation rules")
	}
	withLineage := policy(1, keyAuthority("release", k))
	withLineage.Boundaries[0].Lineage = &verify.LineageRule{Depth: 2, Require: []string{"*"}}
	if engine(t, p).Fingerprint() == engine(t, withLineage).Fingerprint() {
		t.Error("fingerprint ignores the lineage rule")
	}
	p.Fingerprint = "sha256:configured"
	if got := engine(t, p).Fingerprint(); got != "sha256:configured" {
		t.Errorf("Fingerprint() = %q, want the policy's", got)
	}
}

// A certificate from another CA never verifies, whatever its identity.
func TestKeylessUntrustedCA(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rogue, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := fixtures.AttachBundle(ctx, e.subject, rogue.Signer(testIssuer, testSubject), fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, e.subject, rogue.Signer(testIssuer, testSubject), fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	v := mustVerify(t, engine(t, policy(1, keylessAuthority("ci", e.ss, testIssuer, testSubject))), e.subj(t), e.reg.Fetcher())
	wantDenied(t, v, "sigstore-bundle sha256:")
	wantDenied(t, v, `cosign-legacy sig[0]: keyless verification for authority "ci" failed`)
}

// On a registry without the referrers API, go-containerregistry maintains
// the fallback tag as cosign does; the engine finds the bundle there.
func TestRegistryWithoutReferrersAPI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg, err := fixtures.StartRegistryWithoutReferrers()
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ref, err := reg.Ref("acme/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	idx, children, err := fixtures.PushIndex(ctx, ref, 2)
	if err != nil {
		t.Fatal(err)
	}
	k, err := fixtures.NewKeySigner(fixtures.AlgEd25519)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fixtures.AttachBundle(ctx, idx, k, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	eng := engine(t, policy(1, keyAuthority("release", k)))
	h, _ := v1.NewHash(idx.DigestStr())
	v := mustVerify(t, eng, verify.Subject{Upstream: "u", Repository: "acme/app", Digest: h}, reg.Fetcher())
	wantAllowed(t, v, "key", verify.FormatSigstoreBundle)

	// The children are not signed themselves.
	ch, _ := v1.NewHash(children[0].DigestStr())
	v = mustVerify(t, eng, verify.Subject{Upstream: "u", Repository: "acme/app", Digest: ch}, reg.Fetcher())
	wantDenied(t, v, "no signatures found (checked sha256-")
}

// Certificates must carry a verified SCT unless InsecureSkipSCT says
// otherwise; a zero SCTThreshold is the default, never "none". The virtual
// sigstore's certificates carry no SCTs.
func TestSCTRequired(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if _, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 2} {
		a := keylessAuthority("ci", e.ss, testIssuer, testSubject)
		a.Keyless.InsecureSkipSCT, a.Keyless.SCTThreshold = false, n
		v := mustVerify(t, engine(t, policy(1, a)), e.subj(t), e.reg.Fetcher())
		wantDenied(t, v, `cosign-legacy sig[0]: keyless verification for authority "ci" failed: failed to verify signed certificate timestamp`)
		if n := strings.Count(strings.Join(v.Reasons, "\n"), "failed to verify signed certificate timestamp"); n != 2 {
			t.Errorf("SCTThreshold %d: %d reasons name the missing SCT, want 2 (bundle and legacy): %q", a.Keyless.SCTThreshold, n, v.Reasons)
		}
	}
	a := keylessAuthority("ci", e.ss, testIssuer, testSubject)
	v := mustVerify(t, engine(t, policy(1, a)), e.subj(t), e.reg.Fetcher())
	if !v.Allowed {
		t.Fatalf("InsecureSkipSCT: denied: %q", v.Reasons)
	}
	strict := keylessAuthority("ci", e.ss, testIssuer, testSubject)
	strict.Keyless.InsecureSkipSCT = false
	if engine(t, policy(1, a)).Fingerprint() == engine(t, policy(1, strict)).Fingerprint() {
		t.Error("fingerprint ignores InsecureSkipSCT")
	}
}

// Blob gating asks which mode a repository's blobs are served under
// before any manifest names them: enforce wins whenever a manifest there
// could fall in an enforce (or refused) boundary, warn only when a warn
// boundary catches every manifest first, and a repository no boundary
// can take is reported as unmatched.
func TestBlobMode(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	const model = "application/vnd.cncf.model.manifest.v1+json"
	b := func(name string, mode verify.Mode, repos string, types ...string) verify.Boundary {
		return verify.Boundary{Name: name, Upstream: "hub", Repositories: []string{repos}, ArtifactTypes: types,
			Mode: mode, Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)}}
	}
	refused := b("broken", verify.ModeWarn, "broken/*")
	refused.Refused = "boundary file does not parse"
	e := engine(t, verify.Policy{Boundaries: []verify.Boundary{
		b("prod", verify.ModeEnforce, "prod/*"),
		b("canary", verify.ModeWarn, "canary/*"),
		b("models-trial", verify.ModeWarn, "ml/*", model),
		b("ml", verify.ModeEnforce, "ml/*"),
		b("datasets-trial", verify.ModeWarn, "data/*", model),
		b("data", verify.ModeWarn, "data/*"),
		b("only-models", verify.ModeWarn, "lab/*", model),
		refused,
	}})
	tests := []struct {
		repo     string
		boundary string
		mode     verify.Mode
		ok       bool
	}{
		{"prod/app", "prod", verify.ModeEnforce, true},
		{"canary/app", "canary", verify.ModeWarn, true},
		// A model manifest would be warned about, an image denied.
		{"ml/llama", "ml", verify.ModeEnforce, true},
		// Every manifest is warned about; the first warn boundary is named.
		{"data/corpus", "datasets-trial", verify.ModeWarn, true},
		// Anything but a model falls past every boundary.
		{"lab/x", "", verify.ModeEnforce, false},
		{"broken/app", "broken", verify.ModeEnforce, true},
		{"other/app", "", verify.ModeEnforce, false},
	}
	for _, tc := range tests {
		name, mode, ok := e.BlobMode("hub", tc.repo)
		if name != tc.boundary || mode != tc.mode || ok != tc.ok {
			t.Errorf("BlobMode(hub, %s) = %q, %s, %v; want %q, %s, %v", tc.repo, name, mode, ok, tc.boundary, tc.mode, tc.ok)
		}
	}
	if _, _, ok := e.BlobMode("elsewhere", "prod/app"); ok {
		t.Error("a boundary of another upstream gated the blob")
	}
}
