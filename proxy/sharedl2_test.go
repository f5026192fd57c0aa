package proxy

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/verify"
)

// twoLevelVerdicts stands for the shared verdict cache: local holds this
// replica's memory, remote what another replica stored. Get on a local
// miss waits (up to a bound) for the manifest bytes to be asked for, and
// records whether they were asked for while it waited.
type twoLevelVerdicts struct {
	*mapVerdicts
	remote         map[string]verify.Verdict
	bytesAsked     <-chan struct{}
	overlapped     atomic.Bool
	remoteLookups  atomic.Int64
	waitForOverlap time.Duration
}

func (c *twoLevelVerdicts) GetLocal(k string) (verify.Verdict, bool) {
	c.mapVerdicts.mu.Lock()
	defer c.mapVerdicts.mu.Unlock()
	v, ok := c.mapVerdicts.m[k]
	return v, ok
}

func (c *twoLevelVerdicts) Get(k string) (verify.Verdict, bool) {
	if v, ok := c.GetLocal(k); ok {
		return v, true
	}
	c.remoteLookups.Add(1)
	select {
	case <-c.bytesAsked:
		c.overlapped.Store(true)
	case <-time.After(c.waitForOverlap):
	}
	v, ok := c.remote[k]
	return v, ok
}

// twoLevelManifests stands for the shared manifest cache: remote bytes
// are copied into local by Get, as the shared cache does.
type twoLevelManifests struct {
	*mapManifests
	remote map[string]verify.Manifest
	asked  chan struct{}
	once   sync.Once
}

func (c *twoLevelManifests) GetLocal(d string) (verify.Manifest, bool) { return c.mapManifests.Get(d) }

func (c *twoLevelManifests) Get(d string) (verify.Manifest, bool) {
	if m, ok := c.mapManifests.Get(d); ok {
		return m, true
	}
	c.once.Do(func() { close(c.asked) })
	m, ok := c.remote[d]
	if ok {
		c.mapManifests.Add(m)
	}
	return m, ok
}

// blockingShared holds every write until release is closed.
type blockingShared struct {
	fakeShared
	release  chan struct{}
	recorded atomic.Int64
}

func (b *blockingShared) RecordBlobs(_ context.Context, blobs map[string]int64, _ time.Time) error {
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

// TestSharedVerdictAsksForBytesAtOnce: a warm GET by digest whose verdict
// this replica does not hold asks the shared state for the verdict and the
// manifest bytes at the same time, and serves from them without verifying
// or asking the upstream for the manifest.
func TestSharedVerdictAsksForBytesAtOnce(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	verdicts, manifests := decidedElsewhere(t, reg, pol, "acme/app", "v1")

	asked := make(chan struct{})
	vc := &twoLevelVerdicts{mapVerdicts: newMapVerdicts(), remote: verdicts, bytesAsked: asked, waitForOverlap: 5 * time.Second}
	mc := &twoLevelManifests{mapManifests: newMapManifests(), remote: manifests, asked: asked}
	eng := newEngineSpy(t, pol)
	sh := &blockingShared{release: make(chan struct{})}
	close(sh.release)
	b, up := newTestProxy(t, reg.srv.URL, eng, WithSharedState(sh), WithVerdictCache(vc), WithManifestCache(mc))

	w := do(b, http.MethodGet, manifestPath("acme/app", img.digest.String()))
	if w.Code != http.StatusOK || !sameBytes(w.Body.Bytes(), img.digest) {
		t.Fatalf("GET by digest = %d (bytes match: %v)", w.Code, sameBytes(w.Body.Bytes(), img.digest))
	}
	if !vc.overlapped.Load() {
		t.Error("the manifest bytes were not asked for while the shared verdict was read")
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
	asked := make(chan struct{})
	vc := &twoLevelVerdicts{mapVerdicts: newMapVerdicts(), remote: verdicts, bytesAsked: asked, waitForOverlap: time.Second}
	mc := &twoLevelManifests{mapManifests: newMapManifests(), remote: manifests, asked: asked}
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
