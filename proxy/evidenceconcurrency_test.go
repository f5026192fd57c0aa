package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// slowUpstream is an upstream that takes delay to answer each request
// and records how many were in flight at once, in total and per
// repository. hold, when it says so, keeps a request until the client
// gives up on it.
type slowUpstream struct {
	srv   *httptest.Server
	delay time.Duration
	hold  func(r *http.Request) bool

	mu       sync.Mutex
	inFlight int
	peak     int
	repos    map[string]int // requests in flight per repository
	// peakRepos is the most repositories with a request in flight at
	// once.
	peakRepos int
	held      atomic.Int64 // held requests whose client gave up
}

func newSlowUpstream(t *testing.T, target string, delay time.Duration) *slowUpstream {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	s := &slowUpstream{delay: delay, repos: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo := requestRepo(r.URL.Path)
		s.enter(repo)
		defer s.leave(repo)
		if s.hold != nil && s.hold(r) {
			select {
			case <-r.Context().Done():
				s.held.Add(1)
			case <-time.After(30 * time.Second):
			}
			return
		}
		time.Sleep(s.delay)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// requestRepo is the repository of a /v2/<repo>/{manifests,blobs,referrers}/… path.
func requestRepo(path string) string {
	p := strings.TrimPrefix(path, "/v2/")
	for _, kind := range []string{"/manifests/", "/blobs/", "/referrers/"} {
		if i := strings.LastIndex(p, kind); i >= 0 {
			return p[:i]
		}
	}
	return ""
}

func (s *slowUpstream) enter(repo string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight++
	s.peak = max(s.peak, s.inFlight)
	if repo != "" {
		s.repos[repo]++
		s.peakRepos = max(s.peakRepos, len(s.repos))
	}
}

func (s *slowUpstream) leave(repo string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight--
	if repo != "" {
		if s.repos[repo]--; s.repos[repo] == 0 {
			delete(s.repos, repo)
		}
	}
}

func (s *slowUpstream) peaks() (requests, repos int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.peakRepos
}

// A cold pull of a digest with a legacy signature asks the referrers
// API, the fallback tag and the .sig tag while it fetches the manifest,
// and the signature's layer as soon as the .sig tag is in: two round
// trips to the upstream in a row instead of five (manifest, referrers,
// fallback tag, .sig tag, .sig layer), and never more reads in flight
// than verify.EvidenceFanout besides the run's own.
func TestColdDiscoveryIsConcurrent(t *testing.T) {
	t.Parallel()
	// Long enough that a busy machine's CPU time does not blur the count
	// of round trips.
	const delay = 400 * time.Millisecond
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	k := newKey(t)
	if err := fixtures.AttachLegacySignature(context.Background(), reg.ref(t, "acme/app", img.digest), k, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	unsigned := reg.pushImage(t, "acme/app", "v2")
	up := newSlowUpstream(t, reg.srv.URL, delay)
	eng := keyEngine(t, k)
	p, _ := newTestProxy(t, up.srv.URL, eng)

	// What is not signed is still denied, naming every place looked at.
	// It also pays for the client's first contact with the upstream (its
	// /v2/ ping), which is not timed below.
	w := do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+unsigned.digest.String())
	_, detail := deniedBody(t, w)
	want := "no signatures found (checked referrers, sha256-" + unsigned.digest.Hex + ", sha256-" + unsigned.digest.Hex + ".sig)"
	if rs := detailReasons(detail); !containsString(rs, want) {
		t.Errorf("reasons %q, want %q", rs, want)
	}

	start := time.Now()
	w = do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+img.digest.String())
	took := time.Since(start)
	if w.Code != http.StatusOK {
		t.Fatalf("signed digest: status %d: %s", w.Code, w.Body)
	}
	peak, _ := up.peaks()
	t.Logf("cold GET took %v (%.1f round trips of %v), %d upstream requests in flight at most", took, float64(took)/float64(delay), delay, peak)
	if peak < 3 {
		t.Errorf("at most %d upstream requests in flight: the evidence places were asked one after the other", peak)
	}
	if peak > verify.EvidenceFanout+1 {
		t.Errorf("%d upstream requests in flight, more than the fan-out %d and the run's own", peak, verify.EvidenceFanout)
	}
	if took >= 35*delay/10 {
		t.Errorf("cold GET took %v, %.1f round trips: not fewer than in order", took, float64(took)/float64(delay))
	}

}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A dependency denied while another is still being verified denies the
// parent at once, with the denied one's reason; the other's upstream
// requests are cancelled rather than waited for.
func TestLineageDeniedDependencyDoesNotWaitForSlowSibling(t *testing.T) {
	t.Parallel()
	var up *slowUpstream
	e := newLineageEnv(t, lineageSetup{})
	up = newSlowUpstream(t, e.datasets.srv.URL, 0)
	// The bad dependency is answered only once the slow one's request is
	// held, so that there is a request in flight to cancel: on a loaded
	// machine the denial could otherwise come before it was sent.
	slowHeld := make(chan struct{})
	var once sync.Once
	up.hold = func(r *http.Request) bool {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v2/ml/slow/"):
			once.Do(func() { close(slowHeld) })
			return true
		case strings.HasPrefix(r.URL.Path, "/v2/ml/bad/"):
			select {
			case <-slowHeld:
			case <-r.Context().Done():
			}
		}
		return false
	}
	e2 := newLineageEnvWithDatasets(t, e, up.srv.URL)

	slow := e2.dataset("ml/slow", true)
	bad := e2.dataset("ml/bad", false)
	app := e2.model("ml/app",
		input("dataset-slow", datasetsHost, "ml/slow", slow.digest),
		input("dataset-bad", datasetsHost, "ml/bad", bad.digest))

	start := time.Now()
	w := e2.pull("models", "ml/app", app.digest)
	took := time.Since(start)
	_, detail := deniedBody(t, w)
	rs := detailReasons(detail)
	wantPrefix := short("ml/app", app.digest) + " ← " + short("ml/bad", bad.digest) + ": "
	if len(rs) == 0 || !strings.HasPrefix(rs[0], wantPrefix) {
		t.Fatalf("reasons %q, want the denied dependency's first (%q…)", rs, wantPrefix)
	}
	for _, r := range rs {
		if strings.Contains(r, "ml/slow") {
			t.Errorf("reason %q is about the dependency that was still running", r)
		}
	}
	if took > 10*time.Second {
		t.Errorf("denial took %v: it waited for the slow dependency", took)
	}
	// The held request's client went away: its verification was cancelled.
	deadline := time.Now().Add(5 * time.Second)
	for up.held.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if up.held.Load() == 0 {
		t.Error("the slow dependency's upstream request was not cancelled")
	}
	if got := counterValue(t, e2.p, "portcullis_lineage_dependencies_total", map[string]string{"result": "cancelled"}); got != 1 {
		t.Errorf("cancelled dependencies counted %v, want 1", got)
	}
}

