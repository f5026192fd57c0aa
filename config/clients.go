package config

import (
	"path"
	"time"
)

// Defaults of the clients section.
const (
	DefaultBcryptMinCost      = 10
	DefaultBcryptMaxCost      = 14
	DefaultCredentialCacheTTL = time.Minute
	maxCredentialCacheTTL     = time.Hour
	bcryptMinCost             = 4
	bcryptMaxCost             = 31
)

// Clients authenticates and authorises the registry listener's clients.
// Absent, every client pulls everything, which is refused when an
// upstream has credentials.
type Clients struct {
	// Anonymous lets requests without credentials pull everything;
	// credentials that are sent must still be valid.
	Anonymous bool `yaml:"anonymous"`
	// Htpasswd is an htpasswd file of bcrypt hashes (htpasswd -B -C 10).
	Htpasswd string `yaml:"htpasswd"`
	// Tokens is a file of "name:sha256:<hex>" lines: digests of static
	// tokens, sent as the Basic password of that name or as a Bearer token.
	Tokens string      `yaml:"tokens"`
	MTLS   *ClientMTLS `yaml:"mtls"`
	// BcryptMinCost and BcryptMaxCost bound the costs of htpasswd
	// entries (defaults 10 and 14).
	BcryptMinCost int `yaml:"bcrypt_min_cost"`
	BcryptMaxCost int `yaml:"bcrypt_max_cost"`
	// CredentialCacheTTL is how long a successful password check is
	// remembered (default 1m, at most 1h).
	CredentialCacheTTL Duration `yaml:"credential_cache_ttl"`
	// PasswordChecks caps the bcrypt comparisons running at once, so a
	// flood of wrong passwords cannot take every core; 0 (default) is half
	// the CPUs, at least 1.
	PasswordChecks int `yaml:"password_checks"`
	// Access grants clients upstreams and repositories; a client no
	// entry names may pull nothing.
	Access []ClientAccess `yaml:"access"`
}

// ClientMTLS verifies client certificates on the TLS registry listener.
type ClientMTLS struct {
	CA string `yaml:"ca"` // PEM bundle of the client CAs
	// Required refuses TLS handshakes without a client certificate.
	Required bool `yaml:"required"`
}

// ClientAccess names clients and what they may pull.
type ClientAccess struct {
	// Clients are htpasswd user and token names (path.Match patterns).
	Clients []string `yaml:"clients"`
	// Certificates are the client certificates' subject alternative names
	// this entry names.
	Certificates *CertificateNames `yaml:"certificates"`
	// Upstreams are upstream names; absent, all.
	Upstreams []string `yaml:"upstreams"`
	// Repositories are repository globs; absent, all.
	Repositories []string `yaml:"repositories"`
}

// CertificateNames are patterns of subject alternative names; "*" stays
// within a DNS label, a URI path segment or one side of an email's "@".
type CertificateNames struct {
	DNS   []string `yaml:"dns"`
	URI   []string `yaml:"uri"`
	Email []string `yaml:"email"`
}

// AdminAuth guards the admin listener, except /healthz and /readyz.
type AdminAuth struct {
	// Tokens is a token file as in clients.tokens; requests carry one as
	// "Authorization: Bearer <token>".
	Tokens string `yaml:"tokens"`
}

func (c *Clients) applyDefaults() {
	if c == nil {
		return
	}
	if c.BcryptMinCost == 0 {
		c.BcryptMinCost = DefaultBcryptMinCost
	}
	if c.BcryptMaxCost == 0 {
		c.BcryptMaxCost = DefaultBcryptMaxCost
	}
	if c.CredentialCacheTTL == 0 {
		c.CredentialCacheTTL = Duration(DefaultCredentialCacheTTL)
	}
}

