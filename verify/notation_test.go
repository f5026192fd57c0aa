package verify_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/result"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/truststore"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const releaseIdentity = "x509.subject: C=US, ST=WA, O=Acme, CN=release"

// notationEnv is an env whose subject carries its manifest (a notation
// signature signs its media type and size) and a CA with a release
// signer.
type notationEnv struct {
	*env
	s    verify.Subject
	desc ocispec.Descriptor
	ca   *fixtures.NotationCA
	rel  *fixtures.NotationSigner
}

func newNotationEnv(t testing.TB) *notationEnv {
	t.Helper()
	e := newEnv(t)
	desc, raw, err := fixtures.SubjectDescriptor(context.Background(), e.subject)
	if err != nil {
		t.Fatal(err)
	}
	s := e.subj(t)
	s.Manifest, s.MediaType = raw, "application/vnd.oci.image.manifest.v1+json"
	if string(desc.MediaType) != string(s.MediaType) {
		s.MediaType = "application/vnd.docker.distribution.manifest.v2+json"
	}
	ca, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := ca.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject})
	if err != nil {
		t.Fatal(err)
	}
	return &notationEnv{env: e, s: s, desc: desc, ca: ca, rel: rel}
}

func notationAuthority(name string, ca *fixtures.NotationCA, identities ...string) verify.Authority {
	return verify.Authority{Name: name, Notation: &verify.NotationAuthority{
		TrustName: name, CA: []verify.NamedCert{{Name: name + ".pem", PEM: ca.PEM()}}, Identities: identities,
	}}
}

// attach signs with sig and pushes it as a notation referrer.
func (ne *notationEnv) attach(t testing.TB, sig []byte, mt string, spec fixtures.NotationSpec) {
	t.Helper()
	if _, err := fixtures.AttachNotation(context.Background(), ne.subject, sig, mt, ne.rel.Chain, spec); err != nil {
		t.Fatal(err)
	}
}

func (ne *notationEnv) sign(t testing.TB, s *fixtures.NotationSigner, mt string) []byte {
	t.Helper()
	sig, err := s.Sign(context.Background(), ne.desc, mt, 0)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// memStore is a notation trust store for the cross-check.
type memStore []*x509.Certificate

func (m memStore) GetCertificates(context.Context, truststore.Type, string) ([]*x509.Certificate, error) {
	return m, nil
}

// notationAccepts is notation-go's own verdict on sig for desc under the
// trust policy Portcullis builds for one authority.
func notationAccepts(t *testing.T, ca *fixtures.NotationCA, identity string, desc ocispec.Descriptor, sig []byte, mt string) error {
	t.Helper()
	doc := verify.NotationTrustPolicy(map[truststore.Type]bool{truststore.TypeCA: true}, []string{identity}, false)
	v, err := verifier.New(doc, memStore{ca.Cert}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(context.Background(), desc, sig, notation.VerifierVerifyOptions{ArtifactReference: "registry.example/acme/app@" + desc.Digest.String(), SignatureMediaType: mt})
	return err
}

func TestNotationAllow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		mt       string
		identity string
		fallback bool
	}{
		{"jws", fixtures.MediaTypeNotationJWS, releaseIdentity, false},
		{"cose", fixtures.MediaTypeNotationCOSE, releaseIdentity, false},
		{"any identity", fixtures.MediaTypeNotationCOSE, "*", false},
		{"fallback tag", fixtures.MediaTypeNotationJWS, releaseIdentity, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ne := newNotationEnv(t)
			sig := ne.sign(t, ne.rel, tc.mt)
			spec := fixtures.NotationSpec{}
			var f verify.Fetcher = ne.reg.Fetcher()
			if tc.fallback {
				spec.Placement = fixtures.PlaceFallback
				f = fixtures.NoReferrersAPI(f)
			}
			ne.attach(t, sig, tc.mt, spec)
			v := mustVerify(t, engine(t, policy(1, notationAuthority("notary", ne.ca, tc.identity))), ne.s, f)
			wantAllowed(t, v, "notation", verify.FormatNotation)
			if v.Signers[0].Identity != "CN=release,O=Acme,ST=WA,C=US" || len(v.Signers[0].KeyID) != 64 {
				t.Fatalf("signer = %+v", v.Signers[0])
			}
			if err := notationAccepts(t, ne.ca, tc.identity, ne.desc, sig, tc.mt); err != nil {
				t.Fatalf("notation-go refuses what Portcullis allowed: %v", err)
			}
		})
	}
}

