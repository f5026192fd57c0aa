package config

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/notaryproject/notation-go/verifier/trustpolicy"
)

// NotationTrust is the X.509 trust material of Notary Project signatures,
// by trust store type as notation names them. Each entry is a PEM file of
// one or more CA certificates.
type NotationTrust struct {
	// CA holds roots (or intermediates) of code-signing certificate
	// chains.
	CA []string `yaml:"ca"`
	// SigningAuthority holds roots of signing authorities.
	SigningAuthority []string `yaml:"signing_authority" json:",omitempty"`
	// TSA holds self-signed roots of the timestamping authorities whose
	// countersignatures prove when a signature was made.
	TSA []string `yaml:"tsa" json:",omitempty"`
}

// NotationAuthority accepts Notary Project signatures certified by a
// notation trust entry.
type NotationAuthority struct {
	Trust string `yaml:"trust"` // name of a Trust entry with notation
	// Identities are notation trusted identities: "x509.subject: <DN>"
	// (C, ST and O at least) or "*".
	Identities []string `yaml:"identities"`
	// Revocation is "off" (default: no OCSP/CRL request, for air-gapped
	// sites) or "enforce".
	Revocation string `yaml:"revocation" json:",omitempty"`
}

// Values of NotationAuthority.Revocation.
const (
	NotationRevocationOff     = "off"
	NotationRevocationEnforce = "enforce"
)

// maxNotationCertBytes bounds one trust store file read for validation.
const maxNotationCertBytes = 1 << 20

// NotationFiles lists the trust store files of t with their key paths
// relative to the trust entry, in order: ca, signing_authority, tsa.
func (t *NotationTrust) files() []struct{ key, store, path string } {
	var out []struct{ key, store, path string }
	for _, s := range []struct {
		key, store string
		paths      []string
	}{{"ca", "ca", t.CA}, {"signing_authority", "signingAuthority", t.SigningAuthority}, {"tsa", "tsa", t.TSA}} {
		for j, p := range s.paths {
			out = append(out, struct{ key, store, path string }{indexPath(s.key, j), s.store, p})
		}
	}
	return out
}

// validateNotationTrust checks a notation trust entry: its only trust
// material, at least one ca or signing_authority file, each a readable
// PEM file of CA certificates (tsa: self-signed roots).
func (c *Config) validateNotationTrust(r *reporter, p string, t *Trust) {
	np := joinPath(p, "notation")
	if len(t.Keys) > 0 || t.HasTrustedRoot() {
		r.addf(p, "set exactly one of keys, trusted_root and notation")
	}
	n := t.Notation
	if len(n.CA) == 0 && len(n.SigningAuthority) == 0 {
		r.addf(np, "at least one ca or signing_authority certificate file is required")
	}
	for _, f := range n.files() {
		fp := joinPath(np, f.key)
		if strings.TrimSpace(f.path) == "" {
			r.addf(fp, "must be a file path")
			continue
		}
		if err := checkNotationCertFile(c.resolveDuringParse(r, f.path), f.store); err != nil {
			r.addf(fp, "%s: %v", f.path, err)
		}
	}
}

// resolveDuringParse is Resolve for validation, which runs before Load
// sets Path: relative to the file being parsed.
func (c *Config) resolveDuringParse(r *reporter, p string) string {
	if c.Path != "" || r.file == "" {
		return c.Resolve(p)
	}
	return (&Config{Path: r.file}).Resolve(p)
}

