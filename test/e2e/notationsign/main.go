// Command notationsign makes Notary Project test material for the
// end-to-end suite, in place of the notation CLI (which the Go module
// proxy cannot build): a CA chain, signatures made with notation-go's
// signer and pushed as referrers with oras-go exactly as `notation sign`
// pushes them, and notation-go's own verdict on a reference for
// cross-checks.
//
//	notationsign certs DIR CN...                  root CA (DIR/ca.pem) and, per CN, DIR/CN.key + DIR/CN.chain.pem
//	notationsign sign [-plain-http] [-envelope jws|cose] KEY CHAIN REF
//	notationsign verify [-plain-http] CA IDENTITY REF   exit 0 when notation-go accepts a signature of REF
//	notationsign copy [-plain-http] FROM TO        FROM's notation signatures pushed as signatures of TO
//	                                               (same repository), envelopes unchanged
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/registry"
	"github.com/notaryproject/notation-go/signer"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	orasregistry "oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	switch os.Args[1] {
	case "certs":
		err = certs(os.Args[2:])
	case "sign":
		err = sign(ctx, os.Args[2:])
	case "verify":
		err = verify(ctx, os.Args[2:])
	case "copy":
		err = copySignatures(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "notationsign:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: notationsign certs DIR CN... | sign [-plain-http] [-envelope jws|cose] KEY CHAIN REF | verify [-plain-http] CA IDENTITY REF")
	os.Exit(2)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return n.Add(n, big.NewInt(1))
}

// certs writes a root CA and one code-signing leaf per CN, subject
// C=US, ST=WA, O=Acme, CN=<cn>.
func certs(args []string) error {
	if len(args) < 2 {
		usage()
	}
	dir := args[0]
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Acme"}, CommonName: "e2e root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for _, cn := range args[1:] {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Acme"}, CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}, BasicConstraintsValid: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, cn+".key"), "PRIVATE KEY", kder); err != nil {
			return err
		}
		chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
		if err := os.WriteFile(filepath.Join(dir, cn+".chain.pem"), chain, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// repository is REF's repository as notation-go reads and writes it.
func repository(ref string, plainHTTP bool) (registry.Repository, error) {
	r, err := orasregistry.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	repo, err := remote.NewRepository(r.Registry + "/" + r.Repository)
	if err != nil {
		return nil, err
	}
	repo.PlainHTTP = plainHTTP
	// As the notation CLI does: the superseded fallback index is left in
	// place rather than deleted (distribution refuses deletes by default).
	repo.SkipReferrersGC = true
	return registry.NewRepository(repo), nil
}

func sign(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sign", flag.ExitOnError)
	plain := fs.Bool("plain-http", false, "talk HTTP to the registry")
	env := fs.String("envelope", "jws", "jws or cose")
	_ = fs.Parse(args)
	if fs.NArg() != 3 {
		usage()
	}
	mt := jws.MediaTypeEnvelope
	switch *env {
	case "jws":
	case "cose":
		mt = cose.MediaTypeEnvelope
	default:
		return fmt.Errorf("unknown envelope %q", *env)
	}
	s, err := signer.NewGenericSignerFromFiles(fs.Arg(0), fs.Arg(1))
	if err != nil {
		return err
	}
	repo, err := repository(fs.Arg(2), *plain)
	if err != nil {
		return err
	}
	desc, err := notation.Sign(ctx, s, repo, notation.SignOptions{
		ArtifactReference: fs.Arg(2), SignerSignOptions: notation.SignerSignOptions{SignatureMediaType: mt},
	})
	if err != nil {
		return err
	}
	fmt.Println(desc.Digest)
	return nil
}

// copySignatures pushes every notation signature of FROM again as a
// signature of TO: what copying a signature from a neighbouring image
// looks like to a verifier.
func copySignatures(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("copy", flag.ExitOnError)
	plain := fs.Bool("plain-http", false, "talk HTTP to the registry")
	_ = fs.Parse(args)
	if fs.NArg() != 2 {
		usage()
	}
	from, err := repository(fs.Arg(0), *plain)
	if err != nil {
		return err
	}
	to, err := repository(fs.Arg(1), *plain)
	if err != nil {
		return err
	}
	fromRef, _ := orasregistry.ParseReference(fs.Arg(0))
	toRef, _ := orasregistry.ParseReference(fs.Arg(1))
	fromDesc, err := from.Resolve(ctx, fromRef.Reference)
	if err != nil {
		return err
	}
	toDesc, err := to.Resolve(ctx, toRef.Reference)
	if err != nil {
		return err
	}
	n := 0
	err = from.ListSignatures(ctx, fromDesc, func(sigs []ocispec.Descriptor) error {
		for _, sd := range sigs {
			blob, bd, err := from.FetchSignatureBlob(ctx, sd)
			if err != nil {
				return err
			}
			if _, _, err := to.PushSignature(ctx, bd.MediaType, blob, toDesc, nil); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return errors.New("no notation signature to copy")
	}
	fmt.Printf("copied %d signature(s)\n", n)
	return nil
}

type store []*x509.Certificate

func (s store) GetCertificates(context.Context, truststore.Type, string) ([]*x509.Certificate, error) {
	return s, nil
}

func verify(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	plain := fs.Bool("plain-http", false, "talk HTTP to the registry")
	_ = fs.Parse(args)
	if fs.NArg() != 3 {
		usage()
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return errors.New("CA file is not PEM")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	doc := &trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{{
		Name: "e2e", RegistryScopes: []string{"*"},
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: trustpolicy.LevelStrict.Name,
			Override: map[trustpolicy.ValidationType]trustpolicy.ValidationAction{trustpolicy.TypeRevocation: trustpolicy.ActionSkip}},
		TrustStores: []string{"ca:e2e"}, TrustedIdentities: []string{fs.Arg(1)},
	}}}
	v, err := verifier.New(doc, store{ca}, nil)
	if err != nil {
		return err
	}
	repo, err := repository(fs.Arg(2), *plain)
	if err != nil {
		return err
	}
	_, outcomes, err := notation.Verify(ctx, v, repo, notation.VerifyOptions{ArtifactReference: fs.Arg(2), MaxSignatureAttempts: 50})
	if err != nil {
		return err
	}
	fmt.Printf("verified: %d signature(s) checked\n", len(outcomes))
	return nil
}
