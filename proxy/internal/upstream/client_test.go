package upstream

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/portcullis-oci/portcullis/verify"
)

func TestNewRefusesUnsafeConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no name", Config{URL: "https://r.example"}},
		{"http without insecure", Config{Name: "x", URL: "http://r.example"}},
		{"other scheme", Config{Name: "x", URL: "ftp://r.example"}},
		{"no host", Config{Name: "x", URL: "https://"}},
		{"credentials in url", Config{Name: "x", URL: "https://u:p@r.example"}},
		{"path in url", Config{Name: "x", URL: "https://r.example/v2"}},
		{"query in url", Config{Name: "x", URL: "https://r.example?x=1"}},
		{"negative timeout", Config{Name: "x", URL: "https://r.example", Timeout: -time.Second}},
		{"negative idle timeout", Config{Name: "x", URL: "https://r.example", IdleTimeout: -time.Second}},
		{"negative max conns", Config{Name: "x", URL: "https://r.example", MaxConns: -1}},
		{"malformed redirect host", Config{Name: "x", URL: "https://r.example", RedirectHosts: []string{"https://s.example/"}}},
		{"root CAs without PEM", Config{Name: "x", URL: "https://r.example", RootCAs: []byte("not pem")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	for _, u := range []string{"https://r.example", "https://r.example:5000/", "http://127.0.0.1:5000"} {
		if _, err := New(Config{Name: "ok", URL: u, Insecure: strings.HasPrefix(u, "http:")}); err != nil {
			t.Errorf("New(%s): %v", u, err)
		}
	}
}

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status    int
		body      string
		wantText  string
		notFound  bool
		transient bool
	}{
		{http.StatusNotFound, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, "upstream up: 404 Not Found: MANIFEST_UNKNOWN: manifest unknown", true, false},
		{http.StatusNotFound, "not here", "upstream up: 404 Not Found", true, false},
		{http.StatusBadRequest, `{"errors":[{"code":"NAME_UNKNOWN","message":"no such repo"}]}`, "NAME_UNKNOWN: no such repo", true, false},
		{http.StatusUnauthorized, `{"errors":[{"code":"UNAUTHORIZED","message":"auth\nrequired"},{"code":"DENIED"}]}`, "401 Unauthorized: UNAUTHORIZED: auth required (and 1 more)", false, false},
		{http.StatusForbidden, `{"errors":[{"code":"DENIED","message":"no"}]}`, "403 Forbidden: DENIED: no", false, false},
		{http.StatusTooManyRequests, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, "429 Too Many Requests", false, true},
		{http.StatusInternalServerError, "boom", "500 Internal Server Error", false, true},
		{http.StatusServiceUnavailable, "", "503 Service Unavailable", false, true},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Retry-After", "7")
				w.Header().Set("Set-Cookie", "session=secret")
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{Name: "up", URL: srv.URL, Insecure: true})

			_, err := c.GetManifest(context.Background(), "app", "v1", nil)
			var ue *Error
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if ue.Status != tc.status || string(ue.Body) != tc.body {
				t.Errorf("Status %d Body %q", ue.Status, ue.Body)
			}
			if ue.Header.Get("Retry-After") != "7" || ue.Header.Get("Set-Cookie") != "" {
				t.Errorf("headers kept: %v", ue.Header)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("Error() = %q, want it to contain %q", err.Error(), tc.wantText)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("Error() carries a newline: %q", err.Error())
			}
			if got := errors.Is(err, verify.ErrNotFound); got != tc.notFound {
				t.Errorf("errors.Is(ErrNotFound) = %v", got)
			}
			if got := IsTransient(err); got != tc.transient {
				t.Errorf("IsTransient = %v", got)
			}
		})
	}
}

func TestErrorBodyIsBounded(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 1<<20))
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	_, err := c.GetManifest(context.Background(), "app", "v1", nil)
	var ue *Error
	if !errors.As(err, &ue) || len(ue.Body) != maxErrorBody {
		t.Fatalf("err = %v, body len %d", err, len(ue.Body))
	}
}

