package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"
)

const (
	alicePassword = "correct horse battery staple"
	ciToken       = "pct_0123456789abcdef0123456789abcdef"
)

// testClientAuth builds a ClientAuth with the htpasswd user alice (docker.io
// library/** only) and the token ci (ghcr.io only). bcrypt.MinCost keeps
// the real bcrypt checks fast.
func testClientAuth(t testing.TB, mod func(*ClientAuthConfig)) *ClientAuth {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(alicePassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, err := ParseHtpasswd(strings.NewReader("# users\nalice:" + string(h) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := ParseTokenFile(strings.NewReader("ci:" + HashToken(ciToken) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := ClientAuthConfig{
		Users:         users,
		Tokens:        tokens,
		BcryptMinCost: bcrypt.MinCost,
		Grants: []Grant{
			{Clients: []string{"alice"}, Upstreams: []string{"docker.io"}, Repositories: []string{"library/**"}},
			{Clients: []string{"c?"}, Upstreams: []string{"ghcr.io"}},
		},
	}
	if mod != nil {
		mod(&c)
	}
	a, err := NewClientAuth(c)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func errorCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var env struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || len(env.Errors) != 1 {
		t.Fatalf("body %q is not an error envelope", w.Body.String())
	}
	return env.Errors[0].Code
}

func TestClientAuthRegistry(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "library/busybox", "latest")
	reg.pushImage(t, "acme/app", "latest")
	reg.pushImage(t, "team/tool", "v1")
	p, sp := newTestProxy(t, reg.srv.URL, allowAll(), WithClientAuth(testClientAuth(t, nil)))

	const manifest = "/v2/library/busybox/manifests/latest?ns=docker.io"
	for _, tc := range []struct {
		name, target, auth string
		status             int
		code               string
	}{
		{"base without credentials", "/v2/", "", 401, CodeUnauthorized},
		{"base with password", "/v2/", basicAuth("alice", alicePassword), 200, ""},
		{"manifest without credentials", manifest, "", 401, CodeUnauthorized},
		{"write without credentials", "/v2/library/busybox/blobs/uploads/", "", 401, CodeUnauthorized},
		{"wrong password", manifest, basicAuth("alice", "wrong"), 401, CodeUnauthorized},
		{"unknown user", manifest, basicAuth("mallory", alicePassword), 401, CodeUnauthorized},
		{"password of another user's token", manifest, basicAuth("ci", alicePassword), 401, CodeUnauthorized},
		{"malformed basic", manifest, "Basic !!!", 401, CodeUnauthorized},
		{"unknown scheme", manifest, "Digest x", 401, CodeUnauthorized},
		{"password in grant", manifest, basicAuth("alice", alicePassword), 200, ""},
		{"repository outside grant", "/v2/acme/app/manifests/latest?ns=docker.io", basicAuth("alice", alicePassword), 403, CodeDenied},
		{"absent repository outside grant", "/v2/acme/nothing/manifests/latest?ns=docker.io", basicAuth("alice", alicePassword), 403, CodeDenied},
		{"upstream outside grant", "/v2/team/tool/manifests/v1?ns=ghcr.io", basicAuth("alice", alicePassword), 403, CodeDenied},
		{"tags outside grant", "/v2/acme/app/tags/list?ns=docker.io", basicAuth("alice", alicePassword), 403, CodeDenied},
		{"token as password", "/v2/team/tool/manifests/v1?ns=ghcr.io", basicAuth("ci", ciToken), 200, ""},
		{"token as bearer", "/v2/team/tool/manifests/v1?ns=ghcr.io", "Bearer " + ciToken, 200, ""},
		{"wrong token", "/v2/team/tool/manifests/v1?ns=ghcr.io", basicAuth("ci", ciToken+"x"), 401, CodeUnauthorized},
		{"wrong bearer", "/v2/team/tool/manifests/v1?ns=ghcr.io", "Bearer " + ciToken + "x", 401, CodeUnauthorized},
		{"token outside grant", manifest, "Bearer " + ciToken, 403, CodeDenied},
		{"token is not a user's password", manifest, basicAuth("alice", ciToken), 401, CodeUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			before := sp.count()
			w := do(p, http.MethodGet, tc.target, hdr...)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if tc.code != "" && errorCode(t, w) != tc.code {
				t.Errorf("code %s, want %s", errorCode(t, w), tc.code)
			}
			if tc.status == 401 && w.Header().Get("WWW-Authenticate") != `Basic realm="portcullis"` {
				t.Errorf("WWW-Authenticate = %q", w.Header().Get("WWW-Authenticate"))
			}
			if tc.status >= 400 && sp.count() != before {
				// Refused before any lookup: a 403 says nothing about
				// whether the content exists.
				t.Errorf("a refused request reached the upstream: %v", sp.since(before))
			}
		})
	}
	// The two 403s for an existing and an absent repository are the same bytes.
	a := do(p, http.MethodGet, "/v2/acme/app/manifests/latest?ns=docker.io", "Authorization", basicAuth("alice", alicePassword))
	b := do(p, http.MethodGet, "/v2/acme/nothing/manifests/latest?ns=docker.io", "Authorization", basicAuth("alice", alicePassword))
	if !bytes.Equal(a.Body.Bytes(), b.Body.Bytes()) {
		t.Errorf("403 bodies differ: %q vs %q", a.Body, b.Body)
	}
}

// TestClientAuthRealClient pulls through the proxy with go-containerregistry
// (what crane uses), which answers the Basic challenge with the
// credentials it was given, and as a registry token sent as Bearer.
func TestClientAuthRealClient(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "library/busybox", "latest")
	reg.pushImage(t, "team/tool", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithClientAuth(testClientAuth(t, nil)))
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	pull := func(repo string, auth authn.Authenticator) error {
		ref, err := name.ParseReference(host+"/"+repo, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref, remote.WithAuth(auth))
		if err != nil {
			return err
		}
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			_ = rc.Close()
		}
		return nil
	}
	alice := &authn.Basic{Username: "alice", Password: alicePassword}
	if err := pull("docker.io/library/busybox:latest", alice); err != nil {
		t.Fatalf("pull with password: %v", err)
	}
	if err := pull("ghcr.io/team/tool:v1", authn.FromConfig(authn.AuthConfig{RegistryToken: ciToken})); err != nil {
		t.Fatalf("pull with registry token: %v", err)
	}
	if err := pull("ghcr.io/team/tool:v1", &authn.Basic{Username: "ci", Password: ciToken}); err != nil {
		t.Fatalf("pull with token as password: %v", err)
	}
	for name, tc := range map[string]struct {
		repo   string
		auth   authn.Authenticator
		status int
	}{
		"anonymous":      {"docker.io/library/busybox:latest", authn.Anonymous, 401},
		"wrong password": {"docker.io/library/busybox:latest", &authn.Basic{Username: "alice", Password: "nope"}, 401},
		"outside grant":  {"ghcr.io/team/tool:v1", alice, 403},
	} {
		err := pull(tc.repo, tc.auth)
		var te *transport.Error
		if !errors.As(err, &te) || te.StatusCode != tc.status {
			t.Errorf("%s: %v, want %d", name, err, tc.status)
		}
	}
}

func TestClientAuthAnonymous(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "latest")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithClientAuth(testClientAuth(t, func(c *ClientAuthConfig) { c.Anonymous = true })))
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/latest?ns=docker.io"); w.Code != 200 {
		t.Errorf("anonymous: %d %s", w.Code, w.Body)
	}
	// Credentials that are sent are checked even so.
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/latest?ns=docker.io", "Authorization", basicAuth("alice", "typo")); w.Code != 401 {
		t.Errorf("wrong password with anonymous allowed: %d", w.Code)
	}
	// An authenticated client stays within its grants.
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/latest?ns=docker.io", "Authorization", basicAuth("alice", alicePassword)); w.Code != 403 {
		t.Errorf("alice outside her grant: %d", w.Code)
	}
}