// The dependencies of one subject are verified concurrently, never more
// of them at once than the lineage concurrency: counted at the upstream,
// as the repositories with a request in flight at the same time.
func TestLineageConcurrencyBound(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 3} {
		t.Run("n="+string(rune('0'+n)), func(t *testing.T) {
			t.Parallel()
			e := newLineageEnv(t, lineageSetup{})
			up := newSlowUpstream(t, e.datasets.srv.URL, 20*time.Millisecond)
			e2 := newLineageEnvWithDatasets(t, e, up.srv.URL)
			eng, err := verify.New(lineagePolicy(e2.release, e2.data), verify.WithLineageConcurrency(n))
			if err != nil {
				t.Fatal(err)
			}
			e2.spy.eng.Store(eng)

			var deps []fixtures.ResourceDescriptor
			for i := range 6 {
				repo := "ml/data-" + string(rune('a'+i))
				d := e2.dataset(repo, true)
				deps = append(deps, input("dataset-"+string(rune('a'+i)), datasetsHost, repo, d.digest))
			}
			app := e2.model("ml/app", deps...)
			if w := e2.pull("models", "ml/app", app.digest); w.Code != http.StatusOK {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			_, repos := up.peaks()
			t.Logf("lineage concurrency %d: at most %d dependencies asked the upstream at once", n, repos)
			if repos > n {
				t.Errorf("%d dependencies in flight at once, bound %d", repos, n)
			}
			if repos < n {
				t.Errorf("at most %d dependencies in flight at once, want %d: not verified concurrently", repos, n)
			}
		})
	}
}

// newLineageEnvWithDatasets is e's keys and models upstream with the
// datasets upstream reached at datasetsURL (a front of e.datasets).
func newLineageEnvWithDatasets(t *testing.T, e *lineageEnv, datasetsURL string) *lineageEnv {
	t.Helper()
	e2 := newLineageEnv(t, lineageSetup{datasetsURL: datasetsURL})
	e2.datasets = e.datasets
	return e2
}

// BenchmarkColdManifest is a first pull of a legacy-signed digest
// through the real engine, every time: no verdict or manifest cache, an
// in-memory upstream on loopback. Profile it for where a cold
// verification spends its CPU.
func BenchmarkColdManifest(b *testing.B) {
	reg := newRegistry(b)
	img := reg.pushImage(b, "acme/app", "v1")
	k := newKey(b)
	if err := fixtures.AttachLegacySignature(context.Background(), reg.ref(b, "acme/app", img.digest), k, fixtures.Tamper{}); err != nil {
		b.Fatal(err)
	}
	eng := keyEngine(b, k)
	p, _ := newTestProxy(b, reg.srv.URL, eng)
	target := "/v2/docker.io/acme/app/manifests/" + img.digest.String()
	b.ReportAllocs()
	for b.Loop() {
		if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}
