package nodeverifier

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults of the settings file.
const (
	// DefaultConfigPath is read when neither --config nor ConfigEnv names
	// a file.
	DefaultConfigPath = "/etc/portcullis/node-verifier.yaml"
	// ConfigEnv names the settings file; containerd starts verifiers with
	// its own environment.
	ConfigEnv = "PORTCULLIS_NODE_VERIFIER_CONFIG"
	// DefaultTimeout stays below containerd's default per_verifier_timeout
	// (10s), so that the verifier answers with a reason before containerd
	// kills it.
	DefaultTimeout = 8 * time.Second
	// DefaultMaxResponseBytes bounds the proxy's answer; a verdict answer
	// is well under 8 KiB.
	DefaultMaxResponseBytes = 64 << 10

	maxConfigBytes   = 64 << 10
	maxTokenBytes    = 4 << 10
	maxCABytes       = 1 << 20
	maxTimeout       = 5 * time.Minute
	minResponseBytes = 1 << 10
	maxResponseBytes = 16 << 20
)

// Config is the settings file.
type Config struct {
	// AdminURL is the proxy's admin listener, http(s)://host[:port][/prefix].
	AdminURL string `yaml:"admin_url"`
	// TokenFile holds the admin token (one line). Empty: no token is sent.
	TokenFile string `yaml:"token_file"`
	// CAFile is a PEM bundle the admin listener's certificate must chain
	// to. Empty: the system roots.
	CAFile string `yaml:"ca_file"`
	// Timeout bounds the whole question to the proxy. Default 8s.
	Timeout string `yaml:"timeout"`
	// MaxResponseBytes bounds the answer read. Default 65536.
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
	// FailOpen accepts pulls while the proxy cannot be reached, printing
	// that nothing was verified. Default false: such pulls are rejected.
	FailOpen bool `yaml:"fail_open"`
	// InsecurePlainHTTP allows an http:// admin_url that is not a loopback
	// address: anyone on the path could answer "allow".
	InsecurePlainHTTP bool `yaml:"insecure_plain_http"`

	timeout time.Duration
	base    *url.URL
}

// LoadConfig reads and validates the settings file at path.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", path, err)
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxConfigBytes)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses a settings document strictly: an unknown key, a
// second document or a bad value is an error.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty settings: admin_url is required")
		}
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) validate() error {
	if c.AdminURL == "" {
		return errors.New("admin_url is required")
	}
	u, err := url.Parse(c.AdminURL)
	if err != nil {
		return fmt.Errorf("admin_url: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("admin_url %q: scheme must be http or https", c.AdminURL)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("admin_url %q: no host", c.AdminURL)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return fmt.Errorf("admin_url %q: only scheme, host, port and path are allowed", c.AdminURL)
	}
	if u.Scheme == "http" && !c.InsecurePlainHTTP && !isLoopback(u.Hostname()) {
		return fmt.Errorf("admin_url %q: plain http to a non-loopback address lets anyone on the path answer \"allow\"; use https or set insecure_plain_http: true", c.AdminURL)
	}
	if c.CAFile != "" && u.Scheme != "https" {
		return errors.New("ca_file is only meaningful with an https admin_url")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	c.base = u
	c.timeout = DefaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		if d <= 0 || d > maxTimeout {
			return fmt.Errorf("timeout %v: must be above 0 and at most %v (and below containerd's per_verifier_timeout)", d, maxTimeout)
		}
		c.timeout = d
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if c.MaxResponseBytes < minResponseBytes || c.MaxResponseBytes > maxResponseBytes {
		return fmt.Errorf("max_response_bytes %d: must be between %d and %d", c.MaxResponseBytes, minResponseBytes, maxResponseBytes)
	}
	return nil
}

// TimeoutDuration is the validated timeout.
func (c *Config) TimeoutDuration() time.Duration { return c.timeout }

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readToken reads the admin token: one non-empty line.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token_file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("token_file: %w", err)
	}
	if len(b) > maxTokenBytes {
		return "", fmt.Errorf("token_file %s: larger than %d bytes", path, maxTokenBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, "\r\n\t ") {
		return "", fmt.Errorf("token_file %s: want one token on one line", path)
	}
	return tok, nil
}
