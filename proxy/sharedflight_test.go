package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/cache/shared"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/portcullis-oci/portcullis/verify"
)

// flightReplica is one proxy of a deployment sharing verdicts, gating and
// leases through one Redis, as cmd wires it.
type flightReplica struct {
	p      *Proxy
	eng    *engineSpy
	up     *spy
	flight *countingFlight
}

// countingFlight counts Acquire calls and, when dead is set, loses its
// releases: the replica died before it could release what it holds.
type countingFlight struct {
	inner    SharedFlight
	acquires atomic.Int64
	dead     atomic.Bool
}

func (f *countingFlight) Acquire(ctx context.Context, key string) (func(), bool, error) {
	f.acquires.Add(1)
	release, won, err := f.inner.Acquire(ctx, key)
	if won && f.dead.Load() {
		return func() {}, won, err
	}
	return release, won, err
}

const flightLeaseTTL = 300 * time.Millisecond

func newFlightReplica(t *testing.T, mr *miniredis.Miniredis, upstreamURL string, pol verify.Policy, verifyTimeout time.Duration) flightReplica {
	t.Helper()
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	g := shared.NewGuard(zap.NewNop(), nil, 5*time.Second)
	l1, err := cache.NewVerdicts(1000, time.Hour, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	vc, err := shared.NewVerdicts(l1, c, g, shared.VerdictsOptions{KeyPrefix: sharedPrefix, AllowTTL: time.Hour, DenyTTL: time.Minute, Size: 1000})
	if err != nil {
		t.Fatal(err)
	}
	gating, err := shared.NewGating(c, sharedPrefix, g)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := shared.NewLeases(c, g, shared.LeasesOptions{KeyPrefix: sharedPrefix, Replica: t.Name(), TTL: flightLeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	f := &countingFlight{inner: leases}
	eng := newEngineSpy(t, pol)
	p, up := newTestProxy(t, upstreamURL, eng, WithVerdictCache(vc), WithSharedState(gating), WithSharedFlight(f), WithVerifyTimeout(verifyTimeout))
	return flightReplica{p: p, eng: eng, up: up, flight: f}
}

func (r flightReplica) outcome(o string) float64 {
	return testutil.ToFloat64(r.p.opts.sharedFlight.outcomes.WithLabelValues(o))
}

// get asks r for the manifest with ctx, as a client that gives up when
// ctx ends.
func (r flightReplica) get(ctx context.Context, repo string, d v1.Hash) int {
	req := httptest.NewRequest(http.MethodGet, manifestPath(repo, d.String()), nil).WithContext(ctx)
	w := httptest.NewRecorder()
	r.p.ServeHTTP(w, req)
	return w.Code
}

func flightSetup(t *testing.T, n int, verifyTimeout time.Duration) (*miniredis.Miniredis, []flightReplica, v1.Hash) {
	t.Helper()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	rs := make([]flightReplica, n)
	for i := range rs {
		rs[i] = newFlightReplica(t, mr, reg.srv.URL, pol, verifyTimeout)
	}
	return mr, rs, img.digest
}

// herd has clients requests spread round-robin over rs, all at once, and
// returns the number of verifications and of upstream requests in total.
func herd(t *testing.T, rs []flightReplica, clients int, d v1.Hash) (verifications, upstream int) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range clients {
		wg.Add(1)
		go func(r flightReplica) {
			defer wg.Done()
			<-start
			if r.get(context.Background(), "acme/app", d) != http.StatusOK {
				failed.Add(1)
			}
		}(rs[i%len(rs)])
	}
	close(start)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed", n, clients)
	}
	for _, r := range rs {
		verifications += r.eng.callsFor(d)
		upstream += r.up.count()
	}
	return verifications, upstream
}

// TestSharedFlightOneVerification: requests for a digest no replica has
// seen, spread over three replicas at once, cost one verification in
// total; the other replicas use its verdict.
func TestSharedFlightOneVerification(t *testing.T) {
	t.Parallel()
	_, rs, d := flightSetup(t, 3, 30*time.Second)
	if n, _ := herd(t, rs, 50, d); n != 1 {
		t.Errorf("50 requests over 3 replicas: %d verifications, want 1", n)
	}
	var led float64
	for _, r := range rs {
		led += r.outcome(flightLed) + r.outcome(flightTookOver)
	}
	if led != 1 {
		t.Errorf("replicas that verified under the lease: %v, want 1", led)
	}
}

// TestSharedFlightHerdNumbers reports the herd: 300 clients on each of
// three replicas, and the same on one replica for comparison.
func TestSharedFlightHerdNumbers(t *testing.T) {
	if testing.Short() {
		t.Skip("herd of 900 requests")
	}
	t.Parallel()
	for _, n := range []int{1, 3} {
		_, rs, d := flightSetup(t, n, 30*time.Second)
		v, up := herd(t, rs, 300*n, d)
		t.Logf("herd: %d clients over %d replica(s): %d verification(s), %d upstream requests", 300*n, n, v, up)
		if v != 1 {
			t.Errorf("%d replica(s): %d verifications, want 1", n, v)
		}
	}
}

// TestSharedFlightHolderDies: the replica holding the lease dies
// mid-verification (its work abandoned, its lease never released nor
// renewed); the replica waiting on it takes over once the lease expires
// and answers within its verify timeout plus a second.
func TestSharedFlightHolderDies(t *testing.T) {
	t.Parallel()
	const verifyTimeout = 10 * time.Second
	mr, rs, d := flightSetup(t, 2, verifyTimeout)
	a, b := rs[0], rs[1]
	a.flight.dead.Store(true)
	verifying := make(chan struct{})
	a.eng.hook = func(ctx context.Context, _ verify.Subject) error {
		close(verifying)
		<-ctx.Done()
		return ctx.Err()
	}

	actx, kill := context.WithCancel(context.Background())
	aDone := make(chan int, 1)
	go func() { aDone <- a.get(actx, "acme/app", d) }()
	recv(t, verifying, "verifying")

	bctx, cancel := context.WithTimeout(context.Background(), verifyTimeout+time.Second)
	defer cancel()
	bDone := make(chan int, 1)
	go func() { bDone <- b.get(bctx, "acme/app", d) }()
	// B asks for the lease again at every poll: twice means it waits.
	for b.flight.acquires.Load() < 2 {
		select {
		case code := <-bDone:
			t.Fatalf("B answered %d while A held the lease, without waiting for it", code)
		case <-time.After(time.Millisecond):
		}
	}
	if n := b.eng.callsFor(d); n != 0 {
		t.Fatalf("B verified %d times while A held the lease", n)
	}
	kill()
	recv(t, aDone, "aDone")

	var code int
	for done := false; !done; {
		// A's lease expires: step Redis's clock past it (a renewal in
		// flight when A died may push it once more).
		mr.FastForward(flightLeaseTTL)
		select {
		case code = <-bDone:
			done = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	if code != http.StatusOK {
		t.Fatalf("B answered %d, want 200 within verify_timeout + 1s", code)
	}
	if n := b.eng.callsFor(d); n != 1 {
		t.Errorf("B verified %d times, want 1", n)
	}
	if n := b.outcome(flightTookOver); n != 1 {
		t.Errorf("took_over = %v, want 1", n)
	}
}

// TestSharedFlightRedisDown: with Redis down each replica verifies at
// once on its own, without waiting for a lease it cannot see.
func TestSharedFlightRedisDown(t *testing.T) {
	t.Parallel()
	// A replica that waited would wait the verify timeout, longer than
	// the client stays.
	mr, rs, d := flightSetup(t, 2, 30*time.Second)
	redistest.Down(t, mr)
	for i, r := range rs {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		code := r.get(ctx, "acme/app", d)
		cancel()
		if code != http.StatusOK {
			t.Fatalf("replica %d with redis down = %d, want 200", i, code)
		}
		if n := r.eng.callsFor(d); n != 1 {
			t.Errorf("replica %d verified %d times, want 1", i, n)
		}
		if n := r.outcome(flightAlone); n != 1 {
			t.Errorf("replica %d: alone = %v, want 1", i, n)
		}
	}
}

// plantLease leaves in mr a well-formed lease on key that nobody holds
// (its holder stopped renewing and never released it) and returns its
// Redis key and value.
func plantLease(t *testing.T, mr *miniredis.Miniredis, key string) (rkey, val string) {
	t.Helper()
	before := map[string]bool{}
	for _, k := range mr.Keys() {
		before[k] = true
	}
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := shared.NewLeases(c, shared.NewGuard(zap.NewNop(), nil, 5*time.Second), shared.LeasesOptions{KeyPrefix: sharedPrefix, TTL: flightLeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if _, won, err := l.Acquire(ctx, key); err != nil || !won {
		t.Fatalf("planting a lease: %v, %v", won, err)
	}
	cancel() // no renewal, no release: nobody holds it
	for _, k := range mr.Keys() {
		if !before[k] {
			rkey = k
		}
	}
	val, err = mr.Get(rkey)
	if err != nil {
		t.Fatal(err)
	}
	mr.SetTTL(rkey, time.Hour)
	return rkey, val
}

// TestSharedFlightPlantedLease: a lease nobody holds (left by a replica
// that died, or planted by whoever can write to Redis) delays a replica by
// its verify timeout, after which it verifies itself; a value that is no
// lease of this key delays nothing.
func TestSharedFlightPlantedLease(t *testing.T) {
	t.Parallel()
	t.Run("orphan", func(t *testing.T) {
		t.Parallel()
		const verifyTimeout = 2 * time.Second
		mr, rs, d := flightSetup(t, 1, verifyTimeout)
		r := rs[0]
		plantLease(t, mr, verdictKey(r.eng.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", d))
		ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout+time.Second+verifyTimeout)
		defer cancel()
		if code := r.get(ctx, "acme/app", d); code != http.StatusOK {
			t.Fatalf("with an orphaned lease = %d, want 200", code)
		}
		if r.eng.callsFor(d) != 1 || r.outcome(flightTimedOut) != 1 {
			t.Errorf("verifications = %d, timed_out = %v; want 1, 1", r.eng.callsFor(d), r.outcome(flightTimedOut))
		}
	})
	t.Run("foreign", func(t *testing.T) {
		t.Parallel()
		// A replica that waited would wait the verify timeout, longer
		// than the client stays.
		mr, rs, d := flightSetup(t, 1, 30*time.Second)
		r := rs[0]
		_, other := plantLease(t, mr, "another key")
		rkey, _ := plantLease(t, mr, verdictKey(r.eng.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", d))
		_ = mr.Set(rkey, other)
		mr.SetTTL(rkey, time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if code := r.get(ctx, "acme/app", d); code != http.StatusOK {
			t.Fatalf("with another key's lease = %d, want 200", code)
		}
		if r.outcome(flightAlone) != 1 || r.outcome(flightTimedOut) != 0 {
			t.Errorf("alone = %v, timed_out = %v; want 1, 0", r.outcome(flightAlone), r.outcome(flightTimedOut))
		}
	})
}
