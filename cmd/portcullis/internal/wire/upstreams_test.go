package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/portcullis-oci/portcullis/config"
)

const secretValue = "s3cr3t-value-never-printed"

func envMap(m map[string]string) lookupEnv {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func writeFile(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// cfgWith returns a config read from dir with the given upstreams.
func cfgWith(dir string, ups ...config.Upstream) *config.Config {
	return &config.Config{
		Path:            filepath.Join(dir, "portcullis.yaml"),
		Upstreams:       ups,
		UpstreamTimeout: config.Duration(30 * time.Second),
		// What SetDefaults gives a file that does not set them.
		UpstreamIdleTimeout: config.Duration(config.DefaultUpstreamIdleTimeout),
		MaxConnsPerUpstream: config.DefaultMaxConnsPerUpstream,
	}
}

func authFor(t *testing.T, kc authn.Keychain, registry string) *authn.AuthConfig {
	t.Helper()
	reg, err := name.NewRegistry(registry, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	a, err := kc.Resolve(reg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestUpstreamsFields(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := selfSignedPEM(t)
	// Text around the certificate, as in distribution bundles, is allowed
	// and dropped.
	writeFile(t, dir, "ca.pem", append([]byte("# Issuer: test\n"), ca...))
	cfg := cfgWith(dir,
		config.Upstream{Name: "docker.io", URL: "https://registry-1.docker.io/", Aliases: []string{"index.docker.io"}},
		config.Upstream{Name: "lab", URL: "http://127.0.0.1:5001", Insecure: true, CAFile: "ca.pem", Timeout: config.Duration(5 * time.Second),
			MaxConns: 3, RedirectHosts: []string{"storage.lab"}},
	)
	cfg.Limits.UpstreamHeaderBytes = 32 << 10
	ups, err := upstreams(cfg, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 2 {
		t.Fatalf("got %d upstreams", len(ups))
	}
	hub, lab := ups[0], ups[1]
	if hub.Name != "docker.io" || hub.URL != "https://registry-1.docker.io" || hub.Insecure || hub.RootCAs != nil || hub.Auth != nil {
		t.Errorf("docker.io upstream = %+v", hub)
	}
	if len(hub.Aliases) != 1 || hub.Aliases[0] != "index.docker.io" {
		t.Errorf("aliases = %q", hub.Aliases)
	}
	if hub.Timeout != 30*time.Second {
		t.Errorf("global timeout not used: %v", hub.Timeout)
	}
	if lab.Timeout != 5*time.Second {
		t.Errorf("upstream timeout override not used: %v", lab.Timeout)
	}
	if hub.MaxConns != config.DefaultMaxConnsPerUpstream || lab.MaxConns != 3 {
		t.Errorf("max conns = %d, %d; want the global default and the override", hub.MaxConns, lab.MaxConns)
	}
	if hub.IdleTimeout != config.DefaultUpstreamIdleTimeout || lab.IdleTimeout != config.DefaultUpstreamIdleTimeout {
		t.Errorf("idle timeouts = %v, %v", hub.IdleTimeout, lab.IdleTimeout)
	}
	if hub.MaxHeaderBytes != 32<<10 || lab.MaxHeaderBytes != 32<<10 {
		t.Errorf("header bounds = %d, %d; want limits.upstream_header_bytes", hub.MaxHeaderBytes, lab.MaxHeaderBytes)
	}
	if len(hub.RedirectHosts) != 0 || len(lab.RedirectHosts) != 1 || lab.RedirectHosts[0] != "storage.lab" {
		t.Errorf("redirect hosts = %q, %q", hub.RedirectHosts, lab.RedirectHosts)
	}
	if !lab.Insecure || lab.URL != "http://127.0.0.1:5001" {
		t.Errorf("lab upstream = %+v", lab)
	}
	if string(lab.RootCAs) != string(ca) {
		t.Errorf("RootCAs = %q, want the certificate only", lab.RootCAs)
	}
	// The returned aliases must not share the config's backing array.
	hub.Aliases[0] = "changed"
	if cfg.Upstreams[0].Aliases[0] != "index.docker.io" {
		t.Error("Aliases aliases the config slice")
	}
}

func TestUpstreamsCAFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "empty.pem", nil)
	writeFile(t, dir, "junk.pem", []byte("not a certificate"))
	writeFile(t, dir, "key.pem", append(selfSignedPEM(t), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})...))
	writeFile(t, dir, "badcert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")}))
	writeFile(t, dir, "huge.pem", make([]byte, maxAuxFileBytes+1))
	tests := []struct {
		file, want string
	}{
		{"missing.pem", "no such file"},
		{"empty.pem", "contains no PEM certificate"},
		{"junk.pem", "contains no PEM certificate"},
		{"key.pem", `PEM block 2 is a "EC PRIVATE KEY", not a CERTIFICATE`},
		{"badcert.pem", "PEM block 1"},
		{"huge.pem", "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			_, err := upstreams(cfgWith(dir, config.Upstream{Name: "r", URL: "https://r.example", CAFile: tc.file}), envMap(nil))
			if err == nil {
				t.Fatal("accepted a bad CA file")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "upstreams[0] (r): ca_file:") {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestUpstreamsAuth(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	writeFile(t, dir, "docker.json", fmt.Appendf(nil, `{
  "auths": {
    "https://index.docker.io/v1/": {"auth": %q},
    "r.example": {"username": "bob", "password": %q},
    "https://id.example/v2/": {"identitytoken": %q},
    "raw.example": {"auth": %q},
    "other.example": {"auth": %q}
  },
  "HttpHeaders": {"User-Agent": "x"}
}`, b64("alice:"+secretValue), secretValue, secretValue, base64.RawStdEncoding.EncodeToString([]byte("carol:"+secretValue)), b64("eve:other")))

	tests := []struct {
		name     string
		url      string
		auth     *config.Auth
		env      map[string]string
		want     authn.AuthConfig
		registry string // registry the credential must be given to
	}{
		{"literal username, password from env", "https://r.example", &config.Auth{Username: "u", PasswordEnv: "PW"}, map[string]string{"PW": secretValue},
			authn.AuthConfig{Username: "u", Password: secretValue}, "r.example"},
		{"both from env", "https://r.example:5000", &config.Auth{UsernameEnv: "U", PasswordEnv: "PW"}, map[string]string{"U": "u", "PW": secretValue},
			authn.AuthConfig{Username: "u", Password: secretValue}, "r.example:5000"},
		{"literal password", "https://r.example", &config.Auth{Username: "u", Password: secretValue}, nil,
			authn.AuthConfig{Username: "u", Password: secretValue}, "r.example"},
		{"token", "https://r.example", &config.Auth{TokenEnv: "TOK"}, map[string]string{"TOK": secretValue},
			authn.AuthConfig{RegistryToken: secretValue}, "r.example"},
		{"docker config hub key", "https://registry-1.docker.io", &config.Auth{DockerConfig: "docker.json"}, nil,
			authn.AuthConfig{Username: "alice", Password: secretValue}, "registry-1.docker.io"},
		{"docker config hub alias", "https://registry-1.docker.io", &config.Auth{DockerConfig: "docker.json"}, nil,
			authn.AuthConfig{Username: "alice", Password: secretValue}, "docker.io"},
		{"docker config username/password", "https://r.example", &config.Auth{DockerConfig: "docker.json"}, nil,
			authn.AuthConfig{Username: "bob", Password: secretValue}, "r.example"},
		{"docker config identity token", "https://id.example", &config.Auth{DockerConfig: "docker.json"}, nil,
			authn.AuthConfig{IdentityToken: secretValue}, "id.example"},
		{"docker config unpadded auth", "https://raw.example", &config.Auth{DockerConfig: "docker.json"}, nil,
			authn.AuthConfig{Username: "carol", Password: secretValue}, "raw.example"},
		{"docker config absolute path", "https://r.example", &config.Auth{DockerConfig: filepath.Join(dir, "docker.json")}, nil,
			authn.AuthConfig{Username: "bob", Password: secretValue}, "r.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ups, err := upstreams(cfgWith(dir, config.Upstream{Name: "r", URL: tc.url, Auth: tc.auth}), envMap(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			kc := ups[0].Auth
			if kc == nil {
				t.Fatal("no keychain")
			}
			if got := authFor(t, kc, tc.registry); *got != tc.want {
				t.Errorf("credential for %s = %+v, want %+v", tc.registry, *got, tc.want)
			}
			// Any other host gets nothing: the credential must not leak
			// to a redirect target or another registry.
			for _, other := range []string{"other.example", "evil.example", "r.example.evil.example", "auth.docker.io"} {
				if got := authFor(t, kc, other); *got != (authn.AuthConfig{}) {
					t.Errorf("credential leaked to %s: %+v", other, *got)
				}
			}
			for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
				if s := fmt.Sprintf(format, ups[0]); strings.Contains(s, secretValue) {
					t.Errorf("%s of the upstream prints the secret: %s", format, s)
				}
				reg, err := name.NewRegistry(tc.registry)
				if err != nil {
					t.Fatal(err)
				}
				a, _ := kc.Resolve(reg)
				if s := fmt.Sprintf(format, a); strings.Contains(s, secretValue) {
					t.Errorf("%s of the authenticator prints the secret: %s", format, s)
				}
			}
		})
	}
}

func TestUpstreamsNoAuthIsAnonymous(t *testing.T) {
	t.Parallel()
	ups, err := upstreams(cfgWith(t.TempDir(), config.Upstream{Name: "r", URL: "https://r.example"}), envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if ups[0].Auth != nil {
		t.Errorf("Auth = %v, want nil (anonymous)", ups[0].Auth)
	}
}

func TestUpstreamsAuthErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, dir, "nohost.json", []byte(`{"auths": {"other.example": {"auth": "`+base64.StdEncoding.EncodeToString([]byte("u:"+secretValue))+`"}}}`))
	writeFile(t, dir, "helper.json", []byte(`{"auths": {}, "credsStore": "desktop"}`))
	writeFile(t, dir, "credhelper.json", []byte(`{"credHelpers": {"r.example": "ecr-login"}}`))
	writeFile(t, dir, "badjson.json", []byte(`{"auths": {"r.example": {"auth": "`+secretValue+`" `))
	writeFile(t, dir, "badtype.json", []byte(`{"auths": ["`+secretValue+`"]}`))
	writeFile(t, dir, "badb64.json", []byte(`{"auths": {"r.example": {"auth": "!!`+secretValue+`"}}}`))
	writeFile(t, dir, "nocolon.json", []byte(`{"auths": {"r.example": {"auth": "`+base64.StdEncoding.EncodeToString([]byte(secretValue))+`"}}}`))
	writeFile(t, dir, "empty.json", []byte(`{"auths": {"r.example": {}}}`))
	writeFile(t, dir, "useronly.json", []byte(`{"auths": {"r.example": {"username": "u"}}}`))
	tests := []struct {
		name string
		auth *config.Auth
		env  map[string]string
		want string
	}{
		{"password env unset", &config.Auth{Username: "u", PasswordEnv: "PW"}, nil, "environment variable PW is not set"},
		{"password env empty", &config.Auth{Username: "u", PasswordEnv: "PW"}, map[string]string{"PW": ""}, "environment variable PW is empty"},
		{"username env unset", &config.Auth{UsernameEnv: "U", PasswordEnv: "PW"}, map[string]string{"PW": secretValue}, "environment variable U is not set"},
		{"both env unset", &config.Auth{UsernameEnv: "U", PasswordEnv: "PW"}, nil, "environment variable PW is not set"},
		{"token env unset", &config.Auth{TokenEnv: "TOK"}, nil, "environment variable TOK is not set"},
		{"docker config missing", &config.Auth{DockerConfig: "missing.json"}, nil, "no such file"},
		{"docker config no entry", &config.Auth{DockerConfig: "nohost.json"}, nil, "has no credentials for r.example"},
		{"docker config creds store", &config.Auth{DockerConfig: "helper.json"}, nil, "credential helpers are not supported"},
		{"docker config cred helper", &config.Auth{DockerConfig: "credhelper.json"}, nil, "credential helpers are not supported"},
		{"docker config bad json", &config.Auth{DockerConfig: "badjson.json"}, nil, "is not valid JSON"},
		{"docker config wrong shape", &config.Auth{DockerConfig: "badtype.json"}, nil, "is not a docker config file"},
		{"docker config bad base64", &config.Auth{DockerConfig: "badb64.json"}, nil, `auth field for "r.example" is not base64(username:password)`},
		{"docker config no colon", &config.Auth{DockerConfig: "nocolon.json"}, nil, `auth field for "r.example" is not base64(username:password)`},
		{"docker config empty entry", &config.Auth{DockerConfig: "empty.json"}, nil, "holds no usable credential"},
		{"docker config username only", &config.Auth{DockerConfig: "useronly.json"}, nil, "holds no usable credential"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := upstreams(cfgWith(dir, config.Upstream{Name: "r", URL: "https://r.example", Auth: tc.auth}), envMap(tc.env))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "upstreams[0] (r): auth: ") {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Errorf("error prints the secret: %q", err)
			}
		})
	}
}

