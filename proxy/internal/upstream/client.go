package upstream

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.opentelemetry.io/otel/propagation"
	"golang.org/x/sync/singleflight"

	"github.com/portcullis-oci/portcullis/proxy/internal/names"
	"github.com/portcullis-oci/portcullis/verify"
)

// MaxManifestBytes is the largest manifest (or index) accepted from an
// upstream; larger ones are refused before they are read whole.
const MaxManifestBytes = 4 << 20

const (
	// DefaultTimeout bounds a call when Config.Timeout is zero.
	DefaultTimeout = 30 * time.Second
	// DefaultIdleTimeout is how long a response body may go without a byte
	// from the upstream while it is being read, when Config.IdleTimeout is
	// zero.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMaxConns caps connections per host (the upstream's, and each
	// storage host it redirects to) when Config.MaxConns is zero.
	DefaultMaxConns = 64
	// DefaultMaxHeaderBytes bounds an answer's status line and headers
	// when Config.MaxHeaderBytes is zero. Registries send a few KiB at
	// most (a storage redirect's presigned URL included); net/http's own
	// default is 10 MiB, on every connection at once.
	DefaultMaxHeaderBytes = 64 << 10
	// maxRedirects bounds the redirect chain of one call.
	maxRedirects = 5
)

// Config describes one upstream registry.
type Config struct {
	Name     string
	URL      string // scheme://host[:port]
	Insecure bool   // allow http:// and skip TLS verification
	RootCAs  []byte // PEM added to the system pool
	Auth     authn.Keychain
	Timeout  time.Duration // per call; default 30s
	// IdleTimeout drops a response body (manifest, blob, evidence, pass
	// through) when no byte arrives for this long while it is being read;
	// the read fails with ErrUpstreamStalled. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxConns caps the connections to each host, the upstream's own and
	// each storage host it redirects to; requests beyond it wait for a
	// connection within their timeout, then fail with ErrConnLimit.
	// Default DefaultMaxConns. Not applied to a custom Transport.
	MaxConns int
	// MaxHeaderBytes bounds the status line and headers of every answer
	// from the upstream and the hosts it redirects to; a larger one fails
	// with ErrHeadersTooLarge. Default DefaultMaxHeaderBytes. Not applied
	// to a custom Transport.
	MaxHeaderBytes int64
	// RedirectHosts are hosts the upstream may send the client to (by
	// redirect or token realm) even when they resolve to loopback,
	// private, link-local or other internal addresses: "host",
	// "host:port", or "*.domain" for every host below domain. Not
	// applied to a custom Transport, which does its own dialling.
	RedirectHosts []string
	// Transport is the base round tripper (tests inject spies); default a
	// clone of http.DefaultTransport with RootCAs/Insecure applied, the
	// connection cap and the redirect address guard. When set, RootCAs,
	// Insecure's TLS setting, MaxConns and the address guard are not
	// applied to it, but plain http is still refused unless Insecure.
	Transport http.RoundTripper
	// Propagator, when set, writes the trace context of a call's context
	// (W3C traceparent) into each request to the registry host. Hops to
	// other hosts (blob storage) get none: the trace is the operator's,
	// not the storage provider's. Default none.
	Propagator propagation.TextMapPropagator

	// repositories overrides DefaultRepositories (tests).
	repositories int
	// lookup and mapAddr replace the guard's resolver for the
	// upstream's own host and rewrite dialled addresses (tests).
	lookup  func(ctx context.Context, host string) ([]netip.Addr, error)
	mapAddr func(addr string) string
}

