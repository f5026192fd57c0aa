package verify_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const (
	testIssuer  = "https://token.actions.githubusercontent.com"
	testSubject = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
	// testIssuerRegex and testSubjectRegex accept testIssuer and
	// testSubject, and any workflow of acme on main.
	testIssuerRegex  = `^https://token\.actions\.githubusercontent\.com$`
	testSubjectRegex = `^https://github\.com/acme/[^/]+/\.github/workflows/[^@]+@refs/heads/main$`
)

// env is one registry with one freshly pushed image and the signers a test
// may use.
type env struct {
	reg     *fixtures.Registry
	subject name.Digest
	key     *fixtures.KeySigner
	ss      *fixtures.Sigstore
}

func newEnv(t testing.TB) *env {
	t.Helper()
	reg, err := fixtures.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	ref, err := reg.Ref("acme/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	d, err := fixtures.PushImage(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	key, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	return &env{reg: reg, subject: d, key: key, ss: ss}
}

func (e *env) subj(t testing.TB) verify.Subject {
	t.Helper()
	h, err := v1.NewHash(e.subject.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	return verify.Subject{Upstream: "hub", Repository: "acme/app", Reference: "v1", Digest: h}
}

func keyAuthority(name string, keys ...*fixtures.KeySigner) verify.Authority {
	a := verify.Authority{Name: name, Key: &verify.KeyAuthority{TrustName: name}}
	for i, k := range keys {
		a.Key.Keys = append(a.Key.Keys, verify.NamedKey{Name: name + ".pub" + strings.Repeat("'", i), PEM: k.PublicKeyPEM()})
	}
	return a
}

// keylessAuthority accepts one exact identity. The virtual sigstore's
// certificates carry no SCTs, so the SCT check is off; TestSCTRequired
// covers it.
func keylessAuthority(name string, ss *fixtures.Sigstore, issuer, subject string) verify.Authority {
	return verify.Authority{Name: name, Keyless: &verify.KeylessAuthority{
		TrustName: "virtual", TrustedRoot: ss, Issuer: issuer, Subject: subject, InsecureSkipSCT: true,
	}}
}

// keylessRegexAuthority accepts identities by regular expression only.
func keylessRegexAuthority(name string, ss *fixtures.Sigstore, issuerRegex, subjectRegex string) verify.Authority {
	return verify.Authority{Name: name, Keyless: &verify.KeylessAuthority{
		TrustName: "virtual", TrustedRoot: ss, IssuerRegex: issuerRegex, SubjectRegex: subjectRegex, InsecureSkipSCT: true,
	}}
}

func policy(threshold int, auths ...verify.Authority) verify.Policy {
	return verify.Policy{Boundaries: []verify.Boundary{{
		Name: "all", Upstream: "*", Repositories: []string{"**"}, Mode: verify.ModeEnforce,
		Threshold: threshold, Authorities: auths,
	}}}
}

func engine(t testing.TB, p verify.Policy, opts ...verify.Option) *verify.Engine {
	t.Helper()
	e, err := verify.New(p, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustVerify(t *testing.T, e *verify.Engine, s verify.Subject, f verify.Fetcher) verify.Verdict {
	t.Helper()
	v, err := e.Verify(context.Background(), s, f)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return v
}

func wantAllowed(t *testing.T, v verify.Verdict, kind, evidence string) {
	t.Helper()
	if !v.Allowed {
		t.Fatalf("denied, want allowed: %q", v.Reasons)
	}
	if len(v.Signers) == 0 || v.Signers[0].Kind != kind || v.Signers[0].Evidence != evidence {
		t.Fatalf("signers = %+v, want kind %s evidence %s", v.Signers, kind, evidence)
	}
	if v.Boundary != "all" || v.Mode != verify.ModeEnforce || v.CheckedAt.IsZero() {
		t.Fatalf("verdict metadata = %+v", v)
	}
}

func wantDenied(t *testing.T, v verify.Verdict, reason string) {
	t.Helper()
	if v.Allowed {
		t.Fatalf("allowed by %+v, want denied", v.Signers)
	}
	if !strings.Contains(strings.Join(v.Reasons, "\n"), reason) {
		t.Fatalf("reasons %q do not mention %q", v.Reasons, reason)
	}
}

func TestAllow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name     string
		attach   func(e *env) error
		auth     func(e *env) verify.Authority
		fetcher  func(f verify.Fetcher) verify.Fetcher
		kind     string
		evidence string
	}{
		{
			name:   "key legacy",
			attach: func(e *env) error { return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}) },
			kind:   "key", evidence: verify.FormatCosignLegacy,
		},
		{
			name: "key bundle via referrers",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{})
				return err
			},
			kind: "key", evidence: verify.FormatSigstoreBundle,
		},
		{
			name: "key bundle via fallback tag",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Placement: fixtures.PlaceFallback})
				return err
			},
			fetcher: fixtures.NoReferrersAPI,
			kind:    "key", evidence: verify.FormatSigstoreBundle,
		},
		{
			name: "key attestation bundle counts as signature",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{
					PredicateType: "https://slsa.dev/provenance/v1", StatementType: fixtures.InTotoStatementV01,
					Predicate: map[string]any{"buildDefinition": map[string]any{}}})
				return err
			},
			kind: "key", evidence: verify.FormatSigstoreBundle,
		},
		{
			name: "keyless bundle",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{})
				return err
			},
			auth: func(e *env) verify.Authority { return keylessAuthority("ci", e.ss, testIssuer, testSubject) },
			kind: "keyless", evidence: verify.FormatSigstoreBundle,
		},
		{
			name: "keyless message signature bundle v0.1",
			attach: func(e *env) error {
				m, err := e.reg.Fetcher().Manifest(ctx, "acme/app", e.subject.DigestStr())
				if err != nil {
					return err
				}
				_, err = fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{MessageSignature: true, Manifest: m.Bytes})
				return err
			},
			auth: func(e *env) verify.Authority { return keylessAuthority("ci", e.ss, testIssuer, testSubject) },
			kind: "keyless", evidence: verify.FormatSigstoreBundle,
		},
		{
			name: "keyless legacy with rekor bundle",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.Tamper{})
			},
			auth: func(e *env) verify.Authority { return keylessAuthority("ci", e.ss, testIssuer, testSubject) },
			kind: "keyless", evidence: verify.FormatCosignLegacy,
		},
		{
			name: "keyless bundle under anchored identity regexes",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{})
				return err
			},
			auth: func(e *env) verify.Authority {
				return keylessRegexAuthority("ci", e.ss, testIssuerRegex, testSubjectRegex)
			},
			kind: "keyless", evidence: verify.FormatSigstoreBundle,
		},
		{
			name: "keyless legacy with RFC3161 timestamp and no log",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject, fixtures.WithRFC3161()), fixtures.Tamper{})
			},
			auth: func(e *env) verify.Authority {
				a := keylessAuthority("ci", e.ss, testIssuer, testSubject)
				a.Keyless.TlogThreshold, a.Keyless.TimestampThreshold = 0, 1
				return a
			},
			kind: "keyless", evidence: verify.FormatCosignLegacy,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if err := tc.attach(e); err != nil {
				t.Fatal(err)
			}
			a := keyAuthority("release", e.key)
			if tc.auth != nil {
				a = tc.auth(e)
			}
			var f verify.Fetcher = e.reg.Fetcher()
			if tc.fetcher != nil {
				f = tc.fetcher(f)
			}
			v := mustVerify(t, engine(t, policy(1, a)), e.subj(t), f)
			wantAllowed(t, v, tc.kind, tc.evidence)
			if tc.kind == "keyless" && (v.Signers[0].Identity != testSubject || v.Signers[0].Issuer != testIssuer) {
				t.Errorf("signer identity = %+v", v.Signers[0])
			}
			if tc.kind == "key" && v.Signers[0].Key != "release.pub" {
				t.Errorf("signer key = %q", v.Signers[0].Key)
			}
		})
	}
}

