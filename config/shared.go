package config

import (
	"net"
	"strings"
	"time"
)

// Defaults of the shared section.
const (
	// DefaultSharedKeyPrefix starts every key the proxies write, so one
	// Redis can hold several deployments (give each its own prefix).
	DefaultSharedKeyPrefix = "portcullis:"
	// DefaultSharedTimeout bounds one Redis call: a shared lookup must cost
	// far less than verifying again.
	DefaultSharedTimeout = 200 * time.Millisecond
	// DefaultSharedMaxValueBytes bounds one value read from or written to
	// Redis; a larger verdict (a long lineage) stays local.
	DefaultSharedMaxValueBytes ByteSize = 16 << 10
)

// Shared, when Redis is set, shares decision state between replicas
// through Redis. Absent: each replica keeps its own, as a single replica
// does.
type Shared struct {
	Redis *SharedRedis `yaml:"redis"`
}

// SharedRedis says how to reach Redis. Redis must be private to the
// proxies: whoever can write to it can plant an allow.
type SharedRedis struct {
	// Addr is host:port. Required.
	Addr string `yaml:"addr"`
	// Username and PasswordEnv are ACL credentials; the password is read
	// from the named environment variable.
	Username    string `yaml:"username"`
	PasswordEnv string `yaml:"password_env"`
	// TLS encrypts the connection and authenticates the server against
	// CAFile (relative to this file), or the system roots when empty.
	TLS        bool   `yaml:"tls"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
	// DB is the database number (default 0).
	DB int `yaml:"db"`
	// KeyPrefix starts every key (default "portcullis:").
	KeyPrefix string `yaml:"key_prefix"`
	// Timeout bounds each call (default 200ms).
	Timeout Duration `yaml:"timeout"`
	// MaxValueBytes bounds each value (default 16KiB).
	MaxValueBytes ByteSize `yaml:"max_value_bytes"`
}

func (s *Shared) applyDefaults() {
	if s.Redis == nil {
		return
	}
	r := s.Redis
	if r.KeyPrefix == "" {
		r.KeyPrefix = DefaultSharedKeyPrefix
	}
	if r.Timeout == 0 {
		r.Timeout = Duration(DefaultSharedTimeout)
	}
	if r.MaxValueBytes == 0 {
		r.MaxValueBytes = DefaultSharedMaxValueBytes
	}
}

func (s *Shared) validate(r *reporter) {
	rd := s.Redis
	if rd == nil {
		return
	}
	if host, port, err := net.SplitHostPort(rd.Addr); err != nil || host == "" || port == "" {
		r.addf("shared.redis.addr", "%q must be host:port", rd.Addr)
	}
	if rd.PasswordEnv != "" && !envNameRE.MatchString(rd.PasswordEnv) {
		r.addf("shared.redis.password_env", "%q is not an environment variable name", rd.PasswordEnv)
	}
	if !rd.TLS && (rd.CAFile != "" || rd.ServerName != "") {
		r.addf("shared.redis.tls", "ca_file and server_name need tls: true")
	}
	if rd.DB < 0 {
		r.addf("shared.redis.db", "must not be negative")
	}
	if strings.ContainsAny(rd.KeyPrefix, " \t\r\n*?[]\\") || len(rd.KeyPrefix) > 128 {
		r.addf("shared.redis.key_prefix", "%q must be at most 128 bytes without spaces or glob characters (* ? [ ] \\)", rd.KeyPrefix)
	}
	if rd.Timeout <= 0 || rd.Timeout.D() > 10*time.Second {
		r.addf("shared.redis.timeout", "must be positive and at most 10s, not %v", rd.Timeout)
	}
	if rd.MaxValueBytes < 1<<10 || rd.MaxValueBytes > 1<<20 {
		r.addf("shared.redis.max_value_bytes", "must be from 1KiB to 1MiB, not %d bytes", int64(rd.MaxValueBytes))
	}
}
