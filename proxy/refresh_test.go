package proxy

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// stepClock is a clock a test moves by hand.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const refreshTTL = 10 * time.Minute

// withRefreshClock puts p's refresh-ahead on a clock the test moves.
func withRefreshClock(p *Proxy) *stepClock {
	c := &stepClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	p.refresh.now = c.now
	return c
}

// releaseEngine enforces signatures by k on every repository.
func releaseEngine(t *testing.T, k *fixtures.KeySigner) *engineSpy {
	return newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{{
		Name: "prod", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", k)},
	}}})
}

func TestRefreshAheadSeesRemovedSignature(t *testing.T) {
	t.Parallel()
	u := newRegistry(t)
	k := newKey(t)
	img := u.pushImage(t, "acme/app", "v1")
	sig, err := fixtures.AttachBundle(context.Background(), u.ref(t, "acme/app", img.digest), k, fixtures.BundleSpec{})
	if err != nil {
		t.Fatal(err)
	}
	eng := releaseEngine(t, k)
	events := &eventRecorder{}
	p, _ := newTestProxy(t, u.srv.URL, eng, WithVerdictCache(newMapVerdicts()), WithEventSink(events),
		WithRefreshAhead(RefreshAhead{AllowTTL: refreshTTL}))
	clock := withRefreshClock(p)
	pull := func() int { return do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())).Code }
	if c := pull(); c != http.StatusOK {
		t.Fatalf("pull: %d", c)
	}
	layer := blobPath("acme/app", img.layers[0])
	if w := do(p, http.MethodHead, layer); w.Code != http.StatusOK {
		t.Fatalf("blob of the allowed manifest: %d", w.Code)
	}
	if err := remote.Delete(u.ref(t, "acme/app", sig)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Not due before 80% of the allow TTL.
	clock.advance(refreshTTL / 2)
	if n := p.refreshDue(ctx); n != 0 {
		t.Fatalf("%d re-verifications at half the TTL", n)
	}
	if c := pull(); c != http.StatusOK {
		t.Fatalf("cached pull: %d", c)
	}
	clock.advance(refreshTTL * 35 / 100)
	if n := p.refreshDue(ctx); n != 1 {
		t.Fatalf("%d re-verifications at 85%% of the TTL, want 1", n)
	}
	p.refresh.wg.Wait()
	var drift []Event
	events.mu.Lock()
	for _, e := range events.events {
		if e.Kind == EventDrift {
			drift = append(drift, e)
		}
	}
	events.mu.Unlock()
	if len(drift) != 1 || drift[0].Decision == nil || drift[0].Decision.Digest != img.digest.String() {
		t.Fatalf("drift events = %+v, want one about %s", drift, img.digest)
	}
	// What the allow opened is withdrawn with it.
	if w := do(p, http.MethodHead, layer); w.Code != http.StatusForbidden {
		t.Fatalf("blob of a manifest that drifted to a denial: %d, want 403", w.Code)
	}
	// The denial is in the cache: the next pull is denied without a
	// verification of its own, and is not reported as drift again.
	calls := eng.calls.Load()
	if c := pull(); c != http.StatusForbidden {
		t.Fatalf("pull after the background re-verification: %d, want 403", c)
	}
	if eng.calls.Load() != calls {
		t.Fatal("the pull verified again instead of using the refreshed verdict")
	}
	if d := lastDecision(t, p, img.digest); d.Drift {
		t.Fatalf("drift reported twice: %+v", d)
	}
	// A denied digest is no longer tracked.
	clock.advance(refreshTTL)
	if n := p.refreshDue(ctx); n != 0 {
		t.Fatalf("%d re-verifications of a denied digest", n)
	}
}

func TestRefreshAheadForgetsDigestsNotPulled(t *testing.T) {
	t.Parallel()
	u := newRegistry(t)
	img := u.pushImage(t, "acme/app", "v1")
	v := allowAll()
	p, _ := newTestProxy(t, u.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithRefreshAhead(RefreshAhead{AllowTTL: refreshTTL}))
	clock := withRefreshClock(p)
	if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("pull: %d", w.Code)
	}
	clock.advance(refreshTTL + time.Second)
	if n := p.refreshDue(context.Background()); n != 0 {
		t.Fatalf("%d re-verifications of a digest not pulled within the TTL", n)
	}
}

