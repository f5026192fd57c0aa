package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

func TestInternalClass(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, class string
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.255.254", "loopback"},
		{"::1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"fc00::1", "private"},
		{"fd00:ec2::254", "private"},
		{"169.254.169.254", "link-local"},
		{"169.254.0.1", "link-local"},
		{"fe80::1", "link-local"},
		{"fe80::1%eth0", "link-local"},
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.0.0.1", "private"},
		{"::ffff:169.254.169.254", "link-local"},
		{"::ffff:100.64.0.1", "shared"},
		{"::ffff:0.1.2.3", "reserved"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"ff02::1", "multicast"},
		{"ff05::1:3", "multicast"},
		{"100.64.0.1", "shared"},
		{"100.127.255.255", "shared"},
		{"64:ff9b::7f00:1", "loopback"},
		{"64:ff9b::a9fe:a9fe", "link-local"},
		{"2002:7f00:1::1", "loopback"},
		{"2002:a00:1::1", "private"},
		{"0.1.2.3", "reserved"},
		{"255.255.255.255", "reserved"},
		{"240.0.0.1", "reserved"},
		{"198.18.0.1", "reserved"},
		{"192.0.0.8", "reserved"},
		{"fec0::1", "reserved"},
		{"::7f00:1", "reserved"},

		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"100.63.255.255", ""},
		{"100.128.0.0", ""},
		{"172.32.0.1", ""},
		{"192.169.0.1", ""},
		{"169.255.0.1", ""},
		{"2606:4700:4700::1111", ""},
		{"::ffff:8.8.8.8", ""},
		{"64:ff9b::808:808", ""},
		{"2002:808:808::1", ""},
	} {
		a, err := netip.ParseAddr(tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := internalClass(a); got != tc.class {
			t.Errorf("internalClass(%s) = %q, want %q", tc.addr, got, tc.class)
		}
	}
	if internalClass(netip.Addr{}) == "" {
		t.Error("the zero address passed as public")
	}
}

func TestHostPattern(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, host, port string
		want                bool
	}{
		{"storage.test", "storage.test", "443", true},
		{"Storage.Test", "storage.test", "443", true},
		{"storage.test", "other.test", "443", false},
		{"storage.test", "x.storage.test", "443", false},
		{"storage.test:9000", "storage.test", "9000", true},
		{"storage.test:9000", "storage.test", "443", false},
		{"*.blob.test", "eu.blob.test", "443", true},
		{"*.blob.test", "a.b.blob.test", "443", true},
		{"*.blob.test", "blob.test", "443", false},
		{"*.blob.test", "evilblob.test", "443", false},
		{"*.blob.test:9000", "eu.blob.test", "9000", true},
		{"*.blob.test:9000", "eu.blob.test", "80", false},
		{"10.0.0.7", "10.0.0.7", "80", true},
		{"[fd00::7]:9000", "fd00::7", "9000", true},
		{"fd00::7", "fd00::7", "443", true},
	} {
		p, err := parseHostPattern(tc.pattern)
		if err != nil {
			t.Errorf("parseHostPattern(%q): %v", tc.pattern, err)
			continue
		}
		if got := p.matches(tc.host, tc.port); got != tc.want {
			t.Errorf("%q matches %s:%s = %v, want %v", tc.pattern, tc.host, tc.port, got, tc.want)
		}
	}
	for _, bad := range []string{"", "*", "*.", "a/b", "u@h", "h:0", "h:x", "h:70000", "*.10.0.0.1", "a*.b"} {
		if _, err := parseHostPattern(bad); err == nil {
			t.Errorf("parseHostPattern(%q) accepted", bad)
		}
	}
	if _, err := New(Config{Name: "x", URL: "https://r.example", RedirectHosts: []string{"a/b"}}); err == nil {
		t.Error("New accepted an invalid redirect host")
	}
}