func TestIsTransient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"deadline", context.DeadlineExceeded, true},
		{"wrapped deadline", &url.Error{Op: "Get", URL: "https://x", Err: context.DeadlineExceeded}, true},
		{"dns", &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, true},
		{"canceled", context.Canceled, false},
		{"mismatch", ErrDigestMismatch, false},
		{"too large", ErrTooLarge, false},
		{"cert", x509.UnknownAuthorityError{}, false},
		{"404", &Error{Status: 404}, false},
		{"502", &Error{Status: 502}, true},
	} {
		if got := IsTransient(tc.err); got != tc.want {
			t.Errorf("%s: IsTransient = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true, Timeout: 100 * time.Millisecond})

	calls := map[string]func() error{
		"manifest": func() error { _, err := c.GetManifest(context.Background(), "app", "v1", nil); return err },
		"resolve":  func() error { _, _, err := c.Resolve(context.Background(), "app", "v1", nil); return err },
		"blob": func() error {
			_, err := c.OpenBlob(context.Background(), http.MethodGet, "app", sha256Hash(nil), -1, nil)
			return err
		},
		"get": func() error { _, err := c.Get(context.Background(), "app", "tags/list", nil, nil); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := call()
			if err == nil {
				t.Fatal("no error from a hanging upstream")
			}
			if !IsTransient(err) {
				t.Errorf("timeout not transient: %v", err)
			}
		})
	}
}

// A blob body may take longer than Timeout: only the headers are bounded.
func TestBlobBodyOutlivesTimeout(t *testing.T) {
	t.Parallel()
	content := []byte("slow blob content")
	d := sha256Hash(content)
	const timeout = 50 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(content[:4])
		w.(http.Flusher).Flush()
		time.Sleep(4 * timeout)
		_, _ = w.Write(content[4:])
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true, Timeout: timeout})
	resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read %q, %v", got, err)
	}
}

func TestBlobBodyEndsWithCallerContext(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", "1000")
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("part"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := c.OpenBlob(ctx, http.MethodGet, "app", sha256Hash([]byte("x")), -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("body kept streaming after the caller's context ended")
	}
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newTestClient(t, Config{URL: "http://" + addr, Insecure: true})
	_, err = c.GetManifest(context.Background(), "app", "v1", nil)
	if err == nil || !IsTransient(err) {
		t.Fatalf("err = %v, want transient", err)
	}
	if errors.Is(err, verify.ErrNotFound) {
		t.Error("unreachable upstream reported as not found")
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mode authMode
	}{
		{"basic", authBasic},
		{"bearer", authBearer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newFakeUpstream(t, tc.mode)
			_, dig, raw := push(t, up.host(), "team/app", "v1")

			good := staticKeychain{authn.AuthConfig{Username: testUser, Password: testPassword}}
			c := newTestClient(t, Config{URL: up.URL, Insecure: true, Auth: good})
			m, err := c.GetManifest(context.Background(), "team/app", "v1", nil)
			if err != nil || m.Digest != dig || !bytes.Equal(m.Bytes, raw) {
				t.Fatalf("GetManifest: %v", err)
			}
			// A second call reuses the transport: no new ping.
			if _, _, err := c.Resolve(context.Background(), "team/app", dig.String(), nil); err != nil {
				t.Fatal(err)
			}
			if n := up.count(http.MethodGet, "/v2/") - up.count(http.MethodGet, "/v2/team/"); n != 1 {
				t.Errorf("pings = %d, want 1", n)
			}
			if tc.mode == authBearer {
				if got := up.scopes(); len(got) == 0 || got[0] != "repository:team/app:pull" {
					t.Errorf("token scopes = %v", got)
				}
			}

			bad := staticKeychain{authn.AuthConfig{Username: testUser, Password: "wrong-password-xyz"}}
			c = newTestClient(t, Config{URL: up.URL, Insecure: true, Auth: bad})
			_, err = c.GetManifest(context.Background(), "team/app", "v1", nil)
			if err == nil {
				t.Fatal("wrong credentials accepted")
			}
			if IsTransient(err) {
				t.Errorf("bad credentials reported transient: %v", err)
			}
			for _, secret := range []string{"wrong-password-xyz", testPassword, testToken} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks a credential: %v", err)
				}
			}

			anon := newTestClient(t, Config{URL: up.URL, Insecure: true})
			if _, err := anon.GetManifest(context.Background(), "team/app", "v1", nil); err == nil {
				t.Fatal("anonymous client passed auth")
			}
		})
	}
}

