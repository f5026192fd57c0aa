package wire

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// notationConfig loads a config with one boundary needing a cosign key
// and a notation identity.
func notationConfig(t *testing.T, dir string, revocation string) (*config.Config, error) {
	t.Helper()
	y := `upstreams:
  - {name: hub, url: https://registry.example}
trust:
  - {name: cosign, keys: [cosign.pub]}
  - name: notary
    notation: {ca: [ca.pem]}
boundaries:
  - name: both
    signatures:
      threshold: 2
      authorities:
        - {name: cosign, key: cosign}
        - name: release
          notation: {trust: notary, identities: ["x509.subject: C=US, ST=WA, O=Acme, CN=release"], revocation: ` + revocation + `}
`
	p := filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return config.Load(p)
}

func TestNotationPolicy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	writePolicyFile(t, filepath.Join(dir, "cosign.pub"), key.PublicKeyPEM())
	ca, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	writePolicyFile(t, filepath.Join(dir, "ca.pem"), ca.PEM())

	fps, bfps := map[string]bool{}, map[string]bool{}
	for _, rev := range []string{"off", "enforce"} {
		cfg, err := notationConfig(t, dir, rev)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Policy(cfg)
		if err != nil {
			t.Fatal(err)
		}
		na := p.Boundaries[0].Authorities[1].Notation
		if na == nil || len(na.CA) != 1 || string(na.CA[0].PEM) != string(ca.PEM()) || p.Boundaries[0].Threshold != 2 {
			t.Fatalf("notation authority = %+v", na)
		}
		if na.Revocation != (rev == "enforce") || (na.RevocationCodeSigning != nil) != na.Revocation || (na.RevocationTimestamping != nil) != na.Revocation {
			t.Fatalf("revocation %s: %+v", rev, na)
		}
		if _, err := verify.New(p); err != nil {
			t.Fatal(err)
		}
		fps[p.Fingerprint] = true
		bfps[p.Boundaries[0].Fingerprint] = true
	}

	// Another CA in the same file is another policy.
	other, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	writePolicyFile(t, filepath.Join(dir, "ca.pem"), other.PEM())
	cfg, err := notationConfig(t, dir, "off")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fps[p.Fingerprint] = true
	bfps[p.Boundaries[0].Fingerprint] = true
	if len(fps) != 3 {
		t.Fatalf("fingerprints do not follow revocation and certificates: %v", fps)
	}
	// The boundary's own fingerprint, which keys its cached verdicts,
	// follows them too.
	if len(bfps) != 3 {
		t.Fatalf("boundary fingerprints do not follow revocation and certificates: %v", bfps)
	}
}