// disguise configures a client for a made-up host name whose own address
// looks public (the guard's lookup answers a documentation address) while
// every made-up name in local is actually served by a local test server.
func disguise(cfg Config, ownHost string, local map[string]string) Config {
	cfg.lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
		if host == ownHost {
			return []netip.Addr{netip.MustParseAddr("203.0.113.10")}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	cfg.mapAddr = func(addr string) string {
		h, _, err := net.SplitHostPort(addr)
		if err == nil {
			if to, ok := local[h]; ok {
				return to
			}
		}
		return addr
	}
	return cfg
}

func hostOf(rawURL string) string {
	u, _ := url.Parse(rawURL)
	return u.Host
}

// redirectingUpstream is a registry behind basic auth that redirects
// every blob request to location + "/storage/<digest>".
func redirectingUpstream(t *testing.T, location string) *fakeUpstream {
	t.Helper()
	up := newFakeUpstream(t, authBasic)
	up.redirectBlobs = location
	return up
}

var testCreds = staticKeychain{authn.AuthConfig{Username: testUser, Password: testPassword}}

func TestRedirectToInternalAddressRefused(t *testing.T) {
	t.Parallel()
	blob := []byte("internal service answer")
	d := sha256Hash(blob)
	st := newStorage(t, map[string][]byte{d.String(): blob})
	_, stPort, _ := net.SplitHostPort(hostOf(st.URL))

	for _, tc := range []struct {
		name     string
		location string
		class    string
	}{
		// A literal is refused before any request is made.
		{"literal loopback", "http://127.0.0.1:" + stPort, "loopback"},
		// A name is refused when the dial reaches its address: the
		// resolver's answer is what is checked, not the name.
		{"localhost", "http://localhost:" + stPort, "loopback"},
		// A name that resolves to a loopback address at dial time, as
		// with DNS rebinding.
		{"name resolving to loopback", "http://rebind.test:" + stPort, "loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := redirectingUpstream(t, tc.location)
			cfg := disguise(Config{URL: "http://registry.test", Insecure: true, Auth: testCreds}, "registry.test",
				map[string]string{"registry.test": up.host(), "rebind.test": "127.0.0.1:" + stPort})
			c := newTestClient(t, cfg)
			before := len(st.all())
			resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, int64(len(blob)),
				http.Header{"Range": {"bytes=0-7"}})
			if err == nil {
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Fatalf("redirect followed, read %q", got)
			}
			if !errors.Is(err, ErrRedirectRefused) {
				t.Fatalf("err = %v, want ErrRedirectRefused", err)
			}
			var rr *RedirectRefusedError
			if !errors.As(err, &rr) || rr.Class != tc.class || !rr.Addr.IsLoopback() {
				t.Errorf("refusal = %+v", rr)
			}
			if IsTransient(err) {
				t.Error("a refused redirect reported as transient")
			}
			if n := len(st.all()) - before; n != 0 {
				t.Errorf("internal service received %d requests", n)
			}
			if up.count(http.MethodGet, "/blobs/") == 0 {
				t.Error("the upstream was not asked at all")
			}
		})
	}
}

func TestTokenRealmOnInternalAddressRefused(t *testing.T) {
	t.Parallel()
	var tokenRequests atomic.Int64
	realm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokenRequests.Add(1)
		_, _ = io.WriteString(w, `{"token":"t"}`)
	}))
	t.Cleanup(realm.Close)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://auth.test/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(up.Close)
	cfg := disguise(Config{URL: "http://registry.test", Insecure: true, Auth: testCreds}, "registry.test",
		map[string]string{"registry.test": hostOf(up.URL), "auth.test": hostOf(realm.URL)})
	c := newTestClient(t, cfg)
	_, err := c.GetManifest(context.Background(), "app", "v1", nil)
	if !errors.Is(err, ErrRedirectRefused) {
		t.Fatalf("err = %v, want ErrRedirectRefused", err)
	}
	if n := tokenRequests.Load(); n != 0 {
		t.Errorf("credentials were sent to an internal token realm %d times", n)
	}
}