// Client talks to one upstream registry. Safe for concurrent use.
// It implements verify.Fetcher.
type Client struct {
	name     string
	base     url.URL // scheme and host of the registry, nothing else
	reg      name.Registry
	keychain authn.Keychain
	timeout  time.Duration
	idle     time.Duration
	insecure bool

	// bare carries no credentials; it is used for redirect hops to other
	// hosts. pinged is bare with the shared /v2/ answer, the inner
	// transport of every repository's handshake.
	bare   http.RoundTripper
	pinged http.RoundTripper
	// guard is the default transport's dialer; nil with a custom
	// Transport.
	guard     *dialGuard
	maxConns  int   // 0 with a custom Transport
	maxHeader int64 // 0 with a custom Transport

	transports *repoCache
	setup      singleflight.Group
	propagator propagation.TextMapPropagator // nil: no trace context is sent
	// referrersAbsent (Unix ns) is until when the upstream is taken to
	// lack the referrers API (see ReferrersPage); 0: ask it.
	referrersAbsent atomic.Int64
	now             func() time.Time // nil: time.Now (tests set it)
}

var _ verify.Fetcher = (*Client)(nil)

// New validates cfg and returns a client. Nothing is dialled.
func New(cfg Config) (*Client, error) {
	if cfg.Name == "" {
		return nil, errors.New("upstream: name is required")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: parsing url: %w", cfg.Name, err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && cfg.Insecure:
	case u.Scheme == "http":
		return nil, fmt.Errorf("upstream %s: plain http requires insecure", cfg.Name)
	default:
		return nil, fmt.Errorf("upstream %s: url scheme must be https (or http with insecure), got %q", cfg.Name, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("upstream %s: url has no host", cfg.Name)
	}
	// Credentials come from the keychain only; a URL carrying them would
	// end up in logs and error messages.
	if u.User != nil {
		return nil, fmt.Errorf("upstream %s: url must not contain credentials", cfg.Name)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("upstream %s: url must be scheme://host[:port] only", cfg.Name)
	}
	if cfg.Timeout < 0 || cfg.IdleTimeout < 0 {
		return nil, fmt.Errorf("upstream %s: negative timeout", cfg.Name)
	}
	if cfg.MaxConns < 0 || cfg.repositories < 0 || cfg.MaxHeaderBytes < 0 {
		return nil, fmt.Errorf("upstream %s: negative connection, header or repository limit", cfg.Name)
	}
	timeout := cmp.Or(cfg.Timeout, DefaultTimeout)
	idle := cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout)
	maxConns := cmp.Or(cfg.MaxConns, DefaultMaxConns)
	maxHeader := cmp.Or(cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)

	opts := []name.Option{name.StrictValidation}
	if cfg.Insecure {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.Name, err)
	}

	// name.NewRegistry canonicalises some hosts (docker.io becomes
	// index.docker.io); requests go where credentials are attached.
	baseURL := url.URL{Scheme: u.Scheme, Host: reg.RegistryStr()}

	var guard *dialGuard
	base := cfg.Transport
	if base == nil {
		guard, err = newDialGuard(baseURL.Hostname(), cfg.RedirectHosts,
			&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second})
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", cfg.Name, err)
		}
		if cfg.lookup != nil {
			guard.lookup = cfg.lookup
		}
		guard.mapAddr = cfg.mapAddr
		verifyPool, err := newTransport(cfg.RootCAs, cfg.Insecure, timeout, maxConns, maxHeader, guard)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", cfg.Name, err)
		}
		base = &pools{verify: verifyPool, stream: verifyPool.Clone()}
	} else {
		if len(cfg.RootCAs) > 0 {
			return nil, fmt.Errorf("upstream %s: root CAs cannot be applied to a custom transport", cfg.Name)
		}
		maxConns, maxHeader = 0, 0
	}

	cache, err := newRepoCache(cmp.Or(cfg.repositories, DefaultRepositories))
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.Name, err)
	}
	kc := cfg.Auth
	if kc == nil {
		kc = anonymousKeychain{}
	}
	bare := &schemeGuard{inner: base, allowHTTP: cfg.Insecure}
	return &Client{
		name:       cfg.Name,
		base:       baseURL,
		reg:        reg,
		keychain:   kc,
		timeout:    timeout,
		idle:       idle,
		insecure:   cfg.Insecure,
		bare:       bare,
		pinged:     &pingCache{inner: bare, base: baseURL},
		guard:      guard,
		maxConns:   maxConns,
		maxHeader:  maxHeader,
		transports: cache,
		propagator: cfg.Propagator,
	}, nil
}

