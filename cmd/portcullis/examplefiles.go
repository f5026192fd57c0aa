package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/portcullis-oci/portcullis/config"
)

// Names of the files `config example --write-example-files` writes; the
// key and root paths are the ones config/example.yaml refers to.
const (
	exampleConfigName = "portcullis.yaml"
	exampleKeyName    = "keys/cosign.pub"
	exampleRootName   = "trusted_root.json"
)

// writeExampleFiles writes the example configuration and the files it
// names into dir, so that `config check` passes on it as written. The key
// and trusted root are freshly generated and their private halves thrown
// away: they are well formed but nothing can be signed for them, so a proxy
// started on the example denies everything until they are replaced.
// Existing files are never overwritten.
func writeExampleFiles(dir string) ([]string, error) {
	pub, err := throwawayPublicKeyPEM()
	if err != nil {
		return nil, err
	}
	tr, err := throwawayTrustedRoot()
	if err != nil {
		return nil, err
	}
	files := []struct {
		name string
		data []byte
	}{
		{exampleConfigName, config.Example},
		{exampleKeyName, pub},
		{exampleRootName, tr},
		// Client credentials: digests of random tokens nobody kept.
		{"clients/htpasswd", []byte("# user:bcrypt-hash lines: htpasswd -B -C 10 clients/htpasswd USER\n")},
		{"clients/tokens", throwawayTokenLine("ci-example")},
		{"clients/admin-tokens", throwawayTokenLine("ops")},
	}
	written := make([]string, 0, len(files))
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return written, err
		}
		fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			if errors.Is(err, os.ErrExist) {
				return written, fmt.Errorf("%s exists; not overwriting it", p)
			}
			return written, err
		}
		_, err = fh.Write(f.data)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return written, fmt.Errorf("failed to write %s: %w", p, err)
		}
		written = append(written, p)
	}
	return written, nil
}

func throwawayPublicKeyPEM() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// throwawayTrustedRoot is a trusted_root.json with one certificate
// authority, one transparency log and one CT log, each with a key that no
// longer exists.
func throwawayTrustedRoot() ([]byte, error) {
	now := time.Now().Truncate(time.Second)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "portcullis example root (placeholder, trusts nothing)"},
		NotBefore:             now,
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	log := func(url string) (*root.TransparencyLog, error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		id := sha256.Sum256(spki)
		return &root.TransparencyLog{BaseURL: url, ID: id[:], ValidityPeriodStart: now, HashFunc: crypto.SHA256, PublicKey: &k.PublicKey, SignatureHashFunc: crypto.SHA256}, nil
	}
	rekor, err := log("https://rekor.invalid")
	if err != nil {
		return nil, err
	}
	ct, err := log("https://ctfe.invalid")
	if err != nil {
		return nil, err
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01,
		[]root.CertificateAuthority{&root.FulcioCertificateAuthority{Root: caCert, ValidityPeriodStart: now, URI: "https://fulcio.invalid"}},
		map[string]*root.TransparencyLog{fmt.Sprintf("%x", ct.ID): ct},
		nil,
		map[string]*root.TransparencyLog{fmt.Sprintf("%x", rekor.ID): rekor})
	if err != nil {
		return nil, err
	}
	return tr.MarshalJSON()
}