func TestRedirectHostsAllowed(t *testing.T) {
	t.Parallel()
	blob := []byte("blob held by internal storage")
	d := sha256Hash(blob)
	st := newStorage(t, map[string][]byte{d.String(): blob})

	for _, tc := range []struct {
		name     string
		allow    []string
		location string
		ok       bool
	}{
		{"exact host", []string{"storage.test"}, "http://storage.test", true},
		{"host and port", []string{"storage.test:80"}, "http://storage.test", true},
		{"wildcard", []string{"*.blob.test"}, "http://eu.blob.test", true},
		{"other port", []string{"storage.test:9000"}, "http://storage.test", false},
		{"not listed", []string{"storage.test"}, "http://other.test", false},
		{"nothing listed", nil, "http://storage.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := redirectingUpstream(t, tc.location)
			local := map[string]string{"registry.test": up.host()}
			for _, h := range []string{"storage.test", "eu.blob.test", "other.test"} {
				local[h] = hostOf(st.URL)
			}
			cfg := disguise(Config{URL: "http://registry.test", Insecure: true, Auth: testCreds, RedirectHosts: tc.allow},
				"registry.test", local)
			c := newTestClient(t, cfg)
			got, err := c.Blob(context.Background(), "app", d, 1<<20)
			if !tc.ok {
				if !errors.Is(err, ErrRedirectRefused) {
					t.Fatalf("err = %v, want ErrRedirectRefused", err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("Blob: %q, %v", got, err)
			}
			// The storage host is trusted with the address, never with
			// the upstream's credentials.
			for _, r := range st.all() {
				if a := r.Header.Get("Authorization"); a != "" {
					t.Errorf("storage received Authorization %q", a)
				}
			}
			for _, r := range up.all() {
				if strings.Contains(r.Path, "/blobs/") && r.Header.Get("Authorization") == "" {
					t.Error("registry blob request without credentials")
				}
			}
		})
	}
}

// An upstream that is itself on an internal address shares its network
// with its storage: its redirects there are followed.
func TestInternalUpstreamMayRedirectInternally(t *testing.T) {
	t.Parallel()
	blob := []byte("blob on the lab's storage")
	d := sha256Hash(blob)
	st := newStorage(t, map[string][]byte{d.String(): blob})
	up := redirectingUpstream(t, st.URL)
	cfg := Config{URL: "http://registry.lab", Insecure: true, Auth: testCreds,
		lookup: func(context.Context, string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("10.0.0.5")}, nil
		},
		mapAddr: func(addr string) string {
			if strings.HasPrefix(addr, "registry.lab:") {
				return up.host()
			}
			return addr
		},
	}
	c := newTestClient(t, cfg)
	got, err := c.Blob(context.Background(), "app", d, 1<<20)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("Blob: %q, %v", got, err)
	}
	if n := len(st.all()); n != 1 {
		t.Errorf("storage saw %d requests, want 1", n)
	}
}

// Behind an HTTP proxy the proxy resolves and connects, so only a literal
// address can be judged; it is refused before the request leaves. The
// proxy itself, an operator's choice, is dialled although it is local.
func TestRedirectThroughProxyChecksLiterals(t *testing.T) {
	t.Parallel()
	blob := []byte("blob via proxy")
	d := sha256Hash(blob)
	var proxied journal
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.record(r)
		if r.URL.Host == "public.test" {
			_, _ = w.Write(blob)
			return
		}
		http.Error(w, "internal", http.StatusOK)
	}))
	t.Cleanup(fwd.Close)
	proxyURL, _ := url.Parse(fwd.URL)

	for _, tc := range []struct {
		location string
		refused  bool
	}{
		{"http://10.0.0.1", true},
		{"http://[::ffff:169.254.169.254]", true},
		{"http://public.test", false},
	} {
		// Not parallel: each case counts what reached the shared proxy.
		t.Run(tc.location, func(t *testing.T) {
			up := redirectingUpstream(t, tc.location)
			c := newTestClient(t, disguise(Config{URL: "http://registry.test", Insecure: true, Auth: testCreds},
				"registry.test", map[string]string{"registry.test": up.host()}))
			tr := c.bare.(*schemeGuard).inner.(*pools).verify
			tr.Proxy = c.guard.proxy(func(r *http.Request) (*url.URL, error) {
				if r.URL.Hostname() == "registry.test" {
					return nil, nil
				}
				return proxyURL, nil
			})
			before := len(proxied.all())
			got, err := c.Blob(context.Background(), "app", d, 1<<20)
			if tc.refused {
				if !errors.Is(err, ErrRedirectRefused) {
					t.Fatalf("err = %v, want ErrRedirectRefused", err)
				}
				if n := len(proxied.all()) - before; n != 0 {
					t.Errorf("proxy received %d requests", n)
				}
				return
			}
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("Blob: %q, %v", got, err)
			}
		})
	}
}
