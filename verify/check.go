package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"go.opentelemetry.io/otel/attribute"
)

// envelopeResult is one authority's check of a DSSE envelope signature.
type envelopeResult struct {
	signer Signer
	ref    signerRef
	times  []time.Time
	err    error
}

// result checks the signature of ev, a DSSE envelope, under a, once: the
// envelope alone, since what its statement is about is compared on the
// statement parsed after the signature verified.
func (ev *evidence) result(a *compiledAuthority, now time.Time) *envelopeResult {
	if res, ok := ev.results[a]; ok {
		return res
	}
	if ev.results == nil {
		ev.results = map[*compiledAuthority]*envelopeResult{}
	}
	res := &envelopeResult{}
	res.signer, res.ref, res.times, res.err = a.verifySigner(ev, sgverify.WithoutArtifactUnsafe(), now)
	ev.results[a] = res
	return res
}

// checkSignature opens ev and counts it toward the threshold, in a span
// that says which authority it counted for, or why it counted for none.
func (r *run) checkSignature(ctx context.Context, ev *evidence) {
	_, span := startSpan(ctx, spanSignature)
	r.open(ev)
	before, reasons := len(r.tally.signers), len(r.tally.reasons)
	r.cb.count(r.tally, ev, r.s, r.now)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("portcullis.evidence", ev.label()),
			attribute.String("portcullis.evidence.format", ev.format),
		)
		switch {
		case len(r.tally.signers) > before:
			span.SetAttributes(attribute.String("portcullis.authority", r.tally.signers[len(r.tally.signers)-1].Authority))
		case len(r.tally.reasons) > reasons:
			span.SetAttributes(attribute.String("portcullis.rejected", trimReason(r.tally.reasons[len(r.tally.reasons)-1])))
		}
	}
	span.End()
}

// trimReason bounds a reason recorded on a span: reasons quote evidence.
func trimReason(s string) string {
	const maxSpanReason = 512
	if len(s) > maxSpanReason {
		return s[:maxSpanReason] + "…"
	}
	return s
}

// check verifies a message signature (a bundle's or a simplesigning
// layer's) against the authority: the signed digest must be the
// subject's. It also says who signed, for the threshold. DSSE envelopes
// go through evidence.result instead.
func (a *compiledAuthority) check(ev *evidence, s Subject, now time.Time) (Signer, signerRef, error) {
	signer, ref, _, err := a.verifySigner(ev, sgverify.WithArtifactDigest("sha256", digestBytes(s.Digest)), now)
	return signer, ref, err
}

// verifySigner checks ev's signature under the authority. art is what
// sigstore-go compares the signed content with: the subject digest for a
// message signature, nothing for a DSSE envelope, whose subject is
// compared on the statement parsed once the signature verified. A
// key-signed simplesigning digest was compared when it was parsed. It
// returns the verified signing times (log integration and RFC3161), empty
// for key signatures.
func (a *compiledAuthority) verifySigner(ev *evidence, art sgverify.ArtifactPolicyOption, now time.Time) (Signer, signerRef, []time.Time, error) {
	if a.keyless != nil {
		return a.checkKeyless(ev, art, now)
	}
	if a.notation != nil {
		return Signer{}, signerRef{}, nil, fmt.Errorf("not a Notary Project signature; authority %q accepts only those", a.name)
	}
	signer, k, err := a.checkKey(ev, art)
	if err != nil {
		return Signer{}, signerRef{}, nil, err
	}
	return signer, signerRef{key: k}, nil, nil
}

func (a *compiledAuthority) checkKey(ev *evidence, art sgverify.ArtifactPolicyOption) (Signer, *compiledKey, error) {
	signer := Signer{Authority: a.name, Kind: "key", Evidence: ev.format}
	var entities []sgverify.SignedEntity
	hint, what := "", "envelope"
	switch {
	case ev.legacy != nil && ev.legacy.env == nil:
		// A simplesigning signature covers the payload bytes, whose
		// docker-manifest-digest parseLegacy compared with the subject.
		// It is not DSSE: checked directly, it costs one signature check
		// where sigstore-go's message-signature path would add a policy,
		// a result and a copy of the payload per key.
		for _, k := range a.keys {
			if k.verifier.VerifySignature(bytes.NewReader(ev.legacy.sig), bytes.NewReader(ev.legacy.payload)) == nil {
				signer.Key, signer.KeyID = k.name, k.id
				return signer, k, nil
			}
		}
		return Signer{}, nil, fmt.Errorf("signature does not verify with any key of authority %q", a.name)
	case ev.legacy != nil:
		entities = legacyEntities(ev.legacy, true)
	case ev.bundle != nil:
		vc, err := ev.bundle.VerificationContent()
		if err != nil {
			return Signer{}, nil, fmt.Errorf("bundle verification material: %w", err)
		}
		if vc.Certificate() != nil || vc.PublicKey() == nil {
			return Signer{}, nil, fmt.Errorf("bundle is certificate-signed; authority %q accepts keys", a.name)
		}
		entities, hint, what = []sgverify.SignedEntity{ev.bundle}, vc.PublicKey().Hint(), "bundle"
	default:
		return Signer{}, nil, errors.New("no signature material")
	}
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
		for _, entity := range entities {
			_, err := k.bundle.Verify(entity, sgverify.NewPolicy(art, sgverify.WithKey()))
			if err == nil {
				signer.Key, signer.KeyID = k.name, k.id
				return signer, k, nil
			}
			if first == nil {
				first = err
			}
		}
	}
	return Signer{}, nil, fmt.Errorf("%s does not verify with any key of authority %q: %s", what, a.name, trimErr(first))
}

