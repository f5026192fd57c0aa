package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// The benchmarks measure a cold verification (the engine keeps no cache)
// with evidence served from memory, so only parsing and cryptography count.
func benchVerify(b *testing.B, attach func(e *env) error, auth func(e *env) verify.Authority) {
	benchVerifyPolicy(b, attach, func(e *env) verify.Policy { return policy(1, auth(e)) })
}

func benchVerifyPolicy(b *testing.B, attach func(e *env) error, pol func(e *env) verify.Policy) {
	e := newEnv(b)
	if err := attach(e); err != nil {
		b.Fatal(err)
	}
	eng := engine(b, pol(e))
	f := fixtures.Memoize(e.reg.Fetcher())
	s := e.subj(b)
	ctx := context.Background()
	if v, err := eng.Verify(ctx, s, f); err != nil || !v.Allowed {
		b.Fatalf("warm-up verdict %+v, %v", v, err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		v, err := eng.Verify(ctx, s, f)
		if err != nil || !v.Allowed {
			b.Fatalf("verdict %+v, %v", v, err)
		}
	}
}

func BenchmarkVerifyKeyLegacy(b *testing.B) {
	benchVerify(b,
		func(e *env) error {
			return fixtures.AttachLegacySignature(context.Background(), e.subject, e.key, fixtures.Tamper{})
		},
		func(e *env) verify.Authority { return keyAuthority("release", e.key) })
}

func BenchmarkVerifyKeylessBundle(b *testing.B) {
	benchVerify(b,
		func(e *env) error {
			_, err := fixtures.AttachBundle(context.Background(), e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{})
			return err
		},
		func(e *env) verify.Authority { return keylessAuthority("ci", e.ss, testIssuer, testSubject) })
}

// BenchmarkVerifyKeyAttestation is cosign v2's default layout with a key:
// a legacy .sig signature and a legacy .att provenance attestation that a
// rule requires.
func BenchmarkVerifyKeyAttestation(b *testing.B) {
	prov := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now())}
	benchVerifyPolicy(b,
		func(e *env) error {
			ctx := context.Background()
			if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
				return err
			}
			return fixtures.AttachLegacyAttestation(ctx, e.subject, e.key, prov)
		},
		func(e *env) verify.Policy { return attPolicy(provRule(nil), keyAuthority("release", e.key)) })
}

// BenchmarkVerifyKeyBundleAttestation is cosign v3's default layout with a
// key: one DSSE bundle carrying the provenance, which is both the
// signature and the attestation.
func BenchmarkVerifyKeyBundleAttestation(b *testing.B) {
	prov := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now())}
	benchVerifyPolicy(b,
		func(e *env) error {
			_, err := fixtures.AttachBundle(context.Background(), e.subject, e.key, prov)
			return err
		},
		func(e *env) verify.Policy { return attPolicy(provRule(nil), keyAuthority("release", e.key)) })
}

// BenchmarkVerifyKeylessAttestation is the keyless counterpart of
// BenchmarkVerifyKeyAttestation: .sig and .att with certificates and
// Rekor entries.
func BenchmarkVerifyKeylessAttestation(b *testing.B) {
	prov := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now())}
	benchVerifyPolicy(b,
		func(e *env) error {
			ctx := context.Background()
			s := e.ss.Signer(testIssuer, testSubject)
			if err := fixtures.AttachLegacySignature(ctx, e.subject, s, fixtures.Tamper{}); err != nil {
				return err
			}
			return fixtures.AttachLegacyAttestation(ctx, e.subject, s, prov)
		},
		func(e *env) verify.Policy {
			return attPolicy(provRule(nil), keylessAuthority("release", e.ss, testIssuer, testSubject))
		})
}

// BenchmarkVerifyEvidenceBomb measures the denial of a subject whose 64
// referrers are 1 MiB bundles that parse but are not validly signed: the
// evidence budget bounds the bytes read and allocated per verification.
func BenchmarkVerifyEvidenceBomb(b *testing.B) {
	s := memSubject(b)
	f := fixtures.NewMemoryFetcher()
	addBomb(b, f, s, 64, 1<<20)
	eng := engine(b, policy(1, keyAuthority("release", newKey(b))))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		v, err := eng.Verify(ctx, s, f)
		if err != nil || v.Allowed || v.Limit != verify.LimitEvidenceBytes {
			b.Fatalf("verdict %+v, %v", v, err)
		}
	}
}
