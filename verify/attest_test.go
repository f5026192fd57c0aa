package verify_test

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const testBuilder = "https://github.com/acme/app/.github/workflows/build.yml@refs/heads/main"

// attPolicy is one boundary with the given authorities, signature
// threshold 1 and the attestation rules.
func attPolicy(rules []verify.AttestationRule, auths ...verify.Authority) verify.Policy {
	p := policy(1, auths...)
	p.Boundaries[0].Attestations = rules
	return p
}

func provRule(mut func(*verify.AttestationRule)) []verify.AttestationRule {
	r := verify.AttestationRule{Name: "provenance", PredicateType: verify.PredicateSLSAProvenanceV1, Authorities: []string{"release"}}
	if mut != nil {
		mut(&r)
	}
	return []verify.AttestationRule{r}
}

func provenance(finished time.Time) map[string]any {
	return fixtures.SLSAProvenanceV1(testBuilder, nil, finished.Add(-time.Minute), finished)
}

func TestAttestations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Now()
	other, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	bundle := func(s func(e *env) fixtures.Signer, spec fixtures.BundleSpec) func(e *env) error {
		return func(e *env) error {
			_, err := fixtures.AttachBundle(ctx, e.subject, s(e), spec)
			return err
		}
	}
	// legacy attaches a .att attestation plus a .sig signature by the same
	// signer: legacy attestations never count as signatures.
	legacy := func(s func(e *env) fixtures.Signer, spec fixtures.BundleSpec) func(e *env) error {
		return func(e *env) error {
			if err := fixtures.AttachLegacySignature(ctx, e.subject, s(e), fixtures.Tamper{}); err != nil {
				return err
			}
			return fixtures.AttachLegacyAttestation(ctx, e.subject, s(e), spec)
		}
	}
	key := func(e *env) fixtures.Signer { return e.key }
	otherKey := func(*env) fixtures.Signer { return other }
	ci := func(e *env) fixtures.Signer { return e.ss.Signer(testIssuer, testSubject) }
	prov := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(now)}
	provV01 := prov
	provV01.StatementType = verify.StatementV01
	keyAuth := func(e *env) []verify.Authority { return []verify.Authority{keyAuthority("release", e.key)} }
	ciAuth := func(e *env) []verify.Authority {
		return []verify.Authority{keylessAuthority("release", e.ss, testIssuer, testSubject)}
	}
	twoAuth := func(e *env) []verify.Authority {
		return []verify.Authority{keyAuthority("release", e.key), keyAuthority("other", other)}
	}

	tests := []struct {
		name   string
		attach []func(e *env) error
		auths  func(e *env) []verify.Authority
		rules  []verify.AttestationRule
		opts   []verify.Option
		// want is "" for an allow, else a reason the denial must give.
		want       string
		wantKind   string
		wantSigned bool
	}{
		{name: "bundle v1 statement, key", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth, rules: provRule(nil), wantKind: "key"},
		{name: "bundle v0.1 statement, key", attach: []func(*env) error{bundle(key, provV01)}, auths: keyAuth, rules: provRule(nil), wantKind: "key"},
		{name: "bundle v1 statement, keyless", attach: []func(*env) error{bundle(ci, prov)}, auths: ciAuth, rules: provRule(nil), wantKind: "keyless", wantSigned: true},
		{name: "bundle v0.1 statement, keyless, in the fallback index", attach: []func(*env) error{bundle(ci, func() fixtures.BundleSpec {
			s := provV01
			s.Placement = fixtures.PlaceFallback
			return s
		}())}, auths: ciAuth, rules: provRule(nil), wantKind: "keyless", wantSigned: true},
		{name: "legacy .att v0.1, key", attach: []func(*env) error{legacy(key, prov)}, auths: keyAuth, rules: provRule(nil), wantKind: "key"},
		{name: "legacy .att v1, key", attach: []func(*env) error{legacy(key, func() fixtures.BundleSpec {
			s := prov
			s.StatementType = verify.StatementV1
			return s
		}())}, auths: keyAuth, rules: provRule(nil), wantKind: "key"},
		{name: "legacy .att, keyless", attach: []func(*env) error{legacy(ci, prov)}, auths: ciAuth, rules: provRule(nil), wantKind: "keyless", wantSigned: true},
		{name: "condition true over predicate and signer", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) {
				r.Condition = `predicate.runDetails.builder.id == "` + testBuilder + `" && signer.authority == "release" && signer.kind == "key" && size(subject) == 1`
			}), wantKind: "key"},
		{name: "within max_age by statement time", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = time.Hour }), wantKind: "key"},
		// The statement time has whole seconds: an attestation exactly
		// max_age old is still fresh, one second more is stale.
		{name: "exactly max_age old", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = time.Hour }),
			opts:  []verify.Option{verify.WithClock(func() time.Time { return now.Truncate(time.Second).Add(time.Hour) })}, wantKind: "key"},
		{name: "one second past max_age", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = time.Hour }),
			opts:  []verify.Option{verify.WithClock(func() time.Time { return now.Truncate(time.Second).Add(time.Hour + time.Second) })}, want: "stale: built"},

		{name: "missing attestation", attach: []func(*env) error{func(e *env) error { return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}) }},
			auths: keyAuth, rules: provRule(nil), want: `attestation rule "provenance": missing attestation https://slsa.dev/provenance/v1`},
		{name: "wrong predicate type", attach: []func(*env) error{bundle(key, fixtures.BundleSpec{PredicateType: verify.PredicateSPDX, Predicate: map[string]any{"spdxVersion": "SPDX-2.3"}})},
			auths: keyAuth, rules: provRule(nil), want: "missing attestation https://slsa.dev/provenance/v1"},
		{name: "statement about another digest", attach: []func(*env) error{
			func(e *env) error { return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}) },
			legacy(key, func() fixtures.BundleSpec {
				s := prov
				s.Tamper.SignDigest = &v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
				return s
			}())}, auths: keyAuth, rules: provRule(nil), want: "statement subject is not the subject"},
		{name: "signed by an authority the rule does not name", attach: []func(*env) error{bundle(key, fixtures.BundleSpec{}), bundle(otherKey, prov)},
			auths: twoAuth, rules: provRule(nil), want: `signed by authority "other" not named by rule`},
		{name: "signed by an unknown key", attach: []func(*env) error{bundle(key, fixtures.BundleSpec{}), bundle(otherKey, prov)},
			auths: keyAuth, rules: provRule(nil), want: "does not verify with any key"},
		{name: "tampered legacy envelope", attach: []func(*env) error{legacy(key, func() fixtures.BundleSpec {
			s := prov
			s.Tamper.ModifyPayload = true
			return s
		}())}, auths: keyAuth, rules: provRule(nil), want: "envelope does not verify"},
		{name: "keyless attestation by another identity", attach: []func(*env) error{
			legacy(ci, fixtures.BundleSpec{PredicateType: verify.PredicateSPDX}),
			legacy(func(e *env) fixtures.Signer {
				return e.ss.Signer(testIssuer, "https://github.com/evil/fork/.github/workflows/x.yml@refs/heads/main")
			}, prov)},
			auths: ciAuth, rules: provRule(nil), want: "certificate subject"},
		{name: "legacy attestation alone is not a signature", attach: []func(*env) error{func(e *env) error { return fixtures.AttachLegacyAttestation(ctx, e.subject, e.key, prov) }},
			auths: keyAuth, rules: provRule(nil), want: "threshold 1 not met"},
		{name: "legacy statement of an unknown type", attach: []func(*env) error{legacy(key, func() fixtures.BundleSpec {
			s := prov
			s.StatementType = "https://in-toto.io/Statement/v9"
			return s
		}())}, auths: keyAuth, rules: provRule(nil), want: `unsupported in-toto statement type "https://in-toto.io/Statement/v9"`},
		{name: "condition false", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) {
				r.Condition = `predicate.runDetails.builder.id == "https://evil.example/builder"`
			}), want: "condition false"},
		{name: "condition error is a denial", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) { r.Condition = `predicate.runDetails.nothere.id == "x"` }), want: "condition error: no such key: nothere"},
		{name: "condition too expensive", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: provRule(func(r *verify.AttestationRule) {
				r.Condition = `[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, [1,2,3,4,5,6,7,8,9,10].all(e, [1,2,3,4,5,6,7,8,9,10].all(f, a+b+c+d+e+f > 0))))))`
			}), want: "condition error: operation cancelled: actual cost limit exceeded"},
		{name: "stale by statement time", attach: []func(*env) error{bundle(key, fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(now.Add(-60 * 24 * time.Hour))})},
			auths: keyAuth, rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = 720 * time.Hour }), want: "stale: built " + now.Add(-60*24*time.Hour).UTC().Format("2006-01-02")},
		{name: "statement time in the future", attach: []func(*env) error{bundle(key, fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(now.Add(48 * time.Hour))})},
			auths: keyAuth, rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = 720 * time.Hour }), want: "is in the future"},
		{name: "stale by signed time", attach: []func(*env) error{bundle(ci, prov)}, auths: ciAuth,
			rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = 24 * time.Hour }),
			opts:  []verify.Option{verify.WithClock(func() time.Time { return now.Add(72 * time.Hour) })}, want: "max_age 24h"},
		{name: "no time to check max_age against", attach: []func(*env) error{bundle(key, fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: fixtures.SLSAProvenanceV1(testBuilder, nil, time.Time{}, time.Time{})})},
			auths: keyAuth, rules: provRule(func(r *verify.AttestationRule) { r.MaxAge = time.Hour }), want: "no signed or statement time"},
		{name: "every rule must hold", attach: []func(*env) error{bundle(key, prov)}, auths: keyAuth,
			rules: append(provRule(nil), verify.AttestationRule{Name: "sbom", PredicateType: verify.PredicateSPDX}), want: `attestation rule "sbom": missing attestation https://spdx.dev/Document`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			for _, a := range tc.attach {
				if err := a(e); err != nil {
					t.Fatal(err)
				}
			}
			eng := engine(t, attPolicy(tc.rules, tc.auths(e)...), tc.opts...)
			v := mustVerify(t, eng, e.subj(t), e.reg.Fetcher())
			if tc.want != "" {
				t.Logf("reasons: %q", v.Reasons)
				wantDenied(t, v, tc.want)
				if !strings.Contains(tc.want, "threshold") && len(v.Attestations) == len(tc.rules) {
					t.Errorf("denied verdict lists every rule as satisfied: %+v", v.Attestations)
				}
				return
			}
			if !v.Allowed {
				t.Fatalf("denied, want allowed: %q", v.Reasons)
			}
			if len(v.Attestations) != len(tc.rules) {
				t.Fatalf("attestations = %+v, want one per rule", v.Attestations)
			}
			got := v.Attestations[0]
			if got.Rule != "provenance" || got.PredicateType != verify.PredicateSLSAProvenanceV1 || got.Name != "SLSA provenance v1" ||
				got.Signer.Authority != "release" || got.Signer.Kind != tc.wantKind {
				t.Errorf("attestation result = %+v", got)
			}
			if got.Time.IsZero() {
				t.Errorf("attestation has no time")
			}
			if tc.wantSigned && got.Time.Sub(now).Abs() > 10*time.Minute {
				t.Errorf("signed time %s is not the signing time", got.Time)
			}
		})
	}
}