func (a *compiledAuthority) checkKeyless(ev *evidence, art sgverify.ArtifactPolicyOption, now time.Time) (Signer, signerRef, []time.Time, error) {
	kl := a.keyless
	fail := func(err error) (Signer, signerRef, []time.Time, error) { return Signer{}, signerRef{}, nil, err }
	var entities []sgverify.SignedEntity
	switch {
	case ev.legacy != nil:
		if ev.legacy.cert == nil {
			return fail(fmt.Errorf("no certificate; authority %q is keyless", a.name))
		}
		entities = legacyEntities(ev.legacy, false)
		if ev.legacy.env == nil {
			// A simplesigning signature covers the payload bytes.
			art = sgverify.WithArtifact(bytes.NewReader(ev.legacy.payload))
		}
	case ev.bundle != nil:
		vc, err := ev.bundle.VerificationContent()
		if err != nil {
			return fail(fmt.Errorf("bundle verification material: %w", err))
		}
		if vc.Certificate() == nil {
			return fail(fmt.Errorf("bundle is key-signed; authority %q is keyless", a.name))
		}
		entities = []sgverify.SignedEntity{ev.bundle}
	default:
		return fail(errors.New("no signature material"))
	}
	// sigstore-go's identity policy runs after the chain, log, timestamp
	// and signature checks; it costs about 1% of a keyless verification
	// (BenchmarkVerifyKeylessBundle). Its error names only the last
	// comparison, so a mismatch is explained by identityMismatch.
	var firstErr error
	mismatched := false
	for _, entity := range entities {
		res, err := kl.verifier.Verify(entity, sgverify.NewPolicy(art, sgverify.WithCertificateIdentity(kl.identity)))
		if err != nil {
			// A signature that verified under the wrong identity explains
			// the refusal better than one that did not verify at all.
			var mismatch *sgverify.ErrNoMatchingCertificateIdentity
			if firstErr == nil || !mismatched && errors.As(err, &mismatch) {
				firstErr, mismatched = err, errors.As(err, &mismatch)
			}
			continue
		}
		if res.Signature == nil || res.Signature.Certificate == nil || res.VerifiedIdentity == nil {
			return fail(errors.New("verified without a certificate identity"))
		}
		signer := Signer{Authority: a.name, Kind: "keyless", Evidence: ev.format,
			Identity: res.Signature.Certificate.SubjectAlternativeName, Issuer: res.Signature.Certificate.Extensions.Issuer}
		var times []time.Time
		for _, t := range res.VerifiedTimestamps {
			times = append(times, t.Timestamp)
		}
		return signer, signerRef{entity: entity, summary: res.Signature.Certificate}, times, nil
	}
	entity := entities[0]
	if mismatched {
		return fail(fmt.Errorf("%s (authority %q)", kl.identityMismatch(entity), a.name))
	}
	msg := trimErr(firstErr)
	if vc, verr := entity.VerificationContent(); verr == nil && vc.Certificate() != nil && now.After(vc.Certificate().NotAfter) {
		msg += fmt.Sprintf(" (certificate expired at %s)", vc.Certificate().NotAfter.UTC().Format(time.RFC3339))
	}
	return fail(fmt.Errorf("keyless verification for authority %q failed: %s", a.name, msg))
}

