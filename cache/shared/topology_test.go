package shared

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/verify"
)

// The shared state must work the same on one server, behind Sentinel and
// on a cluster. roundTrips runs every kind of shared state between
// replicas on the client newClient gives; it runs here on miniredis (one
// server, and a cluster client on a one-node "cluster") and against real
// redis-server topologies in realredis_test.go.

// failures sums the Guard's error and timeout counts: an operation Redis
// refused (a cross-slot command on a cluster) is swallowed as a miss by
// design, so the tests look here for it.
func failures(t *testing.T, g *Guard) map[string]float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 256)
	go func() { g.errs.Collect(ch); close(ch) }()
	out := map[string]float64{}
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		labels := map[string]string{}
		for _, l := range d.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if k := labels["kind"]; (k == "error" || k == "timeout" || k == "unavailable") && d.GetCounter().GetValue() > 0 {
			out[labels["op"]+"/"+k] += d.GetCounter().GetValue()
		}
	}
	return out
}

func noFailures(t *testing.T, what string, g *Guard) {
	t.Helper()
	if f := failures(t, g); len(f) > 0 {
		g.mu.Lock()
		last := g.lastErr
		g.mu.Unlock()
		t.Errorf("%s: redis refused or failed operations: %v (last error: %s)", what, f, last)
	}
}

