package proxy

import (
	"context"
	"crypto/x509/pkix"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const notationRelease = "x509.subject: C=US, ST=WA, O=Acme, CN=release"

func notationAuthority(name string, ca *fixtures.NotationCA, identities ...string) verify.Authority {
	return verify.Authority{Name: name, Notation: &verify.NotationAuthority{
		TrustName: name, CA: []verify.NamedCert{{Name: name + ".pem", PEM: ca.PEM()}}, Identities: identities,
	}}
}

// notationSign signs repo@d with s in envelope mt and pushes the
// signature as a referrer, as `notation sign` does.
func (u *upstreamRegistry) notationSign(t testing.TB, repo string, d v1.Hash, s *fixtures.NotationSigner, mt string, spec fixtures.NotationSpec) {
	t.Helper()
	ctx := context.Background()
	ref := u.ref(t, repo, d)
	desc, _, err := fixtures.SubjectDescriptor(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.Sign(ctx, desc, mt, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fixtures.AttachNotation(ctx, ref, sig, mt, s.Chain, spec); err != nil {
		t.Fatal(err)
	}
}

// TestNotationThroughProxy pulls through the proxy under boundaries that
// need a cosign key, a notation identity, or both; what must not pass is
// denied with the authority and the reason named.
func TestNotationThroughProxy(t *testing.T) {
	t.Parallel()
	u := newRegistry(t)
	key := newKey(t)
	ca, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	rel, err := ca.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ca.Leaf(fixtures.NotationLeafSpec{Subject: pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Acme"}, CommonName: "dev"}})
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := fixtures.NewNotationCA("other")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := otherCA.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject})
	if err != nil {
		t.Fatal(err)
	}
	boundary := func(name string, threshold int, auths ...verify.Authority) verify.Boundary {
		return verify.Boundary{Name: name, Upstream: "*", Repositories: []string{name + "/**"}, Mode: verify.ModeEnforce, Threshold: threshold, Authorities: auths}
	}
	p := verify.Policy{Boundaries: []verify.Boundary{
		boundary("cosign", 1, keyAuthority("cosign", key)),
		boundary("notary", 1, notationAuthority("release", ca, notationRelease)),
		boundary("both", 2, keyAuthority("cosign", key), notationAuthority("release", ca, notationRelease)),
		boundary("twice", 2, notationAuthority("release", ca, notationRelease), notationAuthority("anyone", ca, "*")),
	}}
	px, _ := newTestProxy(t, u.srv.URL, newEngineSpy(t, p))

	jws, cose := fixtures.MediaTypeNotationJWS, fixtures.MediaTypeNotationCOSE
	tests := []struct {
		repo string
		sign func(repo string, d v1.Hash)
		want string // "" allowed; else a substring of the denial
	}{
		{"notary/jws", func(r string, d v1.Hash) { u.notationSign(t, r, d, rel, jws, fixtures.NotationSpec{}) }, ""},
		{"notary/cose", func(r string, d v1.Hash) { u.notationSign(t, r, d, rel, cose, fixtures.NotationSpec{}) }, ""},
		{"notary/untrusted-ca", func(r string, d v1.Hash) { u.notationSign(t, r, d, stranger, jws, fixtures.NotationSpec{}) }, `authority \"release\": notation untrusted signer`},
		{"notary/identity", func(r string, d v1.Hash) { u.notationSign(t, r, d, dev, cose, fixtures.NotationSpec{}) }, "notation identity not trusted"},
		{"notary/wrong-type", func(r string, d v1.Hash) {
			u.notationSign(t, r, d, rel, jws, fixtures.NotationSpec{ArtifactType: "application/vnd.example.sbom"})
		}, "not application/vnd.cncf.notary.signature"},
		{"notary/copied", func(r string, d v1.Hash) {
			// A signature of a neighbouring image, pushed as a referrer
			// of this one.
			other := u.pushImage(t, r, "other")
			ctx := context.Background()
			desc, _, err := fixtures.SubjectDescriptor(ctx, u.ref(t, r, other.digest))
			if err != nil {
				t.Fatal(err)
			}
			sig, err := rel.Sign(ctx, desc, jws, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fixtures.AttachNotation(ctx, u.ref(t, r, d), sig, jws, rel.Chain, fixtures.NotationSpec{}); err != nil {
				t.Fatal(err)
			}
		}, "notation signature of another artifact"},
		{"notary/cosign-only", func(r string, d v1.Hash) { u.sign(t, r, d, key) }, `authority \"release\"`},
		{"cosign/notation-only", func(r string, d v1.Hash) { u.notationSign(t, r, d, rel, jws, fixtures.NotationSpec{}) }, `authority \"cosign\" is not a notation authority`},
		{"both/both", func(r string, d v1.Hash) {
			u.sign(t, r, d, key)
			u.notationSign(t, r, d, rel, cose, fixtures.NotationSpec{})
		}, ""},
		{"both/notation-only", func(r string, d v1.Hash) { u.notationSign(t, r, d, rel, jws, fixtures.NotationSpec{}) }, "threshold 2 not met: 1 authority verified (release)"},
		{"both/cosign-only", func(r string, d v1.Hash) { u.sign(t, r, d, key) }, "threshold 2 not met: 1 authority verified (cosign)"},
		{"twice/same-key", func(r string, d v1.Hash) {
			u.notationSign(t, r, d, rel, jws, fixtures.NotationSpec{})
			u.notationSign(t, r, d, rel, cose, fixtures.NotationSpec{})
		}, `already counted for authority \"release\"`},
	}
	for _, tc := range tests {
		t.Run(tc.repo, func(t *testing.T) {
			img := u.pushImage(t, tc.repo, "v1")
			tc.sign(tc.repo, img.digest)
			w := do(px, http.MethodGet, manifestPath(tc.repo, "v1"), "Accept", img.mt)
			if tc.want == "" {
				if w.Code != http.StatusOK || w.Body.String() != string(img.raw) {
					t.Fatalf("status %d, want the manifest: %s", w.Code, w.Body.String())
				}
				return
			}
			if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "DENIED") || !strings.Contains(w.Body.String(), tc.want) {
				t.Fatalf("status %d body %s, want a denial naming %q", w.Code, w.Body.String(), tc.want)
			}
		})
	}
}
