package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
)

// doCtx sends one request carrying ctx straight to the handler.
func doCtx(ctx context.Context, p http.Handler, method, target string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil).WithContext(ctx)
	w := httptest.NewRecorder()
	p.ServeHTTP(w, r)
	return w
}

func gaugeValue(t testing.TB, p *Proxy, name string) float64 {
	t.Helper()
	mfs, err := p.gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not found", name)
	return 0
}

func rejected(t *testing.T, p *Proxy, reason string) float64 {
	t.Helper()
	return counterValue(t, p, "portcullis_verifications_rejected_total", map[string]string{"reason": reason})
}

// check429 asserts a TOOMANYREQUESTS answer with a Retry-After of 1–5 s.
func check429(t *testing.T, w *httptest.ResponseRecorder, reason string) {
	t.Helper()
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429: %s", w.Code, w.Body)
	}
	var env struct {
		Errors []struct {
			Code   string         `json:"code"`
			Detail map[string]any `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || len(env.Errors) != 1 {
		t.Fatalf("invalid error envelope %q: %v", w.Body, err)
	}
	if env.Errors[0].Code != CodeTooManyRequests || env.Errors[0].Detail["reason"] != reason {
		t.Errorf("error %+v, want TOOMANYREQUESTS for %s", env.Errors[0], reason)
	}
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if err != nil || ra < retryAfterMin || ra > retryAfterMax {
		t.Errorf("Retry-After %q, want %d–%d seconds", w.Header().Get("Retry-After"), retryAfterMin, retryAfterMax)
	}
}

// gate is a Verifier that holds the verification of chosen digests until
// released, and reports each verification as it starts.
type gate struct {
	*fakeVerifier
	started chan v1.Hash
}

func newGate(hold map[v1.Hash]chan struct{}) *gate {
	g := &gate{started: make(chan v1.Hash, 64)}
	g.fakeVerifier = &fakeVerifier{fn: func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		g.started <- s.Digest
		if ch, ok := hold[s.Digest]; ok {
			select {
			case <-ch:
			case <-ctx.Done():
				return verify.Verdict{}, ctx.Err()
			}
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String()}, nil
	}}
	return g
}

func TestVerificationQueueFullAnswers429(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	a, b, c := reg.pushImage(t, "acme/app", "a"), reg.pushImage(t, "acme/app", "b"), reg.pushImage(t, "acme/app", "c")
	release := make(chan struct{})
	v := newGate(map[v1.Hash]chan struct{}{a.digest: release})
	vc := newMapVerdicts()
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(vc), WithMaxVerifications(1), WithVerifyQueue(1, time.Hour))

	wa := make(chan *httptest.ResponseRecorder, 1)
	go func() { wa <- do(p, http.MethodGet, manifestPath("acme/app", a.digest.String())) }()
	if d := <-v.started; d != a.digest {
		t.Fatalf("verification of %s started first", d)
	}
	wb := make(chan *httptest.ResponseRecorder, 1)
	go func() { wb <- do(p, http.MethodGet, manifestPath("acme/app", b.digest.String())) }()
	waitFor(t, "the second verification to queue", func() bool { return gaugeValue(t, p, "portcullis_verifications_queued") == 1 })
	if got := gaugeValue(t, p, "portcullis_verifications_running"); got != 1 {
		t.Errorf("running gauge %v, want 1", got)
	}

	check429(t, do(p, http.MethodGet, manifestPath("acme/app", c.digest.String())), rejectQueueFull)
	if got := rejected(t, p, rejectQueueFull); got != 1 {
		t.Errorf("queue_full rejections %v, want 1", got)
	}
	if v.calls.Load() != 1 {
		t.Errorf("%d verifications ran, want only the one holding the slot", v.calls.Load())
	}

	close(release)
	for _, w := range []*httptest.ResponseRecorder{<-wa, <-wb} {
		if w.Code != http.StatusOK {
			t.Fatalf("held and queued requests: %d %s", w.Code, w.Body)
		}
	}
	// A 429 is not a verdict: nothing was cached for c, and asking again
	// verifies it.
	if _, ok := vc.Get(verdictKey(v.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", c.digest)); ok {
		t.Fatal("the rejected verification left a verdict")
	}
	if w := do(p, http.MethodGet, manifestPath("acme/app", c.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("retry after the rejection: %d %s", w.Code, w.Body)
	}
	if g := gaugeValue(t, p, "portcullis_verifications_running"); g != 0 {
		t.Errorf("running gauge %v after every verification ended", g)
	}
}

func TestVerificationQueueTimeoutAnswers429(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	a, b := reg.pushImage(t, "acme/app", "a"), reg.pushImage(t, "acme/app", "b")
	release := make(chan struct{})
	v := newGate(map[v1.Hash]chan struct{}{a.digest: release})
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithMaxVerifications(1), WithVerifyQueue(4, 20*time.Millisecond))

	wa := make(chan *httptest.ResponseRecorder, 1)
	go func() { wa <- do(p, http.MethodGet, manifestPath("acme/app", a.digest.String())) }()
	recv(t, v.started, "v.started")
	check429(t, do(p, http.MethodGet, manifestPath("acme/app", b.digest.String())), rejectQueueTimeout)
	if got := rejected(t, p, rejectQueueTimeout); got != 1 {
		t.Errorf("queue_timeout rejections %v, want 1", got)
	}
	if got := gaugeValue(t, p, "portcullis_verifications_queued"); got != 0 {
		t.Errorf("queued gauge %v after the wait expired", got)
	}
	close(release)
	if w := <-wa; w.Code != http.StatusOK {
		t.Fatalf("held request: %d", w.Code)
	}
}

// TestQueuedClientLeavingFreesItsPlace: a request waiting for a slot whose
// client leaves gives its place to the next one.
func TestQueuedClientLeavingFreesItsPlace(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	a, b, c := reg.pushImage(t, "acme/app", "a"), reg.pushImage(t, "acme/app", "b"), reg.pushImage(t, "acme/app", "c")
	release := make(chan struct{})
	v := newGate(map[v1.Hash]chan struct{}{a.digest: release})
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithMaxVerifications(1), WithVerifyQueue(1, time.Hour))

	wa := make(chan *httptest.ResponseRecorder, 1)
	go func() { wa <- do(p, http.MethodGet, manifestPath("acme/app", a.digest.String())) }()
	recv(t, v.started, "v.started")
	ctx, leave := context.WithCancel(context.Background())
	wb := make(chan *httptest.ResponseRecorder, 1)
	go func() { wb <- doCtx(ctx, p, http.MethodGet, manifestPath("acme/app", b.digest.String())) }()
	queued := func(n float64) func() bool {
		return func() bool { return gaugeValue(t, p, "portcullis_verifications_queued") == n }
	}
	waitFor(t, "b to queue", queued(1))
	leave()
	recv(t, wb, "wb")
	waitFor(t, "b's place to be freed", queued(0))

	wc := make(chan *httptest.ResponseRecorder, 1)
	go func() { wc <- do(p, http.MethodGet, manifestPath("acme/app", c.digest.String())) }()
	waitFor(t, "c to queue in b's place", queued(1))
	close(release)
	for _, w := range []*httptest.ResponseRecorder{<-wa, <-wc} {
		if w.Code != http.StatusOK {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	if got := rejected(t, p, rejectQueueFull) + rejected(t, p, rejectQueueTimeout); got != 0 {
		t.Errorf("%v rejections, want none", got)
	}
	if n := v.callsFor(b.digest); n != 0 {
		t.Errorf("b, whose client left while queued, was verified %d times", n)
	}
}

func (g *gate) callsFor(d v1.Hash) int {
	n := 0
	for {
		select {
		case s := <-g.started:
			if s == d {
				n++
			}
		default:
			return n
		}
	}
}

// TestCacheHitsTakeNoSlot: with the only slot taken and no queue, a digest
// whose verdict is cached is still served.
func TestCacheHitsTakeNoSlot(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	a, b := reg.pushImage(t, "acme/app", "a"), reg.pushImage(t, "acme/app", "b")
	release := make(chan struct{})
	v := newGate(map[v1.Hash]chan struct{}{a.digest: release})
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()), WithMaxVerifications(1), WithVerifyQueue(0, time.Second))

	if w := do(p, http.MethodGet, manifestPath("acme/app", b.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("first pull of b: %d", w.Code)
	}
	recv(t, v.started, "v.started")
	wa := make(chan *httptest.ResponseRecorder, 1)
	go func() { wa <- do(p, http.MethodGet, manifestPath("acme/app", a.digest.String())) }()
	recv(t, v.started, "v.started")
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		if w := do(p, m, manifestPath("acme/app", b.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("cached %s of b while the slot is taken: %d %s", m, w.Code, w.Body)
		}
	}
	close(release)
	recv(t, wa, "wa")
	if v.calls.Load() != 2 {
		t.Errorf("%d verifications, want 2", v.calls.Load())
	}
}

// TestDependencyVerifiesInsideItsParentsSlot: with one slot and no queue, a
// model whose provenance names a dataset still verifies. Were a dependency
// to need a slot of its own, the parent holding the only one would wait
// for it forever (or, without a queue, fail closed at once).
func TestDependencyVerifiesInsideItsParentsSlot(t *testing.T) {
	t.Parallel()
	e := newLineageEnv(t, lineageSetup{opts: []Option{WithMaxVerifications(1), WithVerifyQueue(0, time.Second)}})
	data := e.dataset("ml/data", true)
	m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))
	if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
		t.Fatalf("pull with a lineage dependency and one slot: %d %s", w.Code, w.Body)
	}
	if n := e.spy.callsFor(data.digest); n != 1 {
		t.Errorf("dependency verified %d times, want 1", n)
	}
}

// TestAbandonedVerificationIsNotCached: a Verifier whose context ends may
// well answer "denied" (it could not read the evidence); when every client
// left, that answer is not a verdict and the next pull verifies afresh.
func TestAbandonedVerificationIsNotCached(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	entered := make(chan struct{}, 1)
	var first atomic.Bool
	first.Store(true)
	v := &fakeVerifier{fn: func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		if first.CompareAndSwap(true, false) {
			entered <- struct{}{}
			<-ctx.Done()
			return verify.Verdict{Allowed: false, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String(),
				Reasons: []string{"no valid signature: evidence unreadable"}}, nil
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String()}, nil
	}}
	vc := newMapVerdicts()
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(vc), WithMaxVerifications(1))
	target := manifestPath("acme/app", img.digest.String())

	ctx, leave := context.WithCancel(context.Background())
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- doCtx(ctx, p, http.MethodGet, target) }()
	recv(t, entered, "entered")
	leave()
	if w := <-done; w.Code != 499 {
		t.Fatalf("client that left: %d", w.Code)
	}
	waitFor(t, "the abandoned verification to end", func() bool { return p.flights.active.Load() == 0 })
	if vc.len() != 0 {
		t.Fatal("an abandoned verification's answer was cached as a verdict")
	}
	if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
		t.Fatalf("next pull: %d %s", w.Code, w.Body)
	}
	if v.calls.Load() != 2 {
		t.Errorf("%d verifications, want 2", v.calls.Load())
	}
}

// TestAbandonedDependencyIsNotCached: when the only client leaves, its
// verification is cancelled, and so is the lineage dependency it waits
// on; what the dependency's Verifier answers after that (here an allow)
// is not cached.
func TestAbandonedDependencyIsNotCached(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{}, 1)
	var first atomic.Bool
	first.Store(true)
	var dataDigest v1.Hash // set before the first pull
	breaker := &contractBreaker{deps: map[v1.Hash][]verify.DependencyRef{}, hook: func(ctx context.Context, s verify.Subject) error {
		if s.Digest == dataDigest && first.CompareAndSwap(true, false) {
			entered <- struct{}{}
			<-ctx.Done()
		}
		return nil // the contract breaker then answers "allowed"
	}}
	e := newLineageEnv(t, lineageSetup{verifier: breaker})
	data := e.dataset("ml/data", false)
	dataDigest = data.digest
	m := e.push(e.models, "ml/model", false)
	breaker.deps[m.digest] = []verify.DependencyRef{depRef(datasetsHost, "ml/data", data.digest)}

	ctx, leave := context.WithCancel(context.Background())
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- doCtx(ctx, e.p, http.MethodGet, "/v2/models/ml/model/manifests/"+m.digest.String()) }()
	recv(t, entered, "entered")
	leave()
	if w := <-done; w.Code != 499 {
		t.Fatalf("client that left: %d", w.Code)
	}
	waitFor(t, "the parent's and the dependency's verifications to end", func() bool {
		return e.p.flights.active.Load() == 0 && e.p.depFlights.active.Load() == 0
	})
	if n := e.verdicts.len(); n != 0 {
		t.Fatalf("%d verdicts cached from abandoned verifications", n)
	}
	if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
		t.Fatalf("next pull: %d %s", w.Code, w.Body)
	}
}

// goroutineBaseline lets what a first request started settle and returns
// the number of goroutines running.
func goroutineBaseline(idle ...*http.Transport) int {
	for _, tr := range idle {
		tr.CloseIdleConnections()
	}
	return settledGoroutines(0)
}

// backToBaseline waits until no more goroutines run than before.
func backToBaseline(t *testing.T, baseline int, idle ...*http.Transport) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, tr := range idle {
			tr.CloseIdleConnections()
		}
		n := runtime.NumGoroutine()
		if n <= baseline {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLastWaiterLeavingCancelsVerification: one client of two leaving keeps
// the shared verification going; both leaving cancels it and leaves nothing
// running. Not parallel: it counts goroutines.
func TestLastWaiterLeavingCancelsVerification(t *testing.T) {
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	other := reg.pushImage(t, "acme/app", "warm")
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	cancelled := make(chan error, 4)
	v := &fakeVerifier{fn: func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		if s.Digest == img.digest {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				cancelled <- context.Cause(ctx)
				return verify.Verdict{}, ctx.Err()
			}
		}
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String()}, nil
	}}
	p, s := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(newMapVerdicts()))
	tr := s.rt.(*http.Transport)
	target := manifestPath("acme/app", img.digest.String())
	key := verdictKey(v.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", img.digest)
	if w := do(p, http.MethodGet, manifestPath("acme/app", other.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("warm-up: %d", w.Code)
	}

	join := func() (context.CancelFunc, <-chan *httptest.ResponseRecorder) {
		ctx, cancel := context.WithCancel(context.Background())
		ch := make(chan *httptest.ResponseRecorder, 1)
		go func() { ch <- doCtx(ctx, p, http.MethodGet, target) }()
		return cancel, ch
	}

	// Each subtest measures its own baseline: it runs on a goroutine of
	// its own.
	t.Run("both leave", func(t *testing.T) {
		baseline := goroutineBaseline(tr)
		leave1, w1 := join()
		leave2, w2 := join()
		<-entered
		waitFor(t, "both clients to share the verification", func() bool { return p.flights.waiters(key) == 2 })
		leave1()
		<-w1
		leave2()
		<-w2
		select {
		case cause := <-cancelled:
			if !errors.Is(cause, errAbandoned) {
				t.Fatalf("verification cancelled with %v, want errAbandoned", cause)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the verification was not cancelled when its last client left")
		}
		backToBaseline(t, baseline, tr)
	})
	t.Run("one leaves", func(t *testing.T) {
		baseline := goroutineBaseline(tr)
		leave1, w1 := join()
		_, w2 := join()
		<-entered
		waitFor(t, "both clients to share the verification", func() bool { return p.flights.waiters(key) == 2 })
		leave1()
		<-w1
		close(release)
		if w := <-w2; w.Code != http.StatusOK {
			t.Fatalf("client that stayed: %d %s", w.Code, w.Body)
		}
		select {
		case err := <-cancelled:
			t.Fatalf("verification cancelled (%v) by the client that left", err)
		default:
		}
		backToBaseline(t, baseline, tr)
	})
}

// generatedUpstream serves n distinct, valid image manifests by digest.
func generatedUpstream(t *testing.T, n int) (*httptest.Server, []v1.Hash) {
	t.Helper()
	byDigest := map[string][]byte{}
	var digests []v1.Hash
	for i := range n {
		raw := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},"layers":[],`+
			`"annotations":{"n":"%d"}}`, sha([]byte("{}")), i)
		d := sha(raw)
		byDigest[d.String()] = raw
		digests = append(digests, d)
	}
	srv := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, ref, ok := strings.Cut(r.URL.Path, "/manifests/")
		raw, found := byDigest[ref]
		if !ok || !found {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", ref)
		w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(raw)
		}
	})
	return srv, digests
}

