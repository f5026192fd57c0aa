package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// simpleSigningType is the critical.type cosign writes and checks.
const simpleSigningType = "cosign container image signature"

// legacySignature is one layer of a cosign `sha256-<hex>.sig` manifest.
type legacySignature struct {
	payload []byte // exact layer bytes the signature covers
	sig     []byte
	cert    *x509.Certificate
	chain   []*x509.Certificate
	tlog    *tlog.Entry // from the Rekor SET annotation
	rfc3161 []byte      // DER timestamp response over sig

	// env is set for a legacy attestation: payload is then the DSSE
	// payload (the in-toto statement) and sigs all envelope signatures.
	env  *dsse.Envelope
	sigs [][]byte
}

// SimpleSigning is the part of a cosign simplesigning payload Portcullis
// relies on.
type SimpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	// Optional is kept as written: Portcullis never reads it, and the
	// payload is parsed before its signature is checked, so its contents
	// are not materialised.
	Optional json.RawMessage `json:"optional"`
}

// ParseSimpleSigning parses a simplesigning payload strictly: one JSON
// object with the cosign type and a well-formed sha256 manifest digest;
// optional, when present, is an object or null.
func ParseSimpleSigning(b []byte) (*SimpleSigning, v1.Hash, error) {
	var p SimpleSigning
	if err := strictUnmarshal(b, &p); err != nil {
		return nil, v1.Hash{}, fmt.Errorf("malformed simplesigning payload: %w", err)
	}
	if o := bytes.TrimSpace(p.Optional); len(o) > 0 && o[0] != '{' && !bytes.Equal(o, []byte("null")) {
		return nil, v1.Hash{}, errors.New("malformed simplesigning payload: optional is not an object")
	}
	if p.Critical.Type != simpleSigningType {
		return nil, v1.Hash{}, fmt.Errorf("simplesigning type %q is not %q", p.Critical.Type, simpleSigningType)
	}
	h, err := v1.NewHash(p.Critical.Image.DockerManifestDigest)
	if err != nil || h.Algorithm != "sha256" {
		return nil, v1.Hash{}, fmt.Errorf("simplesigning payload has invalid docker-manifest-digest %q", p.Critical.Image.DockerManifestDigest)
	}
	return &p, h, nil
}

func (r *run) openLegacy(ctx context.Context, m Manifest) error {
	s := r.s
	return r.openLayers(ctx, m, cosignLayers{
		format: FormatCosignLegacy, tag: "sha256-" + s.Digest.Hex + ".sig", what: "signature",
		mediaType: mediaTypeSimpleSigning, source: "sig", maxBytes: r.e.limits.SignatureBytes,
		signature: true, wanted: r.needSignatures,
		parse: func(ev *evidence, raw []byte, l v1.Descriptor) {
			ev.legacy, ev.err = parseLegacy(raw, l.Annotations, s.Digest)
		},
		predict: func(l v1.Descriptor) []byte { return predictSimpleSigning(s, l) },
	})
}

// maxPredictions bounds the payloads tried for one layer: a few sha256
// sums of a few hundred bytes each.
const maxPredictions = 8

// predictSimpleSigning is the payload of a signature layer when it is the
// one `cosign sign` writes without annotations, whose only unknown is the
// docker-reference the signer named the image by: tried with each of the
// subject's registry names. A prediction is kept only when its length is
// the layer's declared size and it hashes to the layer's digest, which is
// exactly what a read of the layer by digest would have to hash to: the
// bytes, and so the verdict, are the same as if they had been read, minus
// a round trip to the upstream. Anything else (annotations in optional,
// another name) is read as always.
func predictSimpleSigning(s Subject, l v1.Descriptor) []byte {
	if l.Size <= 0 || l.Size > 4096 || !isSHA256(l.Digest) || !isSHA256(s.Digest) || s.Repository == "" {
		return nil
	}
	for i, n := range s.RegistryNames {
		if i == maxPredictions {
			break
		}
		if n == "" {
			continue
		}
		b := simpleSigningPayload(n+"/"+s.Repository, s.Digest)
		if int64(len(b)) == l.Size && checkDigest(b, l.Digest) == nil {
			return b
		}
	}
	return nil
}