// validateClients refuses a proxy that would lend its upstream
// credentials to anyone who can reach it, unless that is said explicitly.
func (c *Config) validateClients(r *reporter) {
	if c.AdminAuth != nil && c.AdminAuth.Tokens == "" {
		r.addf("admin_auth.tokens", "is required")
	}
	cl := c.Clients
	if cl == nil {
		for i, u := range c.Upstreams {
			if u.Auth != nil {
				r.addf(joinPath(indexPath("upstreams", i), "auth"),
					"anyone who can reach the proxy would pull with these credentials: authenticate clients (clients: htpasswd, tokens or mtls) or allow it explicitly with clients: {anonymous: true}")
				return
			}
		}
		return
	}
	if !cl.Anonymous && cl.Htpasswd == "" && cl.Tokens == "" && cl.MTLS == nil {
		r.addf("clients", "no client could pull: set htpasswd, tokens or mtls, or anonymous: true")
	}
	if (cl.Htpasswd != "" || cl.Tokens != "" || cl.MTLS != nil) && len(cl.Access) == 0 {
		r.addf("clients.access", "is required: a client no entry names may pull nothing (clients: [\"*\"] grants every user and token everything)")
	}
	if cl.BcryptMinCost < bcryptMinCost || cl.BcryptMinCost > bcryptMaxCost {
		r.addf("clients.bcrypt_min_cost", "must be within %d..%d", bcryptMinCost, bcryptMaxCost)
	}
	if cl.BcryptMaxCost < bcryptMinCost || cl.BcryptMaxCost > bcryptMaxCost {
		r.addf("clients.bcrypt_max_cost", "must be within %d..%d", bcryptMinCost, bcryptMaxCost)
	} else if cl.BcryptMaxCost < cl.BcryptMinCost {
		r.addf("clients.bcrypt_max_cost", "must not be below bcrypt_min_cost")
	}
	if cl.CredentialCacheTTL <= 0 || cl.CredentialCacheTTL.D() > maxCredentialCacheTTL {
		r.addf("clients.credential_cache_ttl", "must be positive and at most %s", maxCredentialCacheTTL)
	}
	if cl.PasswordChecks < 0 {
		r.addf("clients.password_checks", "must not be negative")
	}
	certNamed := false
	if cl.MTLS != nil {
		if cl.MTLS.CA == "" {
			r.addf("clients.mtls.ca", "is required")
		}
		if c.TLS == nil {
			r.addf("clients.mtls", "client certificates need tls on the registry listener")
		}
	}
	names := map[string]bool{}
	for _, u := range c.Upstreams {
		names[u.Name] = true
	}
	for i, a := range cl.Access {
		p := indexPath("clients.access", i)
		var certs int
		if a.Certificates != nil {
			certs = len(a.Certificates.DNS) + len(a.Certificates.URI) + len(a.Certificates.Email)
			if certs == 0 {
				r.addf(joinPath(p, "certificates"), "names no subject alternative name")
			}
			if cl.MTLS == nil {
				r.addf(joinPath(p, "certificates"), "needs clients.mtls")
			}
			for _, l := range []struct {
				key  string
				pats []string
			}{{"dns", a.Certificates.DNS}, {"uri", a.Certificates.URI}, {"email", a.Certificates.Email}} {
				checkPatterns(r, joinPath(joinPath(p, "certificates"), l.key), l.pats)
			}
		}
		certNamed = certNamed || certs > 0
		if len(a.Clients) == 0 && certs == 0 {
			r.addf(p, "names no client: set clients or certificates")
		}
		checkPatterns(r, joinPath(p, "clients"), a.Clients)
		for j, u := range a.Upstreams {
			if !names[u] {
				r.addf(indexPath(joinPath(p, "upstreams"), j), "no upstream is named %q", u)
			}
		}
		for j, g := range a.Repositories {
			if err := checkRepoGlob(g); err != nil {
				r.addf(indexPath(joinPath(p, "repositories"), j), "%q: %v", g, err)
			}
		}
	}
	if cl.MTLS != nil && !certNamed {
		r.addf("clients.mtls", "no access entry names certificates, so no certificate could authenticate")
	}
}

func checkPatterns(r *reporter, p string, pats []string) {
	for j, s := range pats {
		if _, err := path.Match(s, ""); err != nil || s == "" {
			r.addf(indexPath(p, j), "%q is not a valid pattern", s)
		}
	}
}

// checkClientFiles reports the credential files that cannot be opened.
func (c *Config) checkClientFiles(check func(path, p string)) {
	if c.AdminAuth != nil {
		check("admin_auth.tokens", c.AdminAuth.Tokens)
	}
	if c.Clients == nil {
		return
	}
	check("clients.htpasswd", c.Clients.Htpasswd)
	check("clients.tokens", c.Clients.Tokens)
	if c.Clients.MTLS != nil {
		check("clients.mtls.ca", c.Clients.MTLS.CA)
	}
}