// identityMismatch says which part of the certificate identity the
// authority refused, naming the certificate's value and the expected one.
// sigstore-go's own error names only the last of the comparisons it made.
func (k *compiledKeyless) identityMismatch(entity sgverify.SignedEntity) string {
	vc, err := entity.VerificationContent()
	if err != nil || vc.Certificate() == nil {
		return "certificate identity does not match"
	}
	sum, err := certificate.SummarizeCertificate(vc.Certificate())
	if err != nil {
		return "certificate identity does not match: " + trimErr(err)
	}
	var msgs []string
	if k.identity.Issuer.Verify(sum) != nil {
		msgs = append(msgs, fmt.Sprintf("certificate issuer %q does not match %s", sum.Extensions.Issuer, expected(k.Issuer, k.IssuerRegex)))
	}
	if k.identity.SubjectAlternativeName.Verify(sum) != nil {
		msgs = append(msgs, fmt.Sprintf("certificate subject %q does not match %s", sum.SubjectAlternativeName, expected(k.Subject, k.SubjectRegex)))
	}
	if len(msgs) == 0 {
		return fmt.Sprintf("certificate identity %q (issuer %q) does not match", sum.SubjectAlternativeName, sum.Extensions.Issuer)
	}
	return strings.Join(msgs, "; ")
}

// expected formats an identity criterion: "exact", /regex/ or both.
func expected(exact, re string) string {
	switch {
	case exact != "" && re != "":
		return fmt.Sprintf("%q and /%s/", exact, re)
	case re != "":
		return "/" + re + "/"
	}
	return fmt.Sprintf("%q", exact)
}

// signerID names who made a signature, so that a threshold counts signers
// rather than signatures or authority names.
type signerID struct {
	// key is the hex SHA-256 of the DER public key that verified the
	// signature; for a certificate, the certificate's key.
	key string
	// identity is the certificate's OIDC issuer and SAN; empty for key
	// signatures.
	identity, issuer, san string
}

func (id signerID) String() string {
	if id.identity != "" {
		return fmt.Sprintf("certificate identity %q (issuer %q)", id.san, id.issuer)
	}
	return "public key sha256:" + id.key
}

// signerRef is what verified a signature: a configured key, or the
// certificate of a verified entity. Its signerID is computed only when a
// threshold above one needs it (a bundle parses its certificate again).
type signerRef struct {
	key     *compiledKey
	entity  sgverify.SignedEntity
	summary *certificate.Summary
}

func (r signerRef) id() signerID {
	if r.key != nil {
		return signerID{key: r.key.id}
	}
	// The certificate verified a moment ago, so reading it again does not
	// fail; if it did, every such signer would share the id of no key and
	// count once, never twice.
	var der []byte
	if vc, err := r.entity.VerificationContent(); err == nil && vc.Certificate() != nil {
		c := vc.Certificate()
		if der, err = x509.MarshalPKIXPublicKey(c.PublicKey); err != nil {
			der = c.RawSubjectPublicKeyInfo
		}
	}
	sum := sha256.Sum256(der)
	return signerID{
		key:      hex.EncodeToString(sum[:]),
		identity: r.summary.Extensions.Issuer + "\x00" + r.summary.SubjectAlternativeName,
		issuer:   r.summary.Extensions.Issuer,
		san:      r.summary.SubjectAlternativeName,
	}
}

// signatureDigest identifies the signature ev carries: the signature bytes
// with the digest of what they sign. The same signature found twice has
// one digest, however it was packaged.
func (ev *evidence) signatureDigest() ([32]byte, bool) {
	h := sha256.New()
	add := func(b []byte) {
		sum := sha256.Sum256(b)
		h.Write(sum[:])
	}
	switch {
	case ev.legacy != nil && ev.legacy.env != nil:
		h.Write([]byte("dsse"))
		add(dsse.PAE(ev.legacy.env.PayloadType, ev.legacy.payload))
		for _, sig := range ev.legacy.sigs {
			add(sig)
		}
	case ev.legacy != nil:
		// As a bundle's message signature would carry it: the digest of
		// the signed bytes.
		h.Write([]byte("message"))
		add(ev.legacy.payload)
		add(ev.legacy.sig)
	case ev.bundle != nil:
		sc, err := ev.bundle.SignatureContent()
		if err != nil {
			return [32]byte{}, false
		}
		if env := sc.EnvelopeContent(); env != nil && env.RawEnvelope() != nil {
			raw := env.RawEnvelope()
			payload, err := base64.StdEncoding.DecodeString(raw.Payload)
			if err != nil {
				return [32]byte{}, false
			}
			h.Write([]byte("dsse"))
			add(dsse.PAE(raw.PayloadType, payload))
			for _, s := range raw.Signatures {
				sig, err := base64.StdEncoding.DecodeString(s.Sig)
				if err != nil {
					return [32]byte{}, false
				}
				add(sig)
			}
		} else if ms := sc.MessageSignatureContent(); ms != nil {
			h.Write([]byte("message"))
			h.Write(ms.Digest())
			add(ms.Signature())
		} else {
			return [32]byte{}, false
		}
	default:
		return [32]byte{}, false
	}
	var out [32]byte
	h.Sum(out[:0])
	return out, true
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