func TestNotationDeny(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name string
		// make returns the envelope to attach and its media type.
		make     func(t *testing.T, ne *notationEnv) ([]byte, string)
		spec     func(ne *notationEnv) fixtures.NotationSpec
		identity string
		reason   string
		// crossCheck has notation-go verify the envelope too; it must
		// refuse it as well.
		crossCheck bool
	}{
		{
			name: "untrusted CA",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				other, err := fixtures.NewNotationCA("other")
				if err != nil {
					t.Fatal(err)
				}
				s, err := other.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject})
				if err != nil {
					t.Fatal(err)
				}
				return ne.sign(t, s, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS
			},
			reason: "notation untrusted signer", crossCheck: true,
		},
		{
			name: "identity not trusted",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				s, err := ne.ca.Leaf(fixtures.NotationLeafSpec{Subject: pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Acme"}, CommonName: "dev"}})
				if err != nil {
					t.Fatal(err)
				}
				return ne.sign(t, s, fixtures.MediaTypeNotationCOSE), fixtures.MediaTypeNotationCOSE
			},
			reason: "notation identity not trusted", crossCheck: true,
		},
		{
			name: "signature of a neighbouring image",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				ref, err := ne.reg.Ref("acme/app:v2")
				if err != nil {
					t.Fatal(err)
				}
				other, err := fixtures.PushImage(ctx, ref)
				if err != nil {
					t.Fatal(err)
				}
				od, _, err := fixtures.SubjectDescriptor(ctx, other)
				if err != nil {
					t.Fatal(err)
				}
				sig, err := ne.rel.Sign(ctx, od, fixtures.MediaTypeNotationJWS, 0)
				if err != nil {
					t.Fatal(err)
				}
				return sig, fixtures.MediaTypeNotationJWS
			},
			reason: "notation signature of another artifact", crossCheck: true,
		},
		{
			name: "referrer of another subject",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				return ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS
			},
			spec: func(ne *notationEnv) fixtures.NotationSpec {
				h := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
				return fixtures.NotationSpec{SubjectDigest: &h, Placement: fixtures.PlaceFallback}
			},
			reason: "notation signature subject sha256:abab",
		},
		{
			name: "expired certificate",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				s, err := ne.ca.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject,
					NotBefore: time.Now().Add(-3 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
				if err != nil {
					t.Fatal(err)
				}
				sig, err := s.SignAt(ne.desc, fixtures.MediaTypeNotationJWS, time.Now().Add(-2*time.Hour))
				if err != nil {
					t.Fatal(err)
				}
				return sig, fixtures.MediaTypeNotationJWS
			},
			reason: "validity period", crossCheck: true,
		},
		{
			name: "signature expired",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				sig, err := ne.rel.Sign(ctx, ne.desc, fixtures.MediaTypeNotationCOSE, time.Second)
				if err != nil {
					t.Fatal(err)
				}
				time.Sleep(1100 * time.Millisecond)
				return sig, fixtures.MediaTypeNotationCOSE
			},
			reason: "notation signature expired", crossCheck: true,
		},
		{
			name: "no code-signing EKU",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				noEKU, err := ne.ca.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject, Key: ne.rel.Key, NoCodeSigningEKU: true})
				if err != nil {
					t.Fatal(err)
				}
				sig, err := fixtures.ReplaceJWSChain(ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), noEKU.Chain)
				if err != nil {
					t.Fatal(err)
				}
				return sig, fixtures.MediaTypeNotationJWS
			},
			reason: "extended key usage", crossCheck: true,
		},
		{
			name: "chain of another CA presented with a trusted key",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				other, err := fixtures.NewNotationCA("other")
				if err != nil {
					t.Fatal(err)
				}
				s, err := other.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject, Key: ne.rel.Key})
				if err != nil {
					t.Fatal(err)
				}
				sig, err := fixtures.ReplaceJWSChain(ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), s.Chain)
				if err != nil {
					t.Fatal(err)
				}
				return sig, fixtures.MediaTypeNotationJWS
			},
			reason: "notation untrusted signer", crossCheck: true,
		},
		{
			name: "malformed envelope",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				sig := ne.sign(t, ne.rel, fixtures.MediaTypeNotationCOSE)
				return sig[:len(sig)/2], fixtures.MediaTypeNotationCOSE
			},
			reason: "bad notation envelope", crossCheck: true,
		},
		{
			name: "tampered payload",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				sig := ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS)
				s := string(sig)
				// Flip one character of the signature value.
				i := strings.LastIndex(s, `"signature":"`) + len(`"signature":"`) + 5
				b := []byte(s)
				if b[i] == 'A' {
					b[i] = 'B'
				} else {
					b[i] = 'A'
				}
				return b, fixtures.MediaTypeNotationJWS
			},
			reason: "notation bad envelope", crossCheck: true,
		},
		{
			name: "wrong artifactType",
			make: func(t *testing.T, ne *notationEnv) ([]byte, string) {
				return ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS
			},
			spec: func(*notationEnv) fixtures.NotationSpec {
				return fixtures.NotationSpec{ArtifactType: "application/vnd.example.other"}
			},
			reason: `artifactType "application/vnd.example.other"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ne := newNotationEnv(t)
			sig, mt := tc.make(t, ne)
			spec := fixtures.NotationSpec{}
			if tc.spec != nil {
				spec = tc.spec(ne)
			}
			ne.attach(t, sig, mt, spec)
			identity := releaseIdentity
			v := mustVerify(t, engine(t, policy(1, notationAuthority("notary", ne.ca, identity))), ne.s, ne.reg.Fetcher())
			t.Logf("reasons: %q", v.Reasons)
			wantDenied(t, v, tc.reason)
			if tc.crossCheck {
				if err := notationAccepts(t, ne.ca, identity, ne.desc, sig, mt); err == nil {
					t.Fatal("notation-go accepts what Portcullis denied")
				}
			}
		})
	}
}

// TestNotationThresholdCountsKeys: one signing key under two notation
// authority names is one signer.
func TestNotationThresholdCountsKeys(t *testing.T) {
	t.Parallel()
	ne := newNotationEnv(t)
	ne.attach(t, ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS, fixtures.NotationSpec{})
	ne.attach(t, ne.sign(t, ne.rel, fixtures.MediaTypeNotationCOSE), fixtures.MediaTypeNotationCOSE, fixtures.NotationSpec{})
	p := policy(2, notationAuthority("release", ne.ca, releaseIdentity), notationAuthority("any", ne.ca, "*"))
	v := mustVerify(t, engine(t, p), ne.s, ne.reg.Fetcher())
	wantDenied(t, v, "already counted for authority")
	wantDenied(t, v, "threshold 2 not met")

	// A second signing key under the second name makes two signers.
	other, err := ne.ca.Leaf(fixtures.NotationLeafSpec{Subject: pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Acme"}, CommonName: "qa"}})
	if err != nil {
		t.Fatal(err)
	}
	ne.attach(t, ne.sign(t, other, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS, fixtures.NotationSpec{})
	v = mustVerify(t, engine(t, p), ne.s, ne.reg.Fetcher())
	if !v.Allowed || len(v.Signers) != 2 || v.Signers[0].KeyID == v.Signers[1].KeyID {
		t.Fatalf("want two distinct notation signers: %+v %q", v.Signers, v.Reasons)
	}
}

// TestNotationAndCosign: a boundary needing a cosign key and a notation
// identity (threshold 2) needs both.
func TestNotationAndCosign(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	both := func(ne *notationEnv) *verify.Engine {
		return engine(t, policy(2, keyAuthority("cosign", ne.key), notationAuthority("notary", ne.ca, releaseIdentity)))
	}
	t.Run("notation only", func(t *testing.T) {
		t.Parallel()
		ne := newNotationEnv(t)
		ne.attach(t, ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS, fixtures.NotationSpec{})
		v := mustVerify(t, both(ne), ne.s, ne.reg.Fetcher())
		wantDenied(t, v, "threshold 2 not met: 1 authority verified (notary)")
	})
	t.Run("cosign only", func(t *testing.T) {
		t.Parallel()
		ne := newNotationEnv(t)
		if _, err := fixtures.AttachBundle(ctx, ne.subject, ne.key, fixtures.BundleSpec{}); err != nil {
			t.Fatal(err)
		}
		v := mustVerify(t, both(ne), ne.s, ne.reg.Fetcher())
		wantDenied(t, v, "threshold 2 not met: 1 authority verified (cosign)")
	})
	t.Run("both", func(t *testing.T) {
		t.Parallel()
		ne := newNotationEnv(t)
		if err := fixtures.AttachLegacySignature(ctx, ne.subject, ne.key, fixtures.Tamper{}); err != nil {
			t.Fatal(err)
		}
		ne.attach(t, ne.sign(t, ne.rel, fixtures.MediaTypeNotationCOSE), fixtures.MediaTypeNotationCOSE, fixtures.NotationSpec{})
		v := mustVerify(t, both(ne), ne.s, ne.reg.Fetcher())
		if !v.Allowed || len(v.Signers) != 2 {
			t.Fatalf("want cosign and notation: %+v %q", v.Signers, v.Reasons)
		}
		kinds := v.Signers[0].Kind + "+" + v.Signers[1].Kind
		if kinds != "key+notation" && kinds != "notation+key" {
			t.Fatalf("signers = %+v", v.Signers)
		}
	})
	t.Run("notation signature under a key authority", func(t *testing.T) {
		t.Parallel()
		ne := newNotationEnv(t)
		ne.attach(t, ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS, fixtures.NotationSpec{})
		v := mustVerify(t, engine(t, policy(1, keyAuthority("cosign", ne.key))), ne.s, ne.reg.Fetcher())
		wantDenied(t, v, `authority "cosign" is not a notation authority`)
	})
}

func TestNotationCompile(t *testing.T) {
	t.Parallel()
	ca, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.Intermediate("intermediate")
	if err != nil {
		t.Fatal(err)
	}
	root, intermediate := ca.PEM(), inter.PEM()
	for _, tc := range []struct {
		name string
		edit func(b *verify.Boundary)
		want string
	}{
		{"no identities", func(b *verify.Boundary) { b.Authorities[0].Notation.Identities = nil }, "no trusted identities"},
		{"malformed identity", func(b *verify.Boundary) { b.Authorities[0].Notation.Identities = []string{"x509.subject: CN=release"} }, "trust policy"},
		{"no stores", func(b *verify.Boundary) { b.Authorities[0].Notation.CA = nil }, "no ca or signing_authority"},
		{"bad PEM", func(b *verify.Boundary) { b.Authorities[0].Notation.CA[0].PEM = []byte("not pem") }, "not PEM"},
		{"leaf as root", func(b *verify.Boundary) {
			b.Authorities[0].Notation.CA[0].PEM = pemCert(leaf.Chain[0])
		}, "not a CA certificate"},
		{"intermediate as timestamping root", func(b *verify.Boundary) {
			b.Authorities[0].Notation.TSA = []verify.NamedCert{{Name: "tsa.pem", PEM: intermediate}}
		}, "not a self-signed root CA certificate"},
		{"revocation without validator", func(b *verify.Boundary) { b.Authorities[0].Notation.Revocation = true }, "no revocation validator"},
		{"attestation rule", func(b *verify.Boundary) {
			b.Attestations = []verify.AttestationRule{{Name: "prov", PredicateType: "https://slsa.dev/provenance/v1", Authorities: []string{"notary"}}}
		}, "notation signatures carry no attestations"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := policy(1, notationAuthority("notary", ca, releaseIdentity))
			tc.edit(&p.Boundaries[0])
			_, err := verify.New(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want %q", err, tc.want)
			}
		})
	}

	// A code-signing store may hold intermediates; a timestamping store
	// only self-signed roots.
	for name, edit := range map[string]func(a *verify.NotationAuthority){
		"intermediate in the code-signing store": func(a *verify.NotationAuthority) {
			a.CA = append(a.CA, verify.NamedCert{Name: "intermediate.pem", PEM: intermediate})
		},
		"root in the timestamping store": func(a *verify.NotationAuthority) {
			a.TSA = []verify.NamedCert{{Name: "tsa.pem", PEM: root}}
		},
	} {
		p := policy(1, notationAuthority("notary", ca, releaseIdentity))
		edit(p.Boundaries[0].Authorities[0].Notation)
		if _, err := verify.New(p); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// The certificates are part of the fingerprint.
	other, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	a := engine(t, policy(1, notationAuthority("notary", ca, releaseIdentity)))
	b := engine(t, policy(1, notationAuthority("notary", other, releaseIdentity)))
	if a.Fingerprint() == b.Fingerprint() || a.FingerprintFor("hub", "acme/app") == b.FingerprintFor("hub", "acme/app") {
		t.Fatal("fingerprint does not cover the notation trust store")
	}
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// BenchmarkVerifyNotation measures a cold notation verification next to
// a key-signed sigstore bundle, evidence served from memory.
func BenchmarkVerifyNotation(b *testing.B) {
	for _, tc := range []struct{ name, mt string }{{"jws", fixtures.MediaTypeNotationJWS}, {"cose", fixtures.MediaTypeNotationCOSE}, {"cosign-bundle", ""}} {
		b.Run(tc.name, func(b *testing.B) {
			ne := newNotationEnv(b)
			auth := notationAuthority("notary", ne.ca, releaseIdentity)
			if tc.mt == "" {
				if _, err := fixtures.AttachBundle(context.Background(), ne.subject, ne.key, fixtures.BundleSpec{}); err != nil {
					b.Fatal(err)
				}
				auth = keyAuthority("cosign", ne.key)
			} else {
				ne.attach(b, ne.sign(b, ne.rel, tc.mt), tc.mt, fixtures.NotationSpec{})
			}
			eng := engine(b, policy(1, auth))
			f := fixtures.Memoize(ne.reg.Fetcher())
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if v, err := eng.Verify(ctx, ne.s, f); err != nil || !v.Allowed {
					b.Fatalf("verdict %+v, %v", v, err)
				}
			}
		})
	}
}

// fakeRevocation answers every certificate with one result and counts
// the checks.
type fakeRevocation struct {
	res   result.Result
	calls atomic.Int64
}

func (f *fakeRevocation) ValidateContext(_ context.Context, o revocation.ValidateContextOptions) ([]*result.CertRevocationResult, error) {
	f.calls.Add(1)
	out := make([]*result.CertRevocationResult, len(o.CertChain))
	for i := range out {
		out[i] = &result.CertRevocationResult{Result: f.res, ServerResults: []*result.ServerResult{{Result: f.res, Server: "http://ocsp.invalid"}}}
	}
	return out, nil
}

// TestNotationRevocation: revocation enforced asks the injected validator
// and denies a revoked certificate; off, nothing is asked.
func TestNotationRevocation(t *testing.T) {
	t.Parallel()
	ne := newNotationEnv(t)
	ne.attach(t, ne.sign(t, ne.rel, fixtures.MediaTypeNotationJWS), fixtures.MediaTypeNotationJWS, fixtures.NotationSpec{})
	for _, tc := range []struct {
		name    string
		enforce bool
		res     result.Result
		allowed bool
		asked   bool
	}{
		{"off", false, result.ResultRevoked, true, false},
		{"enforced, good", true, result.ResultOK, true, true},
		{"enforced, revoked", true, result.ResultRevoked, false, true},
		{"enforced, unknown", true, result.ResultUnknown, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeRevocation{res: tc.res}
			a := notationAuthority("notary", ne.ca, releaseIdentity)
			a.Notation.Revocation, a.Notation.RevocationCodeSigning, a.Notation.RevocationTimestamping = tc.enforce, fake, fake
			v := mustVerify(t, engine(t, policy(1, a)), ne.s, ne.reg.Fetcher())
			if v.Allowed != tc.allowed || (fake.calls.Load() > 0) != tc.asked {
				t.Fatalf("allowed %v (want %v), revocation asked %d times: %q", v.Allowed, tc.allowed, fake.calls.Load(), v.Reasons)
			}
			if !tc.allowed {
				wantDenied(t, v, "notation certificate revoked or revocation unknown")
			}
		})
	}
}