// simpleSigningPayload is cosign's payload for a digest signed under ref
// with no annotations, byte for byte as cosign marshals it.
func simpleSigningPayload(ref string, digest v1.Hash) []byte {
	r, err := json.Marshal(ref)
	if err != nil {
		return nil
	}
	b := make([]byte, 0, 192+len(r))
	b = append(b, `{"critical":{"identity":{"docker-reference":`...)
	b = append(b, r...)
	b = append(b, `},"image":{"docker-manifest-digest":"`...)
	b = append(b, digest.String()...)
	b = append(b, `"},"type":"cosign container image signature"},"optional":null}`...)
	return b
}

// cosignLayers describes one kind of cosign legacy tag: which layers carry
// evidence and how one layer's blob becomes evidence.
type cosignLayers struct {
	format, tag, what string // "cosign-legacy", "sha256-….sig", "signature"
	mediaType         string
	source            string // evidence source prefix, "sig" → "sig[2]"
	maxBytes          int64
	// signature says the layers count towards the threshold.
	signature bool
	// wanted reports whether more of these layers can still change the
	// decision.
	wanted func() bool
	parse  func(ev *evidence, raw []byte, l v1.Descriptor)
	// predict, when set, may give a layer's bytes without reading them;
	// they must already be checked against the layer's size and digest.
	predict func(l v1.Descriptor) []byte
}

// openLayers reads the evidence layers of a cosign legacy tag manifest,
// at most e.maxEvidence of them, each verified as it is read and dropped
// after. A malformed manifest or layer is rejected evidence; only fetch
// failures and a spent budget (errBudget) are errors.
func (r *run) openLayers(ctx context.Context, m Manifest, c cosignLayers) error {
	man, err := parseManifest(m.Bytes)
	if err == nil && int64(len(m.Bytes)) > r.manifestLimit() {
		err = fmt.Errorf("%d bytes exceed the limit of %d bytes", len(m.Bytes), r.manifestLimit())
	}
	if err != nil {
		return r.add(ctx, &evidence{format: c.format, source: c.tag, err: fmt.Errorf("malformed %s manifest: %w", c.what, err)}, c.signature)
	}
	n := 0
	for i, l := range man.Layers {
		if l.MediaType != types.MediaType(c.mediaType) {
			continue
		}
		if !c.wanted() {
			return nil
		}
		if n == r.e.maxEvidence {
			r.leftUnread(LimitEvidenceItems, fmt.Sprintf("evidence limit reached: examined %d of %d %s layers", n, len(man.Layers), c.what))
			return nil
		}
		n++
		ev := &evidence{format: c.format, source: fmt.Sprintf("%s[%d]", c.source, i)}
		var raw []byte
		if c.predict != nil {
			predicted := c.predict(l)
			if predicted != nil {
				r.reads.PredictedLayers++
			} else {
				r.reads.UnpredictedLayers++
			}
			raw = r.knownBlob(predicted, c.maxBytes)
		}
		if raw == nil {
			raw, err = r.readBlob(ctx, l.Digest, l.Size, c.maxBytes, c.what+" layer")
		}
		switch {
		case errors.Is(err, errEvidence):
			ev.err = err
		case err != nil:
			return err
		default:
			c.parse(ev, raw, l)
		}
		if err := r.add(ctx, ev, c.signature); err != nil {
			return err
		}
	}
	return nil
}

