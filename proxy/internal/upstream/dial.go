package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrRedirectRefused means a connection for a redirect (or a token realm)
// away from the upstream's own host would have reached a loopback,
// private, link-local, multicast or otherwise internal address. The
// concrete error is a *RedirectRefusedError naming the address.
var ErrRedirectRefused = errors.New("redirect to a disallowed address")

// RedirectRefusedError is the refusal of one address. It matches
// ErrRedirectRefused.
type RedirectRefusedError struct {
	// Host is the host name the connection was for, as the redirect
	// named it (sanitised).
	Host string
	// Addr is the address that was refused.
	Addr netip.Addr
	// Class says why Addr is internal: "loopback", "private",
	// "link-local", "multicast", "unspecified", "shared" (100.64.0.0/10)
	// or "reserved".
	Class string
}

func (e *RedirectRefusedError) Error() string {
	return fmt.Sprintf("refused to connect to %s address %s for host %q: it is neither the upstream's host nor one of its redirect hosts",
		e.Class, e.Addr, e.Host)
}

// Is makes every refusal match ErrRedirectRefused.
func (e *RedirectRefusedError) Is(target error) bool { return target == ErrRedirectRefused }

// ownHostRecheck bounds how long the answer to "is the upstream's own host
// internal" is reused before it is looked up again.
const ownHostRecheck = 5 * time.Minute

var (
	sharedPrefix = netip.MustParsePrefix("100.64.0.0/10") // RFC 6598 carrier-grade NAT
	// Ranges that are not private by name but reach no public service and,
	// on many hosts, something local: 0.0.0.0/8 ("this network", which
	// Linux routes to the local host), 192.0.0.0/24 (IETF protocol
	// assignments), 198.18.0.0/15 (benchmarking), 240.0.0.0/4 (reserved,
	// including the broadcast address), fec0::/10 (deprecated site-local)
	// and ::/96 (deprecated IPv4-compatible addresses).
	reservedPrefixes = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("192.0.0.0/24"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("240.0.0.0/4"),
		netip.MustParsePrefix("fec0::/10"),
		netip.MustParsePrefix("::/96"),
	}
	// IPv6 prefixes that carry an IPv4 address in their low 32 bits
	// (NAT64) or in bits 16..48 (6to4); the embedded address is what a
	// translator on the path would connect to.
	nat64Prefixes = []netip.Prefix{
		netip.MustParsePrefix("64:ff9b::/96"),
		netip.MustParsePrefix("64:ff9b:1::/48"),
	}
	sixToFourPrefix = netip.MustParsePrefix("2002::/16")
)

// internalClass returns why a is not a public unicast address, or "" when
// it is. IPv4-mapped, NAT64 and 6to4 forms are judged by the IPv4 address
// they carry.
func internalClass(a netip.Addr) string {
	a = a.WithZone("")
	if a.Is4In6() {
		a = a.Unmap()
	}
	if a.Is6() {
		b := a.As16()
		for _, p := range nat64Prefixes {
			if p.Contains(a) {
				if c := internalClass(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})); c != "" {
					return c
				}
			}
		}
		if sixToFourPrefix.Contains(a) {
			if c := internalClass(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})); c != "" {
				return c
			}
		}
	}
	switch {
	case !a.IsValid():
		return "reserved"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	case sharedPrefix.Contains(a):
		return "shared"
	}
	for _, p := range reservedPrefixes {
		if p.Contains(a) {
			return "reserved"
		}
	}
	return ""
}

// hostPattern is one RedirectHosts entry: an exact host, or with wildcard
// every host below suffix; port "" matches any port.
type hostPattern struct {
	host     string // lower-case, without brackets; for wildcards the suffix with its leading dot
	wildcard bool
	port     string
}

func parseHostPattern(s string) (hostPattern, error) {
	var p hostPattern
	h := strings.ToLower(strings.TrimSpace(s))
	if rest, ok := strings.CutPrefix(h, "*."); ok {
		p.wildcard = true
		h = rest
	}
	if hp, port, err := net.SplitHostPort(h); err == nil {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return hostPattern{}, fmt.Errorf("redirect host %q: invalid port", s)
		}
		h, p.port = hp, port
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if h == "" || strings.ContainsAny(h, "/*@?# []") {
		return hostPattern{}, fmt.Errorf("redirect host %q: want host, host:port or *.domain", s)
	}
	if _, err := netip.ParseAddr(h); err == nil && p.wildcard {
		return hostPattern{}, fmt.Errorf("redirect host %q: a wildcard needs a domain", s)
	}
	if p.wildcard {
		h = "." + h
	}
	p.host = h
	return p, nil
}

// matches reports whether host (lower-case, no brackets) and port are
// covered by the pattern.
func (p hostPattern) matches(host, port string) bool {
	if p.port != "" && p.port != port {
		return false
	}
	if p.wildcard {
		// p.host starts with its dot: "*.a.test" covers "x.a.test",
		// not "a.test" and not "xa.test".
		return strings.HasSuffix(host, p.host)
	}
	return host == p.host
}

