package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/result"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FormatNotation names Notary Project signatures in verdicts.
const FormatNotation = "notation"

// ArtifactTypeNotation is the artifactType of a Notary Project signature
// manifest, a referrer of the artifact it signs.
const ArtifactTypeNotation = "application/vnd.cncf.notary.signature"

// Envelope media types of Notary Project signatures.
const (
	MediaTypeNotationJWS  = jws.MediaTypeEnvelope  // application/jose+json
	MediaTypeNotationCOSE = cose.MediaTypeEnvelope // application/cose
)

// notationStoreName names the one trust store of each type an authority
// has; every authority gets its own verifier, so one name serves all.
const notationStoreName = "portcullis"

// NotationAuthority accepts Notary Project signatures (JWS or COSE
// envelopes) whose certificate chain leads to one of its trust store
// certificates and whose signing certificate's subject is one of its
// trusted identities. It is verified with notation-go at the "strict"
// level: integrity, authenticity, authentic timestamp and expiry are
// enforced; revocation is enforced only when Revocation is set.
type NotationAuthority struct {
	TrustName string
	// CA, SigningAuthority and TSA are the trust stores as notation names
	// them: roots (or intermediates) of code-signing chains, roots of
	// signing authorities, and roots of timestamping authorities. At
	// least one of CA and SigningAuthority is required.
	CA, SigningAuthority, TSA []NamedCert
	// Identities are notation trusted identities: "x509.subject: <DN>"
	// or "*" (any subject the trust stores certify).
	Identities []string
	// Revocation enforces OCSP/CRL checks of the signing and
	// timestamping chains. Off, no revocation check is made and nothing
	// is fetched, for air-gapped sites.
	Revocation bool
	// RevocationCodeSigning and RevocationTimestamping do the checks
	// when Revocation is set; the caller builds them, since they fetch
	// over the network. Both are required then.
	RevocationCodeSigning, RevocationTimestamping revocation.Validator
}

// NamedCert is a PEM file of one or more certificates with a stable name
// (its file path in config).
type NamedCert struct {
	Name string
	PEM  []byte
}

// compiledNotation verifies notation envelopes for one authority.
type compiledNotation struct {
	*NotationAuthority
	verifier notation.Verifier
}

// notationSignature is a notation envelope found for a subject, read but
// not trusted.
type notationSignature struct {
	mediaType string
	envelope  []byte
	// ctx bounds the verifications of this envelope (revocation checks
	// fetch); it is the Verify call's.
	ctx context.Context
}

// parseNotationCertificates reads a trust store file: PEM CERTIFICATE
// blocks only, at least one, nothing else in the file. ca and
// signingAuthority stores hold CA certificates, tsa stores self-signed
// root CA certificates.
func parseNotationCertificates(storeType string, b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(b)
	for len(rest) > 0 {
		block, r := pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not PEM: data after the last certificate")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q is not a CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
		rest = bytes.TrimSpace(r)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	for _, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("certificate %q is not a CA certificate (basicConstraints CA:TRUE)", c.Subject)
		}
		if storeType == string(truststore.TypeTSA) {
			if !bytes.Equal(c.RawSubject, c.RawIssuer) || c.CheckSignatureFrom(c) != nil {
				return nil, fmt.Errorf("certificate %q is not a self-signed root CA certificate", c.Subject)
			}
		}
	}
	return certs, nil
}

// NotationTrustPolicy is the notation trust policy an authority is
// verified under: every scope (the boundary already chose the
// repositories), the strict level, revocation skipped unless enforced.
func NotationTrustPolicy(stores map[truststore.Type]bool, identities []string, revocation bool) *trustpolicy.Document {
	sv := trustpolicy.SignatureVerification{VerificationLevel: trustpolicy.LevelStrict.Name}
	if !revocation {
		sv.Override = map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeRevocation: trustpolicy.ActionSkip}
	}
	var names []string
	for _, t := range truststore.Types {
		if stores[t] {
			names = append(names, string(t)+":"+notationStoreName)
		}
	}
	return &trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{{
		Name: notationStoreName, RegistryScopes: []string{"*"}, SignatureVerification: sv,
		TrustStores: names, TrustedIdentities: identities,
	}}}
}

