package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// eventLog is an EventSink that keeps every event.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) Emit(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// take returns the events emitted since the last take.
func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.events
	l.events = nil
	return out
}

func ofKind(events []Event, k EventKind) []Event {
	var out []Event
	for _, e := range events {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// watchEnv is a signed image at docker.io/acme/app:v1, a proxy with a
// verdict cache, an event log and a registry, and a watch on the tag.
type watchEnv struct {
	u      *upstreamRegistry
	key    *fixtures.KeySigner
	img    pushed
	sig    v1.Hash // the signature's manifest in the referrers API
	p      *Proxy
	eng    *engineSpy
	events *eventLog
	reg    *prometheus.Registry
	clock  *fakeClock
	w      *Watcher
	ws     *watchState
}

const watchRef = "docker.io/acme/app:v1"

func newWatchEnv(t *testing.T, rules ...verify.AttestationRule) *watchEnv {
	t.Helper()
	return newWatchEnvWith(t, newMapVerdicts(), nil, rules...)
}

func newWatchEnvWith(t *testing.T, vc *mapVerdicts, opts []Option, rules ...verify.AttestationRule) *watchEnv {
	t.Helper()
	e := &watchEnv{u: newRegistry(t), key: newKey(t), events: &eventLog{}, reg: prometheus.NewRegistry(),
		clock: &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}}
	e.img = e.u.pushImage(t, "acme/app", "v1")
	if len(rules) == 0 {
		sig, err := fixtures.AttachBundle(context.Background(), e.u.ref(t, "acme/app", e.img.digest), e.key, fixtures.BundleSpec{})
		if err != nil {
			t.Fatal(err)
		}
		e.sig = sig
	}
	e.eng = newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{{
		Name: "prod", Upstream: "docker.io", Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", e.key)}, Attestations: rules,
	}}})
	e.p, _ = newTestProxy(t, e.u.srv.URL, e.eng, append([]Option{WithVerdictCache(vc), WithEventSink(e.events), WithRegisterer(e.reg)}, opts...)...)
	w, err := e.p.NewWatcher([]Watch{{Ref: watchRef, Every: time.Minute}}, withWatchClock(e.clock.now))
	if err != nil {
		t.Fatal(err)
	}
	e.w, e.ws = w, w.watches[0]
	return e
}

func (e *watchEnv) run(t *testing.T, want string) []Event {
	t.Helper()
	if got := e.w.check(context.Background(), e.ws); got != want {
		t.Fatalf("watch run: got %q, want %q", got, want)
	}
	return e.events.take()
}

func (e *watchEnv) runs(result string) float64 {
	return testutil.ToFloat64(e.w.m.runs.WithLabelValues(watchRef, result))
}

func TestWatchSignedImage(t *testing.T) {
	e := newWatchEnv(t)
	if got := testutil.ToFloat64(e.w.m.lastAllowed.WithLabelValues(watchRef)); got != 0 {
		t.Fatalf("last allowed before any run = %v, want 0", got)
	}
	if ev := e.run(t, WatchAllowed); len(ev) != 0 {
		t.Fatalf("events for an allowed watch: %+v", ev)
	}
	if got, want := testutil.ToFloat64(e.w.m.lastAllowed.WithLabelValues(watchRef)), float64(e.clock.now().Unix()); got != want {
		t.Fatalf("last allowed = %v, want %v", got, want)
	}
	if e.runs(WatchAllowed) != 1 {
		t.Fatalf("allowed runs = %v, want 1", e.runs(WatchAllowed))
	}
	d := lastDecision(t, e.p, e.img.digest)
	if d.Client != WatchClient || d.Decision != "allow" || d.Reference != "v1" {
		t.Fatalf("decision = %+v, want an allow by client %q", d, WatchClient)
	}
	// A watch is not a client's pull.
	if n := testutil.ToFloat64(e.p.metrics.decisions.WithLabelValues("prod", "allow", "enforce", "verified")); n != 0 {
		t.Fatalf("decisions_total counted a watch run: %v", n)
	}
	// It re-verifies every run, cached verdict or not.
	e.clock.advance(time.Minute)
	e.run(t, WatchAllowed)
	if n := e.eng.callsFor(e.img.digest); n != 2 {
		t.Fatalf("verifications = %d, want 2", n)
	}
}