// storage is a blob store on another host, as S3 or a CDN would be.
type storage struct {
	*httptest.Server
	journal
	blobs map[string][]byte
}

func newStorage(t *testing.T, blobs map[string][]byte) *storage {
	s := &storage{blobs: blobs}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.record(r)
		b, ok := s.blobs[strings.TrimPrefix(r.URL.Path, "/storage/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	}))
	t.Cleanup(s.Close)
	return s
}

func TestRedirectDropsCredentials(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mode authMode
	}{
		{"basic", authBasic},
		{"bearer", authBearer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newFakeUpstream(t, tc.mode)
			img, _, _ := push(t, up.host(), "app", "v1")
			layers, _ := img.Layers()
			content, _ := layers[0].Compressed()
			blob, _ := io.ReadAll(content)
			d, _ := layers[0].Digest()

			st := newStorage(t, map[string][]byte{d.String(): blob})
			// Userinfo in Location must not become a Basic header either.
			up.redirectBlobs = strings.Replace(st.URL, "http://", "http://leak:leak@", 1)

			c := newTestClient(t, Config{URL: up.URL, Insecure: true,
				Auth: staticKeychain{authn.AuthConfig{Username: testUser, Password: testPassword}}})

			got, err := c.Blob(context.Background(), "app", d, 1<<20)
			if err != nil || !bytes.Equal(got, blob) {
				t.Fatalf("Blob: %v", err)
			}

			resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, -1,
				http.Header{"Range": {"bytes=2-9"}, "Authorization": {"Bearer client-token"}})
			if err != nil {
				t.Fatal(err)
			}
			part, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, blob[2:10]) {
				t.Errorf("range: status %d, %d bytes", resp.StatusCode, len(part))
			}

			var registryAuth int
			for _, r := range up.all() {
				if strings.Contains(r.Path, "/blobs/") {
					if r.Header.Get("Authorization") == "" {
						t.Errorf("registry blob request without credentials")
					}
					registryAuth++
				}
			}
			if registryAuth == 0 {
				t.Fatal("registry saw no blob request")
			}
			sreqs := st.all()
			if len(sreqs) != 2 {
				t.Fatalf("storage saw %d requests, want 2", len(sreqs))
			}
			for _, r := range sreqs {
				if a := r.Header.Get("Authorization"); a != "" {
					t.Errorf("storage received Authorization %q", a)
				}
			}
			if sreqs[1].Header.Get("Range") != "bytes=2-9" {
				t.Errorf("Range not forwarded to storage: %v", sreqs[1].Header)
			}
		})
	}
}

func TestRedirectsRefused(t *testing.T) {
	t.Parallel()
	d := sha256Hash([]byte("blob"))
	for _, tc := range []struct {
		name     string
		location func(self string) string
	}{
		{"non-http scheme", func(string) string { return "file:///etc/passwd" }},
		{"javascript", func(string) string { return "javascript:alert(1)" }},
		{"loop", func(self string) string { return self + "/v2/app/blobs/" + d.String() }},
		{"no location", func(string) string { return "" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var srv *httptest.Server
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				if loc := tc.location(srv.URL); loc != "" {
					w.Header().Set("Location", loc)
				}
				w.WriteHeader(http.StatusFound)
			}))
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, -1, nil)
			if err == nil {
				resp.Body.Close()
				t.Fatal("redirect followed")
			}
			if !errors.Is(err, ErrInvalidResponse) {
				t.Errorf("err = %v", err)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	blob := []byte("tls blob")
	d := sha256Hash(blob)
	plain := newStorage(t, map[string][]byte{d.String(): blob})
	var downgrade atomic.Bool
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if downgrade.Load() {
			http.Redirect(w, r, plain.URL+"/storage/"+d.String(), http.StatusTemporaryRedirect)
			return
		}
		_, _ = w.Write(blob)
	}))
	t.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	trusted := newTestClient(t, Config{URL: srv.URL, RootCAs: caPEM})
	got, err := trusted.Blob(context.Background(), "app", d, 1<<10)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("with root CA: %v", err)
	}

	untrusted := newTestClient(t, Config{URL: srv.URL})
	_, err = untrusted.Blob(context.Background(), "app", d, 1<<10)
	if err == nil {
		t.Fatal("unknown CA accepted")
	}
	if IsTransient(err) {
		t.Errorf("certificate failure reported transient: %v", err)
	}

	insecure := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	if _, err := insecure.Blob(context.Background(), "app", d, 1<<10); err != nil {
		t.Fatalf("insecure: %v", err)
	}

	downgrade.Store(true)
	fresh := newTestClient(t, Config{URL: srv.URL, RootCAs: caPEM})
	if _, err := fresh.Blob(context.Background(), "app", d, 1<<10); !errors.Is(err, ErrInvalidResponse) {
		t.Fatalf("redirect to plain http: err = %v", err)
	}
	if len(plain.all()) != 0 {
		t.Error("a plain http request was sent for a secure upstream")
	}
}