// notationStore is an in-memory X509TrustStore of one authority.
type notationStore map[truststore.Type][]*x509.Certificate

func (s notationStore) GetCertificates(_ context.Context, t truststore.Type, name string) ([]*x509.Certificate, error) {
	certs := s[t]
	if name != notationStoreName || len(certs) == 0 {
		return nil, truststore.TrustStoreError{Msg: fmt.Sprintf("no trust store %s:%s", t, name)}
	}
	return certs, nil
}

// noRevocation answers every revocation check "not revoked" without
// asking anyone: what revocation off means. notation checks the
// timestamping chain whatever its revocation setting says.
type noRevocation struct{}

func (noRevocation) ValidateContext(_ context.Context, o revocation.ValidateContextOptions) ([]*result.CertRevocationResult, error) {
	out := make([]*result.CertRevocationResult, len(o.CertChain))
	for i := range out {
		out[i] = &result.CertRevocationResult{Result: result.ResultOK}
	}
	return out, nil
}

func compileNotation(a *Authority) (*compiledAuthority, error) {
	if a.Key != nil || a.Keyless != nil {
		return nil, errors.New("exactly one of key, keyless and notation must be set")
	}
	na := a.Notation
	if len(na.CA) == 0 && len(na.SigningAuthority) == 0 {
		return nil, errors.New("notation authority has no ca or signing_authority certificates")
	}
	if len(na.Identities) == 0 {
		return nil, errors.New("notation authority has no trusted identities")
	}
	store := notationStore{}
	for _, s := range []struct {
		t     truststore.Type
		certs []NamedCert
	}{{truststore.TypeCA, na.CA}, {truststore.TypeSigningAuthority, na.SigningAuthority}, {truststore.TypeTSA, na.TSA}} {
		for _, nc := range s.certs {
			certs, err := parseNotationCertificates(string(s.t), nc.PEM)
			if err != nil {
				return nil, fmt.Errorf("%s certificate %q: %w", s.t, nc.Name, err)
			}
			store[s.t] = append(store[s.t], certs...)
		}
	}
	present := map[truststore.Type]bool{}
	for t := range store {
		present[t] = true
	}
	opts := verifier.VerifierOptions{RevocationCodeSigningValidator: noRevocation{}, RevocationTimestampingValidator: noRevocation{}}
	if na.Revocation {
		if na.RevocationCodeSigning == nil || na.RevocationTimestamping == nil {
			return nil, errors.New("revocation is enforced but no revocation validator was given")
		}
		opts = verifier.VerifierOptions{RevocationCodeSigningValidator: na.RevocationCodeSigning, RevocationTimestampingValidator: na.RevocationTimestamping}
	}
	// No plugin manager: a signature that requires a verification plugin
	// is inconclusive, so rejected.
	v, err := verifier.NewWithOptions(NotationTrustPolicy(present, na.Identities, na.Revocation), store, nil, opts)
	if err != nil {
		return nil, fmt.Errorf("notation trust policy: %w", err)
	}
	return &compiledAuthority{name: a.Name, notation: &compiledNotation{NotationAuthority: na, verifier: v}}, nil
}

// refuseNotationRules refuses attestation rules that name a notation
// authority: a notation signature carries no attestation.
func refuseNotationRules(b *Boundary) error {
	for _, a := range b.Authorities {
		if a.Notation == nil {
			continue
		}
		for _, r := range b.Attestations {
			for _, n := range r.Authorities {
				if n == a.Name {
					return fmt.Errorf("attestation %q names notation authority %q: notation signatures carry no attestations", r.Name, a.Name)
				}
			}
		}
	}
	return nil
}

