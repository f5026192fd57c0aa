package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// A DSSE bundle counts as a signature because its statement names the
// digest, as for cosign verify --key. A statement that does not parse
// names nothing: the bundle counts for nothing, key or keyless, even
// though its envelope signature and the subject sigstore-go reads from it
// are valid, and the reason says why.
func TestDSSEBundleStatementMustParse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	key := func(e *env) fixtures.Signer { return e.key }
	ci := func(e *env) fixtures.Signer { return e.ss.Signer(testIssuer, testSubject) }
	keyAuth := func(e *env) verify.Authority { return keyAuthority("release", e.key) }
	ciAuth := func(e *env) verify.Authority { return keylessAuthority("release", e.ss, testIssuer, testSubject) }
	tests := []struct {
		name   string
		signer func(e *env) fixtures.Signer
		auth   func(e *env) verify.Authority
		spec   fixtures.BundleSpec
		want   string
	}{
		{name: "unknown statement type, key", signer: key, auth: keyAuth,
			spec: fixtures.BundleSpec{StatementType: "https://in-toto.io/Statement/v9"},
			want: `unsupported in-toto statement type "https://in-toto.io/Statement/v9"`},
		{name: "predicate not an object, key", signer: key, auth: keyAuth,
			spec: fixtures.BundleSpec{Predicate: []any{"not", "an", "object"}},
			want: "in-toto predicate is not a JSON object"},
		{name: "unknown statement type, keyless", signer: ci, auth: ciAuth,
			spec: fixtures.BundleSpec{StatementType: "https://in-toto.io/Statement/v9"},
			want: `unsupported in-toto statement type "https://in-toto.io/Statement/v9"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if _, err := fixtures.AttachBundle(ctx, e.subject, tc.signer(e), tc.spec); err != nil {
				t.Fatal(err)
			}
			v := mustVerify(t, engine(t, policy(1, tc.auth(e))), e.subj(t), e.reg.Fetcher())
			t.Logf("reasons: %q", v.Reasons)
			wantDenied(t, v, "bundle statement cannot name the subject: "+tc.want)
			wantDenied(t, v, "threshold 1 not met: 0 authorities verified")
		})
	}

	// An attestation rule asking for the predicate type the bundle is
	// labelled with names the rejected bundle instead of calling the
	// attestation missing.
	t.Run("named by the rule it would answer", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
			t.Fatal(err)
		}
		if _, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{
			PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now()), StatementType: "https://in-toto.io/Statement/v9",
		}); err != nil {
			t.Fatal(err)
		}
		v := mustVerify(t, engine(t, attPolicy(provRule(nil), keyAuthority("release", e.key))), e.subj(t), e.reg.Fetcher())
		t.Logf("reasons: %q", v.Reasons)
		wantDenied(t, v, "attestation SLSA provenance v1 (sigstore-bundle sha256:")
		wantDenied(t, v, `attestation rule "provenance": no valid attestation https://slsa.dev/provenance/v1`)
		if len(v.Signers) != 1 || v.Signers[0].Evidence != verify.FormatCosignLegacy {
			t.Errorf("signers = %+v, want only the legacy signature", v.Signers)
		}
	})
}

// Key-signed legacy attestations are verified by sigstore-go like every
// other DSSE envelope, with every key algorithm a key authority accepts,
// the matching key listed after another one.
func TestLegacyAttestationKeyAlgorithms(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, alg := range []string{fixtures.AlgECDSAP256, fixtures.AlgECDSAP384, fixtures.AlgRSA, fixtures.AlgEd25519} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			k, err := fixtures.NewKeySigner(alg)
			if err != nil {
				t.Fatal(err)
			}
			if err := fixtures.AttachLegacySignature(ctx, e.subject, k, fixtures.Tamper{}); err != nil {
				t.Fatal(err)
			}
			if err := fixtures.AttachLegacyAttestation(ctx, e.subject, k, fixtures.BundleSpec{
				PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now()),
			}); err != nil {
				t.Fatal(err)
			}
			v := mustVerify(t, engine(t, attPolicy(provRule(nil), keyAuthority("release", e.key, k))), e.subj(t), e.reg.Fetcher())
			if !v.Allowed {
				t.Fatalf("denied, want allowed: %q", v.Reasons)
			}
			if len(v.Attestations) != 1 || v.Attestations[0].Signer.Key != "release.pub'" || v.Attestations[0].Signer.Evidence != verify.FormatCosignAttestation {
				t.Errorf("attestations = %+v, want the second key's legacy attestation", v.Attestations)
			}
		})
	}
}

// cosign accepts a legacy attestation envelope when any of its
// signatures verifies; sigstore-go verifies one signature per envelope,
// so each is presented on its own. A foreign signature first does not
// hide the trusted one, key or keyless.
func TestLegacyAttestationCoSigned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		signer func(e *env) fixtures.Signer
		auth   func(e *env) verify.Authority
		kind   string
	}{
		{name: "key", signer: func(e *env) fixtures.Signer { return e.key },
			auth: func(e *env) verify.Authority { return keyAuthority("release", e.key) }, kind: "key"},
		{name: "keyless", signer: func(e *env) fixtures.Signer { return e.ss.Signer(testIssuer, testSubject) },
			auth: func(e *env) verify.Authority { return keylessAuthority("release", e.ss, testIssuer, testSubject) }, kind: "keyless"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if err := fixtures.AttachLegacySignature(ctx, e.subject, tc.signer(e), fixtures.Tamper{}); err != nil {
				t.Fatal(err)
			}
			if err := fixtures.AttachLegacyAttestation(ctx, e.subject, tc.signer(e), fixtures.BundleSpec{
				PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now()),
				Tamper: fixtures.Tamper{ForeignSignatureFirst: true},
			}); err != nil {
				t.Fatal(err)
			}
			v := mustVerify(t, engine(t, attPolicy(provRule(nil), tc.auth(e))), e.subj(t), e.reg.Fetcher())
			if !v.Allowed {
				t.Fatalf("denied, want allowed: %q", v.Reasons)
			}
			if len(v.Attestations) != 1 || v.Attestations[0].Signer.Kind != tc.kind {
				t.Errorf("attestations = %+v", v.Attestations)
			}
		})
	}
}
