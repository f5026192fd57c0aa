package summary_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/portcullis-oci/portcullis/verify/summary"
)

const fingerprint = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func digestOf(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

func newSigner(t testing.TB, alg string, opts ...summary.Option) (*summary.Signer, *fixtures.KeySigner) {
	t.Helper()
	k, err := fixtures.NewKeySigner(alg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := summary.NewSigner(k.PrivateKey(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s, k
}

// allowed is an enforce-mode allow of subject that a provenance rule and
// an SBOM rule helped decide.
func allowed(subject v1.Hash, at time.Time) verify.Verdict {
	return verify.Verdict{
		Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: subject.String(), CheckedAt: at,
		Signers: []verify.Signer{{Authority: "release", Kind: "key", Evidence: verify.FormatSigstoreBundle}},
		Attestations: []verify.AttestationResult{
			{Rule: "provenance", PredicateType: verify.PredicateSLSAProvenanceV1, Digest: "sha256:" + strings.Repeat("a", 64)},
			{Rule: "sbom", PredicateType: verify.PredicateSPDX, Digest: "sha256:" + strings.Repeat("b", 64)},
		},
	}
}

func input(subject v1.Hash, v verify.Verdict) summary.Input {
	return summary.Input{
		Upstream: "docker.io", Repository: "acme/app",
		Subject:     v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: subject, Size: 1234},
		Verdict:     v,
		Fingerprint: fingerprint,
	}
}

// vsa is the statement as a consumer reads it.
type vsa struct {
	Type    string `json:"_type"`
	Subject []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	PredicateType string `json:"predicateType"`
	Predicate     struct {
		Verifier struct {
			ID string `json:"id"`
		} `json:"verifier"`
		TimeVerified string `json:"timeVerified"`
		ResourceURI  string `json:"resourceUri"`
		Policy       struct {
			URI    string            `json:"uri"`
			Digest map[string]string `json:"digest"`
		} `json:"policy"`
		InputAttestations []struct {
			Digest map[string]string `json:"digest"`
		} `json:"inputAttestations"`
		VerificationResult string   `json:"verificationResult"`
		VerifiedLevels     []string `json:"verifiedLevels"`
		SLSAVersion        string   `json:"slsaVersion"`
	} `json:"predicate"`
}

func TestSignedSummaryVerifiesAndSaysWhatWasDecided(t *testing.T) {
	t.Parallel()
	s, k := newSigner(t, "")
	subject := digestOf([]byte("the manifest"))
	at := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	sum, err := s.Sign(input(subject, allowed(subject, at)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := summary.VerifyBundle(sum.Bundle, k.PrivateKey().Public(), subject)
	if err != nil {
		t.Fatalf("the summary bundle does not verify with the key: %v", err)
	}
	if string(st) != string(sum.Statement) {
		t.Fatal("the signed statement is not the one returned")
	}
	var got vsa
	if err := json.Unmarshal(st, &got); err != nil {
		t.Fatal(err)
	}
	p := got.Predicate
	checks := []struct{ what, got, want string }{
		{"_type", got.Type, "https://in-toto.io/Statement/v1"},
		{"predicateType", got.PredicateType, "https://slsa.dev/verification_summary/v1"},
		{"subject name", got.Subject[0].Name, "docker.io/acme/app"},
		{"subject digest", got.Subject[0].Digest["sha256"], subject.Hex},
		{"verifier.id", p.Verifier.ID, summary.DefaultVerifierID},
		{"timeVerified", p.TimeVerified, "2030-01-02T03:04:05.000000006Z"},
		{"resourceUri", p.ResourceURI, "oci://docker.io/acme/app@" + subject.String()},
		{"policy.uri", p.Policy.URI, "urn:portcullis:policy:prod"},
		{"policy.digest", p.Policy.Digest["sha256"], strings.TrimPrefix(fingerprint, "sha256:")},
		{"verificationResult", p.VerificationResult, "PASSED"},
		{"slsaVersion", p.SLSAVersion, "1.0"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if len(got.Subject) != 1 || len(p.Policy.Digest) != 1 {
		t.Errorf("subject %v, policy digest %v: want exactly one each", got.Subject, p.Policy.Digest)
	}
	if len(p.InputAttestations) != 2 || p.InputAttestations[0].Digest["sha256"] != strings.Repeat("a", 64) ||
		p.InputAttestations[1].Digest["sha256"] != strings.Repeat("b", 64) {
		t.Errorf("inputAttestations = %+v", p.InputAttestations)
	}
	if !reflect.DeepEqual(p.VerifiedLevels, []string{"SLSA_BUILD_LEVEL_1"}) {
		t.Errorf("verifiedLevels = %v, want build L1 from the provenance", p.VerifiedLevels)
	}
}

func TestManifestIsACosignAttestationReferrer(t *testing.T) {
	t.Parallel()
	s, _ := newSigner(t, "")
	subject := digestOf([]byte("m"))
	sum, err := s.Sign(input(subject, allowed(subject, time.Now())))
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(sum.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != types.OCIManifestSchema1 || m.ArtifactType != summary.BundleMediaType {
		t.Errorf("manifest header = %d %s %s", m.SchemaVersion, m.MediaType, m.ArtifactType)
	}
	if m.Config.MediaType != summary.EmptyMediaType || m.Config.Digest != digestOf([]byte("{}")) || m.Config.Size != 2 ||
		string(sum.Config) != "{}" || sum.ConfigDigest != m.Config.Digest {
		t.Errorf("config = %+v", m.Config)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != summary.BundleMediaType || m.Layers[0].Digest != digestOf(sum.Bundle) ||
		m.Layers[0].Size != int64(len(sum.Bundle)) || sum.BundleDigest != m.Layers[0].Digest {
		t.Errorf("layers = %+v", m.Layers)
	}
	if m.Subject == nil || m.Subject.Digest != subject || m.Subject.MediaType != types.OCIManifestSchema1 || m.Subject.Size != 1234 {
		t.Errorf("subject = %+v", m.Subject)
	}
	if m.Annotations[summary.AnnotationPredicateType] != summary.PredicateType || m.Annotations[summary.AnnotationContent] != "dsse-envelope" {
		t.Errorf("annotations = %v", m.Annotations)
	}
	if _, err := time.Parse(time.RFC3339, m.Annotations[summary.AnnotationCreated]); err != nil {
		t.Errorf("created annotation: %v", err)
	}
	d := sum.Descriptor
	if d.Digest != digestOf(sum.Manifest) || d.Size != int64(len(sum.Manifest)) || d.MediaType != types.OCIManifestSchema1 ||
		d.ArtifactType != summary.BundleMediaType || d.Annotations[summary.AnnotationPredicateType] != summary.PredicateType {
		t.Errorf("descriptor = %+v", d)
	}
}

func TestTamperedOrForeignSummaryDoesNotVerify(t *testing.T) {
	t.Parallel()
	s, k := newSigner(t, "")
	subject := digestOf([]byte("m"))
	sum, err := s.Sign(input(subject, allowed(subject, time.Now())))
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal(sum.Bundle, &b); err != nil {
		t.Fatal(err)
	}
	env := b["dsseEnvelope"].(map[string]any)
	forged := strings.Replace(string(sum.Statement), "PASSED", "FAILED", 1)
	if forged == string(sum.Statement) {
		t.Fatal("no verificationResult to tamper with")
	}
	env["payload"] = base64.StdEncoding.EncodeToString([]byte(forged))
	tampered, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := summary.VerifyBundle(tampered, k.PrivateKey().Public(), subject); err == nil {
		t.Error("a summary whose payload was changed after signing verifies")
	}
	other, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := summary.VerifyBundle(sum.Bundle, other.PrivateKey().Public(), subject); err == nil {
		t.Error("a summary verifies with a key that did not sign it")
	}
	if _, err := summary.VerifyBundle(sum.Bundle, k.PrivateKey().Public(), digestOf([]byte("another"))); err == nil {
		t.Error("a summary verifies for a digest it is not about")
	}
}

func TestOnlyAnEnforceAllowOfTheSubjectIsSigned(t *testing.T) {
	t.Parallel()
	s, _ := newSigner(t, "")
	subject := digestOf([]byte("m"))
	cases := map[string]func(*verify.Verdict){
		"deny":              func(v *verify.Verdict) { v.Allowed, v.Reasons = false, []string{"no valid signature"} },
		"warn-mode deny":    func(v *verify.Verdict) { v.Allowed, v.Mode = false, verify.ModeWarn },
		"warn-mode allow":   func(v *verify.Verdict) { v.Mode = verify.ModeWarn },
		"no mode":           func(v *verify.Verdict) { v.Mode = "" },
		"unmatched allow":   func(v *verify.Verdict) { v.Boundary = "" },
		"another digest":    func(v *verify.Verdict) { v.Digest = digestOf([]byte("other")).String() },
		"digest left empty": func(v *verify.Verdict) { v.Digest = "" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			v := allowed(subject, time.Now())
			mutate(&v)
			if err := summary.Summarizable(v, subject); err == nil {
				t.Error("Summarizable accepted it")
			}
			if sum, err := s.Sign(input(subject, v)); err == nil || sum != nil {
				t.Errorf("Sign = %v, %v: want a refusal", sum, err)
			}
		})
	}
	in := input(subject, allowed(subject, time.Now()))
	in.Fingerprint = ""
	if _, err := s.Sign(in); err == nil {
		t.Error("signed a summary without a policy fingerprint")
	}
	in = input(subject, allowed(subject, time.Now()))
	in.Subject.Size = 0
	if _, err := s.Sign(in); err == nil {
		t.Error("signed a summary with a subject descriptor of no size")
	}
}

func TestLevelsInputsAndOptions(t *testing.T) {
	t.Parallel()
	s, k := newSigner(t, "", summary.WithVerifierID("https://portcullis.example/prod"), summary.WithPolicyURI("https://git.example/policy.yaml"))
	subject := digestOf([]byte("m"))
	v := allowed(subject, time.Time{})
	// A signature-only boundary: no attestation, so no input and no level.
	v.Attestations = nil
	in := input(subject, v)
	in.Fingerprint = "not-a-digest"
	sum, err := s.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	st, err := summary.VerifyBundle(sum.Bundle, k.PrivateKey().Public(), subject)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Predicate map[string]json.RawMessage `json:"predicate"`
	}
	if err := json.Unmarshal(st, &raw); err != nil {
		t.Fatal(err)
	}
	if got := string(raw.Predicate["verifiedLevels"]); got != "[]" {
		t.Errorf("verifiedLevels = %s, want [] (required, nothing shown)", got)
	}
	if _, ok := raw.Predicate["inputAttestations"]; ok {
		t.Error("inputAttestations present with no attestation")
	}
	var got vsa
	if err := json.Unmarshal(st, &got); err != nil {
		t.Fatal(err)
	}
	fp := sha256.Sum256([]byte("not-a-digest"))
	if got.Predicate.Verifier.ID != "https://portcullis.example/prod" || got.Predicate.Policy.URI != "https://git.example/policy.yaml" ||
		got.Predicate.Policy.Digest["sha256"] != hex.EncodeToString(fp[:]) {
		t.Errorf("predicate = %+v", got.Predicate)
	}
	if _, err := time.Parse(time.RFC3339Nano, got.Predicate.TimeVerified); err != nil {
		t.Errorf("timeVerified of a verdict without a time: %v", err)
	}
	for _, bad := range []summary.Option{summary.WithVerifierID("portcullis"), summary.WithPolicyURI("")} {
		if _, err := summary.NewSigner(k.PrivateKey(), bad); err == nil {
			t.Error("a relative URI was accepted")
		}
	}
}

func TestKeyAlgorithms(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{fixtures.AlgECDSAP256, fixtures.AlgECDSAP384, fixtures.AlgRSA, fixtures.AlgEd25519} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			s, k := newSigner(t, alg)
			subject := digestOf([]byte(alg))
			sum, err := s.Sign(input(subject, allowed(subject, time.Now())))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := summary.VerifyBundle(sum.Bundle, k.PrivateKey().Public(), subject); err != nil {
				t.Fatal(err)
			}
			pemBytes, err := s.PublicKeyPEM()
			if err != nil || string(pemBytes) != string(k.PublicKeyPEM()) {
				t.Errorf("PublicKeyPEM = %q, %v", pemBytes, err)
			}
		})
	}
}

func TestLoadPrivateKey(t *testing.T) {
	t.Parallel()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := cryptoutils.MarshalPrivateKeyToPEM(priv)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
	// cosign generate-key-pair, with and without a password.
	cosignKey := func(pw string) []byte {
		k, _, err := cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), func(bool) ([]byte, error) { return []byte(pw), nil })
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	secret, empty := cosignKey("s3cret"), cosignKey("")
	if !strings.Contains(string(empty), "ENCRYPTED SIGSTORE PRIVATE KEY") {
		t.Fatalf("not a cosign key:\n%s", empty)
	}
	pw := func(s string) func() ([]byte, error) { return func() ([]byte, error) { return []byte(s), nil } }
	good := []struct {
		name string
		pem  []byte
		pw   func() ([]byte, error)
	}{
		{"pkcs8", pkcs8, nil},
		{"sec1", ecPEM, nil},
		{"pkcs8 with text around", append(append([]byte("a comment\n"), pkcs8...), "trailer\n"...), nil},
		{"cosign", secret, pw("s3cret")},
		{"cosign empty password", empty, pw("")},
	}
	for _, c := range good {
		k, err := summary.LoadPrivateKey(c.pem, c.pw)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if _, err := summary.NewSigner(k); err != nil {
			t.Errorf("%s: NewSigner: %v", c.name, err)
		}
	}
	pub, _ := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	bad := []struct {
		name string
		pem  []byte
		pw   func() ([]byte, error)
	}{
		{"cosign without a password", secret, nil},
		{"cosign wrong password", secret, pw("wrong")},
		{"public key", pub, nil},
		{"two keys", append(append([]byte{}, pkcs8...), ecPEM...), nil},
		{"not PEM", []byte("hello"), nil},
		{"corrupt", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("junk")}), nil},
	}
	for _, c := range bad {
		if _, err := summary.LoadPrivateKey(c.pem, c.pw); err == nil {
			t.Errorf("%s: loaded", c.name)
		}
	}
	if _, err := summary.NewSigner(nil); err == nil {
		t.Error("NewSigner(nil) succeeded")
	}
}

// TestEngineAcceptsSummary pushes a summary next to an image the way the
// proxy serves it and has the engine, reading bundles as cosign does,
// require it as an attestation signed by the summary key.
func TestEngineAcceptsSummary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg, err := fixtures.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	ref, err := reg.Ref("acme/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	d, err := fixtures.PushImage(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := remote.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	subject := raw.Digest
	s, k := newSigner(t, "")
	in := input(subject, allowed(subject, time.Now()))
	in.Subject = raw.Descriptor
	sum, err := s.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	repo := d.Context()
	for _, l := range []v1.Layer{static.NewLayer(sum.Config, summary.EmptyMediaType), static.NewLayer(sum.Bundle, summary.BundleMediaType)} {
		if err := remote.WriteLayer(repo, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.Put(repo.Digest(sum.Descriptor.Digest.String()), rawManifest(sum.Manifest)); err != nil {
		t.Fatal(err)
	}
	auth := verify.Authority{Name: "portcullis", Key: &verify.KeyAuthority{TrustName: "portcullis",
		Keys: []verify.NamedKey{{Name: "portcullis.pub", PEM: k.PublicKeyPEM()}}}}
	eng, err := verify.New(verify.Policy{Boundaries: []verify.Boundary{{
		Name: "summarised", Mode: verify.ModeEnforce, Threshold: 1, Authorities: []verify.Authority{auth},
		Attestations: []verify.AttestationRule{{Name: "vsa", PredicateType: summary.PredicateType, Authorities: []string{"portcullis"},
			Condition: `predicate.verificationResult == "PASSED"`}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := eng.Verify(ctx, verify.Subject{Upstream: "docker.io", Repository: repo.RepositoryStr(), Digest: subject,
		MediaType: raw.MediaType, Manifest: raw.Manifest}, reg.Fetcher())
	if err != nil {
		t.Fatal(err)
	}
	if !v.Allowed || len(v.Attestations) != 1 || v.Attestations[0].Digest != digestOf(sum.Statement).String() {
		t.Fatalf("engine verdict on the summary = %+v", v)
	}
}

type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// TestPure pins the package's role: it signs, it does not serve, dial or
// log, and it knows nothing of the proxy or the configuration file.
func TestPure(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	banned := []string{"net/http", "go.uber.org/zap", "log", "log/slog",
		"github.com/portcullis-oci/portcullis/proxy", "github.com/portcullis-oci/portcullis/config",
		"github.com/portcullis-oci/portcullis/cache", "github.com/sigstore/sigstore-go/pkg/sign"}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, b := range banned {
				if p == b || strings.HasPrefix(p, b+"/") {
					t.Errorf("%s imports %s", f, p)
				}
			}
		}
	}
}