func TestClientAuthCredentialCache(t *testing.T) {
	t.Parallel()
	a := testClientAuth(t, nil)
	if _, ok := a.checkBasic(context.Background(), "alice", alicePassword); !ok {
		t.Fatal("good password refused")
	}
	if a.verified.c.Len() != 1 {
		t.Fatalf("cache holds %d entries after a good password, want 1", a.verified.c.Len())
	}
	// A cached success is for that password only.
	if _, ok := a.checkBasic(context.Background(), "alice", "wrong"); ok {
		t.Fatal("wrong password accepted after a cached success")
	}
	if _, ok := a.checkBasic(context.Background(), "alice", alicePassword); !ok {
		t.Fatal("cached password refused")
	}
	if a.verified.c.Len() != 1 {
		t.Errorf("cache holds %d entries, want 1 (failures are not cached)", a.verified.c.Len())
	}
	// The cache key is not the password or a plain digest of it.
	for _, k := range a.verified.c.Keys() {
		if bytes.Contains(k[:], []byte(alicePassword)) {
			t.Error("password in cache key")
		}
	}
}

func TestParseCredentialFiles(t *testing.T) {
	t.Parallel()
	good, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, htpasswd, want string }{
		{"bcrypt", "u:" + string(good), ""},
		{"2y prefix", "u:$2y" + string(good[3:]), ""},
		{"apr1", "u:$apr1$abcdefgh$0123456789abcdefghijkl", "only bcrypt"},
		{"sha1", "u:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "only bcrypt"},
		{"crypt", "u:abJnggxhB/yWI", "only bcrypt"},
		{"plain", "u:secret", "only bcrypt"},
		{"truncated bcrypt", "u:$2y$10$abc", "malformed"},
		{"no colon", "u", "not user:hash"},
		{"duplicate", "u:" + string(good) + "\nu:" + string(good), "twice"},
	} {
		_, err := ParseHtpasswd(strings.NewReader(tc.htpasswd))
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct{ name, line, want string }{
		{"sha256", "ci:" + HashToken("x"), ""},
		{"sha512", "ci:sha512:" + strings.Repeat("ab", 64), ""},
		{"md5", "ci:md5:" + strings.Repeat("ab", 16), "sha256 or sha512"},
		{"short", "ci:sha256:abcd", "not a sha256 digest"},
		{"plain token", "ci:" + ciToken, "not name:sha256"},
	} {
		_, err := ParseTokenFile(strings.NewReader(tc.line))
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseTokenFile(strings.NewReader(strings.Repeat("#", maxCredentialFileBytes+1))); err == nil {
		t.Error("oversized token file accepted")
	}
	// The limit in short lines, so that it is the file's size that counts
	// and not the scanner's line limit: exactly the limit is read, one
	// byte more is refused.
	exact := strings.Repeat("#\n", maxCredentialFileBytes/2)
	if _, err := ParseTokenFile(strings.NewReader(exact)); err != nil {
		t.Errorf("a token file of exactly %d bytes: %v", maxCredentialFileBytes, err)
	}
	if _, err := ParseTokenFile(strings.NewReader(exact + "#")); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a token file one byte over the limit: %v", err)
	}
	// An error names the line it is on, comments and blank lines counted.
	if _, err := ParseTokenFile(strings.NewReader("# tokens\n\nci:sha256:abcd\n")); err == nil || !strings.Contains(err.Error(), "line 3:") {
		t.Errorf("a bad third line: %v, want it named", err)
	}
}

// The Authorization header is parsed up to 8 KiB: a valid token that
// fills it exactly authenticates; one byte more is refused unread.
func TestAuthorizationHeaderBound(t *testing.T) {
	t.Parallel()
	token := strings.Repeat("t", maxAuthorizationBytes-len("Bearer "))
	tokens, err := ParseTokenFile(strings.NewReader("long:" + HashToken(token) + "\n" + "longer:" + HashToken(token+"t") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewClientAuth(ClientAuthConfig{Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token string
		ok    bool
	}{{token, true}, {token + "t", false}} {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.Header.Set("Authorization", "Bearer "+tc.token)
		if _, ok := a.authenticate(r); ok != tc.ok {
			t.Errorf("a header of %d bytes: authenticated %v, want %v", len("Bearer ")+len(tc.token), ok, tc.ok)
		}
	}
	// The admin API holds its tokens to the same bound.
	reg := newRegistry(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithAdminTokens(tokens))
	h := p.AdminHandler()
	for _, tc := range []struct {
		token  string
		status int
	}{{token, 200}, {token + "t", 401}} {
		r := httptest.NewRequest(http.MethodGet, "/v1/decisions", nil)
		r.Header.Set("Authorization", "Bearer "+tc.token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.status {
			t.Errorf("admin API, a header of %d bytes: %d, want %d", len("Bearer ")+len(tc.token), w.Code, tc.status)
		}
	}
}

func TestNewClientAuthRefuses(t *testing.T) {
	t.Parallel()
	cheap, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	costly, _ := bcrypt.GenerateFromPassword([]byte("pw"), 6)
	for _, tc := range []struct {
		name string
		c    ClientAuthConfig
		want string
	}{
		{"nobody", ClientAuthConfig{}, "no client could pull"},
		{"cost below minimum", ClientAuthConfig{Users: map[string][]byte{"u": cheap}}, "cost 4 is outside 10..14"},
		{"cost above maximum", ClientAuthConfig{Users: map[string][]byte{"u": costly}, BcryptMinCost: 4, BcryptMaxCost: 5}, "cost 6 is outside 4..5"},
		{"not bcrypt", ClientAuthConfig{Users: map[string][]byte{"u": []byte("$apr1$x$y")}}, "not a bcrypt hash"},
		{"user and token", ClientAuthConfig{Users: map[string][]byte{"u": cheap}, BcryptMinCost: 4, Tokens: []TokenHash{{Name: "u", Algorithm: "sha256", Sum: make([]byte, 32)}}}, "both a user and a token"},
		{"require without CA", ClientAuthConfig{Anonymous: true, RequireClientCert: true}, "without a client CA"},
		{"grant naming nobody", ClientAuthConfig{Anonymous: true, Grants: []Grant{{Upstreams: []string{"x"}}}}, "names no client"},
		{"bad glob", ClientAuthConfig{Anonymous: true, Grants: []Grant{{Clients: []string{"["}}}}, "bad pattern"},
		{"bounds crossed", ClientAuthConfig{Users: map[string][]byte{"u": costly}, BcryptMinCost: 7, BcryptMaxCost: 6}, "bcrypt cost bounds 7..6"},
	} {
		if _, err := NewClientAuth(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// One cost allowed, exactly: a deployment pinning its hashes' cost.
	if _, err := NewClientAuth(ClientAuthConfig{Users: map[string][]byte{"u": costly}, BcryptMinCost: 6, BcryptMaxCost: 6}); err != nil {
		t.Errorf("bcrypt cost bounds 6..6 with a cost-6 hash: %v", err)
	}
	// A grant naming clients in several ways names them all.
	for _, g := range []Grant{
		{Clients: []string{"ci"}, Email: []string{"ops@example.com"}},
		{Clients: []string{"ci"}, DNS: []string{"node-*.example.com"}, URI: []string{"spiffe://example.com/*"}, Email: []string{"ops@example.com"}},
	} {
		if _, err := NewClientAuth(ClientAuthConfig{Anonymous: true, Grants: []Grant{g}}); err != nil {
			t.Errorf("grant %+v: %v", g, err)
		}
	}
}

func TestAdminAuth(t *testing.T) {
	t.Parallel()
	const admin = "adm_secret"
	tokens, err := ParseTokenFile(strings.NewReader("ops:" + HashToken(admin)))
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithAdminTokens(tokens))
	h := p.AdminHandler()
	for _, tc := range []struct {
		target, auth string
		status       int
	}{
		{"/healthz", "", 200},
		{"/readyz", "", 200},
		{"/v1/decisions", "", 401},
		{"/metrics", "", 401},
		{"/v1/decisions", "Bearer wrong", 401},
		{"/v1/decisions", basicAuth("ops", admin), 401},
		{"/v1/decisions", "Bearer " + admin, 200},
		{"/metrics", "bearer " + admin, 200},
		{"/nothing", "", 401},
	} {
		var hdr []string
		if tc.auth != "" {
			hdr = []string{"Authorization", tc.auth}
		}
		w := do(h, http.MethodGet, tc.target, hdr...)
		if w.Code != tc.status {
			t.Errorf("%s %q: %d, want %d", tc.target, tc.auth, w.Code, tc.status)
		}
		if w.Code == 401 && !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer ") {
			t.Errorf("%s: no Bearer challenge", tc.target)
		}
	}
}

// TestClientAuthIdentityLogged checks that decisions and request lines
// carry the client identity and that no credential reaches a log.
func TestClientAuthIdentityLogged(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "library/busybox", "latest")
	core, logs := observer.New(zapcore.InfoLevel)
	p, _ := newTestProxy(t, reg.srv.URL, denyAll(verify.ModeEnforce), WithLogger(zap.New(core)), WithClientAuth(testClientAuth(t, nil)))
	if w := do(p, http.MethodGet, "/v2/library/busybox/manifests/latest?ns=docker.io", "Authorization", basicAuth("alice", alicePassword)); w.Code != 403 {
		t.Fatalf("denied manifest: %d", w.Code)
	}
	do(p, http.MethodGet, "/v2/", "Authorization", basicAuth("alice", "a-wrong-password"))
	do(p, http.MethodGet, "/v2/team/tool/manifests/v1?ns=ghcr.io", "Authorization", "Bearer "+ciToken)
	ds := p.decisions.list()
	if len(ds) != 1 || ds[0].Principal != "password:alice" {
		t.Fatalf("decisions %+v, want one by password:alice", ds)
	}
	var principals []string
	for _, e := range logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		for _, secret := range []string{alicePassword, "a-wrong-password", ciToken, base64.StdEncoding.EncodeToString([]byte("alice:" + alicePassword))} {
			if strings.Contains(string(b)+e.Message, secret) {
				t.Errorf("a credential was logged: %s %s", e.Message, b)
			}
		}
		if e.Message == "request" {
			principals = append(principals, e.ContextMap()["principal"].(string))
		}
	}
	if strings.Join(principals, ",") != "password:alice,,token:ci" {
		t.Errorf("request lines name %q", principals)
	}
}

// testPKI is a CA with the server and client certificates it issues.
type testPKI struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
	serial int64
}

func newTestPKI(t testing.TB, cn string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &testPKI{ca: ca, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), serial: 1}
}

func (k *testPKI) issue(t testing.TB, usage x509.ExtKeyUsage, dns []string, uris ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(k.serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: dns,
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.ca, &key.PublicKey, k.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writeCertPair(t testing.TB, dir string, c tls.Certificate) (string, string) {
	t.Helper()
	kb, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestClientAuthMTLS serves over a real TLS listener that verifies client
// certificates against a client CA and names clients by their SANs.
func TestClientAuthMTLS(t *testing.T) {
	t.Parallel()
	serverPKI, clientPKI, otherPKI := newTestPKI(t, "server CA"), newTestPKI(t, "client CA"), newTestPKI(t, "other CA")
	cert, key := writeCertPair(t, t.TempDir(), serverPKI.issue(t, x509.ExtKeyUsageServerAuth, []string{"localhost"}))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(clientPKI.caPEM)
	reg := newRegistry(t)
	reg.pushImage(t, "library/busybox", "latest")
	reg.pushImage(t, "acme/app", "latest")
	reg.pushImage(t, "library/deep/img", "latest")

	newServer := func(require bool) string {
		a := testClientAuth(t, func(c *ClientAuthConfig) {
			c.ClientCAs, c.RequireClientCert = pool, require
			c.Grants = append(c.Grants, Grant{DNS: []string{"*.ci.example.com"}, URI: []string{"spiffe://example.com/ci/*"}, Repositories: []string{"library/*"}})
		})
		p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithClientAuth(a))
		return startServe(t, p, ServeConfig{TLSCert: cert, TLSKey: key})
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(serverPKI.caPEM)
	get := func(addr, path string, certs ...tls.Certificate) (int, error) {
		tc := &tls.Config{RootCAs: roots}
		if len(certs) > 0 {
			// Sent whatever CAs the server names, as a client would
			// that was handed the wrong certificate.
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + addr + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	addr := newServer(false)
	const manifest = "/v2/library/busybox/manifests/latest?ns=docker.io"
	for _, tc := range []struct {
		name   string
		path   string
		certs  []tls.Certificate
		status int
	}{
		{"dns san", manifest, []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"build1.ci.example.com"})}, 200},
		{"uri san", manifest, []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, nil, "spiffe://example.com/ci/runner")}, 200},
		{"no certificate", manifest, nil, 401},
		{"san no grant names", manifest, []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"build1.dev.example.com"})}, 401},
		{"wildcard is one label", manifest, []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"a.b.ci.example.com"})}, 401},
		{"uri wildcard is one segment", manifest, []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, nil, "spiffe://example.com/ci/a/b")}, 401},
		{"repository outside grant", "/v2/acme/app/manifests/latest?ns=docker.io", []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"build1.ci.example.com"})}, 403},
		// alice's grant (library/**) names no certificate: it gives a
		// certificate client nothing beyond its own grant (library/*).
		{"another grant's repository", "/v2/library/deep/img/manifests/latest?ns=docker.io", []tls.Certificate{clientPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"build1.ci.example.com"})}, 403},
	} {
		status, err := get(addr, tc.path, tc.certs...)
		if err != nil || status != tc.status {
			t.Errorf("%s: %d %v, want %d", tc.name, status, err, tc.status)
		}
	}
	// A certificate from a CA the proxy does not trust fails the handshake.
	if _, err := get(addr, manifest, otherPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"build1.ci.example.com"})); err == nil {
		t.Error("certificate of an untrusted CA accepted")
	}

	required := newServer(true)
	if _, err := get(required, "/v2/"); err == nil {
		t.Error("handshake without a certificate accepted where one is required")
	}
	if status, err := get(required, manifest, clientPKI.issue(t, x509.ExtKeyUsageClientAuth, []string{"build1.ci.example.com"})); err != nil || status != 200 {
		t.Errorf("required certificate: %d %v", status, err)
	}
}

