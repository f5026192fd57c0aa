package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

const (
	redisServerBin = "redis-server"
	// sharedPasswordEnv carries the Redis password to the replicas, which
	// inherit the bench's environment.
	sharedPasswordEnv = "PORTCULLIS_BENCH_REDIS_PASSWORD"
	// sharedHerdClients is the size of each herd of the shared phase.
	sharedHerdClients = 300
	sharedReplicas    = 3
)

// sharedResult is what the shared phase measured.
type sharedResult struct {
	digests int
	// cold: replica A's first GET of each digest (verified); l2: replica
	// B's first GET of each (verdict from Redis, bytes from the upstream);
	// l1: replica B's second GET of each.
	cold, l2, l1 cell
	// l2Verifications are the verifications replica B made while reading
	// verdicts from Redis; 0 is the point of sharing.
	l2Verifications float64
	herds           []sharedHerd
	redisVersion    string
}

// sharedHerd is one herd of simultaneous GETs of a digest no replica has
// seen, spread round-robin over the replicas.
type sharedHerd struct {
	replicas      int
	clients       int
	served        int
	firstErr      string
	verifications float64
	upstream      []kindCount
	p50, p99, max time.Duration
	followed      float64 // portcullis_shared_flight_total{outcome="followed"}
}

// shared runs replicas of Portcullis on one real redis-server: a verdict
// read from Redis by a replica that has never seen the digest (L2) next
// to one read from its own memory (L1), and herds of clients on a new
// digest against one replica and against three.
func (b *bench) shared(ctx context.Context) error {
	bin, err := exec.LookPath(redisServerBin)
	if err != nil {
		b.res.notes = append(b.res.notes, "shared: skipped (redis-server not installed)")
		logf("shared: skipped, %s not found", redisServerBin)
		return nil
	}
	res := &sharedResult{}
	if v, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		res.redisVersion = strings.TrimSpace(string(v))
	}
	addr, password, err := startRedis(ctx, bin, b.dir)
	if err != nil {
		return err
	}
	if err := os.Setenv(sharedPasswordEnv, password); err != nil {
		return err
	}
	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return err
	}
	n := b.sz.small
	logf("shared: pushing %d signed images and the herd images", n)
	digests, err := pushSignedSmall(ctx, b.direct.host, "bench/shared", n, signer)
	if err != nil {
		return err
	}
	herdDigests, err := pushSignedSmall(ctx, b.direct.host, "bench/shared-herd", 2, signer)
	if err != nil {
		return err
	}
	// The replicas' upstream counts what they ask, as for the herd phase.
	s, err := startSpy(b.direct.url())
	if err != nil {
		return err
	}
	prefix := make([]byte, 6)
	_, _ = rand.Read(prefix)
	sharedYAML := fmt.Sprintf("shared:\n  redis: {addr: %q, password_env: %s, key_prefix: \"bench-%s:\"}\n",
		addr, sharedPasswordEnv, hex.EncodeToString(prefix))
	pub := signer.PublicKeyPEM()
	var replicas []*portcullis
	for i := range sharedReplicas {
		pc, err := startSharedReplica(ctx, b.client, b.pcBin, b.dir, fmt.Sprintf("portcullis-shared-%d", i), pub, "http://"+s.host, sharedYAML)
		if err != nil {
			return err
		}
		defer pc.proc.Stop()
		replicas = append(replicas, pc)
	}
	a, rb := replicas[0], replicas[1]
	urls := func(pc *portcullis) []string {
		u := make([]string, len(digests))
		for i, d := range digests {
			u[i] = manifestURL(&pc.target, d)
		}
		return u
	}

	// L1 against L2: A verifies every digest; B, which has never seen
	// them, reads each verdict from Redis once, then from its memory.
	logf("shared: replica A verifies %d digests", n)
	res.digests = n
	get := func(pc *portcullis) probe { return probe{method: http.MethodGet, urls: urls(pc), want: http.StatusOK} }
	res.cold = a.measurePrecise(func() cell { return runLoad(ctx, b.client, get(a), n, 1) })
	if !res.cold.ok() {
		return fmt.Errorf("shared: cold GET on replica A: %d errors, first: %s", res.cold.errors, res.cold.firstErr)
	}
	before, err := scrapeOr0(ctx, b.client, rb.metricsURL(), "portcullis_verifications_total")
	if err != nil {
		return err
	}
	logf("shared: replica B reads them from Redis (L2), then from memory (L1)")
	res.l2 = rb.measurePrecise(func() cell { return runLoad(ctx, b.client, get(rb), n, 1) })
	res.l1 = rb.measurePrecise(func() cell { return runLoad(ctx, b.client, get(rb), n, 1) })
	after, err := scrapeOr0(ctx, b.client, rb.metricsURL(), "portcullis_verifications_total")
	if err != nil {
		return err
	}
	res.l2Verifications = after - before
	if !res.l2.ok() || !res.l1.ok() {
		return fmt.Errorf("shared: GET on replica B: L2 %d errors (%s), L1 %d errors (%s)", res.l2.errors, res.l2.firstErr, res.l1.errors, res.l1.firstErr)
	}

	// Herds: one new digest each, on one replica, then on all of them.
	for i, group := range [][]*portcullis{replicas[:1], replicas} {
		logf("shared: herd of %d clients on %d replica(s)", sharedHerdClients, len(group))
		h, err := runSharedHerd(ctx, b.client, group, s, herdDigests[i], sharedHerdClients)
		if err != nil {
			return err
		}
		res.herds = append(res.herds, h)
	}
	b.res.shared = res
	return nil
}

