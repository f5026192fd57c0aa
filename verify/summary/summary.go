package summary

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/portcullis-oci/portcullis/verify"
)

// What a summary is and how cosign v3 labels it in a registry.
const (
	PredicateType = verify.PredicateSLSAVSAV1
	// BundleMediaType is the bundle's media type, the referrer's
	// artifactType and its one layer's media type.
	BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// EmptyMediaType is the media type of the referrer's config, the
	// two-byte blob "{}".
	EmptyMediaType = "application/vnd.oci.empty.v1+json"
	// AnnotationContent and AnnotationPredicateType are the referrer
	// annotations cosign v3 writes for an attestation.
	AnnotationContent       = "dev.sigstore.bundle.content"
	AnnotationPredicateType = "dev.sigstore.bundle.predicateType"
	AnnotationCreated       = "org.opencontainers.image.created"

	// DefaultVerifierID is predicate.verifier.id unless configured.
	DefaultVerifierID = "https://github.com/portcullis-oci/portcullis"
	// ResultPassed is the only verificationResult Portcullis signs.
	ResultPassed = "PASSED"
	// LevelBuildL1 is claimed when a signed SLSA provenance about the
	// digest satisfied an attestation rule: provenance exists. Higher
	// build levels are properties of the build platform, which a proxy
	// cannot observe, so none is ever claimed.
	LevelBuildL1 = "SLSA_BUILD_LEVEL_1"

	inTotoPayloadType = "application/vnd.in-toto+json"
	inTotoStatementV1 = "https://in-toto.io/Statement/v1"
	slsaVersion       = "1.0"
)

// emptyConfig is the referrer's config blob.
var emptyConfig = []byte("{}")

// DefaultPolicyURI is predicate.policy.uri unless configured: a URN naming
// the boundary whose policy allowed the digest.
func DefaultPolicyURI(boundary string) string {
	return "urn:portcullis:policy:" + url.PathEscape(boundary)
}

// Signer signs verification summaries with one private key. It is safe
// for concurrent use.
type Signer struct {
	kp         *keypair
	verifierID string
	policyURI  string
	now        func() time.Time
}

// Option configures a Signer.
type Option func(*Signer) error

// WithVerifierID sets predicate.verifier.id, a URI naming the verifier.
// Default: DefaultVerifierID.
func WithVerifierID(id string) Option {
	return func(s *Signer) error {
		if err := checkURI(id); err != nil {
			return fmt.Errorf("verifier id: %w", err)
		}
		s.verifierID = id
		return nil
	}
}

// WithPolicyURI sets predicate.policy.uri for every summary. Default:
// DefaultPolicyURI of the verdict's boundary.
func WithPolicyURI(uri string) Option {
	return func(s *Signer) error {
		if err := checkURI(uri); err != nil {
			return fmt.Errorf("policy uri: %w", err)
		}
		s.policyURI = uri
		return nil
	}
}

func checkURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme == "" {
		return fmt.Errorf("%q is not an absolute URI", s)
	}
	return nil
}

// NewSigner returns a Signer over key (ECDSA P-256/P-384/P-521, RSA
// 2048/3072/4096 or Ed25519), signing with the algorithm sigstore's
// default verifier expects for its public key. It signs and verifies a
// probe first, so a key that cannot make verifiable bundles fails here
// rather than on the first summary.
func NewSigner(key crypto.Signer, opts ...Option) (*Signer, error) {
	if key == nil {
		return nil, errors.New("nil signing key")
	}
	kp, err := newKeypair(key)
	if err != nil {
		return nil, err
	}
	s := &Signer{kp: kp, verifierID: DefaultVerifierID, now: time.Now}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	probe := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	st, err := statementJSON("probe", probe, map[string]any{})
	if err != nil {
		return nil, err
	}
	b, err := s.bundle(st)
	if err != nil {
		return nil, fmt.Errorf("signing a probe summary: %w", err)
	}
	if _, err := VerifyBundle(b, key.Public(), probe); err != nil {
		return nil, fmt.Errorf("a probe summary signed with this key does not verify: %w", err)
	}
	return s, nil
}

// PublicKey is the key summaries verify with.
func (s *Signer) PublicKey() crypto.PublicKey { return s.kp.priv.Public() }

