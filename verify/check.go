package verify

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// check verifies one piece of well-formed signature evidence against the
// authority: the signed digest must be the subject's.
func (a *compiledAuthority) check(ev *evidence, s Subject, now time.Time) (Signer, error) {
	signer, _, err := a.verify(ev, sgverify.WithArtifactDigest("sha256", digestBytes(s.Digest)), now)
	return signer, err
}

// verify checks ev's signature under the authority. art says what the
// signed content must be for bundles and certificate-signed legacy
// evidence; simplesigning digests and statement subjects of legacy
// attestations are checked by the caller. It returns the verified signing
// times (log integration and RFC3161), empty for key signatures.
func (a *compiledAuthority) verify(ev *evidence, art sgverify.ArtifactPolicyOption, now time.Time) (Signer, []time.Time, error) {
	if a.keyless != nil {
		return a.checkKeyless(ev, art, now)
	}
	s, err := a.checkKey(ev, art)
	return s, nil, err
}

func (a *compiledAuthority) checkKey(ev *evidence, art sgverify.ArtifactPolicyOption) (Signer, error) {
	signer := Signer{Authority: a.name, Kind: "key", Evidence: ev.format}
	switch {
	case ev.legacy != nil && ev.legacy.env != nil:
		// A DSSE signature covers the pre-authentication encoding of the
		// payload type and payload, never the bare payload.
		pae := dsse.PAE(ev.legacy.env.PayloadType, ev.legacy.payload)
		for _, k := range a.keys {
			for _, sig := range ev.legacy.sigs {
				if k.verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(pae)) == nil {
					signer.Key = k.name
					return signer, nil
				}
			}
		}
		return Signer{}, fmt.Errorf("envelope does not verify with any key of authority %q", a.name)
	case ev.legacy != nil:
		for _, k := range a.keys {
			if k.verifier.VerifySignature(bytes.NewReader(ev.legacy.sig), bytes.NewReader(ev.legacy.payload)) == nil {
				signer.Key = k.name
				return signer, nil
			}
		}
		return Signer{}, fmt.Errorf("signature does not verify with any key of authority %q", a.name)
	case ev.bundle != nil:
		vc, err := ev.bundle.VerificationContent()
		if err != nil {
			return Signer{}, fmt.Errorf("bundle verification material: %w", err)
		}
		if vc.Certificate() != nil || vc.PublicKey() == nil {
			return Signer{}, fmt.Errorf("bundle is certificate-signed; authority %q accepts keys", a.name)
		}
		hint := vc.PublicKey().Hint()
		keys := make([]*compiledKey, 0, len(a.keys))
		for _, k := range a.keys {
			if hint != "" && k.hints[hint] {
				keys = append([]*compiledKey{k}, keys...)
			} else {
				keys = append(keys, k)
			}
		}
		var first error
		for _, k := range keys {
			_, err := k.bundle.Verify(ev.bundle, sgverify.NewPolicy(art, sgverify.WithKey()))
			if err == nil {
				signer.Key = k.name
				return signer, nil
			}
			if first == nil {
				first = err
			}
		}
		return Signer{}, fmt.Errorf("does not verify with any key of authority %q: %s", a.name, trimErr(first))
	}
	return Signer{}, errors.New("no signature material")
}

func (a *compiledAuthority) checkKeyless(ev *evidence, art sgverify.ArtifactPolicyOption, now time.Time) (Signer, []time.Time, error) {
	kl := a.keyless
	signer := Signer{Authority: a.name, Kind: "keyless", Evidence: ev.format}
	var (
		entity sgverify.SignedEntity
		policy sgverify.PolicyBuilder
	)
	switch {
	case ev.legacy != nil:
		if ev.legacy.cert == nil {
			return Signer{}, nil, fmt.Errorf("no certificate; authority %q is keyless", a.name)
		}
		entity = legacyEntity{ls: ev.legacy}
		if ev.legacy.env == nil {
			// A simplesigning signature covers the payload bytes.
			art = sgverify.WithArtifact(bytes.NewReader(ev.legacy.payload))
		}
		// Identity is matched below, with reasons that name the mismatch.
		policy = sgverify.NewPolicy(art, sgverify.WithoutIdentitiesUnsafe())
	case ev.bundle != nil:
		vc, err := ev.bundle.VerificationContent()
		if err != nil {
			return Signer{}, nil, fmt.Errorf("bundle verification material: %w", err)
		}
		if vc.Certificate() == nil {
			return Signer{}, nil, fmt.Errorf("bundle is key-signed; authority %q is keyless", a.name)
		}
		entity = ev.bundle
		policy = sgverify.NewPolicy(art, sgverify.WithoutIdentitiesUnsafe())
	default:
		return Signer{}, nil, errors.New("no signature material")
	}
	res, err := kl.verifier.Verify(entity, policy)
	if err != nil {
		msg := trimErr(err)
		if vc, verr := entity.VerificationContent(); verr == nil && vc.Certificate() != nil && now.After(vc.Certificate().NotAfter) {
			msg += fmt.Sprintf(" (certificate expired at %s)", vc.Certificate().NotAfter.UTC().Format(time.RFC3339))
		}
		return Signer{}, nil, fmt.Errorf("keyless verification for authority %q failed: %s", a.name, msg)
	}
	if res.Signature == nil || res.Signature.Certificate == nil {
		return Signer{}, nil, errors.New("verified without a certificate")
	}
	if err := kl.matchIdentity(res.Signature.Certificate); err != nil {
		return Signer{}, nil, fmt.Errorf("%w (authority %q)", err, a.name)
	}
	signer.Identity = res.Signature.Certificate.SubjectAlternativeName
	signer.Issuer = res.Signature.Certificate.Extensions.Issuer
	var times []time.Time
	for _, t := range res.VerifiedTimestamps {
		times = append(times, t.Timestamp)
	}
	return signer, times, nil
}

func (k *compiledKeyless) matchIdentity(c *certificate.Summary) error {
	iss, san := c.Extensions.Issuer, c.SubjectAlternativeName
	if k.Issuer != "" && iss != k.Issuer {
		return fmt.Errorf("certificate issuer %q does not match %q", iss, k.Issuer)
	}
	if k.issuerRe != nil && !k.issuerRe.MatchString(iss) {
		return fmt.Errorf("certificate issuer %q does not match /%s/", iss, k.IssuerRegex)
	}
	if k.Subject != "" && san != k.Subject {
		return fmt.Errorf("certificate subject %q does not match %q", san, k.Subject)
	}
	if k.subjectRe != nil && !k.subjectRe.MatchString(san) {
		return fmt.Errorf("certificate subject %q does not match /%s/", san, k.SubjectRegex)
	}
	return nil
}

// trimErr bounds the length of a sigstore-go error chain quoted in a
// reason; the chain names the failing step and its cause.
func trimErr(err error) string {
	if err == nil {
		return "unknown error"
	}
	msg := err.Error()
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return strings.TrimSpace(msg)
}

// digestBytes decodes a sha256 digest already validated by Verify.
func digestBytes(h v1.Hash) []byte {
	b, _ := hex.DecodeString(h.Hex)
	return b
}