func TestKeyAlgorithms(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{fixtures.AlgECDSAP256, fixtures.AlgECDSAP384, fixtures.AlgRSA, fixtures.AlgEd25519} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			k, err := fixtures.NewKeySigner(alg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := fixtures.AttachLegacySignature(ctx, e.subject, k, fixtures.Tamper{}); err != nil {
				t.Fatal(err)
			}
			other, err := fixtures.NewKeySigner("")
			if err != nil {
				t.Fatal(err)
			}
			// The hinted key is listed second: the engine must find it.
			v := mustVerify(t, engine(t, policy(1, keyAuthority("release", other, k))), e.subj(t), e.reg.Fetcher())
			wantAllowed(t, v, "key", verify.FormatCosignLegacy)

			e2 := newEnv(t)
			if _, err := fixtures.AttachBundle(ctx, e2.subject, k, fixtures.BundleSpec{}); err != nil {
				t.Fatal(err)
			}
			v = mustVerify(t, engine(t, policy(1, keyAuthority("release", other, k))), e2.subj(t), e2.reg.Fetcher())
			wantAllowed(t, v, "key", verify.FormatSigstoreBundle)
		})
	}
}

func TestDeny(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	keyless := func(e *env) verify.Authority { return keylessAuthority("ci", e.ss, testIssuer, testSubject) }
	keylessRegex := func(e *env) verify.Authority {
		return keylessRegexAuthority("ci", e.ss, testIssuerRegex, testSubjectRegex)
	}
	tests := []struct {
		name    string
		attach  func(e *env) error
		auth    func(e *env) verify.Authority
		fetcher func(f verify.Fetcher) verify.Fetcher
		opts    []verify.Option
		reason  string
	}{
		{
			name:   "unsigned",
			attach: func(*env) error { return nil },
			reason: "no signatures found (checked referrers, sha256-",
		},
		{
			name: "untrusted key",
			attach: func(e *env) error {
				k, err := fixtures.NewKeySigner("")
				if err != nil {
					return err
				}
				return fixtures.AttachLegacySignature(ctx, e.subject, k, fixtures.Tamper{})
			},
			reason: `cosign-legacy sig[0]: signature does not verify with any key of authority "release"`,
		},
		{
			name: "untrusted key bundle",
			attach: func(e *env) error {
				k, err := fixtures.NewKeySigner("")
				if err != nil {
					return err
				}
				_, err = fixtures.AttachBundle(ctx, e.subject, k, fixtures.BundleSpec{})
				return err
			},
			reason: `does not verify with any key of authority "release"`,
		},
		{
			name: "keyless wrong issuer",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer("https://accounts.example.com", testSubject), fixtures.BundleSpec{})
				return err
			},
			auth:   keyless,
			reason: `certificate issuer "https://accounts.example.com" does not match "` + testIssuer + `"`,
		},
		{
			name: "keyless wrong subject",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, "mallory@example.com"), fixtures.Tamper{})
			},
			auth:   keyless,
			reason: `certificate subject "mallory@example.com" does not match`,
		},
		{
			name: "keyless bundle issuer outside issuer_regex",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer("https://token.actions.githubusercontent.com.evil.example", testSubject), fixtures.BundleSpec{})
				return err
			},
			auth:   keylessRegex,
			reason: `certificate issuer "https://token.actions.githubusercontent.com.evil.example" does not match /` + testIssuerRegex + `/ (authority "ci")`,
		},
		{
			name: "keyless legacy issuer outside issuer_regex",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer("https://accounts.example.com", testSubject), fixtures.Tamper{})
			},
			auth:   keylessRegex,
			reason: `certificate issuer "https://accounts.example.com" does not match /` + testIssuerRegex + `/ (authority "ci")`,
		},
		{
			name: "keyless legacy subject outside subject_regex",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, "https://github.com/mallory/app/.github/workflows/release.yml@refs/heads/main"), fixtures.Tamper{})
			},
			auth:   keylessRegex,
			reason: `certificate subject "https://github.com/mallory/app/.github/workflows/release.yml@refs/heads/main" does not match /` + testSubjectRegex + `/ (authority "ci")`,
		},
		{
			name: "keyless bundle subject outside subject_regex",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/feature"), fixtures.BundleSpec{})
				return err
			},
			auth:   keylessRegex,
			reason: `certificate subject "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/feature" does not match /` + testSubjectRegex + `/ (authority "ci")`,
		},
		{
			name: "keyless issuer and subject both wrong",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer("https://accounts.example.com", "mallory@example.com"), fixtures.BundleSpec{})
				return err
			},
			auth: keyless,
			reason: `certificate issuer "https://accounts.example.com" does not match "` + testIssuer +
				`"; certificate subject "mallory@example.com" does not match "` + testSubject + `" (authority "ci")`,
		},
		{
			name: "keyless key-signed evidence",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{})
			},
			auth:   keyless,
			reason: `no certificate; authority "ci" is keyless`,
		},
		{
			name: "expired certificate without timestamp",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject, fixtures.WithoutTimestamp()), fixtures.Tamper{})
			},
			auth:   keyless,
			opts:   []verify.Option{verify.WithClock(func() time.Time { return time.Now().Add(time.Hour) })},
			reason: "certificate expired at",
		},
		{
			name: "keyless bundle without timestamp",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject, fixtures.WithoutTimestamp()), fixtures.BundleSpec{})
				return err
			},
			auth:   keyless,
			reason: `keyless verification for authority "ci" failed`,
		},
		{
			name: "keyless legacy without log entry under default thresholds",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject, fixtures.WithRFC3161()), fixtures.Tamper{})
			},
			auth:   keyless,
			reason: "not enough verified log entries",
		},
		{
			name: "legacy signature replayed from another digest",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{SignDigest: &other})
			},
			reason: "signed digest sha256:abab",
		},
		{
			name: "bundle replayed from another digest",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Tamper: fixtures.Tamper{SignDigest: &other}})
				return err
			},
			reason: `: statement subject is not the subject sha256:`,
		},
		{
			name: "keyless legacy signature replayed from another digest",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.Tamper{SignDigest: &other})
			},
			auth:   keyless,
			reason: "signed digest sha256:abab",
		},
		{
			name: "keyless bundle replayed from another digest",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{Tamper: fixtures.Tamper{SignDigest: &other}})
				return err
			},
			auth:   keyless,
			reason: `: statement subject is not the subject sha256:`,
		},
		{
			name: "message signature bundle over other bytes",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{MessageSignature: true, Manifest: []byte(`{"schemaVersion":2}`)})
				return err
			},
			reason: `does not verify with any key of authority "release": failed to verify signature: artifact does not match digest`,
		},
		{
			name: "legacy payload tampered after signing",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{ModifyPayload: true})
			},
			reason: `signature does not verify with any key of authority "release"`,
		},
		{
			name: "bundle payload tampered after signing",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Tamper: fixtures.Tamper{ModifyPayload: true}})
				return err
			},
			reason: `does not verify with any key of authority "release"`,
		},
		{
			name: "signature annotation not base64",
			attach: func(e *env) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{BadSignatureEncoding: true})
			},
			reason: "cosign-legacy sig[0]: signature annotation is not valid base64",
		},
		{
			name: "bundle JSON truncated",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Tamper: fixtures.Tamper{TruncateBundle: true}})
				return err
			},
			reason: "malformed bundle",
		},
		{
			name: "unsupported bundle version",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Tamper: fixtures.Tamper{BundleMediaType: "application/vnd.dev.sigstore.bundle.v0.9+json"}})
				return err
			},
			reason: "not yet supported",
		},
		{
			name: "referrer subject points elsewhere",
			attach: func(e *env) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Placement: fixtures.PlaceFallback, Tamper: fixtures.Tamper{SubjectDigest: &other}})
				return err
			},
			reason: "referrer subject sha256:abab",
		},
		{
			name: "fallback index lists a missing manifest",
			attach: func(e *env) error {
				h, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Placement: fixtures.PlaceFallback})
				if err != nil {
					return err
				}
				// The in-memory registry refuses an index listing a missing
				// manifest, so the manifest is deleted after listing it.
				return remote.Delete(e.subject.Context().Digest(h.String()))
			},
			fetcher: fixtures.NoReferrersAPI,
			reason:  ": listed manifest not found",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if err := tc.attach(e); err != nil {
				t.Fatal(err)
			}
			a := keyAuthority("release", e.key)
			if tc.auth != nil {
				a = tc.auth(e)
			}
			var f verify.Fetcher = e.reg.Fetcher()
			if tc.fetcher != nil {
				f = tc.fetcher(f)
			}
			v := mustVerify(t, engine(t, policy(1, a), tc.opts...), e.subj(t), f)
			t.Logf("reasons: %q", v.Reasons)
			wantDenied(t, v, tc.reason)
			wantDenied(t, v, "threshold 1 not met: 0 authorities verified")
			// Reading evidence ahead changes nothing a verdict says.
			inOrder := mustVerify(t, engine(t, policy(1, a), append(tc.opts, verify.WithEvidenceInOrder())...), e.subj(t), f)
			wantSameVerdict(t, v, inOrder)
		})
	}
}