// PublicKeyPEM is PublicKey as PKIX PEM, as cosign reads --key.
func (s *Signer) PublicKeyPEM() ([]byte, error) {
	return cryptoutils.MarshalPublicKeyToPEM(s.PublicKey())
}

// Input is what a summary is about.
type Input struct {
	// Upstream and Repository are where the digest was verified; the
	// statement's resourceUri is oci://<Upstream>/<Repository>@<digest>,
	// the form lineage URIs take.
	Upstream   string
	Repository string
	// Subject is the verified manifest: digest, media type and size, as
	// the referrer's subject descriptor needs them.
	Subject v1.Descriptor
	// Verdict is the decision summarised; it must be an enforce-mode
	// allow under a named boundary about Subject.Digest.
	Verdict verify.Verdict
	// Fingerprint is the policy fingerprint Verdict was decided under,
	// "<alg>:<hex>" (any other string is hashed with SHA-256).
	Fingerprint string
}

// Summary is one signed summary and the OCI content that carries it.
type Summary struct {
	// Statement is the signed in-toto statement.
	Statement []byte
	// Bundle is the sigstore bundle (JSON), the referrer's one layer.
	Bundle       []byte
	BundleDigest v1.Hash
	// Config is the referrer's config blob, "{}".
	Config       []byte
	ConfigDigest v1.Hash
	// Manifest is the OCI image manifest whose subject is the verified
	// digest; Descriptor lists it in a referrers index.
	Manifest   []byte
	Descriptor v1.Descriptor
}

// Summarizable reports why v may not be summarised for subject; nil when
// it may. Only an enforce-mode allow under a named boundary, about exactly
// subject, is ever signed as PASSED.
func Summarizable(v verify.Verdict, subject v1.Hash) error {
	switch {
	case !v.Allowed:
		return errors.New("the verdict is not an allow")
	case v.Mode != verify.ModeEnforce:
		return fmt.Errorf("the verdict was decided in %q mode, not enforce", v.Mode)
	case v.Boundary == "":
		return errors.New("the verdict is not under a boundary (an unmatched repository)")
	case v.Digest != subject.String():
		return fmt.Errorf("the verdict is about %q, not %s", v.Digest, subject)
	}
	return nil
}

// Sign makes and signs the summary of in.
func (s *Signer) Sign(in Input) (*Summary, error) {
	subject := in.Subject.Digest
	if subject.Algorithm == "" || subject.Hex == "" {
		return nil, errors.New("no subject digest")
	}
	if in.Subject.MediaType == "" || in.Subject.Size <= 0 {
		return nil, errors.New("the subject descriptor needs a media type and size")
	}
	if err := Summarizable(in.Verdict, subject); err != nil {
		return nil, fmt.Errorf("not summarised: %w", err)
	}
	if in.Fingerprint == "" {
		return nil, errors.New("not summarised: no policy fingerprint")
	}
	if in.Upstream == "" || in.Repository == "" {
		return nil, errors.New("not summarised: no upstream or repository")
	}
	st, err := statementJSON(in.Upstream+"/"+in.Repository, subject, s.predicate(in))
	if err != nil {
		return nil, err
	}
	b, err := s.bundle(st)
	if err != nil {
		return nil, fmt.Errorf("signing the summary: %w", err)
	}
	out := &Summary{Statement: st, Bundle: b, BundleDigest: sha256Hash(b), Config: bytes.Clone(emptyConfig), ConfigDigest: sha256Hash(emptyConfig)}
	ann := map[string]string{
		AnnotationContent:       "dsse-envelope",
		AnnotationPredicateType: PredicateType,
		AnnotationCreated:       s.now().UTC().Format(time.RFC3339),
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  BundleMediaType,
		Config:        v1.Descriptor{MediaType: EmptyMediaType, Digest: out.ConfigDigest, Size: int64(len(out.Config))},
		Layers:        []v1.Descriptor{{MediaType: BundleMediaType, Digest: out.BundleDigest, Size: int64(len(b))}},
		Subject:       &v1.Descriptor{MediaType: in.Subject.MediaType, Digest: subject, Size: in.Subject.Size},
		Annotations:   ann,
	}
	if out.Manifest, err = json.Marshal(m); err != nil {
		return nil, err
	}
	out.Descriptor = v1.Descriptor{
		MediaType:    types.OCIManifestSchema1,
		ArtifactType: BundleMediaType,
		Digest:       sha256Hash(out.Manifest),
		Size:         int64(len(out.Manifest)),
		Annotations:  ann,
	}
	return out, nil
}