// startRedis runs redis-server on a free loopback port with a random
// password and no persistence, and checks that it holds the port.
func startRedis(ctx context.Context, bin, dir string) (addr, password string, err error) {
	port, err := harness.FreePort()
	if err != nil {
		return "", "", err
	}
	pw := make([]byte, 16)
	if _, err := rand.Read(pw); err != nil {
		return "", "", err
	}
	password = hex.EncodeToString(pw)
	conf := filepath.Join(dir, "redis.conf")
	body := fmt.Sprintf("bind 127.0.0.1\nport %d\nrequirepass %s\nprotected-mode yes\nsave \"\"\nappendonly no\ndir %s\n", port, password, dir)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", "", err
	}
	p, err := harness.Start(teardown, dir, "redis", bin, conf)
	if err != nil {
		return "", "", err
	}
	deadline := time.Now().Add(harness.ReadyTimeout)
	for {
		if harness.OwnsPort(p.Pid(), port) == nil {
			return fmt.Sprintf("127.0.0.1:%d", port), password, nil
		}
		if !p.Alive() || time.Now().After(deadline) || ctx.Err() != nil {
			return "", "", fmt.Errorf("redis-server does not hold port %d: %s", port, p.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startSharedReplica is startPortcullis with the shared section added to
// the bench configuration.
func startSharedReplica(ctx context.Context, client *http.Client, bin, dir, name string, pub []byte, upstream, sharedYAML string) (*portcullis, error) {
	pc, err := startPortcullisYAML(ctx, client, bin, dir, name, pub, upstream, sharedYAML)
	if err != nil {
		return nil, err
	}
	// The bench logs at warn, so the start line saying shared state is on
	// is not there: the replica's own gauge says it reaches Redis.
	deadline := time.Now().Add(harness.ReadyTimeout)
	for {
		up, err := scrapeOr0(ctx, client, pc.metricsURL(), "portcullis_shared_up")
		if err == nil && up == 1 {
			return pc, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			pc.proc.Stop()
			return nil, fmt.Errorf("%s does not use Redis (portcullis_shared_up %v, %v): %s", name, up, err, pc.proc.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrapeOr0 reads a sample that may not exist yet (a labelled series
// appears on its first event): absent is 0.
func scrapeOr0(ctx context.Context, client *http.Client, metricsURL, name string) (float64, error) {
	v, err := hostile.ScrapeMetric(ctx, client, metricsURL, name)
	if err != nil && strings.Contains(err.Error(), "not exported") {
		return 0, nil
	}
	return v, err
}

// runSharedHerd fires clients simultaneous GETs of d, client i to
// replica i mod len(replicas), and reports what it cost in total.
func runSharedHerd(ctx context.Context, client *http.Client, replicas []*portcullis, s *spy, d name.Digest, clients int) (sharedHerd, error) {
	const verifications, followed = "portcullis_verifications_total", `portcullis_shared_flight_total{outcome="followed"}`
	sum := func(metric string) (float64, error) {
		var t float64
		for _, pc := range replicas {
			v, err := scrapeOr0(ctx, client, pc.metricsURL(), metric)
			if err != nil {
				return 0, err
			}
			t += v
		}
		return t, nil
	}
	v0, err := sum(verifications)
	if err != nil {
		return sharedHerd{}, err
	}
	f0, err := sum(followed)
	if err != nil {
		return sharedHerd{}, err
	}
	s.reset()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		served   int
		firstErr string
		lat      = make([]time.Duration, clients)
		gate     = make(chan struct{})
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer teardown.Guard()
			defer wg.Done()
			u := manifestURL(&replicas[i%len(replicas)].target, d)
			<-gate
			t0 := time.Now()
			err := do(ctx, client, http.MethodGet, u, http.StatusOK)
			lat[i] = time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				served++
			} else if firstErr == "" {
				firstErr = err.Error()
			}
		}()
	}
	close(gate)
	wg.Wait()
	h := sharedHerd{replicas: len(replicas), clients: clients, served: served, firstErr: firstErr}
	h.p50, h.p99 = percentiles(lat)
	h.max = slices.Max(lat)
	v1, err := sum(verifications)
	if err != nil {
		return h, err
	}
	f1, err := sum(followed)
	if err != nil {
		return h, err
	}
	h.verifications, h.followed = v1-v0, f1-f0
	s.mu.Lock()
	for k, n := range s.byKind {
		h.upstream = append(h.upstream, kindCount{k, n})
	}
	s.mu.Unlock()
	slices.SortFunc(h.upstream, func(x, y kindCount) int { return strings.Compare(x.kind, y.kind) })
	return h, nil
}

func (r *results) sharedMarkdown(p func(string, ...any)) {
	sr := r.shared
	if sr == nil {
		return
	}
	p("### Shared state (replicas on one redis-server)")
	p("")
	if sr.redisVersion != "" {
		p("%s, loopback, password, no persistence. Every replica's upstream is a counting reverse proxy in front of the direct registry.", sr.redisVersion)
		p("")
	}
	p("Warm GET by digest, %d distinct signed digests, one client. Replica A verifies each (cold); replica B, which has never seen them, then gets each twice: the first time its own verdict cache misses and the verdict and the manifest bytes are read from Redis (L2: both asked at once, one round trip; the write-through of its blob entries follows the answer); the second time both come from its memory (L1).", sr.digests)
	p("")
	p("| GET by digest | requests | errors | p50 | p99 | req/s | p50 ÷ L1 | server CPU/req |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, x := range []struct {
		what string
		c    cell
	}{
		{"replica A, cold: verified", sr.cold},
		{"replica B, L2 hit (verdict from Redis)", sr.l2},
		{"replica B, L1 hit", sr.l1},
	} {
		p("| %s | %d | %d | %s | %s | %.0f | %s | %s |", x.what, x.c.requests, x.c.errors, harness.Duration(x.c.p50), harness.Duration(x.c.p99),
			x.c.rps, fmtRatio(ratio(float64(x.c.p50), float64(sr.l1.p50))), harness.Duration(x.c.cpu))
	}
	p("")
	p("Verifications on replica B while it read the %d verdicts from Redis: %.0f.", sr.digests, sr.l2Verifications)
	p("")
	if len(sr.herds) > 0 {
		p("Herds: %d simultaneous GETs of one signed digest no replica has seen, client i sent to replica i mod N.", sr.herds[0].clients)
		p("")
		head := "| measurement |"
		sep := "|---|"
		for _, h := range sr.herds {
			head += fmt.Sprintf(" %d replica(s) |", h.replicas)
			sep += "---:|"
		}
		p("%s", head)
		p("%s", sep)
		row := func(what string, f func(sharedHerd) string) {
			line := "| " + what + " |"
			for _, h := range sr.herds {
				line += " " + f(h) + " |"
			}
			p("%s", line)
		}
		row("clients served 200", func(h sharedHerd) string { return fmt.Sprintf("%d / %d", h.served, h.clients) })
		row("verifications (all replicas)", func(h sharedHerd) string { return fmt.Sprintf("%.0f", h.verifications) })
		row("waited for another replica's verdict (`followed`)", func(h sharedHerd) string { return fmt.Sprintf("%.0f", h.followed) })
		kinds := map[string]bool{}
		for _, h := range sr.herds {
			for _, k := range h.upstream {
				kinds[k.kind] = true
			}
		}
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range kinds {
				if !yield(k) {
					return
				}
			}
		}) {
			row("upstream "+k, func(h sharedHerd) string {
				for _, c := range h.upstream {
					if c.kind == k {
						return fmt.Sprintf("%d", c.count)
					}
				}
				return "0"
			})
		}
		row("latency p50", func(h sharedHerd) string { return harness.Duration(h.p50) })
		row("latency p99", func(h sharedHerd) string { return harness.Duration(h.p99) })
		row("latency max", func(h sharedHerd) string { return harness.Duration(h.max) })
		p("")
		for _, h := range sr.herds {
			if h.firstErr != "" {
				p("First client error with %d replica(s): `%s`", h.replicas, h.firstErr)
				p("")
			}
		}
	}
}

func sharedGoals(r *results) []goal {
	sr := r.shared
	if sr == nil {
		return nil
	}
	rt := ratio(float64(sr.l2.p50), float64(sr.l1.p50))
	gs := []goal{{
		name:     "shared: warm GET by digest, L2 hit p50 vs L1 hit p50",
		measured: fmtRatio(rt), want: "≤ 2×", pass: sr.l2.ok() && sr.l1.ok() && rt > 0 && rt <= 2,
	}}
	for _, h := range sr.herds {
		gs = append(gs, goal{
			name:     fmt.Sprintf("shared: herd of %d on %d replica(s): clients served, verifications", h.clients, h.replicas),
			measured: fmt.Sprintf("%d, %.0f", h.served, h.verifications), want: fmt.Sprintf("%d, 1", h.clients),
			pass: h.served == h.clients && h.verifications == 1,
		})
	}
	return gs
}