func TestWatchSignatureRemoved(t *testing.T) {
	e := newWatchEnv(t)
	e.run(t, WatchAllowed)
	if w := do(e.p, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("pull of the signed image: %d", w.Code)
	}
	// The allow is cached; the signature then disappears upstream.
	if err := remote.Delete(e.u.ref(t, "acme/app", e.sig)); err != nil {
		t.Fatal(err)
	}
	e.clock.advance(time.Minute)
	ev := e.run(t, WatchAbsent)
	abs := ofKind(ev, EventWatchAbsent)
	if len(abs) != 1 || len(ev) != 1 {
		t.Fatalf("events = %+v, want one watch-absent", ev)
	}
	a := abs[0]
	if !strings.Contains(a.Message, "no signatures found") || !strings.Contains(a.Details["reasons"], "no signatures found") {
		t.Fatalf("watch-absent does not give the reason: %+v", a)
	}
	if a.Details["digest"] != e.img.digest.String() || a.Details["ref"] != watchRef || a.Details["previous_verdict"] != "allow" {
		t.Fatalf("watch-absent details = %v", a.Details)
	}
	// The fresh denial replaced the cached allow: the next pull is denied.
	if w := do(e.p, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusForbidden {
		t.Fatalf("pull after the signature was removed: %d, want 403", w.Code)
	}
	// Still absent later, and by now not allowed for longer than
	// stale_after (4 × every): both are said, on every run.
	e.clock.advance(4 * time.Minute)
	ev = e.run(t, WatchAbsent)
	if len(ofKind(ev, EventWatchAbsent)) != 1 || len(ofKind(ev, EventWatchStale)) != 1 {
		t.Fatalf("events = %+v, want watch-absent and watch-stale", ev)
	}
}

// blockOnce holds the first GET of path until release is closed.
type blockOnce struct {
	path    string
	once    sync.Once
	blocked chan struct{}
	release chan struct{}
	rt      http.RoundTripper
}

func (b *blockOnce) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && r.URL.Path == b.path {
		first := false
		b.once.Do(func() { first = true })
		if first {
			close(b.blocked)
			<-b.release
		}
	}
	return b.rt.RoundTrip(r)
}

// TestWatchJoinsNoCachedFlight: a pull whose shared verification found a
// verdict in the cache (another flight had just filled it) is still
// fetching the bytes when a watch run starts. The watch must verify on
// its own, not take that cached verdict.
func TestWatchJoinsNoCachedFlight(t *testing.T) {
	vc := newMapVerdicts()
	b := &blockOnce{blocked: make(chan struct{}), release: make(chan struct{}), rt: newSpy()}
	e := newWatchEnvWith(t, vc, []Option{WithTransport(b)})
	b.path = "/v2/acme/app/manifests/" + e.img.digest.String()
	key := verdictKey(e.eng.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", e.img.digest)
	vc.onGet = func(n int64) {
		if n == 1 {
			vc.Add(key, verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: e.img.digest.String()})
		}
	}
	if err := remote.Delete(e.u.ref(t, "acme/app", e.sig)); err != nil {
		t.Fatal(err)
	}
	pulled := make(chan int, 1)
	go func() { pulled <- do(e.p, http.MethodGet, manifestPath("acme/app", e.img.digest.String())).Code }()
	recv(t, b.blocked, "b.blocked")
	result := make(chan string, 1)
	go func() { result <- e.w.check(context.Background(), e.ws) }()
	var got string
	select {
	case got = <-result:
		close(b.release)
	case <-time.After(30 * time.Second):
		// Only a watch waiting on the pull's flight gets here.
		close(b.release)
		got = <-result
	}
	recv(t, pulled, "pulled")
	if got != WatchAbsent {
		t.Fatalf("watch run: %q, want %q (a fresh verification)", got, WatchAbsent)
	}
}

