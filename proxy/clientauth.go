package proxy

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/portcullis-oci/portcullis/verify"
	"hash"
	"io"
	"net/http"
	"path"
	"regexp"
	"runtime"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Defaults of ClientAuthConfig.
const (
	// DefaultBcryptMinCost refuses htpasswd entries cheaper than
	// bcrypt.DefaultCost: `htpasswd -B` alone writes cost 5.
	DefaultBcryptMinCost = bcrypt.DefaultCost
	// DefaultBcryptMaxCost bounds the work one login attempt costs the
	// proxy (cost 14 is about a second per check on one core).
	DefaultBcryptMaxCost = 14
	// DefaultCredentialCacheTTL is how long a successful bcrypt check is
	// remembered: a pull is dozens of requests, each carrying the password.
	DefaultCredentialCacheTTL = time.Minute

	credentialCacheSize = 10_000
	// maxCredentialFileBytes bounds an htpasswd or token file.
	maxCredentialFileBytes = 4 << 20
	// maxAuthorizationBytes bounds the Authorization header parsed.
	maxAuthorizationBytes = 8 << 10
	// Realm is the realm of the Basic challenge of the registry listener.
	clientRealm = "portcullis"
	adminRealm  = "portcullis-admin"
)

// Authentication methods a Principal can carry.
const (
	AuthAnonymous = "anonymous"
	AuthPassword  = "password" // htpasswd user, HTTP Basic
	AuthToken     = "token"    // static token, as Bearer or as a Basic password
	AuthCert      = "cert"     // verified TLS client certificate
)

// Principal is the authenticated identity of a request. Name is what the
// audit log and the decisions report; it never carries a secret.
type Principal struct {
	Method string
	// Name is the htpasswd user or token name, the client certificate's
	// matched subject alternative name, or "anonymous".
	Name   string
	grants []*compiledGrant
	all    bool
}

// String is the identity as logged: "anonymous" or method:name.
func (p *Principal) String() string {
	if p == nil {
		return ""
	}
	if p.Method == AuthAnonymous {
		return AuthAnonymous
	}
	return p.Method + ":" + p.Name
}

// TokenHash is one entry of a token file: a name and a digest of the
// token (never the token itself).
type TokenHash struct {
	Name string
	// Algorithm is "sha256" or "sha512"; Sum is the raw digest.
	Algorithm string
	Sum       []byte
}

// Grant says which upstreams and repositories the clients it names may
// pull. Empty Upstreams or Repositories mean all.
type Grant struct {
	// Clients are path.Match patterns of htpasswd user and token names.
	Clients []string
	// DNS, URI and Email are patterns of a client certificate's subject
	// alternative names; "*" stays within a DNS label, a URI path segment
	// or an email address.
	DNS, URI, Email []string
	Upstreams       []string
	// Repositories are repository globs: "*" within a path segment, a
	// "**" segment for any number of segments.
	Repositories []string
}

// ClientAuthConfig configures ClientAuth.
type ClientAuthConfig struct {
	// Anonymous lets requests without credentials through, unrestricted.
	// Credentials that are sent are still checked.
	Anonymous bool
	// Users maps htpasswd user names to bcrypt hashes (ParseHtpasswd).
	Users map[string][]byte
	// Tokens are the accepted static tokens (ParseTokenFile).
	Tokens []TokenHash
	// ClientCAs, when set, verifies client certificates on the TLS
	// listener; RequireClientCert refuses a TLS handshake without one.
	ClientCAs         *x509.CertPool
	RequireClientCert bool
	Grants            []Grant
	// BcryptMinCost and BcryptMaxCost bound the htpasswd costs accepted
	// (defaults DefaultBcryptMinCost, DefaultBcryptMaxCost).
	BcryptMinCost, BcryptMaxCost int
	// CredentialCacheTTL: see DefaultCredentialCacheTTL; negative
	// disables the cache.
	CredentialCacheTTL time.Duration
	// PasswordChecks caps the bcrypt comparisons running at once, so a
	// flood of wrong passwords (or unknown users, which cost the same)
	// cannot take every core from verification. Default: half of
	// GOMAXPROCS, at least 1.
	PasswordChecks int
}

