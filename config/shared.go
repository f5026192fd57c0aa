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
	// Addr is host:port of one Redis server. Exactly one of Addr,
	// Sentinel and Cluster is required.
	Addr string `yaml:"addr"`
	// Sentinel finds the master through Redis Sentinel.
	Sentinel *SharedSentinel `yaml:"sentinel"`
	// Cluster reaches a Redis Cluster.
	Cluster *SharedCluster `yaml:"cluster"`
	// Username and PasswordEnv are ACL credentials of the servers holding
	// the data (the server, the master, every cluster node); the password
	// is read from the named environment variable.
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

// SharedSentinel names the master and the Sentinels that find it. Reads
// and writes go to the master; replicas are never read.
type SharedSentinel struct {
	// Master is the master's name in the Sentinels' configuration.
	Master string `yaml:"master"`
	// Addrs are the Sentinels, host:port.
	Addrs []string `yaml:"addrs"`
	// Username and PasswordEnv authenticate to the Sentinels, when they
	// require it (Sentinel's own requirepass or ACL, apart from the
	// master's).
	Username    string `yaml:"username"`
	PasswordEnv string `yaml:"password_env"`
}

// SharedCluster lists seed nodes of a Redis Cluster; the client learns
// the others from them.
type SharedCluster struct {
	Addrs []string `yaml:"addrs"`
}

// maxSharedAddrs bounds the addresses of a sentinel or cluster list.
const maxSharedAddrs = 64

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
	modes := 0
	for _, set := range []bool{rd.Addr != "", rd.Sentinel != nil, rd.Cluster != nil} {
		if set {
			modes++
		}
	}
	switch {
	case modes == 0:
		r.addf("shared.redis.addr", "required, or instead sentinel or cluster")
	case modes > 1:
		r.addf("shared.redis", "addr (one server), sentinel and cluster exclude each other: set exactly one")
	case rd.Addr != "":
		if !hostPort(rd.Addr) {
			r.addf("shared.redis.addr", "%q must be host:port", rd.Addr)
		}
	case rd.Sentinel != nil:
		sn := rd.Sentinel
		if sn.Master == "" || len(sn.Master) > 256 || strings.ContainsAny(sn.Master, " \t\r\n") {
			r.addf("shared.redis.sentinel.master", "%q must be the master's name: 1 to 256 bytes without spaces", sn.Master)
		}
		checkAddrs(r, "shared.redis.sentinel.addrs", sn.Addrs)
		if sn.PasswordEnv != "" && !envNameRE.MatchString(sn.PasswordEnv) {
			r.addf("shared.redis.sentinel.password_env", "%q is not an environment variable name", sn.PasswordEnv)
		}
	case rd.Cluster != nil:
		checkAddrs(r, "shared.redis.cluster.addrs", rd.Cluster.Addrs)
		if rd.DB != 0 {
			r.addf("shared.redis.db", "a redis cluster has only database 0")
		}
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

func hostPort(a string) bool {
	host, port, err := net.SplitHostPort(a)
	return err == nil && host != "" && port != ""
}

func checkAddrs(r *reporter, path string, addrs []string) {
	if len(addrs) == 0 || len(addrs) > maxSharedAddrs {
		r.addf(path, "1 to %d host:port addresses are required, not %d", maxSharedAddrs, len(addrs))
		return
	}
	seen := map[string]bool{}
	for i, a := range addrs {
		switch {
		case !hostPort(a):
			r.addf(indexPath(path, i), "%q must be host:port", a)
		case seen[a]:
			r.addf(indexPath(path, i), "%q is listed twice", a)
		}
		seen[a] = true
	}
}