// flood sends one request per target from workers clients at a time, each
// abandoned after patience, and returns the status codes seen.
func flood(p http.Handler, targets []string, workers int, patience time.Duration) map[int]int {
	var mu sync.Mutex
	codes := map[int]int{}
	next := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for target := range next {
				ctx, cancel := context.WithTimeout(context.Background(), patience)
				w := doCtx(ctx, p, http.MethodGet, target)
				cancel()
				mu.Lock()
				codes[w.Code]++
				mu.Unlock()
			}
		})
	}
	for _, target := range targets {
		next <- target
	}
	close(next)
	wg.Wait()
	return codes
}

// TestAbandonedFloodLeavesNothingRunning: 2000 distinct digests, each
// abandoned by its client while a Verifier that only ends when cancelled
// decides on it. Verifications never exceed the bound, each one is
// cancelled, nothing is cached and no goroutine is left behind. Not
// parallel: it counts goroutines.
func TestAbandonedFloodLeavesNothingRunning(t *testing.T) {
	const n, maxN = 2000, 4
	srv, digests := generatedUpstream(t, n+1)
	var running, peak, ended atomic.Int64
	v := &fakeVerifier{fn: func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		if s.Digest == digests[n] {
			return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String()}, nil
		}
		now := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if now <= p || peak.CompareAndSwap(p, now) {
				break
			}
		}
		<-ctx.Done()
		ended.Add(1)
		// What a Verifier might answer when it could read no evidence.
		return verify.Verdict{Allowed: false, Mode: verify.ModeEnforce, Boundary: "prod", Digest: s.Digest.String(), Reasons: []string{"no evidence"}}, nil
	}}
	vc := newMapVerdicts()
	p, s := newTestProxy(t, srv.URL, v, WithVerdictCache(vc), WithMaxVerifications(maxN), WithVerifyQueue(4*maxN, time.Minute))
	tr := s.rt.(*http.Transport)
	if w := do(p, http.MethodGet, manifestPath("acme/app", digests[n].String())); w.Code != http.StatusOK {
		t.Fatalf("warm-up: %d %s", w.Code, w.Body)
	}
	if vc.len() != 1 {
		t.Fatal("warm-up verdict not cached")
	}
	baseline := goroutineBaseline(tr)

	var targets []string
	for _, d := range digests[:n] {
		targets = append(targets, manifestPath("acme/app", d.String()))
	}
	codes := flood(p, targets, 32, 20*time.Millisecond)
	t.Logf("answers: %v; %d verifications started, peak %d at once", codes, v.calls.Load()-1, peak.Load())

	if pk := peak.Load(); pk > maxN || pk == 0 {
		t.Errorf("peak of %d verifications at once, bound %d", pk, maxN)
	}
	backToBaseline(t, baseline, tr)
	if started, stopped := v.calls.Load()-1, ended.Load(); started != stopped {
		t.Errorf("%d verifications started, %d cancelled", started, stopped)
	}
	if vc.len() != 1 {
		t.Errorf("%d verdicts cached from abandoned verifications", vc.len()-1)
	}
	for _, g := range []string{"portcullis_verifications_running", "portcullis_verifications_queued"} {
		if got := gaugeValue(t, p, g); got != 0 {
			t.Errorf("%s = %v after the flood", g, got)
		}
	}
}