func TestUpstreamsReportsEveryUpstream(t *testing.T) {
	t.Parallel()
	cfg := cfgWith(t.TempDir(),
		config.Upstream{Name: "a", URL: "https://a.example", Auth: &config.Auth{TokenEnv: "A_TOKEN"}},
		config.Upstream{Name: "b", URL: "https://b.example"},
		config.Upstream{Name: "c", URL: "https://c.example", CAFile: "nope.pem"},
	)
	_, err := upstreams(cfg, envMap(nil))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{"upstreams[0] (a): auth: environment variable A_TOKEN", "upstreams[2] (c): ca_file:"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestUpstreamsFromEnvironment(t *testing.T) {
	// Not parallel: it sets a process environment variable.
	t.Setenv("PORTCULLIS_TEST_TOKEN", secretValue)
	ups, err := Upstreams(cfgWith(t.TempDir(), config.Upstream{Name: "r", URL: "https://r.example", Auth: &config.Auth{TokenEnv: "PORTCULLIS_TEST_TOKEN"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := authFor(t, ups[0].Auth, "r.example"); got.RegistryToken != secretValue {
		t.Errorf("token not read from the environment: %+v", got)
	}
}

func TestUpstreamsDefaultTimeout(t *testing.T) {
	t.Parallel()
	cfg := cfgWith(t.TempDir(), config.Upstream{Name: "r", URL: "https://r.example"})
	cfg.UpstreamTimeout = 0
	ups, err := upstreams(cfg, envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if ups[0].Timeout != config.DefaultUpstreamTimeout {
		t.Errorf("Timeout = %v, want %v", ups[0].Timeout, config.DefaultUpstreamTimeout)
	}
}