func TestPredicateName(t *testing.T) {
	t.Parallel()
	for uri, want := range map[string]string{
		"https://slsa.dev/provenance/v1":          "SLSA provenance v1",
		"https://slsa.dev/provenance/v0.2":        "SLSA provenance v0.2",
		"https://model_signing/signature/v1.0":    "OpenSSF model signature",
		"https://example.com/custom-predicate/v1": "https://example.com/custom-predicate/v1",
	} {
		if got := verify.PredicateName(uri); got != want {
			t.Errorf("PredicateName(%q) = %q, want %q", uri, got, want)
		}
	}
}

// Two rules on one predicate type are both offered every attestation of
// it: one attestation may satisfy both, and one that fails either
// denies.
func TestRulesSharingAPredicateType(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	spec := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now())}
	if _, err := fixtures.AttachBundle(ctx, e.subject, e.key, spec); err != nil {
		t.Fatal(err)
	}
	rules := func(second string) []verify.AttestationRule {
		builder := provRule(func(r *verify.AttestationRule) {
			r.Name, r.Condition = "builder", `predicate.runDetails.builder.id == "`+testBuilder+`"`
		})
		other := provRule(func(r *verify.AttestationRule) { r.Name, r.Condition = "second", second })
		return append(builder, other...)
	}
	v := mustVerify(t, engine(t, attPolicy(rules(`signer.authority == "release"`), keyAuthority("release", e.key))), e.subj(t), e.reg.Fetcher())
	if !v.Allowed || len(v.Attestations) != 2 {
		t.Fatalf("one attestation for two rules: %+v", v)
	}
	v = mustVerify(t, engine(t, attPolicy(rules(`signer.authority == "qa"`), keyAuthority("release", e.key))), e.subj(t), e.reg.Fetcher())
	wantDenied(t, v, `attestation rule "second"`)
}
