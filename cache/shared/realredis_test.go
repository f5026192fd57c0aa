package shared

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/portcullis-oci/portcullis/cache"
)

// Real redis-server topologies, started and stopped by the test on free
// loopback ports in a temporary directory: one server, a three-master
// cluster and a master behind a Sentinel. Skipped when redis-server or
// redis-cli is not installed, unless PORTCULLIS_REQUIRE_TOOLS=1.

func requireRedisTools(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real redis-server topologies: skipped with -short")
	}
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("PORTCULLIS_REQUIRE_TOOLS") == "1" {
				t.Fatalf("%s: %v (PORTCULLIS_REQUIRE_TOOLS=1; install redis-server and redis-tools)", bin, err)
			}
			t.Skipf("%s not installed: real redis topologies not tested (PORTCULLIS_REQUIRE_TOOLS=1 makes this a failure)", bin)
		}
	}
}

// redisProc is one redis-server (or Sentinel) this test started.
type redisProc struct {
	addr string
	cmd  *exec.Cmd
	dir  string
}

// freePort returns a loopback port nothing listens on right now. Another
// process may take it before redis-server does: startRedis checks that
// the server answering is its own.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRedis runs redis-server with the configuration conf (a template
// where {port} and {dir} are replaced) in a directory of its own, and
// waits until the server on its port is this process. args follow the
// configuration file (--sentinel). It retries on new ports when another
// process took the port first.
func startRedis(t *testing.T, name, conf string, extraPorts int, args ...string) *redisProc {
	t.Helper()
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		p, err := tryStartRedis(t, name, conf, extraPorts, args...)
		if err == nil {
			return p
		}
		last = err
	}
	t.Fatalf("%s: %v", name, last)
	return nil
}