// parseLegacy turns a signature layer into evidence. The signed digest is
// checked here because it does not depend on who signed.
func parseLegacy(payload []byte, ann map[string]string, subject v1.Hash) (*legacySignature, error) {
	b64, ok := ann[annotationSignature]
	if !ok {
		return nil, errors.New("no signature annotation")
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sig) == 0 {
		return nil, errors.New("signature annotation is not valid base64")
	}
	_, h, err := ParseSimpleSigning(payload)
	if err != nil {
		return nil, err
	}
	if h != subject {
		return nil, fmt.Errorf("signed digest %s is not the subject %s", h, subject)
	}
	ls := &legacySignature{payload: payload, sig: sig}
	if err := parseLegacyMaterial(ls, ann); err != nil {
		return nil, err
	}
	return ls, nil
}

// parseLegacyMaterial reads the keyless material cosign stores in layer
// annotations next to a signature or attestation.
func parseLegacyMaterial(ls *legacySignature, ann map[string]string) error {
	var err error
	if c := ann[annotationCertificate]; c != "" {
		certs, err := cryptoutils.UnmarshalCertificatesFromPEM([]byte(c))
		if err != nil || len(certs) != 1 {
			return errors.New("certificate annotation is not one PEM certificate")
		}
		ls.cert = certs[0]
		if ch := ann[annotationChain]; ch != "" {
			if ls.chain, err = cryptoutils.UnmarshalCertificatesFromPEM([]byte(ch)); err != nil {
				return errors.New("chain annotation is not PEM certificates")
			}
		}
	}
	if rb := ann[annotationRekorBundle]; rb != "" {
		if ls.tlog, err = parseRekorBundle([]byte(rb)); err != nil {
			return err
		}
	}
	if ts := ann[annotationRFC3161]; ts != "" {
		var t struct {
			SignedRFC3161Timestamp []byte `json:"SignedRFC3161Timestamp"`
		}
		if err := strictUnmarshal([]byte(ts), &t); err != nil || len(t.SignedRFC3161Timestamp) == 0 {
			return errors.New("malformed rfc3161timestamp annotation")
		}
		ls.rfc3161 = t.SignedRFC3161Timestamp
	}
	return nil
}

// parseRekorBundle reads cosign's Rekor SET annotation into a log entry
// sigstore-go can verify (SET signature and body ↔ signature equality).
func parseRekorBundle(b []byte) (*tlog.Entry, error) {
	var rb struct {
		SignedEntryTimestamp []byte `json:"SignedEntryTimestamp"`
		Payload              struct {
			Body           []byte `json:"body"`
			IntegratedTime int64  `json:"integratedTime"`
			LogIndex       int64  `json:"logIndex"`
			LogID          string `json:"logID"`
		} `json:"Payload"`
	}
	if err := strictUnmarshal(b, &rb); err != nil {
		return nil, fmt.Errorf("malformed rekor bundle annotation: %w", err)
	}
	logID, err := hex.DecodeString(rb.Payload.LogID)
	if err != nil || len(rb.SignedEntryTimestamp) == 0 || len(rb.Payload.Body) == 0 {
		return nil, errors.New("malformed rekor bundle annotation")
	}
	var kv struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(rb.Payload.Body, &kv); err != nil || kv.Kind == "" {
		return nil, errors.New("malformed rekor bundle annotation: entry body")
	}
	e, err := tlog.ParseTransparencyLogEntry(&protorekor.TransparencyLogEntry{
		LogIndex:          rb.Payload.LogIndex,
		LogId:             &protocommon.LogId{KeyId: logID},
		KindVersion:       &protorekor.KindVersion{Kind: kv.Kind, Version: kv.APIVersion},
		IntegratedTime:    rb.Payload.IntegratedTime,
		InclusionPromise:  &protorekor.InclusionPromise{SignedEntryTimestamp: rb.SignedEntryTimestamp},
		CanonicalizedBody: rb.Payload.Body,
	})
	if err != nil {
		return nil, fmt.Errorf("malformed rekor bundle annotation: %w", err)
	}
	return e, nil
}