// A valid signature next to broken evidence still allows, and the broken
// evidence is reported.
func TestAllowWithRejectedEvidence(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{BadSignatureEncoding: true}); err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", e.key))), e.subj(t), e.reg.Fetcher())
	wantAllowed(t, v, "key", verify.FormatCosignLegacy)
	if len(v.Reasons) != 1 || !strings.Contains(v.Reasons[0], "sig[0]: signature annotation is not valid base64") {
		t.Errorf("reasons = %q", v.Reasons)
	}
}

func TestThreshold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	second, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	p := policy(2, keyAuthority("release", e.key), keyAuthority("qa", second))
	v := mustVerify(t, engine(t, p), e.subj(t), e.reg.Fetcher())
	wantDenied(t, v, "threshold 2 not met: 1 authority verified (release)")

	// Two signatures by the same authority are still one authority.
	if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	v = mustVerify(t, engine(t, p), e.subj(t), e.reg.Fetcher())
	wantDenied(t, v, "threshold 2 not met: 1 authority verified (release)")

	if _, err := fixtures.AttachBundle(ctx, e.subject, second, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	v = mustVerify(t, engine(t, p), e.subj(t), e.reg.Fetcher())
	if !v.Allowed || len(v.Signers) != 2 {
		t.Fatalf("verdict = %+v, want allowed by two authorities", v)
	}
}