// ClientAuth authenticates and authorises registry clients. It is
// immutable once built and safe for concurrent use.
type ClientAuth struct {
	anonymous   bool
	users       map[string][]byte
	tokens      map[string]TokenHash
	tokenList   []TokenHash
	clientCAs   *x509.CertPool
	requireCert bool
	grants      []*compiledGrant
	// dummy is compared against when the user is unknown, so an unknown
	// user costs as much as a wrong password.
	dummy []byte
	// verified remembers successful bcrypt checks, keyed by an HMAC of the
	// credential under a key that lives only in this process.
	verified *ttlCache[[32]byte, string]
	cacheKey []byte
	// checks holds a slot per bcrypt comparison running.
	checks chan struct{}
}

type compiledGrant struct {
	Grant
}

var credentialNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]*$`)

// ValidClientName reports whether s may name an htpasswd user or a token:
// letters, digits and . _ @ + -, starting with a letter or digit.
func ValidClientName(s string) bool { return credentialNameRE.MatchString(s) }

// NewClientAuth checks c and builds a ClientAuth. It refuses a
// configuration through which no client could ever pull, a name both
// an htpasswd user and a token, and hashes outside the cost bounds.
func NewClientAuth(c ClientAuthConfig) (*ClientAuth, error) {
	if c.BcryptMinCost == 0 {
		c.BcryptMinCost = DefaultBcryptMinCost
	}
	if c.BcryptMaxCost == 0 {
		c.BcryptMaxCost = DefaultBcryptMaxCost
	}
	if c.BcryptMinCost < bcrypt.MinCost || c.BcryptMaxCost > bcrypt.MaxCost || c.BcryptMinCost > c.BcryptMaxCost {
		return nil, fmt.Errorf("bcrypt cost bounds %d..%d are not within %d..%d", c.BcryptMinCost, c.BcryptMaxCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if c.CredentialCacheTTL == 0 {
		c.CredentialCacheTTL = DefaultCredentialCacheTTL
	}
	if c.PasswordChecks < 0 {
		return nil, errors.New("negative password check limit")
	}
	if c.PasswordChecks == 0 {
		c.PasswordChecks = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if !c.Anonymous && len(c.Users) == 0 && len(c.Tokens) == 0 && c.ClientCAs == nil {
		return nil, errors.New("no client could pull: configure users, tokens or client certificates, or allow anonymous pulls")
	}
	if c.RequireClientCert && c.ClientCAs == nil {
		return nil, errors.New("client certificates required without a client CA")
	}
	a := &ClientAuth{
		anonymous:   c.Anonymous,
		users:       map[string][]byte{},
		tokens:      map[string]TokenHash{},
		clientCAs:   c.ClientCAs,
		requireCert: c.RequireClientCert,
		checks:      make(chan struct{}, c.PasswordChecks),
	}
	for name, h := range c.Users {
		if !credentialNameRE.MatchString(name) {
			return nil, fmt.Errorf("user name %q: only letters, digits and . _ @ + - are allowed", name)
		}
		cost, err := bcrypt.Cost(h)
		if err != nil {
			return nil, fmt.Errorf("user %q: not a bcrypt hash", name)
		}
		if cost < c.BcryptMinCost || cost > c.BcryptMaxCost {
			return nil, fmt.Errorf("user %q: bcrypt cost %d is outside %d..%d", name, cost, c.BcryptMinCost, c.BcryptMaxCost)
		}
		a.users[name] = h
	}
	for _, t := range c.Tokens {
		if !credentialNameRE.MatchString(t.Name) {
			return nil, fmt.Errorf("token name %q: only letters, digits and . _ @ + - are allowed", t.Name)
		}
		if newTokenHash(t.Algorithm) == nil || len(t.Sum) != newTokenHash(t.Algorithm).Size() {
			return nil, fmt.Errorf("token %q: unsupported hash", t.Name)
		}
		if _, dup := a.tokens[t.Name]; dup {
			return nil, fmt.Errorf("token name %q appears twice", t.Name)
		}
		if _, dup := a.users[t.Name]; dup {
			return nil, fmt.Errorf("%q is both a user and a token name", t.Name)
		}
		a.tokens[t.Name] = t
		a.tokenList = append(a.tokenList, t)
	}
	for i, g := range c.Grants {
		if err := checkGrant(g); err != nil {
			return nil, fmt.Errorf("grant %d: %w", i, err)
		}
		a.grants = append(a.grants, &compiledGrant{Grant: g})
	}
	var err error
	if a.dummy, err = bcrypt.GenerateFromPassword([]byte("portcullis"), c.BcryptMinCost); err != nil {
		return nil, err
	}
	if c.CredentialCacheTTL > 0 {
		a.verified = newTTLCache[[32]byte, string](credentialCacheSize, c.CredentialCacheTTL)
		a.cacheKey = make([]byte, 32)
		if _, err := rand.Read(a.cacheKey); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func checkGrant(g Grant) error {
	if len(g.Clients)+len(g.DNS)+len(g.URI)+len(g.Email) == 0 {
		return errors.New("names no client")
	}
	for _, list := range [][]string{g.Clients, g.DNS, g.URI, g.Email, g.Upstreams} {
		for _, p := range list {
			if _, err := path.Match(p, ""); err != nil || p == "" {
				return fmt.Errorf("bad pattern %q", p)
			}
		}
	}
	for _, r := range g.Repositories {
		if r == "" {
			return errors.New("empty repository glob")
		}
		for _, seg := range strings.Split(r, "/") {
			if _, err := path.Match(seg, ""); err != nil || (seg != "**" && strings.Contains(seg, "**")) {
				return fmt.Errorf("bad repository glob %q", r)
			}
		}
	}
	return nil
}

func newTokenHash(alg string) hash.Hash {
	switch alg {
	case "sha256":
		return sha256.New()
	case "sha512":
		return sha512.New()
	}
	return nil
}

// HashToken is the token file form of a token's digest: "sha256:<hex>".
func HashToken(token string) string {
	s := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(s[:])
}

// ParseHtpasswd reads "user:hash" lines; blank lines and lines starting
// with "#" are skipped. Only bcrypt hashes ($2a$, $2b$, $2y$) are
// accepted: the MD5, SHA-1 and crypt schemes htpasswd also writes are
// refused rather than ignored.
func ParseHtpasswd(r io.Reader) (map[string][]byte, error) {
	users := map[string][]byte{}
	err := eachLine(r, func(n int, line string) error {
		name, h, ok := strings.Cut(line, ":")
		if !ok || name == "" || h == "" {
			return fmt.Errorf("line %d: not user:hash", n)
		}
		if !strings.HasPrefix(h, "$2a$") && !strings.HasPrefix(h, "$2b$") && !strings.HasPrefix(h, "$2y$") {
			return fmt.Errorf("line %d: user %q: only bcrypt hashes are accepted (htpasswd -B -C 10)", n, name)
		}
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return fmt.Errorf("line %d: user %q: malformed bcrypt hash", n, name)
		}
		if _, dup := users[name]; dup {
			return fmt.Errorf("line %d: user %q appears twice", n, name)
		}
		users[name] = []byte(h)
		return nil
	})
	return users, err
}

// ParseTokenFile reads "name:sha256:<hex>" (or sha512) lines; blank lines
// and lines starting with "#" are skipped.
func ParseTokenFile(r io.Reader) ([]TokenHash, error) {
	var out []TokenHash
	err := eachLine(r, func(n int, line string) error {
		name, rest, ok := strings.Cut(line, ":")
		alg, hexSum, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || name == "" {
			return fmt.Errorf("line %d: not name:sha256:<hex>", n)
		}
		h := newTokenHash(alg)
		if h == nil {
			return fmt.Errorf("line %d: token %q: hash must be sha256 or sha512, not %q", n, name, alg)
		}
		sum, err := hex.DecodeString(hexSum)
		if err != nil || len(sum) != h.Size() {
			return fmt.Errorf("line %d: token %q: not a %s digest in hex", n, name, alg)
		}
		out = append(out, TokenHash{Name: name, Algorithm: alg, Sum: sum})
		return nil
	})
	return out, err
}

func eachLine(r io.Reader, f func(n int, line string) error) error {
	lr := &io.LimitedReader{R: r, N: maxCredentialFileBytes + 1}
	sc := bufio.NewScanner(lr)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := f(n, line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if lr.N <= 0 {
		return fmt.Errorf("larger than %d bytes", maxCredentialFileBytes)
	}
	return nil
}

// WithClientAuth has every registry request authenticated and authorised
// by a. Default: none (every client may pull everything).
func WithClientAuth(a *ClientAuth) Option {
	return func(o *options) error {
		if a == nil {
			return errors.New("nil client auth")
		}
		o.clientAuth = a
		return nil
	}
}

// WithAdminTokens requires a Bearer token with one of these hashes on
// every admin endpoint except /healthz and /readyz. Default: none.
func WithAdminTokens(tokens []TokenHash) Option {
	return func(o *options) error {
		if len(tokens) == 0 {
			return errors.New("no admin tokens")
		}
		for _, t := range tokens {
			if h := newTokenHash(t.Algorithm); h == nil || len(t.Sum) != h.Size() {
				return fmt.Errorf("admin token %q: unsupported hash", t.Name)
			}
		}
		o.adminTokens = tokens
		return nil
	}
}

// configureTLS makes the registry listener ask for client certificates.
func (a *ClientAuth) configureTLS(c *tls.Config) {
	if a == nil || a.clientCAs == nil {
		return
	}
	c.ClientCAs = a.clientCAs
	c.ClientAuth = tls.VerifyClientCertIfGiven
	if a.requireCert {
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
}

func (a *ClientAuth) wantsClientCerts() bool { return a != nil && a.clientCAs != nil }

var (
	errUnauthenticated = &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Message: "authentication required"}
	errForbidden       = &Error{Status: http.StatusForbidden, Code: CodeDenied, Message: "requested access to the resource is denied"}
)

// authenticate finds the principal of r. Credentials that are sent must
// be valid even when anonymous pulls are allowed: a typo then fails
// loudly instead of pulling as nobody.
func (a *ClientAuth) authenticate(r *http.Request) (*Principal, bool) {
	if hdr := r.Header.Get("Authorization"); hdr != "" {
		if len(hdr) > maxAuthorizationBytes {
			return nil, false
		}
		scheme, cred, _ := strings.Cut(hdr, " ")
		cred = strings.TrimSpace(cred)
		switch strings.ToLower(scheme) {
		case "basic":
			raw, err := base64.StdEncoding.DecodeString(cred)
			if err != nil {
				return nil, false
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok || user == "" {
				return nil, false
			}
			return a.checkBasic(r.Context(), user, pass)
		case "bearer":
			if t, ok := matchToken(a.tokenList, cred); ok {
				return a.principal(AuthToken, t.Name, nil), true
			}
		}
		return nil, false
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && a.clientCAs != nil {
		if p := a.certPrincipal(r.TLS.VerifiedChains[0][0]); p != nil {
			return p, true
		}
	}
	if a.anonymous {
		return &Principal{Method: AuthAnonymous, Name: AuthAnonymous, all: true}, true
	}
	return nil, false
}

func (a *ClientAuth) checkBasic(ctx context.Context, user, pass string) (*Principal, bool) {
	if t, ok := a.tokens[user]; ok {
		if tokenMatches(t, pass) {
			return a.principal(AuthToken, user, nil), true
		}
		return nil, false
	}
	h, known := a.users[user]
	var key [32]byte
	if a.verified != nil && known {
		m := hmac.New(sha256.New, a.cacheKey)
		m.Write([]byte(user))
		m.Write([]byte{0})
		m.Write([]byte(pass))
		copy(key[:], m.Sum(nil))
		if name, ok := a.verified.get(key); ok && name == user {
			return a.principal(AuthPassword, user, nil), true
		}
	}
	select {
	case a.checks <- struct{}{}:
	case <-ctx.Done():
		return nil, false
	}
	var err error
	if known {
		err = bcrypt.CompareHashAndPassword(h, []byte(pass))
	} else {
		_ = bcrypt.CompareHashAndPassword(a.dummy, []byte(pass))
	}
	<-a.checks
	if !known || err != nil {
		return nil, false
	}
	if a.verified != nil {
		a.verified.add(key, user)
	}
	return a.principal(AuthPassword, user, nil), true
}

func tokenMatches(t TokenHash, token string) bool {
	h := newTokenHash(t.Algorithm)
	h.Write([]byte(token))
	return subtle.ConstantTimeCompare(h.Sum(nil), t.Sum) == 1
}

// matchToken compares against every entry so the time taken does not say
// which entry came closest.
func matchToken(list []TokenHash, token string) (TokenHash, bool) {
	var found TokenHash
	ok := false
	for _, t := range list {
		if tokenMatches(t, token) && !ok {
			found, ok = t, true
		}
	}
	return found, ok
}

func (a *ClientAuth) principal(method, name string, cert *x509.Certificate) *Principal {
	p := &Principal{Method: method, Name: name}
	for _, g := range a.grants {
		if g.matches(method, name, cert) {
			p.grants = append(p.grants, g)
		}
	}
	return p
}

// certPrincipal names a verified certificate by the first subject
// alternative name a grant's pattern matches; a certificate no grant
// names is not a client.
func (a *ClientAuth) certPrincipal(cert *x509.Certificate) *Principal {
	for _, g := range a.grants {
		if san := g.matchCert(cert); san != "" {
			return a.principal(AuthCert, san, cert)
		}
	}
	return nil
}

func (g *compiledGrant) matches(method, name string, cert *x509.Certificate) bool {
	if method == AuthCert {
		return g.matchCert(cert) != ""
	}
	for _, p := range g.Clients {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

func (g *compiledGrant) matchCert(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	for _, p := range g.DNS {
		for _, n := range cert.DNSNames {
			if matchSplit(p, n, ".") {
				return n
			}
		}
	}
	for _, p := range g.URI {
		for _, u := range cert.URIs {
			if s := u.String(); matchSplit(p, s, "/") {
				return s
			}
		}
	}
	for _, p := range g.Email {
		for _, e := range cert.EmailAddresses {
			if matchSplit(p, e, "@") {
				return e
			}
		}
	}
	return ""
}

// matchSplit matches name against pattern segment by segment, so that a
// "*" never crosses sep ("*.example.com" is one label deep).
func matchSplit(pattern, name, sep string) bool {
	ps, ns := strings.Split(pattern, sep), strings.Split(name, sep)
	if len(ps) != len(ns) {
		return false
	}
	for i := range ps {
		if ok, err := path.Match(ps[i], ns[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

// allows says whether the principal may pull repo from upstream.
func (p *Principal) allows(upstream, repo string) bool {
	if p.all {
		return true
	}
	for _, g := range p.grants {
		if g.allows(upstream, repo) {
			return true
		}
	}
	return false
}

func (g *compiledGrant) allows(upstream, repo string) bool {
	if len(g.Upstreams) > 0 && !matchAnyPattern(g.Upstreams, upstream) {
		return false
	}
	if len(g.Repositories) == 0 {
		return true
	}
	for _, r := range g.Repositories {
		if verify.MatchRepository(r, repo) {
			return true
		}
	}
	return false
}

func matchAnyPattern(patterns []string, s string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, s); ok {
			return true
		}
	}
	return false
}

type principalKey struct{}

// PrincipalFrom is the principal a registry request was authenticated
// as; nil when client authentication is off.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// authenticateRequest answers 401 with a Basic challenge when r carries
// no acceptable identity. Every client (containerd, CRI-O, docker, crane,
// oras, skopeo, regctl) answers a Basic challenge with the credentials it
// was given, tokens included as passwords, so no token service is needed.
func (p *Proxy) authenticateRequest(w http.ResponseWriter, r *http.Request, st *reqState) (*http.Request, bool) {
	a := p.clientAuth.Load()
	if a == nil {
		return r, true
	}
	pr, ok := a.authenticate(r)
	if !ok {
		p.metrics.authFailures.WithLabelValues("registry").Inc()
		w.Header().Set("WWW-Authenticate", `Basic realm="`+clientRealm+`"`)
		writeError(w, r, errUnauthenticated)
		return r, false
	}
	st.principal = pr.String()
	return r.WithContext(context.WithValue(r.Context(), principalKey{}, pr)), true
}

// authorize refuses, before anything is looked up upstream, a client
// outside its grants; the answer is the same whether or not the content
// exists.
func (p *Proxy) authorize(r *http.Request, upstream, repo string) error {
	if p.clientAuth.Load() == nil {
		return nil
	}
	pr := PrincipalFrom(r.Context())
	if pr == nil || !pr.allows(upstream, repo) {
		return errForbidden
	}
	return nil
}

// adminAuth guards the admin handler with the admin tokens; the probes
// stay open for orchestrators.
func (p *Proxy) adminAuth(next http.Handler) http.Handler {
	// Admin authentication is on or off for the life of the handler; its
	// tokens can change (SetClientAuth).
	if len(*p.adminTokens.Load()) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		hdr := r.Header.Get("Authorization")
		scheme, cred, _ := strings.Cut(hdr, " ")
		if len(hdr) <= maxAuthorizationBytes && strings.EqualFold(scheme, "bearer") {
			if _, ok := matchToken(*p.adminTokens.Load(), strings.TrimSpace(cred)); ok {
				next.ServeHTTP(w, r)
				return
			}
		}
		p.metrics.authFailures.WithLabelValues("admin").Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+adminRealm+`"`)
		writeText(w, http.StatusUnauthorized, "unauthorized\n")
	})
}