// predicate is the VSA v1 predicate of in. Field names and shapes are the
// specification's; nothing is added to it.
func (s *Signer) predicate(in Input) map[string]any {
	v := in.Verdict
	at := v.CheckedAt
	if at.IsZero() {
		at = s.now()
	}
	policyURI := s.policyURI
	if policyURI == "" {
		policyURI = DefaultPolicyURI(v.Boundary)
	}
	var inputs []any
	seen := map[string]bool{}
	for _, a := range v.Attestations {
		alg, hx, ok := strings.Cut(a.Digest, ":")
		if !ok || alg == "" || hx == "" || seen[a.Digest] {
			continue
		}
		seen[a.Digest] = true
		inputs = append(inputs, map[string]any{"digest": map[string]string{alg: hx}})
	}
	p := map[string]any{
		"verifier":           map[string]any{"id": s.verifierID},
		"timeVerified":       at.UTC().Format(time.RFC3339Nano),
		"resourceUri":        "oci://" + in.Upstream + "/" + in.Repository + "@" + in.Subject.Digest.String(),
		"policy":             map[string]any{"uri": policyURI, "digest": fingerprintDigest(in.Fingerprint)},
		"verificationResult": ResultPassed,
		"verifiedLevels":     levels(v),
		"slsaVersion":        slsaVersion,
	}
	if len(inputs) > 0 {
		p["inputAttestations"] = inputs
	}
	return p
}

// levels are the SLSA levels the verdict shows: build L1 when a signed
// provenance satisfied a rule; otherwise none, written as an empty list
// because the field is required.
func levels(v verify.Verdict) []string {
	for _, a := range v.Attestations {
		if a.PredicateType == verify.PredicateSLSAProvenanceV1 || a.PredicateType == verify.PredicateSLSAProvenanceV02 {
			return []string{LevelBuildL1}
		}
	}
	return []string{}
}

// fingerprintDigest writes a policy fingerprint as a DigestSet.
func fingerprintDigest(fp string) map[string]string {
	if alg, hx, ok := strings.Cut(fp, ":"); ok && alg != "" && isLowerHex(hx) {
		return map[string]string{alg: hx}
	}
	sum := sha256.Sum256([]byte(fp))
	return map[string]string{"sha256": hex.EncodeToString(sum[:])}
}

func isLowerHex(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func statementJSON(name string, d v1.Hash, predicate any) ([]byte, error) {
	return json.Marshal(map[string]any{
		"_type":         inTotoStatementV1,
		"subject":       []any{map[string]any{"name": name, "digest": map[string]string{d.Algorithm: d.Hex}}},
		"predicateType": PredicateType,
		"predicate":     predicate,
	})
}

// bundle signs statement into a DSSE bundle with public-key verification
// material and nothing else: no log entry, no timestamp. It is built from
// the protobuf types rather than with sigstore-go's sign package, which
// would bring its Fulcio, OIDC and browser-login dependencies into the
// proxy for these few fields; VerifyBundle, run on a probe by NewSigner
// and by the tests, holds it to what sigstore-go and cosign accept.
func (s *Signer) bundle(statement []byte) ([]byte, error) {
	sig, err := s.kp.sign(dsse.PAE(inTotoPayloadType, statement))
	if err != nil {
		return nil, err
	}
	pb := &protobundle.Bundle{
		MediaType: BundleMediaType,
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_PublicKey{PublicKey: &protocommon.PublicKeyIdentifier{Hint: s.kp.hint}},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload:     statement,
			PayloadType: inTotoPayloadType,
			Signatures:  []*protodsse.Signature{{Sig: sig}},
		}},
	}
	return protojson.Marshal(pb)
}