// roundTrips shares verdicts, gating, coverage, leases, the epoch and the
// events channel between replicas, each with its own client from
// newClient. flushMasters, when not nil, empties each server holding keys
// in turn (a cluster: each master) and the epoch must notice each.
func roundTrips(t *testing.T, newClient func(t *testing.T) redis.UniversalClient, flushMasters func(t *testing.T) []func()) {
	// Enough keys to land on every master of a three-master cluster.
	const n = 48
	prefix := "rt" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	newGuard := func() *Guard { return NewGuard(zap.NewNop(), nil, 2*time.Second) }

	t.Run("verdicts", func(t *testing.T) {
		replicaV := func() (*Verdicts, *Guard, redis.UniversalClient) {
			c := newClient(t)
			g := newGuard()
			l1, err := cache.NewVerdicts(1000, testAllowTTL, testDenyTTL)
			if err != nil {
				t.Fatal(err)
			}
			v, err := NewVerdicts(l1, c, g, VerdictsOptions{KeyPrefix: prefix, AllowTTL: testAllowTTL, DenyTTL: testDenyTTL, Size: 1000})
			if err != nil {
				t.Fatal(err)
			}
			return v, g, c
		}
		a, ga, ca := replicaV()
		b, gb, _ := replicaV()
		digest := func(i int) string { return fmt.Sprintf("sha256:%064x", i) }
		for i := range n {
			boundary := "keep"
			if i%2 == 1 {
				boundary = "drop"
			}
			a.Add("k"+strconv.Itoa(i), allowed(boundary, digest(i)))
		}
		a.Add("denied", verify.Verdict{Mode: verify.ModeEnforce, Digest: digest(n), Reasons: []string{"no valid signature"}})
		for i := range n {
			v, ok := b.Get("k" + strconv.Itoa(i))
			if !ok || !v.Allowed || v.Digest != digest(i) {
				t.Fatalf("replica b: k%d = %+v, %v", i, v, ok)
			}
		}
		if v, ok := b.Get("denied"); !ok || v.Allowed {
			t.Fatalf("replica b: the denial = %+v, %v", v, ok)
		}
		// A value no proxy wrote is purged too.
		if err := ca.Set(context.Background(), prefix+"v1:verdict:planted", `{"v":1}`, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		// The purge walks every master: a verdict another replica stored
		// anywhere in the cluster is gone for a third replica.
		b.RemoveFunc(func(v verify.Verdict) bool { return v.Boundary == "drop" })
		c, gc, _ := replicaV()
		for i := range n {
			_, ok := c.Get("k" + strconv.Itoa(i))
			if want := i%2 == 0; ok != want {
				t.Errorf("after the purge, k%d found = %v, want %v", i, ok, want)
			}
		}
		if err := ca.Get(context.Background(), prefix+"v1:verdict:planted").Err(); err != redis.Nil {
			t.Errorf("planted value after the purge: %v", err)
		}
		a.Remove("k0")
		// A replica that has not read k0 yet (one that has keeps its
		// local copy until it expires).
		d, gd, _ := replicaV()
		if _, ok := d.Get("k0"); ok {
			t.Error("k0 found after Remove")
		}
		noFailures(t, "replica d", gd)
		noFailures(t, "replica a", ga)
		noFailures(t, "replica b", gb)
		noFailures(t, "replica c", gc)
	})

	t.Run("gating", func(t *testing.T) {
		ga, gb := newGuard(), newGuard()
		a, err := NewGating(newClient(t), prefix, ga)
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewGating(newClient(t), prefix, gb)
		if err != nil {
			t.Fatal(err)
		}
		until := time.Now().Add(time.Minute)
		blobs := map[string]int64{}
		var children []string
		for i := range n {
			blobs[fmt.Sprintf("up\x00repo\x00sha256:%064x", i)] = int64(i)
			children = append(children, fmt.Sprintf("child-%d", i))
		}
		if err := a.RecordBlobs(context.Background(), blobs, nil, until); err != nil {
			t.Fatalf("RecordBlobs: %v", err)
		}
		for k, size := range blobs {
			if got, _, ok, err := b.LookupBlob(context.Background(), k); !ok || err != nil || got != size {
				t.Fatalf("LookupBlob(%q) = %d, %v, %v", k, got, ok, err)
			}
		}
		v := allowed("models", parentDigest)
		if err := a.RecordCoverage(context.Background(), children, parentDigest, v, until); err != nil {
			t.Fatalf("RecordCoverage: %v", err)
		}
		for _, c := range children {
			if p, got, _, ok := b.LookupCoverage(context.Background(), c); !ok || p != parentDigest || got.Boundary != "models" {
				t.Fatalf("LookupCoverage(%q) = %s, %+v, %v", c, p, got, ok)
			}
		}
		noFailures(t, "replica a", ga)
		noFailures(t, "replica b", gb)
	})

	t.Run("epoch", func(t *testing.T) {
		g := newGuard()
		s, err := NewGating(newClient(t), prefix, g)
		if err != nil {
			t.Fatal(err)
		}
		// check reads the markers now, holding the check slot as Epoch's
		// background check does.
		check := func() string {
			s.epoch.checking <- struct{}{}
			defer func() { <-s.epoch.checking }()
			s.checkMarker()
			return s.epoch.token
		}
		first := check()
		if second := check(); first == "" || second != first {
			t.Fatalf("marker token %q, then %q", first, second)
		}
		if flushMasters != nil {
			for i, flush := range flushMasters(t) {
				before := s.Epoch()
				flush()
				if check(); s.Epoch() == before {
					t.Errorf("epoch unchanged after server %d of %d lost its keys", i+1, len(flushMasters(t)))
				}
			}
		}
		noFailures(t, "epoch", g)
	})

	t.Run("leases", func(t *testing.T) {
		ga, gb := newGuard(), newGuard()
		// Long enough that a renewal (every third of it) is never late
		// under -race on a loaded machine.
		const ttl = time.Second
		a, err := NewLeases(newClient(t), ga, LeasesOptions{KeyPrefix: prefix, Replica: "a", TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewLeases(newClient(t), gb, LeasesOptions{KeyPrefix: prefix, Replica: "b", TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var releases []func()
		for i := range 8 {
			key := "lease-" + strconv.Itoa(i)
			rel, won, err := a.Acquire(ctx, key)
			if err != nil || !won {
				t.Fatalf("a: Acquire(%s) = %v, %v", key, won, err)
			}
			releases = append(releases, rel)
			if _, won, err := b.Acquire(ctx, key); err != nil || won {
				t.Fatalf("b: Acquire(%s) while a holds it = %v, %v", key, won, err)
			}
		}
		// Renewed past its TTL (the renewal script runs on the key's own
		// node): b still cannot take it.
		time.Sleep(2 * ttl)
		for i := range 8 {
			key := "lease-" + strconv.Itoa(i)
			if _, won, err := b.Acquire(ctx, key); err != nil || won {
				t.Fatalf("b: Acquire(%s) after %v of renewals = %v, %v", key, 2*ttl, won, err)
			}
			releases[i]()
			rel, won, err := b.Acquire(ctx, key)
			if err != nil || !won {
				t.Fatalf("b: Acquire(%s) after release = %v, %v", key, won, err)
			}
			rel()
		}
		noFailures(t, "replica a", ga)
		noFailures(t, "replica b", gb)
	})

	t.Run("events", func(t *testing.T) {
		bus := func(replica string) (*Bus, *busRecorder, *Guard) {
			g := newGuard()
			b, err := NewBus(newClient(t), g, BusOptions{KeyPrefix: prefix, Replica: replica})
			if err != nil {
				t.Fatal(err)
			}
			rec := &busRecorder{}
			b.Start(rec.on, rec.conn)
			t.Cleanup(b.Close)
			return b, rec, g
		}
		a, _, ga := bus("a")
		_, rec, gb := bus("b")
		waitFor(t, "b subscribed", func() bool { _, c := rec.snapshot(); return c > 0 })
		ctx := context.Background()
		if err := a.AddRevocations(ctx, map[string][]byte{"r1": []byte(`{"digest":"x"}`)}); err != nil {
			t.Fatalf("AddRevocations: %v", err)
		}
		if err := a.PublishReload(ctx, "fp1"); err != nil {
			t.Fatalf("PublishReload: %v", err)
		}
		if err := a.RemoveRevocations(ctx, map[string][]byte{"r1": []byte(`{"digest":"x"}`)}); err != nil {
			t.Fatalf("RemoveRevocations: %v", err)
		}
		want := []string{KindRevocationAdd + `|a|{"digest":"x"}|`, KindReload + "|a||fp1", KindRevocationRemove + `|a|{"digest":"x"}|`}
		waitFor(t, "b received a's messages", func() bool { got, _ := rec.snapshot(); return len(got) >= len(want) })
		// Every message, but not necessarily in order: a cluster
		// publishes each from whichever node it reaches (PUBLISH names
		// no key), and forwards between nodes in no common order. The
		// proxy checks revocation messages against the recorded list.
		received, _ := rec.snapshot()
		received = slices.Clone(received)
		slices.Sort(received)
		want = slices.Clone(want)
		slices.Sort(want)
		if strings.Join(received, "\n") != strings.Join(want, "\n") {
			t.Errorf("b received:\n%s\nwant, in any order:\n%s", strings.Join(received, "\n"), strings.Join(want, "\n"))
		}
		if err := a.AddRevocations(ctx, map[string][]byte{"r2": []byte(`{"digest":"y"}`)}); err != nil {
			t.Fatal(err)
		}
		got, err := a.Revocations(ctx)
		if err != nil || len(got) != 1 || string(got["r2"]) != `{"digest":"y"}` {
			t.Errorf("Revocations = %q, %v", got, err)
		}
		noFailures(t, "replica a", ga)
		noFailures(t, "replica b", gb)
	})
}

func TestRoundTripsMiniredis(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	roundTrips(t, func(t *testing.T) redis.UniversalClient {
		c, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}, func(*testing.T) []func() { return []func(){mr.FlushAll} })
}

// TestRoundTripsClusterClient runs the cluster client's code paths (the
// masters' walk, the per-master epoch markers) against miniredis, which
// answers CLUSTER SLOTS as a one-node cluster. The cross-slot rules are
// proven against a real cluster (TestRealRedisTopologies).
func TestRoundTripsClusterClient(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	roundTrips(t, func(t *testing.T) redis.UniversalClient {
		c, err := NewClient(ClientOptions{Cluster: &ClusterOptions{Addrs: []string{mr.Addr()}}, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(*redis.ClusterClient); !ok {
			t.Fatalf("cluster options gave a %T", c)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}, func(*testing.T) []func() { return []func(){mr.FlushAll} })
}

func TestNewClientModes(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		o    ClientOptions
		want string // the client's type, or an error
	}{
		"one server": {ClientOptions{Addr: "r:1"}, "*redis.Client"},
		"sentinel":   {ClientOptions{Sentinel: &SentinelOptions{Master: "m", Addrs: []string{"s:1"}}, DB: 2}, "*redis.Client"},
		"cluster":    {ClientOptions{Cluster: &ClusterOptions{Addrs: []string{"n:1", "n:2"}}}, "*redis.ClusterClient"},
		"none":       {ClientOptions{}, "exactly one"},
		"two":        {ClientOptions{Addr: "r:1", Cluster: &ClusterOptions{Addrs: []string{"n:1"}}}, "exactly one"},
		"three": {ClientOptions{Addr: "r:1", Cluster: &ClusterOptions{Addrs: []string{"n:1"}},
			Sentinel: &SentinelOptions{Master: "m", Addrs: []string{"s:1"}}}, "exactly one"},
		"sentinel no master": {ClientOptions{Sentinel: &SentinelOptions{Addrs: []string{"s:1"}}}, "master name"},
		"sentinel no addrs":  {ClientOptions{Sentinel: &SentinelOptions{Master: "m"}}, "sentinel address"},
		"cluster no addrs":   {ClientOptions{Cluster: &ClusterOptions{}}, "node address"},
		"cluster db":         {ClientOptions{Cluster: &ClusterOptions{Addrs: []string{"n:1"}}, DB: 1}, "database 0"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := NewClient(tc.o)
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				got = fmt.Sprintf("%T", c)
				_ = c.Close()
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("NewClient = %q, want %q", got, tc.want)
			}
		})
	}
	// Neither retries past the Guard's timeout (go-redis turns -1 into
	// 0, no retry); a cluster client still follows redirections and
	// reads from masters only.
	c, err := NewClient(ClientOptions{Sentinel: &SentinelOptions{Master: "m", Addrs: []string{"s:1"}, Password: "sp"}, Password: "mp", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if o := c.(*redis.Client).Options(); o.MaxRetries > 0 || o.Password != "mp" || o.ReadTimeout != time.Second || !strings.Contains(o.Addr, "FailoverClient") {
		t.Errorf("failover client options: retries %d, password %q, read timeout %v, addr %q", o.MaxRetries, o.Password, o.ReadTimeout, o.Addr)
	}
	cc, err := NewClient(ClientOptions{Cluster: &ClusterOptions{Addrs: []string{"n:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if o := cc.(*redis.ClusterClient).Options(); o.MaxRetries > 0 || o.MaxRedirects < 1 || o.ReadTimeout != DefaultTimeout || o.ReadOnly {
		t.Errorf("cluster client options: retries %d, redirects %d, read timeout %v, read only %v", o.MaxRetries, o.MaxRedirects, o.ReadTimeout, o.ReadOnly)
	}
}

// TestSlotHash pins the hash behind the epoch markers' hash tags to Redis
// Cluster's (the reference value of its specification).
func TestSlotHash(t *testing.T) {
	t.Parallel()
	if got := crc16("123456789"); got != 0x31c3 {
		t.Errorf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	for _, tc := range []struct{ start, end int }{{0, 0}, {0, 5460}, {5461, 10922}, {10923, 16383}, {16383, 16383}, {8000, 8001}} {
		tag, ok := slotTag(tc.start, tc.end)
		if s := int(crc16(tag) % clusterSlots); !ok || s < tc.start || s > tc.end {
			t.Errorf("slotTag(%d, %d) = %q (slot %d), %v", tc.start, tc.end, tag, s, ok)
		}
	}
	for key, want := range map[string]bool{"a{b}c": true, "a{}c": false, "{x": false, "x}": false, "}{b}": true, "plain": false} {
		if hasHashTag(key) != want {
			t.Errorf("hasHashTag(%q) = %v", key, !want)
		}
	}
}
