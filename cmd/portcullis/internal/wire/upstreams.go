package wire

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// maxAuxFileBytes bounds the CA bundles and docker config files read at
// start; both are small, and a larger file is a mistake.
const maxAuxFileBytes = 1 << 20

// Upstreams translates the configured upstreams into proxy.Upstream values.
// It reads CA bundles, docker config files and the environment variables
// that hold credentials, so every missing secret is found at start rather
// than on the first pull. cfg must have been validated by config.Parse or
// config.Load. Errors never contain credential values.
func Upstreams(cfg *config.Config) ([]proxy.Upstream, error) {
	return upstreams(cfg, os.LookupEnv)
}

type lookupEnv func(string) (string, bool)

func upstreams(cfg *config.Config, env lookupEnv) ([]proxy.Upstream, error) {
	out := make([]proxy.Upstream, 0, len(cfg.Upstreams))
	var errs []error
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		pu, err := upstream(cfg, u, env)
		if err != nil {
			errs = append(errs, fmt.Errorf("upstreams[%d] (%s): %w", i, u.Name, err))
			continue
		}
		out = append(out, pu)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func upstream(cfg *config.Config, u *config.Upstream, env lookupEnv) (proxy.Upstream, error) {
	parsed, err := url.Parse(u.URL)
	if err != nil || parsed.Host == "" {
		return proxy.Upstream{}, fmt.Errorf("url %q is not scheme://host[:port]", u.URL)
	}
	pu := proxy.Upstream{
		Name:     u.Name,
		URL:      parsed.Scheme + "://" + parsed.Host,
		Aliases:  slices.Clone(u.Aliases),
		Insecure: u.Insecure,
		Timeout:  u.Timeout.D(),
		// An unset value reaches the client as 0, its own default.
		IdleTimeout:    cfg.UpstreamIdleTimeout.D(),
		MaxConns:       cfg.MaxConnsPerUpstream,
		MaxHeaderBytes: cfg.Limits.UpstreamHeaderBytes.Int64(),
		RedirectHosts:  slices.Clone(u.RedirectHosts),
	}
	if u.MaxConns > 0 {
		pu.MaxConns = u.MaxConns
	}
	if pu.Timeout <= 0 {
		pu.Timeout = cfg.UpstreamTimeout.D()
	}
	if pu.Timeout <= 0 {
		pu.Timeout = config.DefaultUpstreamTimeout
	}
	if u.CAFile != "" {
		if pu.RootCAs, err = readCABundle(cfg.Resolve(u.CAFile)); err != nil {
			return proxy.Upstream{}, fmt.Errorf("ca_file: %w", err)
		}
	}
	if u.Auth != nil {
		if pu.Auth, err = keychain(cfg, u.Auth, registryHosts(parsed.Host), env); err != nil {
			return proxy.Upstream{}, fmt.Errorf("auth: %w", err)
		}
	}
	return pu, nil
}

// readFile reads a whole file of at most maxAuxFileBytes.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAuxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxAuxFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxAuxFileBytes)
	}
	return b, nil
}

// readCABundle returns the certificates of a PEM file, re-encoded, so that
// what the transport trusts is exactly what was checked here. Any PEM block
// other than a parseable certificate is refused: a private key in a CA
// bundle is a mistake worth stopping for.
func readCABundle(path string) ([]byte, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	var out []byte
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		n++
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %d is a %q, not a CERTIFICATE", path, n, block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: %w", path, n, err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})...)
	}
	if n == 0 {
		return nil, fmt.Errorf("%s contains no PEM certificate", path)
	}
	return out, nil
}

// dockerHubHosts are the names under which Docker Hub's registry is known;
// a credential for one of them is a credential for all.
var dockerHubHosts = []string{"registry-1.docker.io", "index.docker.io", "docker.io"}

// registryHosts lists the registry host names a credential for the
// upstream at host may be presented to.
func registryHosts(host string) []string {
	host = strings.ToLower(host)
	if slices.Contains(dockerHubHosts, host) {
		hosts := []string{host}
		for _, h := range dockerHubHosts {
			if h != host {
				hosts = append(hosts, h)
			}
		}
		return hosts
	}
	return []string{host}
}

func keychain(cfg *config.Config, a *config.Auth, hosts []string, env lookupEnv) (authn.Keychain, error) {
	var (
		cred   authn.AuthConfig
		source string
		err    error
	)
	switch {
	case a.DockerConfig != "":
		path := cfg.Resolve(a.DockerConfig)
		source = "docker config " + path
		cred, err = dockerConfigCredential(path, hosts)
	case a.TokenEnv != "":
		source = "registry token from $" + a.TokenEnv
		cred.RegistryToken, err = fromEnv(env, a.TokenEnv)
	default:
		source = "basic auth"
		cred.Username, cred.Password, err = basicCredential(a, env)
	}
	if err != nil {
		return nil, err
	}
	return &hostKeychain{hosts: hosts, auth: &secret{cred: cred}, source: source}, nil
}