func TestRefreshAheadBounded(t *testing.T) {
	t.Parallel()
	u := newRegistry(t)
	var imgs []pushed
	for _, tag := range []string{"a", "b", "c", "d", "e"} {
		imgs = append(imgs, u.pushImage(t, "acme/app", tag))
	}
	var running, peak atomic.Int64
	var hold atomic.Bool
	entered := make(chan struct{}, 8)
	release := make(chan struct{})
	v := allowAll()
	inner := v.fn
	v.fn = func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if hold.Load() {
			entered <- struct{}{}
			<-release
		}
		return inner(ctx, s)
	}
	p, _ := newTestProxy(t, u.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithMaxVerifications(8),
		WithRefreshAhead(RefreshAhead{AllowTTL: refreshTTL, Concurrency: 2}))
	clock := withRefreshClock(p)
	for _, img := range imgs {
		if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("pull: %d", w.Code)
		}
	}
	peak.Store(0)
	hold.Store(true)
	clock.advance(refreshTTL * 9 / 10)
	ctx := context.Background()
	if n := p.refreshDue(ctx); n != 2 {
		t.Fatalf("started %d re-verifications, want the concurrency of 2", n)
	}
	recv(t, entered, "entered")
	recv(t, entered, "entered")
	if n := p.refreshDue(ctx); n != 0 {
		t.Fatalf("started %d more while 2 are running", n)
	}
	close(release)
	p.refresh.wg.Wait()
	// The rest follow in later rounds, never more than 2 at once.
	for range 3 {
		p.refreshDue(ctx)
		p.refresh.wg.Wait()
	}
	if got := peak.Load(); got != 2 {
		t.Fatalf("peak concurrent verifications = %d, want 2", got)
	}
	if n := v.calls.Load(); n != 10 {
		t.Fatalf("verifications = %d, want 5 pulls + 5 re-verifications", n)
	}
}

// TestRefreshAheadYieldsToClients: with every verification slot taken
// by clients, nothing is re-verified.
func TestRefreshAheadYieldsToClients(t *testing.T) {
	t.Parallel()
	u := newRegistry(t)
	img := u.pushImage(t, "acme/app", "v1")
	v := allowAll()
	p, _ := newTestProxy(t, u.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithMaxVerifications(1),
		WithRefreshAhead(RefreshAhead{AllowTTL: refreshTTL}))
	clock := withRefreshClock(p)
	if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("pull: %d", w.Code)
	}
	clock.advance(refreshTTL * 9 / 10)
	if !p.slots.sem.TryAcquire(1) {
		t.Fatal("slot busy")
	}
	if n := p.refreshDue(context.Background()); n != 0 {
		t.Fatalf("started %d re-verifications with no free slot", n)
	}
	p.slots.sem.Release(1)
	if n := p.refreshDue(context.Background()); n != 1 {
		t.Fatalf("started %d re-verifications with the slot free, want 1", n)
	}
	p.refresh.wg.Wait()
}

// TestRefreshDriftClosesCoveredBlobs: when an index's allow drifts to a
// denial, the blobs of the children it covered close with it.
func TestRefreshDriftClosesCoveredBlobs(t *testing.T) {
	t.Parallel()
	u := newRegistry(t)
	k := newKey(t)
	idx, kids := u.pushIndex(t, "acme/multi", "v1")
	sig, err := fixtures.AttachBundle(context.Background(), u.ref(t, "acme/multi", idx.digest), k, fixtures.BundleSpec{})
	if err != nil {
		t.Fatal(err)
	}
	eng := releaseEngine(t, k)
	// Another signed image in the repository, whose allow holds.
	other := u.pushImage(t, "acme/multi", "other")
	if _, err := fixtures.AttachBundle(context.Background(), u.ref(t, "acme/multi", other.digest), k, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	p, _ := newTestProxy(t, u.srv.URL, eng, WithVerdictCache(newMapVerdicts()),
		WithRefreshAhead(RefreshAhead{AllowTTL: refreshTTL}))
	clock := withRefreshClock(p)
	for _, d := range []v1.Hash{idx.digest, kids[0].digest, other.digest} {
		if w := do(p, http.MethodGet, manifestPath("acme/multi", d.String())); w.Code != http.StatusOK {
			t.Fatalf("pull %s: %d %s", d, w.Code, w.Body)
		}
	}
	if d := lastDecision(t, p, kids[0].digest); d.CoveredBy != idx.digest.String() {
		t.Fatalf("child decision %+v, want coverage by the index", d)
	}
	layer := blobPath("acme/multi", kids[0].layers[0])
	if w := do(p, http.MethodHead, layer); w.Code != http.StatusOK {
		t.Fatalf("blob of a covered child: %d", w.Code)
	}
	if err := remote.Delete(u.ref(t, "acme/multi", sig)); err != nil {
		t.Fatal(err)
	}
	clock.advance(refreshTTL * 85 / 100)
	if n := p.refreshDue(context.Background()); n != 2 {
		t.Fatalf("%d re-verifications, want the index's and the other image's", n)
	}
	p.refresh.wg.Wait()
	if w := do(p, http.MethodHead, layer); w.Code != http.StatusForbidden {
		t.Fatalf("blob of a child covered by an index that drifted to a denial: %d, want 403", w.Code)
	}
	if w := do(p, http.MethodHead, blobPath("acme/multi", other.layers[0])); w.Code != http.StatusOK {
		t.Fatalf("blob of an image whose allow held: %d, want 200", w.Code)
	}
}
