package tufroot

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
)

// live is a trusted root that goes dark once the metadata that vouched
// for it has expired: an engine built earlier keeps holding it, and must
// not keep verifying with it past that point.
type live struct {
	*root.TrustedRoot
	clock func() time.Time
	// until is the latest expiry (Unix nanoseconds) of metadata that
	// carried this root; a refresh that confirms it again moves it on.
	until *atomic.Int64
}

func (l *live) usable() bool { return l.clock().UnixNano() < l.until.Load() }

var (
	_ root.TrustedMaterial = (*live)(nil)
	_ root.TrustedMaterial = unavailable{}
)

func (l *live) TimestampingAuthorities() []root.TimestampingAuthority {
	if !l.usable() {
		return nil
	}
	return l.TrustedRoot.TimestampingAuthorities()
}

func (l *live) FulcioCertificateAuthorities() []root.CertificateAuthority {
	if !l.usable() {
		return nil
	}
	return l.TrustedRoot.FulcioCertificateAuthorities()
}

func (l *live) RekorLogs() map[string]*root.TransparencyLog {
	if !l.usable() {
		return nil
	}
	return l.TrustedRoot.RekorLogs()
}

func (l *live) CTLogs() map[string]*root.TransparencyLog {
	if !l.usable() {
		return nil
	}
	return l.TrustedRoot.CTLogs()
}

func (l *live) PublicKeyVerifier(keyID string) (root.TimeConstrainedVerifier, error) {
	if !l.usable() {
		return nil, errExpired
	}
	return l.TrustedRoot.PublicKeyVerifier(keyID)
}

var errExpired = errors.New("trusted root expired")

// unavailable is trusted material that trusts nothing: no authority, no
// log, no timestamping authority. Every keyless verification under it
// fails.
type unavailable struct{}

func (unavailable) TimestampingAuthorities() []root.TimestampingAuthority     { return nil }
func (unavailable) FulcioCertificateAuthorities() []root.CertificateAuthority { return nil }
func (unavailable) RekorLogs() map[string]*root.TransparencyLog               { return nil }
func (unavailable) CTLogs() map[string]*root.TransparencyLog                  { return nil }
func (unavailable) PublicKeyVerifier(string) (root.TimeConstrainedVerifier, error) {
	return nil, errors.New("no trusted root")
}