func basicCredential(a *config.Auth, env lookupEnv) (user, pass string, err error) {
	user, pass = a.Username, a.Password
	var errs []error
	if a.UsernameEnv != "" {
		user, err = fromEnv(env, a.UsernameEnv)
		errs = append(errs, err)
	}
	if a.PasswordEnv != "" {
		pass, err = fromEnv(env, a.PasswordEnv)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return "", "", err
	}
	if user == "" || pass == "" {
		return "", "", errors.New("basic auth needs both a username and a password")
	}
	return user, pass, nil
}

// fromEnv reads a secret from the environment. The error names the
// variable and never its value.
func fromEnv(env lookupEnv, name string) (string, error) {
	v, ok := env(name)
	if !ok {
		return "", fmt.Errorf("environment variable %s is not set", name)
	}
	if v == "" {
		return "", fmt.Errorf("environment variable %s is empty", name)
	}
	return v, nil
}

// dockerConfigFile is the part of a docker config.json the proxy reads.
type dockerConfigFile struct {
	Auths       map[string]dockerAuthEntry `json:"auths"`
	CredsStore  string                     `json:"credsStore"`
	CredHelpers map[string]string          `json:"credHelpers"`
}

type dockerAuthEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// dockerConfigCredential finds the credential for one of hosts in the
// "auths" map of a docker config.json. Only inline credentials are used:
// running credential helper programs from a proxy is out of scope, so a
// host that relies on one is an error rather than anonymous access.
func dockerConfigCredential(path string, hosts []string) (authn.AuthConfig, error) {
	data, err := readFile(path)
	if err != nil {
		return authn.AuthConfig{}, err
	}
	var f dockerConfigFile
	if err := json.Unmarshal(data, &f); err != nil {
		// json errors may quote the input; report only where it broke.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return authn.AuthConfig{}, fmt.Errorf("%s is not valid JSON (at byte %d)", path, se.Offset)
		}
		return authn.AuthConfig{}, fmt.Errorf("%s is not a docker config file", path)
	}
	keys := make([]string, 0, len(f.Auths))
	for k := range f.Auths {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, h := range hosts {
		for _, k := range keys {
			if dockerConfigHost(k) == h {
				return dockerEntryCredential(path, k, f.Auths[k])
			}
		}
	}
	for _, h := range hosts {
		if _, ok := f.CredHelpers[h]; ok || f.CredsStore != "" {
			return authn.AuthConfig{}, fmt.Errorf("%s has no inline credentials for %s (credential helpers are not supported; use password_env or token_env)", path, hosts[0])
		}
	}
	return authn.AuthConfig{}, fmt.Errorf("%s has no credentials for %s", path, hosts[0])
}

// dockerConfigHost reduces an "auths" key to a host name the way docker
// does: keys may be "host", "https://host" or "https://host/v1/".
func dockerConfigHost(key string) string {
	h := strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	h, _, _ = strings.Cut(h, "/")
	return strings.ToLower(h)
}

func dockerEntryCredential(path, key string, e dockerAuthEntry) (authn.AuthConfig, error) {
	c := authn.AuthConfig{
		Username:      e.Username,
		Password:      e.Password,
		IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken,
	}
	if e.Auth != "" {
		raw := strings.TrimSpace(e.Auth)
		enc := base64.RawStdEncoding
		if strings.HasSuffix(raw, "=") {
			enc = base64.StdEncoding
		}
		dec, err := enc.DecodeString(raw)
		user, pass, ok := strings.Cut(string(dec), ":")
		if err != nil || !ok || user == "" {
			return authn.AuthConfig{}, fmt.Errorf("%s: the auth field for %q is not base64(username:password)", path, key)
		}
		c.Username, c.Password = user, pass
	}
	if c == (authn.AuthConfig{}) || (c.Username != "" && c.Password == "" && c.IdentityToken == "") {
		return authn.AuthConfig{}, fmt.Errorf("%s: the entry for %q holds no usable credential", path, key)
	}
	return c, nil
}

// hostKeychain answers with its credential only for the upstream's own
// registry host, so the credential cannot be presented to any other host
// (a redirect target, another upstream) even if a caller asks for it.
type hostKeychain struct {
	hosts  []string
	auth   authn.Authenticator
	source string
}

var _ authn.Keychain = (*hostKeychain)(nil)

func (k *hostKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if slices.Contains(k.hosts, strings.ToLower(r.RegistryStr())) {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}

// String describes where the credential came from, never what it is.
func (k *hostKeychain) String() string {
	return fmt.Sprintf("%s for %s", k.source, strings.Join(k.hosts, ", "))
}

// GoString keeps %#v from printing the credential.
func (k *hostKeychain) GoString() string { return "wire.hostKeychain(" + k.String() + ")" }

// secret is an authn.Authenticator whose formatting hides the credential.
type secret struct {
	cred authn.AuthConfig
}

func (s *secret) Authorization() (*authn.AuthConfig, error) {
	c := s.cred // a copy: callers must not be able to alter the stored credential
	return &c, nil
}

func (s *secret) String() string   { return "[redacted credential]" }
func (s *secret) GoString() string { return "[redacted credential]" }
