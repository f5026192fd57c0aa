package proxy

import (
	"errors"
	"slices"
)

// ErrRestartRequired is returned by SetClientAuth for a change the
// listeners cannot take live.
var ErrRestartRequired = errors.New("needs a restart")

// SetClientAuth replaces the registry clients' credentials and grants and
// the admin tokens, so a leaked password or token is revoked by a reload.
// A request already authenticated keeps its principal; the next one is
// checked against the new set. What the listeners were built with cannot
// change live and is refused with ErrRestartRequired, leaving the old set
// in force: authentication turned on or off, client certificates (the TLS
// configuration holds the CA pool and whether a certificate is required)
// and admin authentication turned on or off.
func (p *Proxy) SetClientAuth(a *ClientAuth, adminTokens []TokenHash) error {
	old := p.clientAuth.Load()
	if (old == nil) != (a == nil) {
		return ErrRestartRequired
	}
	if old != nil && (old.wantsClientCerts() != a.wantsClientCerts() || old.requireCert != a.requireCert ||
		(old.clientCAs != nil && !old.clientCAs.Equal(a.clientCAs))) {
		return ErrRestartRequired
	}
	if (len(*p.adminTokens.Load()) == 0) != (len(adminTokens) == 0) {
		return ErrRestartRequired
	}
	p.clientAuth.Store(a)
	t := slices.Clone(adminTokens)
	p.adminTokens.Store(&t)
	return nil
}
