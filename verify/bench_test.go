package verify_test

import (
	"context"
	"testing"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// The benchmarks measure a cold verification (the engine keeps no cache)
// with evidence served from memory, so only parsing and cryptography count.
func benchVerify(b *testing.B, attach func(e *env) error, auth func(e *env) verify.Authority) {
	e := newEnv(b)
	if err := attach(e); err != nil {
		b.Fatal(err)
	}
	eng := engine(b, policy(1, auth(e)))
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
