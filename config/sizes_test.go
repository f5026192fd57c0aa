package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/test/fixtures"
)

// A configuration document may be MaxFileSize bytes, read from a file or
// given whole; a byte more is refused before it is parsed.
func TestConfigSizeLimit(t *testing.T) {
	t.Parallel()
	base := []byte(minimal)
	pad := func(n int) []byte {
		b := append([]byte(nil), base...)
		b = append(b, '#')
		for len(b) < n-1 {
			b = append(b, 'x')
		}
		return append(b, '\n')
	}
	at, over := pad(MaxFileSize), pad(MaxFileSize+1)
	if _, err := Parse(at, "p.yaml"); err != nil {
		t.Errorf("a document of exactly %d bytes: %v", MaxFileSize, err)
	}
	if _, err := Parse(over, "p.yaml"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a document of %d bytes: %v", MaxFileSize+1, err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"at.yaml": at, "over.yaml": over} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(filepath.Join(dir, "at.yaml")); err != nil {
		t.Errorf("a file of exactly %d bytes: %v", MaxFileSize, err)
	}
	if _, err := Load(filepath.Join(dir, "over.yaml")); err == nil || !strings.Contains(err.Error(), "file is larger than") {
		t.Errorf("a file of %d bytes: %v", MaxFileSize+1, err)
	}
}

// A notation trust store file is checked as the verifier reads it: CA
// certificates only, self-signed roots only in a timestamping store, at
// most maxNotationCertBytes, nothing after the last certificate.
func TestNotationCertFileChecks(t *testing.T) {
	t.Parallel()
	root, err := fixtures.NewNotationCA("root")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.Intermediate("intermediate")
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, interPEM := root.PEM(), inter.PEM()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	padded := append(append([]byte(nil), rootPEM...), make([]byte, maxNotationCertBytes-len(rootPEM))...)
	for i := len(rootPEM); i < len(padded); i++ {
		padded[i] = '\n'
	}
	for _, tc := range []struct {
		name, store string
		b           []byte
		want        string // "" means accepted
	}{
		{"root in ca", "ca", rootPEM, ""},
		{"intermediate in ca", "ca", interPEM, ""},
		{"root and intermediate in ca", "ca", append(append([]byte(nil), rootPEM...), interPEM...), ""},
		{"root in tsa", "tsa", rootPEM, ""},
		{"intermediate in tsa", "tsa", interPEM, "not a self-signed root CA certificate"},
		{"data after a certificate", "ca", append(append([]byte(nil), rootPEM...), "junk"...), "data after certificate 1"},
		{"at the size limit", "ca", padded, ""},
		{"past the size limit", "ca", append(padded, '\n'), "larger than"},
	} {
		err := checkNotationCertFile(write(strings.ReplaceAll(tc.name, " ", "-")+".pem", tc.b), tc.store)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}