// TestUnknownDigestsCostOneUpstreamRequest: a digest the upstream does not
// have costs one manifest request, whether the upstream answers 404 or
// stalls until the client gives up, and a flood of them in random
// repositories leaves no goroutine behind. Not parallel: it counts
// goroutines.
func TestUnknownDigestsCostOneUpstreamRequest(t *testing.T) {
	randomHex := func() string {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}
	var mu sync.Mutex
	paths := map[string]int{}
	var stall atomic.Bool
	srv := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			mu.Lock()
			paths[r.Method+" "+r.URL.Path]++
			mu.Unlock()
			if stall.Load() {
				<-r.Context().Done()
				return
			}
		}
		http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}`, http.StatusNotFound)
	})
	vc := newMapVerdicts()
	s := newSpy()
	// A stalled upstream call is ended by the client leaving, not by the
	// upstream timeout, which is set out of reach of the test.
	p, err := New([]Upstream{{Name: "docker.io", URL: srv.URL, Insecure: true, Timeout: time.Hour}}, allowAll(),
		WithTransport(s), WithVerdictCache(vc), WithVerifyTimeout(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tr := s.rt.(*http.Transport)
	if w := do(p, http.MethodGet, manifestPath("warm/up", "sha256:"+randomHex())); w.Code != http.StatusNotFound {
		t.Fatalf("warm-up: %d %s", w.Code, w.Body)
	}

	checkPaths := func(t *testing.T, want int) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		total := 0
		for path, k := range paths {
			if k != 1 {
				t.Errorf("%s requested %d times", path, k)
			}
			total += k
		}
		if total == 0 || (want > 0 && total != want) {
			t.Errorf("%d manifest requests, want %d", total, want)
		}
		clear(paths)
	}

	t.Run("404", func(t *testing.T) {
		clear(paths)
		for i := range 50 {
			target := manifestPath(fmt.Sprintf("r%d/%s", i, randomHex()[:8]), "sha256:"+randomHex())
			if w := do(p, http.MethodGet, target); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "MANIFEST_UNKNOWN") {
				t.Fatalf("unknown digest: %d %s", w.Code, w.Body)
			}
		}
		checkPaths(t, 50)
	})
	t.Run("stalled", func(t *testing.T) {
		baseline := goroutineBaseline(tr)
		stall.Store(true)
		defer stall.Store(false)
		var targets []string
		for i := range 2000 {
			targets = append(targets, manifestPath(fmt.Sprintf("r%d/%s", i, randomHex()[:8]), "sha256:"+randomHex()))
		}
		codes := flood(p, targets, 32, 20*time.Millisecond)
		t.Logf("answers: %v", codes)
		backToBaseline(t, baseline, tr)
		checkPaths(t, 0)
	})
	if vc.len() != 0 {
		t.Errorf("%d verdicts cached for digests the upstream does not have", vc.len())
	}
}

// TestUpstreamHeadersTooLarge: an upstream that answers with more header
// bytes than limits.upstream_header_bytes is dropped unread, and the
// client and the operator are told so.
func TestUpstreamHeadersTooLarge(t *testing.T) {
	t.Parallel()
	const limit = 8 << 10
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		for i := range 2 * limit / 1024 {
			w.Header().Set("X-Pad-"+strconv.Itoa(i), strings.Repeat("p", 1000))
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(up.Close)
	p, err := New([]Upstream{{Name: "docker.io", URL: up.URL, Insecure: true, MaxHeaderBytes: limit}}, allowAll())
	if err != nil {
		t.Fatal(err)
	}
	w := do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io")
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), "larger than limits.upstream_header_bytes") {
		t.Fatalf("GET = %d %s, want 502 naming the limit", w.Code, w.Body)
	}
	if n := counterValue(t, p, "portcullis_upstream_errors_total", map[string]string{"kind": "too_large"}); n != 1 {
		t.Errorf("too_large errors = %v, want 1", n)
	}
}