// notationManifest returns the envelope layer of a notation signature
// manifest; ok is false for a manifest that is no notation signature. A manifest that is no notation signature but carries
// an envelope layer is reported (ok true, err set): it looks like one and
// must not count.
func notationManifest(man *v1.Manifest) (layer *v1.Descriptor, ok bool, err error) {
	isSig := man.ArtifactType == ArtifactTypeNotation ||
		man.ArtifactType == "" && string(man.Config.MediaType) == ArtifactTypeNotation
	var envelopes []v1.Descriptor
	for _, l := range man.Layers {
		if mt := string(l.MediaType); mt == MediaTypeNotationJWS || mt == MediaTypeNotationCOSE {
			envelopes = append(envelopes, l)
		}
	}
	switch {
	case !isSig && len(envelopes) == 0:
		return nil, false, nil
	case !isSig:
		at := man.ArtifactType
		if at == "" {
			at = string(man.Config.MediaType)
		}
		return nil, true, fmt.Errorf("manifest with a notation envelope layer has artifactType %q, not %s", at, ArtifactTypeNotation)
	case len(man.Layers) != 1 || len(envelopes) != 1:
		return nil, true, fmt.Errorf("notation signature manifest must have exactly one %s or %s layer", MediaTypeNotationJWS, MediaTypeNotationCOSE)
	}
	return &envelopes[0], true, nil
}

// openNotation reads a notation signature manifest's envelope, within the
// signature limit and the budget. It reports false when man is not a
// notation signature.
func (r *run) openNotation(ctx context.Context, ev *evidence, man *v1.Manifest) (*evidence, bool, error) {
	layer, ok, err := notationManifest(man)
	if !ok {
		return nil, false, nil
	}
	ev.format = FormatNotation
	if err != nil {
		ev.err = err
		return ev, true, nil
	}
	if man.Subject == nil {
		ev.err = errors.New("notation signature has no subject")
		return ev, true, nil
	}
	if man.Subject.Digest != r.s.Digest {
		ev.err = fmt.Errorf("notation signature subject %s is not the subject %s", man.Subject.Digest, r.s.Digest)
		return ev, true, nil
	}
	raw, err := r.readBlob(ctx, layer.Digest, layer.Size, r.e.limits.SignatureBytes, "notation envelope")
	if err != nil {
		if errors.Is(err, errEvidence) {
			ev.err = err
			return ev, true, nil
		}
		return nil, true, err
	}
	ns := &notationSignature{mediaType: string(layer.MediaType), envelope: raw, ctx: ctx}
	// Read without trusting it, only to refuse early what no authority
	// could accept: an envelope that does not parse, or one signing
	// another artifact. notation-go checks both again after verifying.
	if err := ns.precheck(r.s); err != nil {
		ev.err = err
		return ev, true, nil
	}
	ev.notation = ns
	return ev, true, nil
}

// notationPayload is the signed payload of a notation envelope.
type notationPayload struct {
	TargetArtifact ocispec.Descriptor `json:"targetArtifact"`
}

func (ns *notationSignature) precheck(s Subject) error {
	if s.Manifest == nil {
		return errors.New("subject manifest unknown: a notation signature signs its size and media type")
	}
	env, err := signature.ParseEnvelope(ns.mediaType, ns.envelope)
	if err != nil {
		return fmt.Errorf("bad notation envelope: %s", trimErr(err))
	}
	content, err := env.Content()
	if err != nil {
		return fmt.Errorf("bad notation envelope: %s", trimErr(err))
	}
	var p notationPayload
	if err := json.Unmarshal(content.Payload.Content, &p); err != nil {
		return fmt.Errorf("bad notation envelope payload: %s", trimErr(err))
	}
	want := subjectDescriptor(s)
	if t := p.TargetArtifact; t.Digest != want.Digest || t.Size != want.Size || t.MediaType != want.MediaType {
		return fmt.Errorf("notation signature of another artifact: it signs %s (%s, %d bytes), not the subject %s (%s, %d bytes)",
			t.Digest, t.MediaType, t.Size, want.Digest, want.MediaType, want.Size)
	}
	return nil
}