// legacyEntity presents a legacy signature or attestation layer to
// sigstore-go as a bundle would carry it, so legacy and bundle evidence
// share one verification path: for keyless evidence the chain to Fulcio
// at a log or TSA time and the SET checks, for DSSE envelopes the
// signature over the pre-authentication encoding, key and keyless alike.
type legacyEntity struct {
	ls *legacySignature
	// index selects one signature of a DSSE envelope. sigstore-go verifies
	// an envelope holding exactly one signature, as a bundle carries it;
	// cosign accepts a legacy envelope when any of its signatures
	// verifies, so each is presented on its own.
	index int
	// key presents the layer as key-signed: a key authority checks the
	// signature against its own keys, whatever certificate the layer
	// also carries, as cosign verify --key does.
	key bool
}

var _ sgverify.SignedEntity = legacyEntity{}

// legacyEntities lists the entities to verify for ls: one per envelope
// signature, or the one message signature.
func legacyEntities(ls *legacySignature, key bool) []sgverify.SignedEntity {
	if ls.env == nil || len(ls.env.Signatures) <= 1 {
		return []sgverify.SignedEntity{legacyEntity{ls: ls, key: key}}
	}
	out := make([]sgverify.SignedEntity, len(ls.env.Signatures))
	for i := range ls.env.Signatures {
		out[i] = legacyEntity{ls: ls, index: i, key: key}
	}
	return out
}

func (l legacyEntity) HasInclusionPromise() bool { return l.ls.tlog != nil }
func (l legacyEntity) HasInclusionProof() bool   { return false }
func (l legacyEntity) Version() (string, error)  { return "v0.1", nil }

func (l legacyEntity) VerificationContent() (sgverify.VerificationContent, error) {
	if l.key {
		// The key verifier's trusted material answers every hint with its
		// one key, so the empty hint names that key.
		return &bundle.PublicKey{}, nil
	}
	if l.ls.cert == nil {
		return nil, errors.New("no certificate")
	}
	return certContent{cert: l.ls.cert, chain: l.ls.chain}, nil
}

func (l legacyEntity) SignatureContent() (sgverify.SignatureContent, error) {
	if env := l.ls.env; env != nil {
		if len(env.Signatures) <= 1 {
			return &bundle.Envelope{Envelope: env}, nil
		}
		return &bundle.Envelope{Envelope: &dsse.Envelope{
			PayloadType: env.PayloadType, Payload: env.Payload, Signatures: env.Signatures[l.index : l.index+1],
		}}, nil
	}
	sum := sha256.Sum256(l.ls.payload)
	return bundle.NewMessageSignature(sum[:], "SHA2_256", l.ls.sig), nil
}

func (l legacyEntity) Timestamps() ([][]byte, error) {
	if l.ls.rfc3161 == nil {
		return nil, nil
	}
	return [][]byte{l.ls.rfc3161}, nil
}

func (l legacyEntity) TlogEntries() ([]*tlog.Entry, error) {
	if l.ls.tlog == nil {
		return nil, nil
	}
	return []*tlog.Entry{l.ls.tlog}, nil
}

// certContent is a leaf certificate with the intermediates cosign stored
// next to it. Intermediates only help build a path; trust still ends at
// the trusted root's Fulcio CAs.
type certContent struct {
	cert  *x509.Certificate
	chain []*x509.Certificate
}

func (c certContent) CompareKey(key any, _ root.TrustedMaterial) bool {
	k, ok := key.(*x509.Certificate)
	return ok && c.cert.Equal(k)
}

func (c certContent) ValidAtTime(t time.Time, _ root.TrustedMaterial) bool {
	return !t.Before(c.cert.NotBefore) && !t.After(c.cert.NotAfter)
}

func (c certContent) Certificate() *x509.Certificate { return c.cert }

func (c certContent) Intermediates() []*x509.Certificate {
	var out []*x509.Certificate
	for _, ch := range c.chain {
		if !ch.Equal(c.cert) {
			out = append(out, ch)
		}
	}
	return out
}

func (c certContent) PublicKey() sgverify.PublicKeyProvider { return nil }