type anonymousKeychain struct{}

func (anonymousKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.Anonymous, nil
}

// newTransport builds the default base transport. guard dials every
// connection: the upstream's own host freely, anything else (redirect
// targets, token realms) only to public addresses unless allowed.
func newTransport(rootCAs []byte, insecure bool, timeout time.Duration, maxConns int, maxHeader int64, guard *dialGuard) (*http.Transport, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(rootCAs) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(rootCAs) {
			return nil, errors.New("root CAs: no PEM certificate found")
		}
		tlsCfg.RootCAs = pool
	}
	if insecure {
		tlsCfg.InsecureSkipVerify = true
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = guard.DialContext
	t.Proxy = guard.proxy(http.ProxyFromEnvironment)
	t.TLSClientConfig = tlsCfg
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = timeout
	// Also the HTTP/2 header list size the transport announces.
	t.MaxResponseHeaderBytes = maxHeader
	// The cap holds per host (the registry, each storage host); keeping
	// more idle connections than may be open is pointless.
	t.MaxConnsPerHost = maxConns
	t.MaxIdleConnsPerHost = maxConns
	t.MaxIdleConns = 4 * maxConns
	t.IdleConnTimeout = 90 * time.Second
	t.ForceAttemptHTTP2 = true
	// Registry content is already compressed and addressed by digest;
	// transparent decompression would only hide the real Content-Length.
	t.DisableCompression = true
	return t, nil
}

// pools keeps two connection pools per upstream, each capped at MaxConns
// per host: one for blob bodies relayed to clients (OpenBlob) and one for
// everything a verification reads. A stream holds its connection for as
// long as its client takes to read, so clients that stop reading could
// otherwise hold every connection until the client idle timeout, and no
// pull could be verified meanwhile. They can only exhaust the stream pool.
type pools struct {
	verify, stream *http.Transport
}

// streamKey marks a request context as a client's blob stream.
type streamKey struct{}

func (p *pools) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Context().Value(streamKey{}) != nil {
		return p.stream.RoundTrip(r)
	}
	return p.verify.RoundTrip(r)
}

// schemeGuard refuses plain http unless the upstream is insecure. It sits
// under everything, so the ping, token exchange and redirect hops cannot
// be downgraded either.
type schemeGuard struct {
	inner     http.RoundTripper
	allowHTTP bool
}

func (g *schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "https" || (r.URL.Scheme == "http" && g.allowHTTP) {
		return g.inner.RoundTrip(r)
	}
	if r.Body != nil {
		r.Body.Close()
	}
	return nil, fmt.Errorf("refusing %s request to host %q", r.URL.Scheme, r.URL.Host)
}

// Name is the configured upstream name.
func (c *Client) Name() string { return c.name }

// MaxConns is the cap on connections per host of each of the client's
// pools, client blob streams included; 0 when no cap is known (a custom
// Transport).
func (c *Client) MaxConns() int { return c.maxConns }

var noRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// do sends one request to /v2/<repo>/<path> and follows redirects itself:
// hops to the registry host go through the authenticated transport, hops
// anywhere else through the bare one, and every hop starts from hdr, which
// never holds credentials (the auth transport adds them per request).
func (c *Client) do(ctx context.Context, method, repo, path string, query url.Values, hdr http.Header) (*http.Response, error) {
	rt, err := c.authTransport(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := c.base
	u.Path = "/v2/" + repo + "/" + path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	target := &u
	for hop := 0; ; hop++ {
		req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", c.name, err)
		}
		req.Header = hdr.Clone()
		if req.Header == nil {
			req.Header = http.Header{}
		}
		hc := &http.Client{Transport: c.bare, CheckRedirect: noRedirect}
		if c.isRegistry(target) {
			hc.Transport = rt
			if c.propagator != nil {
				c.propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
			}
		}
		var waited func() bool
		if c.maxConns > 0 {
			req, waited = traceConnWait(req)
		}
		resp, err := hc.Do(req)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				// Storage redirects often carry presigned query strings;
				// those are credentials too and stay out of errors.
				ue.URL = redacted(target)
			}
			if waited != nil && waited() && ctx.Err() != nil {
				return nil, fmt.Errorf("upstream %s: %w: no connection to %s became free (at most %d per host): %w",
					c.name, ErrConnLimit, target.Host, c.maxConns, err)
			}
			if c.maxHeader > 0 && headersTooLarge(err) {
				return nil, fmt.Errorf("upstream %s: %w: %s sent more than %d bytes of status line and headers: %w",
					c.name, ErrHeadersTooLarge, target.Host, c.maxHeader, err)
			}
			return nil, fmt.Errorf("upstream %s: %w", c.name, err)
		}
		if !isRedirect(resp.StatusCode) {
			return resp, nil
		}
		loc := resp.Header.Get("Location")
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		if hop >= maxRedirects {
			return nil, fmt.Errorf("upstream %s: %w: more than %d redirects", c.name, ErrInvalidResponse, maxRedirects)
		}
		next, err := c.redirectTarget(target, loc)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", c.name, err)
		}
		if c.guard != nil {
			if err := c.guard.checkLiteral(ctx, next); err != nil {
				return nil, fmt.Errorf("upstream %s: %w", c.name, err)
			}
		}
		target = next
		if resp.StatusCode == http.StatusSeeOther && method != http.MethodHead {
			method = http.MethodGet
		}
	}
}