// checkNotationCertFile reads a trust store file as the verifier will:
// PEM CERTIFICATE blocks only, each a CA certificate.
func checkNotationCertFile(path, store string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxNotationCertBytes+1))
	if err != nil {
		return err
	}
	if len(b) > maxNotationCertBytes {
		return fmt.Errorf("larger than %d bytes", maxNotationCertBytes)
	}
	rest, n := bytes.TrimSpace(b), 0
	for len(rest) > 0 {
		block, r := pem.Decode(rest)
		if block == nil {
			return fmt.Errorf("not a PEM certificate file (data after certificate %d)", n)
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q is not a CERTIFICATE", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("certificate %d: %v", n+1, err)
		}
		if !cert.BasicConstraintsValid || !cert.IsCA {
			return fmt.Errorf("certificate %q is not a CA certificate (basicConstraints CA:TRUE required)", cert.Subject)
		}
		if store == "tsa" && (!bytes.Equal(cert.RawSubject, cert.RawIssuer) || cert.CheckSignatureFrom(cert) != nil) {
			return fmt.Errorf("certificate %q is not a self-signed root CA certificate", cert.Subject)
		}
		n++
		rest = bytes.TrimSpace(r)
	}
	if n == 0 {
		return fmt.Errorf("no certificate")
	}
	return nil
}

// validateNotationAuthority checks a notation authority against the trust
// entries: its trust has notation material, its identities are notation
// trusted identities, revocation is off or enforce.
func validateNotationAuthority(r *reporter, ap string, a *Authority, trust map[string]*Trust) {
	np := joinPath(ap, "notation")
	if a.Key != "" || a.Keyless != nil {
		r.addf(ap, "set exactly one of key, keyless and notation")
	}
	n := a.Notation
	switch t, ok := trust[n.Trust]; {
	case n.Trust == "":
		r.addf(joinPath(np, "trust"), "is required")
	case !ok:
		r.addf(joinPath(np, "trust"), "no trust entry is named %q", n.Trust)
	case t.Notation == nil:
		r.addf(joinPath(np, "trust"), "trust entry %q has no notation certificates", n.Trust)
	}
	switch n.Revocation {
	case "", NotationRevocationOff, NotationRevocationEnforce:
	default:
		r.addf(joinPath(np, "revocation"), "must be %q or %q, not %q", NotationRevocationOff, NotationRevocationEnforce, n.Revocation)
	}
	if len(n.Identities) == 0 {
		r.addf(joinPath(np, "identities"), `at least one identity is required ("x509.subject: C=…, ST=…, O=…" or "*")`)
		return
	}
	// Each identity alone, so a problem names its line; then all
	// together, for what notation refuses across them (overlapping DNs,
	// "*" beside others).
	ok := true
	for i, id := range n.Identities {
		if err := notationIdentities([]string{id}); err != nil {
			r.addf(indexPath(joinPath(np, "identities"), i), "%s", err)
			ok = false
		}
	}
	if ok {
		if err := notationIdentities(n.Identities); err != nil {
			r.addf(joinPath(np, "identities"), "%s", err)
		}
	}
}

// notationIdentities validates trusted identities with notation's own
// trust policy validation.
func notationIdentities(ids []string) error {
	doc := trustpolicy.Document{Version: "1.0", TrustPolicies: []trustpolicy.TrustPolicy{{
		Name: "identities", RegistryScopes: []string{"*"},
		SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: trustpolicy.LevelStrict.Name},
		TrustStores:           []string{"ca:identities"}, TrustedIdentities: ids,
	}}}
	if err := doc.Validate(); err != nil {
		msg := err.Error()
		// notation names the policy statement, which here is internal.
		msg = strings.ReplaceAll(msg, `trust policy statement "identities"`, "notation")
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// validateNotationRules refuses attestation rules naming a notation
// authority: notation signatures carry no attestations.
func validateNotationRules(r *reporter, p string, b *Boundary) {
	notary := map[string]bool{}
	for _, a := range b.Signatures.Authorities {
		if a.Notation != nil {
			notary[a.Name] = true
		}
	}
	for i, at := range b.Attestations {
		for j, name := range at.Authorities {
			if notary[name] {
				r.addf(indexPath(joinPath(indexPath(joinPath(p, "attestations"), i), "authorities"), j),
					"%q is a notation authority: notation signatures carry no attestations", name)
			}
		}
	}
}