// A threshold of N needs N authorities satisfied by N different signers.
// Each case has two authorities and a threshold of 2.
func TestThresholdCountsSigners(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const other = "https://github.com/acme/app/.github/workflows/nightly.yml@refs/heads/main"
	tests := []struct {
		name   string
		auths  func(e *env, k2, k1b, ck *fixtures.KeySigner) []verify.Authority
		attach func(e *env, k2, k1b, ck *fixtures.KeySigner) error
		// reason is "" when the subject must be allowed by both.
		reason string
		// alone says the evidence satisfies each authority by itself, so
		// the denial is about counting signers, not a failed signature.
		alone bool
	}{
		{
			name: "two keys of two authorities",
			auths: func(e *env, k2, _, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keyAuthority("release", e.key), keyAuthority("qa", k2)}
			},
			attach: func(e *env, k2, _, _ *fixtures.KeySigner) error {
				if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
					return err
				}
				_, err := fixtures.AttachBundle(ctx, e.subject, k2, fixtures.BundleSpec{})
				return err
			},
		},
		{
			// Counting signatures (or verified keys) instead of
			// authorities would allow this.
			name: "two keys of one authority",
			auths: func(e *env, k2, k1b, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keyAuthority("release", e.key, k1b), keyAuthority("qa", k2)}
			},
			attach: func(e *env, _, k1b, _ *fixtures.KeySigner) error {
				if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
					return err
				}
				return fixtures.AttachLegacySignature(ctx, e.subject, k1b, fixtures.Tamper{})
			},
			reason: "threshold 2 not met: 1 authority verified (release)",
		},
		{
			// Two authorities cannot share a key (TestNewRefuses), so only
			// the reason shows the copy was recognised.
			name: "one legacy layer twice",
			auths: func(e *env, k2, _, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keyAuthority("release", e.key), keyAuthority("qa", k2)}
			},
			attach: func(e *env, _, _, _ *fixtures.KeySigner) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{Copies: 1})
			},
			reason: "cosign-legacy sig[1]: the same signature as cosign-legacy sig[0], counted once",
		},
		{
			name: "one keyless bundle as two referrers",
			auths: func(e *env, _, _, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keylessAuthority("release-ci", e.ss, testIssuer, testSubject), keylessRegexAuthority("acme-ci", e.ss, testIssuerRegex, testSubjectRegex)}
			},
			attach: func(e *env, _, _, _ *fixtures.KeySigner) error {
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{Tamper: fixtures.Tamper{Copies: 1}})
				return err
			},
			reason: "counted once",
			alone:  true,
		},
		{
			name: "one keyless legacy layer twice",
			auths: func(e *env, _, _, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keylessAuthority("release-ci", e.ss, testIssuer, testSubject), keylessRegexAuthority("acme-ci", e.ss, testIssuerRegex, testSubjectRegex)}
			},
			attach: func(e *env, _, _, _ *fixtures.KeySigner) error {
				return fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.Tamper{Copies: 1})
			},
			reason: "cosign-legacy sig[1]: the same signature as cosign-legacy sig[0], counted once",
			alone:  true,
		},
		{
			// Two keyless authorities may both accept one identity; one
			// workflow signing twice (two short-lived keys) is one signer.
			name: "one certificate identity signing twice",
			auths: func(e *env, _, _, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keylessAuthority("release-ci", e.ss, testIssuer, testSubject), keylessRegexAuthority("acme-ci", e.ss, testIssuerRegex, testSubjectRegex)}
			},
			attach: func(e *env, _, _, _ *fixtures.KeySigner) error {
				if err := fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.Tamper{}); err != nil {
					return err
				}
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.BundleSpec{})
				return err
			},
			reason: `signed by certificate identity "` + testSubject + `" (issuer "` + testIssuer + `"), which already counted for authority "release-ci"`,
			alone:  true,
		},
		{
			name: "two certificate identities",
			auths: func(e *env, _, _, _ *fixtures.KeySigner) []verify.Authority {
				return []verify.Authority{keylessAuthority("release-ci", e.ss, testIssuer, testSubject), keylessRegexAuthority("acme-ci", e.ss, testIssuerRegex, testSubjectRegex)}
			},
			attach: func(e *env, _, _, _ *fixtures.KeySigner) error {
				if err := fixtures.AttachLegacySignature(ctx, e.subject, e.ss.Signer(testIssuer, testSubject), fixtures.Tamper{}); err != nil {
					return err
				}
				_, err := fixtures.AttachBundle(ctx, e.subject, e.ss.Signer(testIssuer, other), fixtures.BundleSpec{})
				return err
			},
		},
		{
			// A key that also holds a certificate is one signer, whether
			// a key authority or a keyless authority verifies it.
			name: "one key under a key and a keyless authority",
			auths: func(e *env, _, _, ck *fixtures.KeySigner) []verify.Authority {
				a := keylessAuthority("ci", e.ss, testIssuer, testSubject)
				a.Keyless.TlogThreshold, a.Keyless.TimestampThreshold = 0, 1
				return []verify.Authority{keyAuthority("release", ck), a}
			},
			attach: func(e *env, _, _, ck *fixtures.KeySigner) error {
				if err := fixtures.AttachLegacySignature(ctx, e.subject, ck, fixtures.Tamper{}); err != nil {
					return err
				}
				return fixtures.AttachLegacySignature(ctx, e.subject, ck, fixtures.Tamper{})
			},
			reason: `cosign-legacy sig[1]: signed by certificate identity "` + testSubject + `" (issuer "` + testIssuer + `"), which already counted for authority "release"`,
			alone:  true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			k2, err := fixtures.NewKeySigner("")
			if err != nil {
				t.Fatal(err)
			}
			k1b, err := fixtures.NewKeySigner("")
			if err != nil {
				t.Fatal(err)
			}
			ck, err := e.ss.CertifiedKey(testIssuer, testSubject)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.attach(e, k2, k1b, ck); err != nil {
				t.Fatal(err)
			}
			auths := tc.auths(e, k2, k1b, ck)
			for _, a := range auths {
				if !tc.alone && tc.reason != "" {
					break
				}
				v := mustVerify(t, engine(t, policy(1, a)), e.subj(t), e.reg.Fetcher())
				if !v.Allowed {
					t.Fatalf("authority %q alone: denied: %q", a.Name, v.Reasons)
				}
			}
			v := mustVerify(t, engine(t, policy(2, auths...)), e.subj(t), e.reg.Fetcher())
			t.Logf("reasons: %q", v.Reasons)
			if tc.reason == "" {
				if !v.Allowed || len(v.Signers) != 2 {
					t.Fatalf("verdict = %+v, want allowed by two authorities", v)
				}
				return
			}
			wantDenied(t, v, tc.reason)
			wantDenied(t, v, "threshold 2 not met: 1 authority verified")
		})
	}
}

func TestEvidenceLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if _, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	const limit = 16
	f := fixtures.Count(fixtures.FloodReferrers(e.reg.Fetcher(), 10000))
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", e.key)), verify.WithMaxEvidence(limit)), e.subj(t), f)
	wantDenied(t, v, "evidence limit reached: examined 16 of 10001 referrers")
	wantLimit(t, v, verify.LimitEvidenceItems)
	// referrers + fallback tag + .sig tag, then one manifest (and at most
	// one blob) per examined referrer.
	if got, max := f.Calls(), int64(3+2*limit); got > max {
		t.Errorf("fetcher called %d times, want at most %d", got, max)
	}
}

// A legacy .sig manifest with more signature layers than the evidence
// limit is read only up to the limit.
func TestEvidenceLimitLegacyLayers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	stranger, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacySignature(ctx, e.subject, stranger, fixtures.Tamper{Copies: 9}); err != nil {
		t.Fatal(err)
	}
	const limit = 3
	f := fixtures.Count(e.reg.Fetcher())
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", e.key)), verify.WithMaxEvidence(limit)), e.subj(t), f)
	wantDenied(t, v, "evidence limit reached: examined 3 of 10 signature layers")
	wantLimit(t, v, verify.LimitEvidenceItems)
	// referrers + fallback tag + .sig tag, then one blob per examined layer.
	if got, max := f.Calls(), int64(3+limit); got > max {
		t.Errorf("fetcher called %d times, want at most %d", got, max)
	}
}