func TestWatchTagGone(t *testing.T) {
	e := newWatchEnv(t)
	e.run(t, WatchAllowed)
	ref, err := name.NewTag(e.u.host+"/acme/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(ref); err != nil {
		t.Fatal(err)
	}
	ev := e.run(t, WatchAbsent)
	if abs := ofKind(ev, EventWatchAbsent); len(abs) != 1 || len(ev) != 1 || !strings.Contains(abs[0].Message, "not found") {
		t.Fatalf("events = %+v, want watch-absent: not found", ev)
	}
	// Gone long enough, it is stale too; back, at the same digest, it is
	// no change.
	e.clock.advance(5 * time.Minute)
	if ev := e.run(t, WatchAbsent); len(ofKind(ev, EventWatchStale)) != 1 {
		t.Fatalf("events = %+v, want watch-stale too", ev)
	}
	if err := remote.Tag(ref, remoteImage(t, e.u, e.img.digest)); err != nil {
		t.Fatal(err)
	}
	if ev := e.run(t, WatchAllowed); len(ev) != 0 {
		t.Fatalf("events = %+v, want none", ev)
	}
}

// remoteImage is repo acme/app's image d at the registry.
func remoteImage(t *testing.T, u *upstreamRegistry, d v1.Hash) remote.Taggable {
	t.Helper()
	desc, err := remote.Get(u.ref(t, "acme/app", d))
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

func TestWatchTagMoved(t *testing.T) {
	e := newWatchEnv(t)
	e.run(t, WatchAllowed)
	next := e.u.pushImage(t, "acme/app", "v1")
	e.u.sign(t, "acme/app", next.digest, e.key)
	e.clock.advance(time.Minute)
	ev := e.run(t, WatchAllowed)
	ch := ofKind(ev, EventWatchChanged)
	if len(ch) != 1 || len(ev) != 1 {
		t.Fatalf("events = %+v, want one watch-changed", ev)
	}
	d := ch[0].Details
	if d["previous_digest"] != e.img.digest.String() || d["digest"] != next.digest.String() ||
		d["previous_verdict"] != "allow" || d["verdict"] != "allow" {
		t.Fatalf("watch-changed details = %v", d)
	}
	// Unchanged since: nothing more.
	e.clock.advance(time.Minute)
	if ev := e.run(t, WatchAllowed); len(ev) != 0 {
		t.Fatalf("events = %+v, want none", ev)
	}
}

func TestWatchUnreachable(t *testing.T) {
	e := newWatchEnv(t)
	e.run(t, WatchAllowed)
	e.u.srv.Close()
	e.clock.advance(time.Minute)
	if ev := e.run(t, WatchUnreachable); len(ev) != 0 {
		t.Fatalf("alerted after one period: %+v", ev)
	}
	for i := range 3 {
		e.clock.advance(time.Minute)
		ev := e.run(t, WatchUnreachable)
		un := ofKind(ev, EventWatchUnreachable)
		if len(un) != 1 {
			t.Fatalf("run %d after 2 × every: events %+v, want watch-unreachable", i+2, ev)
		}
		if un[0].Details["last_decided"] != "2030-01-01T00:00:00Z" || un[0].Details["error"] == "" {
			t.Fatalf("watch-unreachable details = %v", un[0].Details)
		}
	}
	if e.runs(WatchUnreachable) != 4 {
		t.Fatalf("unreachable runs = %v, want 4", e.runs(WatchUnreachable))
	}
}

func TestWatchStaleProvenance(t *testing.T) {
	rule := provenanceRule("release")
	rule.MaxAge = 24 * time.Hour
	e := newWatchEnv(t, rule)
	old := time.Now().Add(-72 * time.Hour)
	spec := fixtures.BundleSpec{PredicateType: fixtures.PredicateSLSAProvenanceV1, Predicate: fixtures.SLSAProvenanceV1(testBuilder, nil, old, old)}
	if _, err := fixtures.AttachBundle(context.Background(), e.u.ref(t, "acme/app", e.img.digest), e.key, spec); err != nil {
		t.Fatal(err)
	}
	ev := e.run(t, WatchStale)
	st := ofKind(ev, EventWatchStale)
	if len(st) != 1 || len(ev) != 1 || !strings.Contains(st[0].Message, "stale") {
		t.Fatalf("events = %+v, want one watch-stale", ev)
	}
}

func TestWatchOtherDenialIsADeny(t *testing.T) {
	e := newWatchEnv(t)
	e.eng.swap(t, verify.Policy{Boundaries: []verify.Boundary{{
		Name: "prod", Upstream: "docker.io", Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", newKey(t))},
	}}})
	ev := e.run(t, WatchDenied)
	if len(ofKind(ev, EventDeny)) != 1 || ev[0].Decision == nil || ev[0].Decision.Client != WatchClient {
		t.Fatalf("events = %+v, want a deny of client watch", ev)
	}
}

func TestWatchRevokedDigest(t *testing.T) {
	e := newWatchEnv(t)
	e.run(t, WatchAllowed)
	if err := e.p.Revocations().Add(Revocation{Digest: e.img.digest.String(), Reason: "compromised build", By: "security"}); err != nil {
		t.Fatal(err)
	}
	e.clock.advance(time.Minute)
	ev := e.run(t, WatchDenied)
	if len(ofKind(ev, EventRevocationHit)) != 1 || len(ofKind(ev, EventDeny)) != 1 {
		t.Fatalf("events = %+v, want revocation-hit and deny", ev)
	}
}

func TestWatchRefs(t *testing.T) {
	p, _ := newTestProxy(t, "http://127.0.0.1:1", allowAll(), WithDefaultUpstream("docker.io"))
	good := []string{"docker.io/acme/app:v1", "ghcr.io/acme/app@sha256:" + strings.Repeat("a", 64), "index.docker.io/nginx:1"}
	for _, r := range good {
		if _, err := p.NewWatcher([]Watch{{Ref: r, Every: time.Minute}}); err != nil {
			t.Errorf("%s: %v", r, err)
		}
	}
	bad := []string{
		"acme/app:v1",          // no upstream, even with a default one
		"quay.io/acme/app:v1",  // not configured
		"docker.io/acme/app",   // no tag or digest
		"docker.io/acme/app:",  // empty tag
		"docker.io/acme/App:1", // not the name grammar
		"docker.io/acme/app@sha256:abc",
		"docker.io:v1",
	}
	for _, r := range bad {
		if _, err := p.NewWatcher([]Watch{{Ref: r, Every: time.Minute}}); err == nil {
			t.Errorf("%s accepted", r)
		}
	}
	if _, err := p.NewWatcher([]Watch{{Ref: good[0], Every: time.Minute}, {Ref: good[0], Every: time.Hour}}); err == nil {
		t.Error("a reference watched twice accepted")
	}
	if _, err := p.NewWatcher([]Watch{{Ref: good[0]}}); err == nil {
		t.Error("every 0 accepted")
	}
	// Docker Hub's implied library/ as in a pull.
	w, err := p.NewWatcher([]Watch{{Ref: "docker.io/nginx:1", Every: time.Minute}})
	if err != nil || w.watches[0].repo != "library/nginx" {
		t.Fatalf("docker.io/nginx: %v %+v", err, w)
	}
}

// TestWatchRunStops runs the scheduler for real until two runs went by,
// then stops it.
func TestWatchRunStops(t *testing.T) {
	e := newWatchEnv(t)
	w, err := e.p.NewWatcher([]Watch{{Ref: watchRef, Every: 20 * time.Millisecond}}, WithWatchConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		w.Run(ctx)
		close(done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for testutil.ToFloat64(w.m.runs.WithLabelValues(watchRef, WatchAllowed)) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the watch did not run twice")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	recv(t, done, "done")
}