func TestServeRefusesClientCertsWithoutTLS(t *testing.T) {
	t.Parallel()
	pool := x509.NewCertPool()
	a := testClientAuth(t, func(c *ClientAuthConfig) {
		c.ClientCAs = pool
		c.Grants = append(c.Grants, Grant{DNS: []string{"*.example.com"}})
	})
	reg := newRegistry(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithClientAuth(a))
	err := Serve(context.Background(), p, ServeConfig{Addr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "need TLS") {
		t.Fatalf("Serve = %v, want refused", err)
	}
}

func FuzzParseHtpasswd(f *testing.F) {
	f.Add("alice:$2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n# c\n")
	f.Add("u:$apr1$x$y")
	f.Add("u:{SHA}abc=")
	f.Fuzz(func(t *testing.T, s string) {
		users, err := ParseHtpasswd(strings.NewReader(s))
		if err != nil {
			return
		}
		for u, h := range users {
			if _, err := bcrypt.Cost(h); err != nil || u == "" {
				t.Fatalf("accepted %q:%q", u, h)
			}
		}
	})
}

func FuzzParseTokenFile(f *testing.F) {
	f.Add("ci:" + HashToken("x") + "\n")
	f.Add("ci:sha512:" + strings.Repeat("0", 128))
	f.Add("ci:md5:00")
	f.Fuzz(func(t *testing.T, s string) {
		tokens, err := ParseTokenFile(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, tk := range tokens {
			if h := newTokenHash(tk.Algorithm); h == nil || len(tk.Sum) != h.Size() || tk.Name == "" {
				t.Fatalf("accepted %+v", tk)
			}
		}
	})
}

// FuzzClientAuthHeader: no Authorization header authenticates unless it
// carries alice's password or the ci token.
func FuzzClientAuthHeader(f *testing.F) {
	a := testClientAuth(f, nil)
	for _, s := range []string{basicAuth("alice", alicePassword), basicAuth("alice", "x"), "Bearer " + ciToken, "Basic", "Bearer", "basic Og==", basicAuth("ci", ciToken)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, hdr string) {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		r.Header.Set("Authorization", hdr)
		p, ok := a.authenticate(r)
		if !ok {
			return
		}
		if !strings.Contains(hdr, ciToken) {
			if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(hdr[strings.IndexByte(hdr, ' ')+1:])); err != nil ||
				!strings.Contains(string(raw), alicePassword) && !strings.Contains(string(raw), ciToken) {
				t.Fatalf("%q authenticated as %s", hdr, p)
			}
		}
	})
}

