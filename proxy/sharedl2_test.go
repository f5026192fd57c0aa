package proxy

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/cache/shared"
	"github.com/portcullis-oci/portcullis/verify"
)

// twoLevelVerdicts stands for the shared verdict cache: local holds this
// replica's memory, remote what another replica stored; GetAlong copies
// the remote manifest bytes into manifests, as the shared cache does.
type twoLevelVerdicts struct {
	*mapVerdicts
	remote      map[string]verify.Verdict
	manifests   *mapManifests
	remoteBytes map[string]verify.Manifest
	alongWith   []string // the digests GetAlong was asked for
}

func (c *twoLevelVerdicts) GetAlong(k, digest string) (verify.Verdict, bool, bool) {
	c.mapVerdicts.mu.Lock()
	v, ok := c.mapVerdicts.m[k]
	c.alongWith = append(c.alongWith, digest)
	c.mapVerdicts.mu.Unlock()
	if ok {
		return v, true, false
	}
	if m, have := c.remoteBytes[digest]; have && digest != "" {
		c.manifests.Add(m)
	}
	v, ok = c.remote[k]
	return v, ok, ok
}

func newTwoLevel(verdicts map[string]verify.Verdict, manifests map[string]verify.Manifest) (*twoLevelVerdicts, *mapManifests) {
	mc := newMapManifests()
	return &twoLevelVerdicts{mapVerdicts: newMapVerdicts(), remote: verdicts, manifests: mc, remoteBytes: manifests}, mc
}

// blockingShared holds every write until release is closed.
type blockingShared struct {
	fakeShared
	release  chan struct{}
	recorded atomic.Int64
}

func (b *blockingShared) RecordBlobs(_ context.Context, blobs map[string]int64, _ map[string]string, _ time.Time) error {
	<-b.release
	b.recorded.Add(int64(len(blobs)))
	return nil
}

// decidedElsewhere has replica A verify repo:tag and returns the verdict
// and manifest bytes it holds, as another replica would find them in Redis.
func decidedElsewhere(t *testing.T, reg *upstreamRegistry, pol verify.Policy, repo, tag string) (map[string]verify.Verdict, map[string]verify.Manifest) {
	t.Helper()
	vc, mc := newMapVerdicts(), newMapManifests()
	a, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol), WithVerdictCache(vc), WithManifestCache(mc))
	if w := do(a, http.MethodGet, manifestPath(repo, tag)); w.Code != http.StatusOK {
		t.Fatalf("deciding replica: GET = %d: %s", w.Code, w.Body)
	}
	return vc.m, mc.m
}

// TestSharedVerdictBringsItsBytes: a warm GET by digest whose verdict
// this replica does not hold asks the shared state for the verdict with
// the manifest bytes, and serves from them without verifying or asking
// the upstream for the manifest.
func TestSharedVerdictBringsItsBytes(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	verdicts, manifests := decidedElsewhere(t, reg, pol, "acme/app", "v1")

	vc, mc := newTwoLevel(verdicts, manifests)
	eng := newEngineSpy(t, pol)
	sh := &blockingShared{release: make(chan struct{})}
	close(sh.release)
	b, up := newTestProxy(t, reg.srv.URL, eng, WithSharedState(sh), WithVerdictCache(vc), WithManifestCache(mc))

	w := do(b, http.MethodGet, manifestPath("acme/app", img.digest.String()))
	if w.Code != http.StatusOK || !sameBytes(w.Body.Bytes(), img.digest) {
		t.Fatalf("GET by digest = %d (bytes match: %v)", w.Code, sameBytes(w.Body.Bytes(), img.digest))
	}
	if len(vc.alongWith) != 1 || vc.alongWith[0] != img.digest.String() {
		t.Errorf("GetAlong asked for %q, want the manifest's digest once", vc.alongWith)
	}
	if n := eng.callsFor(img.digest); n != 0 {
		t.Errorf("verified %d times, want 0", n)
	}
	for _, r := range up.since(0) {
		if r == "GET /v2/acme/app/manifests/"+img.digest.String() {
			t.Errorf("the manifest was fetched upstream: %v", up.since(0))
			break
		}
	}
	b.shared.writes.Wait()
	if sh.recorded.Load() == 0 {
		t.Error("the served manifest's blobs were not written through")
	}
}