// traceConnWait reports, once the request is over, whether it never got
// a connection and never started making one: it waited in the transport's
// queue for a connection to the host, which only happens at MaxConns.
func traceConnWait(req *http.Request) (*http.Request, func() bool) {
	var dialing, got atomic.Bool
	trace := &httptrace.ClientTrace{
		DNSStart:     func(httptrace.DNSStartInfo) { dialing.Store(true) },
		ConnectStart: func(string, string) { dialing.Store(true) },
		GotConn:      func(httptrace.GotConnInfo) { got.Store(true) },
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	return req, func() bool { return !dialing.Load() && !got.Load() }
}

func redacted(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	if u.RawQuery != "" {
		r.RawQuery = "redacted"
	}
	return r.String()
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func (c *Client) redirectTarget(from *url.URL, loc string) (*url.URL, error) {
	if loc == "" {
		return nil, fmt.Errorf("%w: redirect without Location", ErrInvalidResponse)
	}
	ref, err := url.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("%w: unparsable redirect Location", ErrInvalidResponse)
	}
	next := from.ResolveReference(ref)
	switch {
	case next.Scheme == "https":
	case next.Scheme == "http" && c.insecure:
	default:
		return nil, fmt.Errorf("%w: refusing redirect to a %q URL", ErrInvalidResponse, next.Scheme)
	}
	if next.Host == "" {
		return nil, fmt.Errorf("%w: redirect to a URL without host", ErrInvalidResponse)
	}
	// net/http would turn userinfo into a Basic Authorization header; no
	// credential of any kind goes to a redirect target.
	next.User = nil
	next.Fragment = ""
	return next, nil
}

func (c *Client) isRegistry(u *url.URL) bool {
	return u.Scheme == c.base.Scheme && u.Host == c.base.Host
}

// deadline says how Config.Timeout applies to a call.
type deadline int

const (
	// wholeCall bounds the request and the reading of the body.
	wholeCall deadline = iota
	// headersOnly bounds the request until response headers arrive; the
	// body is then bounded by the caller's context only.
	headersOnly
)

// open performs a request with the given deadline policy and turns any
// status outside ok into *Error. The returned body cancels the call's
// context when closed.
func (c *Client) open(ctx context.Context, dl deadline, method, repo, path string, query url.Values, hdr http.Header, ok ...int) (*http.Response, error) {
	var (
		cancel   context.CancelFunc
		timer    *time.Timer
		timedOut atomic.Bool
	)
	if dl == wholeCall {
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
		timer = time.AfterFunc(c.timeout, func() {
			timedOut.Store(true)
			cancel()
		})
	}
	resp, err := c.do(ctx, method, repo, path, query, hdr)
	if timer != nil && !timer.Stop() {
		// The timer fired, possibly just after headers arrived: the body
		// is cancelled either way, so report the timeout.
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		if errors.Is(err, ErrConnLimit) {
			return nil, err
		}
		return nil, fmt.Errorf("upstream %s: no response within %s: %w", c.name, c.timeout, context.DeadlineExceeded)
	}
	if err != nil {
		cancel()
		if timedOut.Load() && !errors.Is(err, ErrConnLimit) {
			return nil, fmt.Errorf("upstream %s: no response within %s: %w", c.name, c.timeout, context.DeadlineExceeded)
		}
		return nil, err
	}
	// Every body, error bodies included, is dropped when the upstream
	// stops sending it; cancelling the call's context is what unblocks
	// the read.
	body := resp.Body
	if body != http.NoBody {
		// A HEAD answer, or one without content, has nothing to stall on.
		body = newIdleBody(body, c.idle, c.name, cancel)
	}
	resp.Body = &cancelOnClose{ReadCloser: body, cancel: cancel}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp, nil
		}
	}
	return nil, newError(c.name, resp)
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// Get performs a read-only GET of an API path under /v2/<repo>/ (e.g.
// "tags/list", "referrers/sha256:…") with query, for pass-through
// endpoints. Non-2xx answers are returned as *Error. Only Accept is
// forwarded from hdr. The timeout covers reading the body too, so the
// caller should copy it promptly; closing the body releases the call.
func (c *Client) Get(ctx context.Context, repo, path string, query url.Values, hdr http.Header) (*http.Response, error) {
	if err := validRepo(repo); err != nil {
		return nil, err
	}
	if err := validAPIPath(path); err != nil {
		return nil, err
	}
	resp, err := c.open(ctx, wholeCall, http.MethodGet, repo, path, query, forward(hdr, "Accept"),
		http.StatusOK, http.StatusNonAuthoritativeInfo, http.StatusNoContent, http.StatusPartialContent)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// forward copies only the named headers, so nothing a client sent (its
// own Authorization in particular) reaches the upstream by accident.
func forward(hdr http.Header, keys ...string) http.Header {
	out := http.Header{}
	for _, k := range keys {
		if v := hdr.Values(k); len(v) > 0 {
			out[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
	}
	return out
}

var (
	// Repository names as the distribution spec defines them.
	tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	// API path segments: letters, digits and the punctuation digests and
	// endpoint names use; nothing that could change the path's meaning.
	apiPathRE = regexp.MustCompile(`^[A-Za-z0-9._:-]+(?:/[A-Za-z0-9._:-]+)*$`)
)

func validRepo(repo string) error {
	if !names.IsRepository(repo) {
		return fmt.Errorf("invalid repository name %q", sanitize(repo, 300))
	}
	return nil
}

func validAPIPath(p string) error {
	if len(p) > 512 || !apiPathRE.MatchString(p) {
		return fmt.Errorf("invalid API path %q", sanitize(p, 600))
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("invalid API path %q", p)
		}
	}
	return nil
}

// parseRef returns the digest when ref is one; a tag returns ok false.
// Digests of algorithms other than sha256 and sha512 are refused.
func parseRef(ref string) (d v1.Hash, isDigest bool, err error) {
	if strings.Contains(ref, ":") {
		d, err := v1.NewHash(ref)
		if err != nil {
			return v1.Hash{}, false, fmt.Errorf("unsupported or malformed digest %q: %w", sanitize(ref, 200), err)
		}
		return d, true, nil
	}
	if !tagRE.MatchString(ref) {
		return v1.Hash{}, false, fmt.Errorf("invalid tag %q", sanitize(ref, 200))
	}
	return v1.Hash{}, false, nil
}