func TestBlob(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("layer"), 100)
	d := sha256Hash(blob)
	for _, tc := range []struct {
		name    string
		serve   func(w http.ResponseWriter)
		limit   int64
		wantErr error
	}{
		{"ok", func(w http.ResponseWriter) { _, _ = w.Write(blob) }, int64(len(blob)), nil},
		{"other bytes", func(w http.ResponseWriter) { _, _ = w.Write(append([]byte("X"), blob[1:]...)) }, 1 << 20, ErrDigestMismatch},
		{"truncated", func(w http.ResponseWriter) { _, _ = w.Write(blob[:10]) }, 1 << 20, ErrDigestMismatch},
		{"over limit with length", func(w http.ResponseWriter) { _, _ = w.Write(blob) }, int64(len(blob)) - 1, ErrTooLarge},
		{"over limit chunked", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			_, _ = w.Write(blob)
		}, int64(len(blob)) - 1, ErrTooLarge},
		{"missing", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`)
		}, 1 << 20, verify.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				tc.serve(w)
			}))
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			got, err := c.Blob(context.Background(), "app", d, tc.limit)
			if tc.wantErr == nil {
				if err != nil || !bytes.Equal(got, blob) {
					t.Fatalf("Blob: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			// The verifier rejects one piece of evidence, rather than
			// failing the verification, only on its own sentinel.
			if tc.wantErr == ErrTooLarge && !errors.Is(err, verify.ErrTooLarge) {
				t.Fatalf("err = %v does not match verify.ErrTooLarge", err)
			}
			if got != nil {
				t.Error("bytes returned with an error")
			}
		})
	}
}

func TestOpenBlobStreamVerifies(t *testing.T) {
	t.Parallel()
	blob := []byte("streamed content")
	d := sha256Hash(blob)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		_, _ = w.Write([]byte("tampered content"))
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want mismatch at end of stream", err)
	}
}

func TestOpenBlobAgainstRegistry(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authNone)
	img, _, _ := push(t, up.host(), "app", "v1")
	layers, _ := img.Layers()
	rc, _ := layers[0].Compressed()
	blob, _ := io.ReadAll(rc)
	d, _ := layers[0].Digest()
	c := newTestClient(t, Config{URL: up.URL, Insecure: true})

	t.Run("head", func(t *testing.T) {
		resp, err := c.OpenBlob(context.Background(), http.MethodHead, "app", d, -1, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(blob)) {
			t.Errorf("status %d length %d", resp.StatusCode, resp.ContentLength)
		}
	})
	t.Run("range", func(t *testing.T) {
		resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, -1, http.Header{"Range": {"bytes=0-3"}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, blob[:4]) {
			t.Errorf("status %d got %d bytes", resp.StatusCode, len(got))
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := c.OpenBlob(context.Background(), http.MethodGet, "app", sha256Hash([]byte("none")), -1, nil)
		if !errors.Is(err, verify.ErrNotFound) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("write method refused", func(t *testing.T) {
		if _, err := c.OpenBlob(context.Background(), http.MethodDelete, "app", d, -1, nil); err == nil {
			t.Fatal("DELETE accepted")
		}
	})
	t.Run("unsupported algorithm", func(t *testing.T) {
		if _, err := c.OpenBlob(context.Background(), http.MethodGet, "app", v1.Hash{Algorithm: "md5", Hex: strings.Repeat("a", 32)}, -1, nil); err == nil {
			t.Fatal("md5 accepted")
		}
	})
}

func TestGetPassThrough(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authNone)
	push(t, up.host(), "app", "a")
	push(t, up.host(), "app", "b")
	c := newTestClient(t, Config{URL: up.URL, Insecure: true})

	resp, err := c.Get(context.Background(), "app", "tags/list", url.Values{"n": {"1"}},
		http.Header{"Accept": {"application/json"}, "Authorization": {"Bearer client"}, "Cookie": {"c=1"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"a"`) || strings.Contains(string(body), `"b"`) {
		t.Errorf("tags/list?n=1 = %s", body)
	}
	var last seen
	for _, r := range up.all() {
		if strings.HasSuffix(r.Path, "/tags/list") {
			last = r
		}
	}
	if last.Query != "n=1" {
		t.Errorf("query %q not forwarded", last.Query)
	}
	if last.Header.Get("Authorization") != "" || last.Header.Get("Cookie") != "" {
		t.Errorf("client headers forwarded: %v", last.Header)
	}
	if last.Header.Get("Accept") != "application/json" {
		t.Errorf("Accept not forwarded")
	}

	_, err = c.Get(context.Background(), "missing", "tags/list", nil, nil)
	if !errors.Is(err, verify.ErrNotFound) {
		t.Errorf("missing repository: %v", err)
	}

	for _, p := range []string{"../../v2/_catalog", "tags/../list", "tags/list?x=1", "", "/tags/list", "tags//list", "tags/list#f"} {
		if _, err := c.Get(context.Background(), "app", p, nil, nil); err == nil {
			t.Errorf("path %q accepted", p)
		}
	}
	for _, repo := range []string{"", "App", "../x", "a//b", "a/", "a/../b"} {
		if _, err := c.Get(context.Background(), repo, "tags/list", nil, nil); err == nil {
			t.Errorf("repository %q accepted", repo)
		}
	}
}

