package verify_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// revokedSigners revokes signers by key id or keyless identity.
type revokedSigners struct {
	keys       map[string]bool
	identities map[string]bool
}

func (r revokedSigners) SignerRevoked(s verify.Signer) (string, bool) {
	if (s.KeyID != "" && r.keys[s.KeyID]) || (s.Kind == "keyless" && r.identities[s.Identity]) {
		return "revoked by test: compromised", true
	}
	return "", false
}

func TestRevokedSignersDoNotCount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	other, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []fixtures.Signer{e.key, other, e.ss.Signer(testIssuer, testSubject)} {
		if _, err := fixtures.AttachBundle(ctx, e.subject, s, fixtures.BundleSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	eng := engine(t, policy(2, keyAuthority("release", e.key), keyAuthority("other", other),
		keylessAuthority("ci", e.ss, testIssuer, testSubject)))
	f := e.reg.Fetcher()
	v := mustVerify(t, eng, e.subj(t), f)
	if !v.Allowed || len(v.Signers) != 2 {
		t.Fatalf("unrevoked: %+v", v)
	}
	// Which two of the three signers meet the threshold depends on the
	// order evidence is read in, so every key's id is computed here,
	// and each key signer that did verify must report the same one.
	keyIDs := map[string]string{"release": derKeyID(t, e.key), "other": derKeyID(t, other)}
	for _, s := range v.Signers {
		if s.Kind == "key" && s.KeyID != keyIDs[s.Authority] {
			t.Fatalf("key signer %+v: want key id %s", s, keyIDs[s.Authority])
		}
	}
	// One key of three revoked: two others still meet the threshold.
	subj := e.subj(t)
	first := v.Signers[0]
	subj.Revoked = revokedSigners{keys: map[string]bool{first.KeyID: true}, identities: map[string]bool{first.Identity: first.Kind == "keyless"}}
	v = mustVerify(t, eng, subj, f)
	if !v.Allowed {
		t.Fatalf("one of three signers revoked: denied: %q", v.Reasons)
	}
	for _, s := range v.Signers {
		if s.Authority == first.Authority {
			t.Fatalf("the revoked signer still counted: %+v", v.Signers)
		}
	}
	// Two revoked: the threshold of 2 is no longer met, and the reason
	// names the revocation.
	all := revokedSigners{keys: map[string]bool{}, identities: map[string]bool{testSubject: true}}
	for _, id := range keyIDs {
		all.keys[id] = true
	}
	subj.Revoked = all
	v = mustVerify(t, eng, subj, f)
	if v.Allowed || !strings.Contains(strings.Join(v.Reasons, "\n"), "revoked by test: compromised") {
		t.Fatalf("every signer revoked: %+v", v)
	}
	// Each reason names the signer as it was revoked: a key by its id,
	// a certificate by its identity.
	wantDenied(t, v, `certificate identity "`+testSubject+`" (issuer "`+testIssuer+`") of authority "ci" is revoked by test: compromised`)
	wantDenied(t, v, `(sha256 `+keyIDs["release"]+`) of authority "release" is revoked by test: compromised`)
}

// derKeyID is the hex SHA-256 of k's DER public key, the id a key
// signer is reported and revoked by.
func derKeyID(t *testing.T, k *fixtures.KeySigner) string {
	t.Helper()
	b, _ := pem.Decode(k.PublicKeyPEM())
	if b == nil {
		t.Fatal("key signer without a PEM public key")
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:])
}

func TestRevokedAttestationSigner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	spec := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now())}
	if _, err := fixtures.AttachBundle(ctx, e.subject, e.key, spec); err != nil {
		t.Fatal(err)
	}
	eng := engine(t, attPolicy(provRule(nil), keyAuthority("release", e.key)))
	v := mustVerify(t, eng, e.subj(t), e.reg.Fetcher())
	if !v.Allowed || len(v.Attestations) != 1 {
		t.Fatalf("unrevoked: %+v", v)
	}
	subj := e.subj(t)
	subj.Revoked = revokedSigners{keys: map[string]bool{v.Signers[0].KeyID: true}}
	v = mustVerify(t, eng, subj, e.reg.Fetcher())
	if v.Allowed || len(v.Attestations) != 0 {
		t.Fatalf("attestation by a revoked key: %+v", v)
	}
	// The rule says why its attestation did not count: the revocation,
	// not a missing authority.
	named := false
	for _, r := range v.Reasons {
		named = named || strings.HasPrefix(r, "attestation ") && strings.Contains(r, `of authority "release" is revoked by test: compromised`)
	}
	if !named {
		t.Errorf("no attestation reason names the revocation: %q", v.Reasons)
	}
}