// subjectDescriptor is the descriptor a notation signature of s signs.
func subjectDescriptor(s Subject) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: string(s.MediaType), Digest: digest.Digest(s.Digest.String()), Size: int64(len(s.Manifest))}
}

// checkNotation verifies a notation envelope under a notation authority
// with notation-go's verifier; evidence and authority of different kinds
// never match.
func (a *compiledAuthority) checkNotation(ev *evidence, s Subject) (Signer, signerRef, error) {
	switch {
	case a.notation == nil:
		return Signer{}, signerRef{}, fmt.Errorf("notation signature; authority %q is not a notation authority", a.name)
	case ev.notation == nil:
		return Signer{}, signerRef{}, fmt.Errorf("not a notation signature; authority %q accepts notation signatures", a.name)
	case s.Manifest == nil:
		return Signer{}, signerRef{}, errors.New("subject manifest unknown: a notation signature signs its size")
	}
	ns := ev.notation
	ctx := ns.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	ref := "portcullis.invalid/subject@" + s.Digest.String()
	out, err := a.notation.verifier.Verify(ctx, subjectDescriptor(s), ns.envelope,
		notation.VerifierVerifyOptions{ArtifactReference: ref, SignatureMediaType: ns.mediaType})
	if err == nil && (out == nil || out.EnvelopeContent == nil || len(out.EnvelopeContent.SignerInfo.CertificateChain) == 0) {
		err = errors.New("verified without a certificate chain")
	}
	if err != nil {
		return Signer{}, signerRef{}, fmt.Errorf("authority %q: %s", a.name, notationReason(out, err))
	}
	leaf := out.EnvelopeContent.SignerInfo.CertificateChain[0]
	der, merr := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	if merr != nil {
		der = leaf.RawSubjectPublicKeyInfo
	}
	sum := sha256.Sum256(der)
	id := hex.EncodeToString(sum[:])
	signer := Signer{Authority: a.name, Kind: "notation", Identity: leaf.Subject.String(), Issuer: leaf.Issuer.String(),
		KeyID: id, Evidence: FormatNotation}
	// The leaf's public key is the signer: the same key under two
	// authority names counts once, as a cosign key does.
	return signer, signerRef{key: &compiledKey{name: leaf.Subject.String(), id: id}}, nil
}

// notationReason says which of notation's checks refused a signature.
func notationReason(out *notation.VerificationOutcome, err error) string {
	what := "not verified"
	if out != nil {
		for _, res := range out.VerificationResults {
			if res == nil || res.Error == nil || res.Action != trustpolicy.ActionEnforce {
				continue
			}
			switch res.Type {
			case trustpolicy.TypeIntegrity:
				what = "bad envelope"
			case trustpolicy.TypeAuthenticity:
				what = "untrusted signer"
			case trustpolicy.TypeExpiry:
				what = "signature expired"
			case trustpolicy.TypeAuthenticTimestamp:
				what = "certificate expired or not yet valid"
			case trustpolicy.TypeRevocation:
				what = "certificate revoked or revocation unknown"
			}
			err = res.Error
			break
		}
		if strings.Contains(err.Error(), "trusted identities") {
			what = "identity not trusted"
		}
		if err.Error() == "content descriptor mismatch" {
			what = "wrong subject"
		}
	}
	return "notation " + what + ": " + trimErr(err)
}

// notationHash identifies a notation authority in a policy hash.
func notationHash(na *NotationAuthority) any {
	if na == nil {
		return nil
	}
	sum := func(ncs []NamedCert) []string {
		var out []string
		for _, nc := range ncs {
			s := sha256.Sum256(nc.PEM)
			out = append(out, nc.Name+"="+hex.EncodeToString(s[:]))
		}
		return out
	}
	return struct {
		Trust               string
		CA, SA, TSA, Idents []string
		Revocation          bool
	}{na.TrustName, sum(na.CA), sum(na.SigningAuthority), sum(na.TSA), na.Identities, na.Revocation}
}