// TestPasswordCheckSlots: a bcrypt comparison waits for a slot; a client
// that leaves while waiting is not authenticated, and a cached success
// needs no slot.
func TestPasswordCheckSlots(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	uncached := testClientAuth(t, func(c *ClientAuthConfig) { c.PasswordChecks, c.CredentialCacheTTL = 1, -1 })
	if _, ok := uncached.checkBasic(context.Background(), "alice", alicePassword); !ok {
		t.Fatal("good password refused")
	}
	uncached.checks <- struct{}{} // every slot taken
	if _, ok := uncached.checkBasic(ctx, "alice", alicePassword); ok {
		t.Error("password checked without a slot")
	}

	cached := testClientAuth(t, func(c *ClientAuthConfig) { c.PasswordChecks = 1 })
	if _, ok := cached.checkBasic(context.Background(), "alice", alicePassword); !ok {
		t.Fatal("good password refused")
	}
	cached.checks <- struct{}{}
	if _, ok := cached.checkBasic(ctx, "alice", alicePassword); !ok {
		t.Error("cached password waited for a slot")
	}
}

// TestSetClientAuthRefusesShapeChanges: turning authentication on or off
// cannot happen live; the set in force stays.
func TestSetClientAuthRefusesShapeChanges(t *testing.T) {
	t.Parallel()
	a, err := NewClientAuth(ClientAuthConfig{Anonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	open, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll())
	if err := open.SetClientAuth(a, nil); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("turning client auth on live: %v, want ErrRestartRequired", err)
	}
	if open.clientAuth.Load() != nil {
		t.Error("client auth was turned on anyway")
	}
	guarded, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll(), WithClientAuth(a))
	if err := guarded.SetClientAuth(nil, nil); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("turning client auth off live: %v, want ErrRestartRequired", err)
	}
	if err := guarded.SetClientAuth(a, []TokenHash{{}}); !errors.Is(err, ErrRestartRequired) {
		t.Errorf("turning admin auth on live: %v, want ErrRestartRequired", err)
	}
	b, _ := NewClientAuth(ClientAuthConfig{Anonymous: true})
	if err := guarded.SetClientAuth(b, nil); err != nil || guarded.clientAuth.Load() != b {
		t.Errorf("replacing the credentials: %v", err)
	}
}