// TestSharedWriteThroughWaitsOnlyForOwnVerdicts: a manifest this replica
// decided is not served before what it opens is written through (another
// replica may get the client's next request at once); one whose verdict
// came from the shared state is, since its decider wrote it through.
func TestSharedWriteThroughWaitsOnlyForOwnVerdicts(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	verdicts, manifests := decidedElsewhere(t, reg, pol, "acme/app", "v1")
	target := manifestPath("acme/app", img.digest.String())

	serve := func(vc VerdictCache, mc ManifestCache) (*blockingShared, *Proxy, <-chan int) {
		sh := &blockingShared{release: make(chan struct{})}
		p, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol), WithSharedState(sh), WithVerdictCache(vc), WithManifestCache(mc))
		code := make(chan int, 1)
		go func() { code <- do(p, http.MethodGet, target).Code }()
		return sh, p, code
	}

	// Decided here: the answer waits for the write.
	own, p, code := serve(newMapVerdicts(), newMapManifests())
	select {
	case c := <-code:
		t.Fatalf("own verdict served (%d) before its blobs were written through", c)
	case <-time.After(300 * time.Millisecond):
	}
	close(own.release)
	if c := <-code; c != http.StatusOK {
		t.Fatalf("own verdict: GET = %d", c)
	}
	p.shared.writes.Wait()
	if own.recorded.Load() == 0 {
		t.Error("own verdict: nothing written through")
	}

	// Read from the shared state: served while the write is still held.
	vc, mc := newTwoLevel(verdicts, manifests)
	sh, p, code := serve(vc, mc)
	select {
	case c := <-code:
		if c != http.StatusOK {
			t.Fatalf("shared verdict: GET = %d", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shared verdict: the answer waited for the write-through")
	}
	if sh.recorded.Load() != 0 {
		t.Fatal("write-through finished before it was released")
	}
	close(sh.release)
	p.shared.writes.Wait()
	if sh.recorded.Load() == 0 {
		t.Error("shared verdict: nothing written through after the answer")
	}
}

// fullSharedReplica is a replica with the shared verdict, manifest and
// gating caches on mr, wired as the command wires them.
func fullSharedReplica(t *testing.T, mr *miniredis.Miniredis, regURL string, pol verify.Policy) (*Proxy, *engineSpy, *spy) {
	t.Helper()
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	g := shared.NewGuard(zap.NewNop(), nil, 5*time.Second)
	l1, _ := cache.NewVerdicts(100, 10*time.Minute, time.Minute)
	vs, err := shared.NewVerdicts(l1, c, g, shared.VerdictsOptions{KeyPrefix: sharedPrefix, AllowTTL: 10 * time.Minute, DenyTTL: time.Minute, Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	lm, _ := cache.NewManifests(1 << 20)
	ms, err := shared.NewManifests(lm, c, g, shared.ManifestsOptions{KeyPrefix: sharedPrefix, TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := vs.ReadBytesWith(ms); err != nil {
		t.Fatal(err)
	}
	gt, err := shared.NewGating(c, sharedPrefix, g)
	if err != nil {
		t.Fatal(err)
	}
	eng := newEngineSpy(t, pol)
	p, up := newTestProxy(t, regURL, eng, WithSharedState(gt), WithVerdictCache(vs), WithManifestCache(ms))
	return p, eng, up
}

// TestSharedVerdictReadAlongWithBytes: with the real shared caches, a
// replica that never saw a digest serves it from the verdict and bytes
// another replica stored, without verifying or fetching the manifest, and
// its layers then open on a third replica; an unsigned digest stays denied.
func TestSharedVerdictReadAlongWithBytes(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	unsigned := reg.pushImage(t, "acme/app", "v2")

	a, _, _ := fullSharedReplica(t, mr, reg.srv.URL, pol)
	for _, d := range []string{img.digest.String(), unsigned.digest.String()} {
		do(a, http.MethodGet, manifestPath("acme/app", d))
	}
	a.shared.writes.Wait()
	key := sharedPrefix + "v1:manifest:" + img.digest.String()
	for deadline := time.Now().Add(5 * time.Second); !mr.Exists(key); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("manifest bytes never written to Redis")
		}
	}

	b, eng, up := fullSharedReplica(t, mr, reg.srv.URL, pol)
	w := do(b, http.MethodGet, manifestPath("acme/app", img.digest.String()))
	if w.Code != http.StatusOK || !sameBytes(w.Body.Bytes(), img.digest) {
		t.Fatalf("B: GET by digest = %d", w.Code)
	}
	if n := eng.callsFor(img.digest); n != 0 {
		t.Errorf("B verified %d times, want 0", n)
	}
	if reqs := up.since(0); len(reqs) != 0 {
		t.Errorf("B asked the upstream: %v", reqs)
	}
	if w := do(b, http.MethodGet, manifestPath("acme/app", unsigned.digest.String())); w.Code != http.StatusForbidden {
		t.Errorf("B: unsigned digest = %d, want 403", w.Code)
	}
	b.shared.writes.Wait()

	c, _, _ := fullSharedReplica(t, mr, reg.srv.URL, pol)
	if w := do(c, http.MethodGet, blobPath("acme/app", img.layers[0])); w.Code != http.StatusOK {
		t.Errorf("C: layer of the served image = %d", w.Code)
	}
	if w := do(c, http.MethodGet, blobPath("acme/app", unsigned.layers[0])); w.Code != http.StatusForbidden {
		t.Errorf("C: layer of the unsigned image = %d, want 403", w.Code)
	}
}

// countingShared counts the blob writes and fails them while fail is set.
type countingShared struct {
	fakeShared
	mu    sync.Mutex
	calls int
	blobs map[string]int64
	fail  bool
}

func (c *countingShared) RecordBlobs(_ context.Context, blobs map[string]int64, _ map[string]string, _ time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.fail {
		return context.DeadlineExceeded
	}
	if c.blobs == nil {
		c.blobs = map[string]int64{}
	}
	for k, v := range blobs {
		c.blobs[k] = v
	}
	return nil
}

func (c *countingShared) state() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, len(c.blobs)
}

// TestSharedRefreshesBatched: manifests served on verdicts read from the
// shared state refresh their blob entries in one write together; a batch
// that fails is written again on the next pull of each manifest.
func TestSharedRefreshesBatched(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	one := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", one.digest)
	two := reg.pushImage(t, "acme/app", "v2")
	sign(reg, "acme/app", two.digest)
	verdicts, manifests := decidedElsewhere(t, reg, pol, "acme/app", "v1")
	v2, m2 := decidedElsewhere(t, reg, pol, "acme/app", "v2")
	for k, v := range v2 {
		verdicts[k] = v
	}
	for k, v := range m2 {
		manifests[k] = v
	}

	vc, mc := newTwoLevel(verdicts, manifests)
	sh := &countingShared{fail: true}
	p, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol), WithSharedState(sh), WithVerdictCache(vc), WithManifestCache(mc))
	p.shared.batchDelay = time.Second
	get := func() {
		for _, img := range []pushed{one, two} {
			if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
				t.Fatalf("GET %s = %d", img.digest, w.Code)
			}
		}
		p.shared.writes.Wait()
	}

	get()
	if calls, _ := sh.state(); calls != 1 {
		t.Fatalf("%d writes for two manifests served together, want 1", calls)
	}
	// The failed batch is written again on the next pulls, as one.
	sh.mu.Lock()
	sh.fail = false
	sh.mu.Unlock()
	get()
	calls, n := sh.state()
	want := len(one.layers) + len(two.layers) + 2
	if calls != 2 || n != want {
		t.Fatalf("after a failed batch: %d writes of %d blob entries, want 2 writes of %d", calls, n, want)
	}
	// Written: the next pulls write nothing.
	get()
	if calls, _ := sh.state(); calls != 2 {
		t.Errorf("%d writes after a successful batch, want 2", calls)
	}
}