func TestConcurrentFirstUseSharesOneHandshake(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authBearer)
	_, dig, _ := push(t, up.host(), "app", "v1")
	c := newTestClient(t, Config{Name: "hub", URL: up.URL, Insecure: true,
		Auth: staticKeychain{authn.AuthConfig{Username: testUser, Password: testPassword}}})
	if c.Name() != "hub" {
		t.Errorf("Name() = %q", c.Name())
	}

	const n = 16
	errs := make(chan error, n)
	for range n {
		go func() {
			desc, _, err := c.Resolve(context.Background(), "app", "v1", nil)
			if err == nil && desc.Digest != dig {
				err = errors.New("wrong digest " + desc.Digest.String())
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if pings := up.count(http.MethodGet, "/v2/") - up.count(http.MethodGet, "/v2/app/"); pings != 1 {
		t.Errorf("pings = %d, want 1", pings)
	}
	if tokens := up.count(http.MethodGet, "/token"); tokens != 1 {
		t.Errorf("token requests = %d, want 1", tokens)
	}
}

func TestErrorsOmitRedirectQuery(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, "http://"+dead+"/blob?X-Amz-Signature=presigned-secret", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	_, err = c.OpenBlob(context.Background(), http.MethodGet, "app", sha256Hash(nil), -1, nil)
	if err == nil || !IsTransient(err) {
		t.Fatalf("err = %v, want transient", err)
	}
	if strings.Contains(err.Error(), "presigned-secret") {
		t.Errorf("error leaks the presigned URL: %v", err)
	}
}

func TestRangeNotSatisfiable(t *testing.T) {
	t.Parallel()
	blob := []byte("0123456789")
	d := sha256Hash(blob)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	_, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, -1, http.Header{"Range": {"bytes=100-200"}})
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("err = %v, want 416", err)
	}
	if ue.Header.Get("Content-Range") != "bytes */10" {
		t.Errorf("Content-Range = %q", ue.Header.Get("Content-Range"))
	}
	if IsTransient(err) {
		t.Error("416 is an answer, not a transient failure")
	}
}
