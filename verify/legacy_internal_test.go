package verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func selfSignedPEM(t *testing.T, cn string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// Every piece of keyless material next to a legacy signature is read
// when present and refused when malformed: none is skipped, so none can
// be slipped past the parser.
func TestParseLegacyMaterial(t *testing.T) {
	t.Parallel()
	leaf, ca := selfSignedPEM(t, "leaf"), selfSignedPEM(t, "ca")
	ts := `{"SignedRFC3161Timestamp":"AQID"}`

	ls := &legacySignature{}
	if err := parseLegacyMaterial(ls, map[string]string{annotationCertificate: leaf, annotationChain: ca, annotationRFC3161: ts}); err != nil {
		t.Fatal(err)
	}
	if ls.cert == nil || ls.cert.Subject.CommonName != "leaf" {
		t.Errorf("certificate = %v", ls.cert)
	}
	if len(ls.chain) != 1 || ls.chain[0].Subject.CommonName != "ca" {
		t.Errorf("chain = %v", ls.chain)
	}
	if string(ls.rfc3161) != "\x01\x02\x03" {
		t.Errorf("rfc3161 = %x", ls.rfc3161)
	}

	ls = &legacySignature{}
	if err := parseLegacyMaterial(ls, map[string]string{}); err != nil || ls.cert != nil || ls.chain != nil || ls.tlog != nil || ls.rfc3161 != nil {
		t.Errorf("no annotations: %v, %+v", err, ls)
	}

	for name, tc := range map[string]struct {
		ann  map[string]string
		want string
	}{
		"certificate":         {map[string]string{annotationCertificate: "not pem"}, "certificate annotation"},
		"two certificates":    {map[string]string{annotationCertificate: leaf + ca}, "certificate annotation"},
		"chain":               {map[string]string{annotationCertificate: leaf, annotationChain: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "chain annotation"},
		"rekor bundle":        {map[string]string{annotationRekorBundle: `{"SignedEntryTimestamp":`}, "malformed rekor bundle annotation"},
		"rekor bundle fields": {map[string]string{annotationRekorBundle: `{"SignedEntryTimestamp":"","Payload":{}}`, annotationRFC3161: ts}, "malformed rekor bundle annotation"},
		"rfc3161":             {map[string]string{annotationRFC3161: `{"SignedRFC3161Timestamp":""}`}, "malformed rfc3161timestamp annotation"},
	} {
		err := parseLegacyMaterial(&legacySignature{}, tc.ann)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", name, err, tc.want)
		}
	}
}
