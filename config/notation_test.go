package config

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/test/fixtures"
)

func TestNotationConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf(fixtures.NotationLeafSpec{Subject: fixtures.ReleaseSubject})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", ca.PEM())
	write("leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Chain[0].Raw}))
	write("junk.pem", append(ca.PEM(), []byte("trailing junk")...))
	write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}))

	const trust = `  - name: notary
    notation:
      ca: [ca.pem]
`
	auth := func(body string) string {
		return `  - name: b
    signatures:
      authorities:
        - name: n
          notation: {` + body + `}
`
	}
	const ok = `trust: notary, identities: ["x509.subject: C=US, ST=WA, O=Acme, CN=release"]`
	tests := []struct {
		name, trust, boundaries, want string
	}{
		{"valid", trust, auth(ok), ""},
		{"valid any identity, revocation enforced", trust, auth(`trust: notary, identities: ["*"], revocation: enforce`), ""},
		{"unknown key", "  - name: notary\n    notation: {ca: [ca.pem], roots: [ca.pem]}\n", auth(ok), "roots"},
		{"unknown trust", trust, auth(`trust: nope, identities: ["*"]`), `p.yaml:13: boundaries[0].signatures.authorities[0].notation.trust: no trust entry is named "nope"`},
		{"trust without notation", defTrust, auth(`trust: k, identities: ["*"]`), `trust entry "k" has no notation certificates`},
		{"no identities", trust, auth(`trust: notary`), "at least one identity is required"},
		{"identity without mandatory RDNs", trust, auth(`trust: notary, identities: ["x509.subject: CN=release"]`), `notation.identities[0]: `},
		{"identity not x509.subject", trust, auth(`trust: notary, identities: ["release"]`), `notation.identities[0]: `},
		{"bad revocation", trust, auth(`trust: notary, identities: ["*"], revocation: sometimes`), `revocation: must be "off" or "enforce"`},
		{"notation and key", trust + defTrust, `  - name: b
    signatures:
      authorities:
        - {name: n, key: k, notation: {trust: notary, identities: ["*"]}}
`, "set exactly one of key, keyless and notation"},
		{"empty stores", "  - name: notary\n    notation: {ca: []}\n", auth(ok), "trust[0].notation: at least one ca or signing_authority"},
		{"missing file", "  - name: notary\n    notation: {ca: [nope.pem]}\n", auth(ok), "trust[0].notation.ca[0]: nope.pem"},
		{"leaf as root", "  - name: notary\n    notation: {ca: [leaf.pem]}\n", auth(ok), "is not a CA certificate"},
		{"trailing junk", "  - name: notary\n    notation: {ca: [junk.pem]}\n", auth(ok), "not a PEM certificate file"},
		{"not a certificate", "  - name: notary\n    notation: {ca: [key.pem]}\n", auth(ok), `PEM block "PUBLIC KEY" is not a CERTIFICATE`},
		{"tsa not a root", "  - name: notary\n    notation: {ca: [ca.pem], tsa: [leaf.pem]}\n", auth(ok), "trust[0].notation.tsa[0]"},
		{"notation and keys", "  - name: notary\n    keys: [k.pub]\n    notation: {ca: [ca.pem]}\n", auth(ok), "set exactly one of keys, trusted_root and notation"},
		{"attestation rule names notation", trust, auth(ok) + `    attestations:
      - {name: prov, predicate_type: "https://slsa.dev/provenance/v1", authorities: [n]}
`, `attestations[0].authorities[0]: "n" is a notation authority`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(doc("", tc.trust, tc.boundaries, "")), filepath.Join(dir, "p.yaml"))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want %q", err, tc.want)
			}
		})
	}
}