// dialGuard is the default transport's dialer. It connects to the
// upstream's own host as any dialer would. Every other connection exists
// only because the upstream sent us there (a redirect, a token realm); the
// guard checks the address actually being connected to, after name
// resolution, so a name that resolves (or re-resolves) to an internal
// address is refused however it was obtained.
type dialGuard struct {
	own    string // the upstream's host name, lower-case, no brackets, no port
	allow  []hostPattern
	dialer *net.Dialer
	// lookup resolves the upstream's own host to decide whether it is
	// itself internal.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// mapAddr, when set, rewrites the address actually dialled (tests
	// point made-up host names at local servers with it).
	mapAddr func(addr string) string

	// proxies are the hosts of HTTP proxies the transport chose from the
	// environment; those are the operator's, so they are dialled freely.
	proxies sync.Map // host:port → struct{}

	mu          sync.Mutex
	ownInternal bool
	checkedAt   time.Time
}

func newDialGuard(own string, redirectHosts []string, dialer *net.Dialer) (*dialGuard, error) {
	g := &dialGuard{
		own:    strings.ToLower(own),
		dialer: dialer,
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
	}
	for _, h := range redirectHosts {
		p, err := parseHostPattern(h)
		if err != nil {
			return nil, err
		}
		g.allow = append(g.allow, p)
	}
	return g, nil
}

// proxy wraps the transport's Proxy function to learn the proxies' hosts.
func (g *dialGuard) proxy(next func(*http.Request) (*url.URL, error)) func(*http.Request) (*url.URL, error) {
	return func(r *http.Request) (*url.URL, error) {
		u, err := next(r)
		if u != nil && err == nil {
			port := u.Port()
			if port == "" {
				port = map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}[u.Scheme]
			}
			g.proxies.Store(net.JoinHostPort(strings.ToLower(u.Hostname()), port), struct{}{})
		}
		return u, err
	}
}

// exempt reports whether a connection to host:port needs no check: the
// upstream's own host, a configured redirect host, or a proxy.
func (g *dialGuard) exempt(host, port string) bool {
	host = strings.ToLower(host)
	if host == g.own {
		return true
	}
	for _, p := range g.allow {
		if p.matches(host, port) {
			return true
		}
	}
	_, ok := g.proxies.Load(net.JoinHostPort(host, port))
	return ok
}

// ownIsInternal reports whether the upstream's own host is an internal
// address (or resolves to one): such an upstream sits in the same private
// network as its storage, so its redirects may stay there. A failed lookup
// answers false and is retried next time.
func (g *dialGuard) ownIsInternal(ctx context.Context) bool {
	if a, err := netip.ParseAddr(g.own); err == nil {
		return internalClass(a) != ""
	}
	g.mu.Lock()
	if !g.checkedAt.IsZero() && time.Since(g.checkedAt) < ownHostRecheck {
		v := g.ownInternal
		g.mu.Unlock()
		return v
	}
	g.mu.Unlock()
	addrs, err := g.lookup(ctx, g.own)
	if err != nil {
		return false
	}
	internal := false
	for _, a := range addrs {
		if internalClass(a) != "" {
			internal = true
			break
		}
	}
	g.mu.Lock()
	g.ownInternal, g.checkedAt = internal, time.Now()
	g.mu.Unlock()
	return internal
}

// checkLiteral refuses a redirect to an internal IP literal before any
// request is made. It matters when a proxy from the environment carries
// the request: the dial then goes to the proxy and the check at dial time
// cannot see the target.
func (g *dialGuard) checkLiteral(ctx context.Context, u *url.URL) error {
	host := u.Hostname()
	a, err := netip.ParseAddr(host)
	if err != nil {
		return nil
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if g.exempt(host, port) {
		return nil
	}
	if c := internalClass(a); c != "" && !g.ownIsInternal(ctx) {
		return &RedirectRefusedError{Host: sanitize(host, 256), Addr: a.WithZone(""), Class: c}
	}
	return nil
}

// DialContext is the transport's dialer.
func (g *dialGuard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	target := addr
	if g.mapAddr != nil {
		target = g.mapAddr(addr)
	}
	if g.exempt(host, port) {
		return g.dialer.DialContext(ctx, network, target)
	}
	allowInternal := g.ownIsInternal(ctx)
	d := *g.dialer
	d.ControlContext = func(_ context.Context, _, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: unparsable address %q", ErrRedirectRefused, address)
		}
		if c := internalClass(ap.Addr()); c != "" && !allowInternal {
			return &RedirectRefusedError{Host: sanitize(host, 256), Addr: ap.Addr().WithZone(""), Class: c}
		}
		return nil
	}
	return d.DialContext(ctx, network, target)
}
