package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/notaryproject/notation-core-go/revocation"
	"github.com/notaryproject/notation-core-go/revocation/purpose"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
)

// maxCertFileBytes bounds a notation trust store file read at start; a
// CA bundle is a few kilobytes.
const maxCertFileBytes = 1 << 20

// notationTrust is a notation trust entry's certificates, read once.
type notationTrust struct {
	ca, signingAuthority, tsa []verify.NamedCert
}

// loadNotationTrust reads the certificate files of a notation trust
// entry; their digests join the fingerprint through l.read.
func (l *loader) loadNotationTrust(t config.Trust) error {
	if t.Notation == nil {
		return nil
	}
	nt := &notationTrust{}
	for _, s := range []struct {
		key   string
		paths []string
		into  *[]verify.NamedCert
	}{{"ca", t.Notation.CA, &nt.ca}, {"signing_authority", t.Notation.SigningAuthority, &nt.signingAuthority}, {"tsa", t.Notation.TSA, &nt.tsa}} {
		for _, p := range s.paths {
			b, err := l.read(p, maxCertFileBytes)
			if err != nil {
				return fmt.Errorf("trust %s: notation %s: %w", t.Name, s.key, err)
			}
			*s.into = append(*s.into, verify.NamedCert{Name: p, PEM: b})
		}
	}
	if l.notation == nil {
		l.notation = map[string]*notationTrust{}
	}
	l.notation[t.Name] = nt
	return nil
}

// notationAuthority translates a notation authority. With revocation
// enforced, the OCSP and CRL clients are notation-core-go's own, with its
// default timeouts (2s OCSP, 5s CRL), bounded further by the
// verification's deadline.
func (l *loader) notationAuthority(a config.Authority) (*verify.NotationAuthority, error) {
	n := a.Notation
	nt, ok := l.notation[n.Trust]
	if !ok {
		return nil, fmt.Errorf("authority %s: trust %q has no notation certificates", a.Name, n.Trust)
	}
	na := &verify.NotationAuthority{
		TrustName: n.Trust, CA: nt.ca, SigningAuthority: nt.signingAuthority, TSA: nt.tsa,
		Identities: n.Identities, Revocation: n.Revocation == config.NotationRevocationEnforce,
	}
	if na.Revocation {
		var err error
		if na.RevocationCodeSigning, err = revocation.NewWithOptions(revocation.Options{CertChainPurpose: purpose.CodeSigning}); err != nil {
			return nil, fmt.Errorf("authority %s: revocation: %w", a.Name, err)
		}
		if na.RevocationTimestamping, err = revocation.NewWithOptions(revocation.Options{CertChainPurpose: purpose.Timestamping}); err != nil {
			return nil, fmt.Errorf("authority %s: revocation: %w", a.Name, err)
		}
	}
	return na, nil
}

// notationFingerprint extends a boundary's fingerprint with the notation
// trust entries its authorities name and the digests of their certificate
// files, so that replacing a CA file gives the boundary's verdicts new
// cache keys. A boundary without notation authorities keeps fp.
func (l *loader) notationFingerprint(b config.Boundary, fp string) string {
	names := map[string]bool{}
	for _, a := range b.Signatures.Authorities {
		if a.Notation != nil {
			names[a.Notation.Trust] = true
		}
	}
	if len(names) == 0 || fp == "" {
		return fp
	}
	type entry struct {
		Name  string
		Trust *config.NotationTrust
		Files map[string]string
	}
	var entries []entry
	for _, t := range l.cfg.Trust {
		if !names[t.Name] || t.Notation == nil {
			continue
		}
		e := entry{Name: t.Name, Trust: t.Notation, Files: map[string]string{}}
		for _, ps := range [][]string{t.Notation.CA, t.Notation.SigningAuthority, t.Notation.TSA} {
			for _, p := range ps {
				e.Files[p] = l.files[p]
			}
		}
		entries = append(entries, e)
	}
	raw, _ := json.Marshal(struct {
		Boundary string
		Notation []entry
	}{fp, entries})
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}