func TestFetcherErrorsFailToDecide(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	eng := engine(t, policy(1, keyAuthority("release", e.key)))
	transient := errors.New("dial tcp: connection refused")
	if _, err := eng.Verify(context.Background(), e.subj(t), fixtures.Failing(transient)); !errors.Is(err, transient) {
		t.Fatalf("Verify error = %v, want %v", err, transient)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := eng.Verify(ctx, e.subj(t), e.reg.Fetcher()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify error = %v, want context.Canceled", err)
	}
	// Not found is an answer, not a failure.
	v, err := eng.Verify(context.Background(), e.subj(t), fixtures.NoReferrersAPI(fixtures.Failing(verify.ErrNotFound)))
	if err != nil {
		t.Fatal(err)
	}
	wantDenied(t, v, "no signatures found")
}

// A signature no authority accepts is refused with every authority's
// reason, once each, and the threshold reason names no one when no one
// verified.
func TestRefusalNamesEveryAuthority(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if err := fixtures.AttachLegacySignature(ctx, e.subject, newKey(t), fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", e.key), keyAuthority("qa", newKey(t)))), e.subj(t), e.reg.Fetcher())
	wantDenied(t, v, `signature does not verify with any key of authority "release"; signature does not verify with any key of authority "qa"`)
	if last := v.Reasons[len(v.Reasons)-1]; last != "threshold 1 not met: 0 authorities verified" {
		t.Errorf("last reason = %q", last)
	}
}