// VerifyBundle checks a summary bundle as `cosign verify-attestation
// --key` does with the log ignored: the bundle parses as v0.3 or later,
// the DSSE signature verifies with pub, the statement names subject. It
// returns the signed statement.
func VerifyBundle(b []byte, pub crypto.PublicKey, subject v1.Hash) ([]byte, error) {
	var bun sgbundle.Bundle
	if err := bun.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("malformed bundle: %w", err)
	}
	if !bun.MinVersion("v0.3") {
		return nil, errors.New("bundle version is older than v0.3")
	}
	v, err := signature.LoadDefaultVerifier(pub)
	if err != nil {
		return nil, err
	}
	ek := root.NewExpiringKey(v, time.Time{}, time.Time{})
	tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return ek, nil })
	sv, err := sgverify.NewVerifier(tm, sgverify.WithNoObserverTimestamps())
	if err != nil {
		return nil, err
	}
	raw, err := hex.DecodeString(subject.Hex)
	if err != nil {
		return nil, fmt.Errorf("subject digest: %w", err)
	}
	if _, err := sv.Verify(&bun, sgverify.NewPolicy(sgverify.WithArtifactDigest(subject.Algorithm, raw), sgverify.WithKey())); err != nil {
		return nil, err
	}
	env := bun.GetDsseEnvelope()
	if env == nil {
		return nil, errors.New("bundle holds no DSSE envelope")
	}
	return env.GetPayload(), nil
}

// keypair is a loaded private key with the algorithm it signs with.
type keypair struct {
	priv crypto.Signer
	hash crypto.Hash // 0 for pure Ed25519, which hashes as it signs
	// hint is the bundle's public key hint: base64 SHA-256 of the DER
	// public key, as cosign writes it.
	hint string
}

// newKeypair picks the algorithm sigstore's default verifier loads for
// the public key (SHA-384 for P-384, PKCS#1 v1.5 for RSA, pure Ed25519),
// which is what cosign verifies with.
func newKeypair(priv crypto.Signer) (*keypair, error) {
	alg, err := signature.GetDefaultAlgorithmDetails(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	sum := sha256.Sum256(der)
	return &keypair{priv: priv, hash: alg.GetHashType(), hint: base64.StdEncoding.EncodeToString(sum[:])}, nil
}

func (k *keypair) sign(data []byte) ([]byte, error) {
	msg := data
	if k.hash != crypto.Hash(0) {
		h := k.hash.New()
		h.Write(data)
		msg = h.Sum(nil)
	}
	return k.priv.Sign(rand.Reader, msg, k.hash)
}

// LoadPrivateKey reads a PEM private key: PKCS#8 ("PRIVATE KEY"), SEC 1
// ("EC PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY"), or cosign's
// password-encrypted "ENCRYPTED SIGSTORE PRIVATE KEY" (and its older
// "ENCRYPTED COSIGN PRIVATE KEY" name) or an encrypted PKCS#8 ("ENCRYPTED
// PRIVATE KEY"). password is asked only for an
// encrypted key; nil means none is available, and an encrypted key is
// then an error. cosign generate-key-pair with an empty COSIGN_PASSWORD
// encrypts with the empty password, which password must then return.
func LoadPrivateKey(pemBytes []byte, password func() ([]byte, error)) (crypto.Signer, error) {
	typ, err := pemType(pemBytes)
	if err != nil {
		return nil, err
	}
	var pf cryptoutils.PassFunc
	switch typ {
	case string(cryptoutils.PrivateKeyPEMType), string(cryptoutils.ECPrivateKeyPEMType), string(cryptoutils.PKCS1PrivateKeyPEMType):
	case string(cryptoutils.EncryptedSigstorePrivateKeyPEMType), "ENCRYPTED COSIGN PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		if password == nil {
			return nil, fmt.Errorf("the %s needs a password", strings.ToLower(typ))
		}
		pf = func(bool) ([]byte, error) {
			p, err := password()
			if err == nil && p == nil {
				// cryptoutils would then parse the ciphertext as a key.
				p = []byte{}
			}
			return p, err
		}
	default:
		return nil, fmt.Errorf("unsupported PEM block %q: want a PKCS#8, EC, RSA or cosign private key", typ)
	}
	k, err := cryptoutils.UnmarshalPEMToPrivateKey(pemBytes, pf)
	if err != nil {
		return nil, fmt.Errorf("reading private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	return s, nil
}

// pemType is the type of the one PEM block in b; text around it is
// allowed, a second block is not.
func pemType(b []byte) (string, error) {
	blk, rest := pem.Decode(b)
	if blk == nil {
		return "", errors.New("no PEM block found")
	}
	if more, _ := pem.Decode(rest); more != nil {
		return "", errors.New("more than one PEM block: want exactly one private key")
	}
	return blk.Type, nil
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}