// epochShared is countingShared whose Epoch the test moves, as a Redis
// that lost what was written to it would.
type epochShared struct {
	countingShared
	epoch atomic.Uint64
}

func (e *epochShared) Epoch() uint64 { return e.epoch.Load() }

// TestSharedWriteThrough: a manifest this replica decides is written
// through once per quarter gating TTL, not on every pull; a write that
// failed is made again on the next pull, and so is one the shared state
// may have lost (its epoch moved).
func TestSharedWriteThrough(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	sh := &epochShared{countingShared: countingShared{fail: true}}
	p, _ := newTestProxy(t, reg.srv.URL, newEngineSpy(t, pol), WithSharedState(sh), WithVerdictCache(newMapVerdicts()))
	pull := func(wantCalls int, why string) {
		t.Helper()
		if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("GET = %d", w.Code)
		}
		p.shared.writes.Wait()
		if calls, _ := sh.state(); calls != wantCalls {
			t.Fatalf("%s: %d writes, want %d", why, calls, wantCalls)
		}
	}
	pull(1, "first pull, the write fails")
	pull(2, "the failed write is made again")
	sh.mu.Lock()
	sh.fail = false
	sh.mu.Unlock()
	pull(3, "made again, it succeeds")
	pull(3, "written: a warm pull writes nothing")
	sh.epoch.Add(1)
	pull(4, "the shared state may have lost it: written again")
	pull(4, "written again: a warm pull writes nothing")
}