func tryStartRedis(t *testing.T, name, conf string, extraPorts int, args ...string) (*redisProc, error) {
	dir, err := os.MkdirTemp(t.TempDir(), name+"-")
	if err != nil {
		return nil, err
	}
	port := freePort(t)
	subst := []string{"{port}", strconv.Itoa(port), "{dir}", dir}
	for i := range extraPorts {
		subst = append(subst, "{port"+strconv.Itoa(i+1)+"}", strconv.Itoa(freePort(t)))
	}
	r := strings.NewReplacer(subst...)
	cfg := "bind 127.0.0.1\nport {port}\ndir {dir}\nlogfile {dir}/redis.log\nsave \"\"\nappendonly no\n" + conf
	file := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(file, []byte(r.Replace(cfg)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command("redis-server", append([]string{file}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	p := &redisProc{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, dir: dir}
	c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1, DialTimeout: time.Second, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return nil, fmt.Errorf("exited (%v): %s %s", err, out.String(), lastLines(string(log), 5))
		default:
		}
		info, err := c.Info(context.Background(), "server").Result()
		if err == nil {
			// The server on the port must be the one started here, not
			// another test's that took the port in between.
			if !strings.Contains(info, "process_id:"+strconv.Itoa(cmd.Process.Pid)+"\r\n") {
				stop()
				return nil, fmt.Errorf("port %d is held by another process", port)
			}
			t.Cleanup(stop)
			return p, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not answering on %s: %v", p.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (p *redisProc) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: p.addr, DisableIdentity: true})
}

// startCluster starts three masters and joins them into a cluster with
// redis-cli, then waits until every node sees every slot served.
func startCluster(t *testing.T) []*redisProc {
	t.Helper()
	var nodes []*redisProc
	var addrs []string
	for i := range 3 {
		// cluster-port: the bus port, free like the client port rather than
		// the default port+10000, which nobody checked.
		p := startRedis(t, "cluster"+strconv.Itoa(i), "cluster-enabled yes\ncluster-port {port1}\ncluster-config-file {dir}/nodes.conf\ncluster-node-timeout 5000\n", 1)
		nodes = append(nodes, p)
		addrs = append(addrs, p.addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, p := range nodes {
		c := p.client()
		waitFor(t, "cluster ok on "+p.addr, func() bool {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				return false
			}
			//lint:ignore SA1019 the proxy reads CLUSTER SLOTS (Redis 6 has no CLUSTER SHARDS)
			slots, err := c.ClusterSlots(ctx).Result()
			return err == nil && len(slots) == 3
		})
		_ = c.Close()
	}
	return nodes
}

// startSentinel starts a master, a replica of it and one Sentinel
// watching them under the name "portcullis".
func startSentinel(t *testing.T) (master, replica, sentinel *redisProc) {
	t.Helper()
	master = startRedis(t, "master", "", 0)
	_, mport, _ := net.SplitHostPort(master.addr)
	replica = startRedis(t, "replica", "replicaof 127.0.0.1 "+mport+"\n", 0)
	// Sentinel rewrites its configuration file: it lives in its own dir.
	sentinel = startRedis(t, "sentinel", "sentinel monitor portcullis 127.0.0.1 "+mport+" 1\n"+
		"sentinel down-after-milliseconds portcullis 2000\nsentinel failover-timeout portcullis 10000\n", 0, "--sentinel")
	c := sentinel.client()
	defer c.Close()
	ctx := context.Background()
	waitFor(t, "sentinel knows the master and its replica", func() bool {
		addr, err := c.Do(ctx, "SENTINEL", "get-master-addr-by-name", "portcullis").StringSlice()
		if err != nil || len(addr) != 2 || net.JoinHostPort(addr[0], addr[1]) != master.addr {
			return false
		}
		reps, err := c.Do(ctx, "SENTINEL", "replicas", "portcullis").Slice()
		return err == nil && len(reps) == 1
	})
	rc := replica.client()
	defer rc.Close()
	waitFor(t, "replica in sync", func() bool {
		info, err := rc.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	return master, replica, sentinel
}

// TestRealRedisTopologies runs the shared state's round trips against a
// real redis-server: one server, a three-master cluster (where a command
// over keys of several slots is refused: MGET, a multi-key DEL, a
// transaction across slots) and a master found through Sentinel, which
// then fails over to its replica while the replicas keep sharing.
func TestRealRedisTopologies(t *testing.T) {
	requireRedisTools(t)
	start := time.Now()
	t.Cleanup(func() { t.Logf("real redis topologies: %v", time.Since(start).Round(time.Millisecond)) })

	t.Run("server", func(t *testing.T) {
		t.Parallel()
		p := startRedis(t, "server", "", 0)
		roundTrips(t, func(t *testing.T) redis.UniversalClient {
			return realClient(t, ClientOptions{Addr: p.addr})
		}, func(t *testing.T) []func() {
			return []func(){func() { flush(t, p.addr) }}
		})
	})

	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		nodes := startCluster(t)
		seeds := []string{nodes[0].addr}
		// The slot hash the epoch markers rely on is the cluster's.
		c := nodes[0].client()
		for _, key := range []string{"a", "portcullis:v1:epoch:{7}", "x{y}z", "123456789"} {
			want, err := c.ClusterKeySlot(context.Background(), key).Result()
			got := crc16(key) % clusterSlots
			if hasHashTag(key) {
				i := strings.IndexByte(key, '{')
				j := strings.IndexByte(key[i+1:], '}')
				got = crc16(key[i+1:i+1+j]) % clusterSlots
			}
			if err != nil || int64(got) != want {
				t.Errorf("slot of %q: %d, the cluster says %d (%v)", key, got, want, err)
			}
		}
		_ = c.Close()
		roundTrips(t, func(t *testing.T) redis.UniversalClient {
			return realClient(t, ClientOptions{Cluster: &ClusterOptions{Addrs: seeds}})
		}, func(t *testing.T) []func() {
			var fs []func()
			for _, n := range nodes {
				fs = append(fs, func() { flush(t, n.addr) })
			}
			return fs
		})
	})

	t.Run("sentinel", func(t *testing.T) {
		t.Parallel()
		master, replica, sentinel := startSentinel(t)
		o := ClientOptions{Sentinel: &SentinelOptions{Master: "portcullis", Addrs: []string{sentinel.addr}}}
		roundTrips(t, func(t *testing.T) redis.UniversalClient { return realClient(t, o) }, func(t *testing.T) []func() {
			return []func(){func() { flush(t, master.addr) }}
		})

		// Fail over: the replica becomes the master, and verdicts written
		// through Sentinel's new master are read by another replica.
		l1a, err := cache.NewVerdicts(10, testAllowTTL, testDenyTTL)
		if err != nil {
			t.Fatal(err)
		}
		l1b, err := cache.NewVerdicts(10, testAllowTTL, testDenyTTL)
		if err != nil {
			t.Fatal(err)
		}
		ga, gb := NewGuard(nil, nil, time.Second), NewGuard(nil, nil, time.Second)
		a, err := NewVerdicts(l1a, realClient(t, o), ga, VerdictsOptions{KeyPrefix: "fo:", AllowTTL: testAllowTTL, DenyTTL: testDenyTTL, Size: 10})
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewVerdicts(l1b, realClient(t, o), gb, VerdictsOptions{KeyPrefix: "fo:", AllowTTL: testAllowTTL, DenyTTL: testDenyTTL, Size: 10})
		if err != nil {
			t.Fatal(err)
		}
		a.Add("before", allowed("b", parentDigest))
		if _, ok := b.Get("before"); !ok {
			t.Fatal("before the failover: verdict not shared")
		}
		busA, err := NewBus(realClient(t, o), NewGuard(nil, nil, time.Second), BusOptions{KeyPrefix: "fo:", Replica: "a"})
		if err != nil {
			t.Fatal(err)
		}
		busB, err := NewBus(realClient(t, o), NewGuard(nil, nil, time.Second), BusOptions{KeyPrefix: "fo:", Replica: "b"})
		if err != nil {
			t.Fatal(err)
		}
		// Checked every 300 ms when quiet instead of 5 s.
		busB.ping = 300 * time.Millisecond
		rec := &busRecorder{}
		busB.Start(rec.on, rec.conn)
		t.Cleanup(busB.Close)
		waitFor(t, "b subscribed", func() bool { _, c := rec.snapshot(); return c > 0 })
		sc := sentinel.client()
		defer sc.Close()
		if err := sc.Do(context.Background(), "SENTINEL", "failover", "portcullis").Err(); err != nil {
			t.Fatalf("SENTINEL FAILOVER: %v", err)
		}
		waitFor(t, "sentinel names the replica as master", func() bool {
			addr, err := sc.Do(context.Background(), "SENTINEL", "get-master-addr-by-name", "portcullis").StringSlice()
			return err == nil && len(addr) == 2 && net.JoinHostPort(addr[0], addr[1]) == replica.addr
		})
		rc := replica.client()
		defer rc.Close()
		waitFor(t, "the replica is master", func() bool {
			info, err := rc.Info(context.Background(), "replication").Result()
			return err == nil && strings.Contains(info, "role:master")
		})
		// The clients follow the switch. Until they do, a write may fail
		// (counted by the Guard, survived by the caller) or land on the
		// old master and be lost when it turns replica: Redis replicates
		// asynchronously, and a lost verdict is only verified again.
		waitFor(t, "a verdict written after the failover is on the new master and shared", func() bool {
			a.Add("after", allowed("b", parentDigest))
			n, err := rc.Exists(context.Background(), "fo:v1:verdict:after").Result()
			if err != nil || n != 1 {
				return false
			}
			_, ok := b.Get("after")
			return ok
		})
		// Messages still reach the other replica: its subscription, left
		// on the old master by the client, is moved by the probe.
		waitFor(t, "a reload published after the failover is received", func() bool {
			_ = busA.PublishReload(context.Background(), "after-failover")
			time.Sleep(50 * time.Millisecond)
			got, _ := rec.snapshot()
			return len(got) > 0 && got[len(got)-1] == KindReload+"|a||after-failover"
		})
	})
}

func realClient(t *testing.T, o ClientOptions) redis.UniversalClient {
	t.Helper()
	o.Timeout = 2 * time.Second
	c, err := NewClient(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func flush(t *testing.T, addr string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer c.Close()
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		t.Fatalf("FLUSHALL on %s: %v", addr, err)
	}
}
