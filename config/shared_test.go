package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSharedConfig(t *testing.T) {
	t.Parallel()
	base := string(Example) + "\n"
	c, err := Parse(Example, "example.yaml")
	if err != nil || c.Shared.Redis != nil {
		t.Fatalf("without the section: %+v, %v", c.Shared.Redis, err)
	}
	c, err = Parse([]byte(base+"shared: {redis: {addr: 'redis:6379'}}\n"), "shared.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Shared.Redis
	if r == nil || r.KeyPrefix != "portcullis:" || r.Timeout.D() != 200*time.Millisecond || r.MaxValueBytes != 16<<10 ||
		r.DB != 0 || r.TLS || r.Username != "" || r.PasswordEnv != "" {
		t.Fatalf("defaults = %+v", r)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "redis-ca.pem"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	full := base + `shared:
  redis:
    addr: 10.0.0.5:6380
    username: proxy
    password_env: REDIS_PASSWORD
    tls: true
    ca_file: redis-ca.pem
    server_name: redis.internal
    db: 3
    key_prefix: "eu:"
    timeout: 50ms
    max_value_bytes: 4KiB
`
	c, err = Parse([]byte(full), filepath.Join(dir, "shared.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := SharedRedis{Addr: "10.0.0.5:6380", Username: "proxy", PasswordEnv: "REDIS_PASSWORD", TLS: true, CAFile: "redis-ca.pem",
		ServerName: "redis.internal", DB: 3, KeyPrefix: "eu:", Timeout: Duration(50 * time.Millisecond), MaxValueBytes: 4 << 10}
	if *c.Shared.Redis != want {
		t.Fatalf("parsed = %+v", *c.Shared.Redis)
	}

	c.Path = filepath.Join(dir, "shared.yaml")
	if err := c.CheckFiles(); err != nil && strings.Contains(err.Error(), "shared.redis.ca_file") {
		t.Errorf("CheckFiles: %v", err)
	}
	c.Shared.Redis.CAFile = "missing.pem"
	if err := c.CheckFiles(); err == nil || !strings.Contains(err.Error(), "shared.redis.ca_file") {
		t.Errorf("missing ca_file: CheckFiles = %v", err)
	}

	// The commented example, uncommented, is a valid section.
	var block []string
	in := false
	for _, l := range strings.Split(string(Example), "\n") {
		switch {
		case l == "# shared:":
			in = true
		case in && !strings.HasPrefix(l, "#   "):
			in = false
		}
		if in {
			block = append(block, strings.TrimPrefix(l, "# "))
		}
	}
	if len(block) < 3 {
		t.Fatal("example.yaml has no commented shared section")
	}
	if _, err := Parse([]byte(base+strings.Join(block, "\n")+"\n"), "example-shared.yaml"); err != nil {
		t.Errorf("the example's shared section: %v", err)
	}

	for name, tc := range map[string]struct{ yaml, want string }{
		"no addr":           {"shared: {redis: {db: 1}}", "shared.redis.addr"},
		"no port":           {"shared: {redis: {addr: redis}}", "must be host:port"},
		"no host":           {"shared: {redis: {addr: ':6379'}}", "must be host:port"},
		"bad env":           {"shared: {redis: {addr: 'r:1', password_env: 'A-B'}}", "shared.redis.password_env"},
		"ca without tls":    {"shared: {redis: {addr: 'r:1', ca_file: ca.pem}}", "need tls: true"},
		"name without tls":  {"shared: {redis: {addr: 'r:1', server_name: r}}", "need tls: true"},
		"negative db":       {"shared: {redis: {addr: 'r:1', db: -1}}", "shared.redis.db"},
		"glob prefix":       {"shared: {redis: {addr: 'r:1', key_prefix: 'a*'}}", "shared.redis.key_prefix"},
		"negative timeout":  {"shared: {redis: {addr: 'r:1', timeout: -1s}}", "shared.redis.timeout"},
		"long timeout":      {"shared: {redis: {addr: 'r:1', timeout: 1m}}", "shared.redis.timeout"},
		"tiny values":       {"shared: {redis: {addr: 'r:1', max_value_bytes: 100}}", "shared.redis.max_value_bytes"},
		"huge values":       {"shared: {redis: {addr: 'r:1', max_value_bytes: 2MiB}}", "shared.redis.max_value_bytes"},
		"password in file":  {"shared: {redis: {addr: 'r:1', password: secret}}", "password"},
		"unknown key":       {"shared: {redis: {addr: 'r:1', cluster: true}}", "cluster"},
		"unknown backend":   {"shared: {memcached: {addr: 'r:1'}}", "memcached"},
		"tls as string":     {"shared: {redis: {addr: 'r:1', tls: 'yes please'}}", "tls"},
		"addr as a mapping": {"shared: {redis: {addr: {host: r}}}", "addr"},
	} {
		_, err := Parse([]byte(base+tc.yaml+"\n"), "shared.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
}

func TestSharedRedisModes(t *testing.T) {
	t.Parallel()
	base := string(Example) + "\n"
	c, err := Parse([]byte(base+`shared:
  redis:
    sentinel:
      master: portcullis
      addrs: ["s1:26379", "s2:26379", "[::1]:26379"]
      username: watcher
      password_env: SENTINEL_PASSWORD
    username: proxy
    password_env: REDIS_PASSWORD
    db: 2
`), "sentinel.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Shared.Redis
	want := SharedSentinel{Master: "portcullis", Addrs: []string{"s1:26379", "s2:26379", "[::1]:26379"}, Username: "watcher", PasswordEnv: "SENTINEL_PASSWORD"}
	if r.Addr != "" || r.Cluster != nil || r.Sentinel == nil || r.Sentinel.Master != want.Master ||
		strings.Join(r.Sentinel.Addrs, ",") != strings.Join(want.Addrs, ",") || r.Sentinel.Username != want.Username ||
		r.Sentinel.PasswordEnv != want.PasswordEnv || r.DB != 2 || r.KeyPrefix != DefaultSharedKeyPrefix {
		t.Fatalf("sentinel parsed = %+v / %+v", r, r.Sentinel)
	}

	c, err = Parse([]byte(base+"shared: {redis: {cluster: {addrs: ['n1:7000', 'n2:7000']}, tls: true}}\n"), "cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r = c.Shared.Redis
	if r.Addr != "" || r.Sentinel != nil || r.Cluster == nil || strings.Join(r.Cluster.Addrs, ",") != "n1:7000,n2:7000" || !r.TLS {
		t.Fatalf("cluster parsed = %+v / %+v", r, r.Cluster)
	}

	for name, tc := range map[string]struct{ yaml, want string }{
		"addr and sentinel":      {"shared: {redis: {addr: 'r:1', sentinel: {master: m, addrs: ['s:1']}}}", "exclude each other"},
		"addr and cluster":       {"shared: {redis: {addr: 'r:1', cluster: {addrs: ['n:1']}}}", "exclude each other"},
		"sentinel and cluster":   {"shared: {redis: {sentinel: {master: m, addrs: ['s:1']}, cluster: {addrs: ['n:1']}}}", "exclude each other"},
		"none":                   {"shared: {redis: {key_prefix: 'x:'}}", "shared.redis.addr"},
		"sentinel no master":     {"shared: {redis: {sentinel: {addrs: ['s:1']}}}", "shared.redis.sentinel.master"},
		"sentinel master spaces": {"shared: {redis: {sentinel: {master: 'my master', addrs: ['s:1']}}}", "shared.redis.sentinel.master"},
		"sentinel no addrs":      {"shared: {redis: {sentinel: {master: m}}}", "shared.redis.sentinel.addrs"},
		"sentinel empty addrs":   {"shared: {redis: {sentinel: {master: m, addrs: []}}}", "shared.redis.sentinel.addrs"},
		"sentinel bad addr":      {"shared: {redis: {sentinel: {master: m, addrs: ['s:1', 's2']}}}", "shared.redis.sentinel.addrs[1]"},
		"sentinel twice":         {"shared: {redis: {sentinel: {master: m, addrs: ['s:1', 's:1']}}}", "listed twice"},
		"sentinel bad env":       {"shared: {redis: {sentinel: {master: m, addrs: ['s:1'], password_env: 'A B'}}}", "shared.redis.sentinel.password_env"},
		"sentinel password":      {"shared: {redis: {sentinel: {master: m, addrs: ['s:1'], password: x}}}", "password"},
		"sentinel unknown key":   {"shared: {redis: {sentinel: {master: m, addrs: ['s:1'], replicas: true}}}", "replicas"},
		"sentinel as list":       {"shared: {redis: {sentinel: ['s:1']}}", "sentinel"},
		"cluster no addrs":       {"shared: {redis: {cluster: {}}}", "shared.redis.cluster.addrs"},
		"cluster bad addr":       {"shared: {redis: {cluster: {addrs: ['n1:7000', ':7001']}}}", "shared.redis.cluster.addrs[1]"},
		"cluster db":             {"shared: {redis: {cluster: {addrs: ['n:1']}, db: 1}}", "only database 0"},
		"cluster unknown key":    {"shared: {redis: {cluster: {addrs: ['n:1'], read_only: true}}}", "read_only"},
		"cluster addrs string":   {"shared: {redis: {cluster: {addrs: 'n:1'}}}", "addrs"},
	} {
		_, err := Parse([]byte(base+tc.yaml+"\n"), "shared.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
	// The example's commented sentinel and cluster lines are valid in
	// place of addr.
	found := 0
	for _, l := range strings.Split(string(Example), "\n") {
		for _, mode := range []string{"sentinel", "cluster"} {
			if rest, ok := strings.CutPrefix(l, "#     # "+mode+": "); ok {
				found++
				if _, err := Parse([]byte(base+"shared:\n  redis:\n    "+mode+": "+rest+"\n"), "example-"+mode+".yaml"); err != nil {
					t.Errorf("the example's %s line: %v", mode, err)
				}
			}
		}
	}
	if found != 2 {
		t.Errorf("example.yaml: %d commented sentinel and cluster lines, want 2", found)
	}

	var addrs []string
	for i := range maxSharedAddrs + 1 {
		addrs = append(addrs, fmt.Sprintf("'n%d:7000'", i))
	}
	if _, err := Parse([]byte(base+"shared: {redis: {cluster: {addrs: ["+strings.Join(addrs, ",")+"]}}}\n"), "shared.yaml"); err == nil ||
		!strings.Contains(err.Error(), "shared.redis.cluster.addrs") {
		t.Errorf("%d cluster addresses: err = %v", len(addrs), err)
	}
}
