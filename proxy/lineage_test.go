package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const lineageFingerprint = "lineage-policy"

// lineageVerifier mimics the engine's side of the lineage contract: it
// follows the dependencies listed for a digest through
// Subject.Lineage.Dependencies, spends one unit of depth per level, refuses
// a dependency already in the chain, and names the chain in its reasons.
type lineageVerifier struct {
	depth int // the boundary's lineage depth, used for root subjects

	// keepDepth passes a subject's own depth on to its dependencies and
	// noCycleCheck skips the chain check: together they model a Verifier
	// that breaks the contract, which the proxy must survive.
	keepDepth    bool
	noCycleCheck bool
	// hook runs before a subject's dependencies are followed.
	hook func(ctx context.Context, s verify.Subject) error

	mu       sync.Mutex
	deps     map[v1.Hash][]verify.DependencyRef
	denied   map[v1.Hash]bool
	calls    map[v1.Hash]int
	subjects map[v1.Hash][]verify.Subject
}

func newLineageVerifier(depth int) *lineageVerifier {
	return &lineageVerifier{
		depth:    depth,
		deps:     map[v1.Hash][]verify.DependencyRef{},
		denied:   map[v1.Hash]bool{},
		calls:    map[v1.Hash]int{},
		subjects: map[v1.Hash][]verify.Subject{},
	}
}

func (f *lineageVerifier) Fingerprint() string { return lineageFingerprint }

func (f *lineageVerifier) Verify(ctx context.Context, s verify.Subject, _ verify.Fetcher) (verify.Verdict, error) {
	f.mu.Lock()
	f.calls[s.Digest]++
	f.subjects[s.Digest] = append(f.subjects[s.Digest], s)
	deps, denied := f.deps[s.Digest], f.denied[s.Digest]
	f.mu.Unlock()

	self := s.Repository + "@" + s.Digest.String()
	v := verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "lineage", Digest: s.Digest.String()}
	deny := func(reason string) {
		v.Allowed = false
		v.Reasons = append(v.Reasons, reason)
	}
	if denied {
		deny(self + ": no valid signature")
		return v, nil
	}
	if f.hook != nil {
		if err := f.hook(ctx, s); err != nil {
			return verify.Verdict{}, err
		}
	}
	remaining := s.Lineage.Depth
	if len(s.Lineage.Chain) == 0 {
		remaining = f.depth
	}
	chain := append(slices.Clone(s.Lineage.Chain), s.Upstream+"/"+self)
	for _, d := range deps {
		switch {
		case s.Lineage.Dependencies == nil:
			deny(self + ": lineage cannot be followed")
			continue
		case remaining <= 0:
			deny(self + ": lineage depth exhausted")
			continue
		case !f.noCycleCheck && slices.ContainsFunc(chain, func(c string) bool { return strings.HasSuffix(c, "@"+d.Digest.String()) }):
			deny(self + " ← " + d.Repository + "@" + d.Digest.String() + ": lineage cycle")
			continue
		}
		next := remaining - 1
		if f.keepDepth {
			next = remaining
		}
		dv, err := s.Lineage.Dependencies.VerifyDependency(ctx, d, verify.LineageContext{Depth: next, Chain: chain})
		if err != nil {
			return verify.Verdict{}, fmt.Errorf("dependency %s: %w", d.URI, err)
		}
		v.Lineage = append(v.Lineage, verify.Dependency{Name: d.Name, URI: d.URI, Verdict: &dv})
		if !dv.Allowed {
			for _, r := range dv.Reasons {
				deny(self + " ← " + r)
			}
		}
	}
	return v, nil
}

func (f *lineageVerifier) dependsOn(parent v1.Hash, deps ...verify.DependencyRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deps[parent] = append(f.deps[parent], deps...)
}

func (f *lineageVerifier) deny(d v1.Hash) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied[d] = true
}

func (f *lineageVerifier) callsFor(d v1.Hash) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[d]
}

func (f *lineageVerifier) subjectsOf(d v1.Hash) []verify.Subject {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.subjects[d])
}

func depRef(registry, repo string, d v1.Hash) verify.DependencyRef {
	return verify.DependencyRef{
		Name:       "dataset-train",
		URI:        "oci://" + registry + "/" + repo + "@" + d.String(),
		Registry:   registry,
		Repository: repo,
		Digest:     d,
	}
}

// hostSpy records the host of every request the proxy makes.
type hostSpy struct {
	mu    sync.Mutex
	hosts []string
	rt    http.RoundTripper
}

func (s *hostSpy) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.hosts = append(s.hosts, r.URL.Host)
	s.mu.Unlock()
	return s.rt.RoundTrip(r)
}

func (s *hostSpy) requests(host string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, h := range s.hosts {
		if h == host {
			n++
		}
	}
	return n
}

func (s *hostSpy) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hosts)
}

// lineageEnv is a proxy in front of two upstreams: "models", and
// "datasets" (alias data.example.com), each its own in-memory registry.
type lineageEnv struct {
	models, datasets *upstreamRegistry
	datasetsHost     string // where the proxy dials "datasets"
	p                *Proxy
	v                *lineageVerifier
	verdicts         *mapVerdicts
	hosts            *hostSpy
}

type lineageSetup struct {
	datasetsURL string // overrides the datasets upstream's URL
	opts        []Option
	logger      *zap.Logger
}

func newLineageEnv(t *testing.T, v *lineageVerifier, setup lineageSetup) *lineageEnv {
	t.Helper()
	e := &lineageEnv{
		models:   newRegistry(t),
		datasets: newRegistry(t),
		v:        v,
		verdicts: newMapVerdicts(),
		hosts:    &hostSpy{rt: http.DefaultTransport.(*http.Transport).Clone()},
	}
	dsURL := e.datasets.srv.URL
	if setup.datasetsURL != "" {
		dsURL = setup.datasetsURL
	}
	e.datasetsHost = strings.TrimPrefix(dsURL, "http://")
	ups := []Upstream{
		{Name: "models", URL: e.models.srv.URL, Insecure: true},
		{Name: "datasets", URL: dsURL, Aliases: []string{"data.example.com"}, Insecure: true},
	}
	opts := []Option{WithTransport(e.hosts), WithVerdictCache(e.verdicts)}
	if setup.logger != nil {
		opts = append(opts, WithLogger(setup.logger))
	}
	p, err := New(ups, v, append(opts, setup.opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	return e
}

func (e *lineageEnv) pull(upstreamName, repo string, d v1.Hash) *httptest.ResponseRecorder {
	return do(e.p, http.MethodGet, "/v2/"+upstreamName+"/"+repo+"/manifests/"+d.String())
}

// deniedBody decodes a 403 answer.
func deniedBody(t *testing.T, w *httptest.ResponseRecorder) (message string, detail map[string]any) {
	t.Helper()
	if w.Code != http.StatusForbidden {
		t.Fatalf("status %d, want 403: %s", w.Code, w.Body)
	}
	var env struct {
		Errors []struct {
			Code    string         `json:"code"`
			Message string         `json:"message"`
			Detail  map[string]any `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || len(env.Errors) != 1 {
		t.Fatalf("invalid error envelope %q: %v", w.Body, err)
	}
	if env.Errors[0].Code != CodeDenied {
		t.Fatalf("code %s, want DENIED", env.Errors[0].Code)
	}
	return env.Errors[0].Message, env.Errors[0].Detail
}

func detailReasons(detail map[string]any) []string {
	var out []string
	if rs, ok := detail["reasons"].([]any); ok {
		for _, r := range rs {
			s, _ := r.(string)
			out = append(out, s)
		}
	}
	if r, ok := detail["reason"].(string); ok {
		out = append(out, r)
	}
	return out
}

func counterValue(t *testing.T, p *Proxy, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := p.gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

func TestLineageDependencyOnSecondUpstream(t *testing.T) {
	t.Parallel()
	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{})
	m1 := e.models.pushImage(t, "ml/model", "v1")
	m2 := e.models.pushImage(t, "ml/model", "v2")
	data := e.datasets.pushImage(t, "ml/data", "v1")
	// The alias in a different case must still route.
	v.dependsOn(m1.digest, depRef("Data.Example.COM", "ml/data", data.digest))
	v.dependsOn(m2.digest, depRef("data.example.com", "ml/data", data.digest))

	for _, m := range []pushed{m1, m2} {
		if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
			t.Fatalf("pull %s: status %d: %s", m.digest, w.Code, w.Body)
		}
	}
	for d, want := range map[v1.Hash]int{m1.digest: 1, m2.digest: 1, data.digest: 1} {
		if got := v.callsFor(d); got != want {
			t.Errorf("%s verified %d times, want %d", d, got, want)
		}
	}

	root := v.subjectsOf(m1.digest)[0]
	if root.Lineage.Dependencies != e.p || root.Lineage.Depth != 0 || len(root.Lineage.Chain) != 0 {
		t.Errorf("root lineage context = %+v, want the proxy, depth 0 and no chain", root.Lineage)
	}
	dep := v.subjectsOf(data.digest)[0]
	wantChain := []string{"models/ml/model@" + m1.digest.String()}
	if dep.Upstream != "datasets" || dep.Repository != "ml/data" || dep.Reference != data.digest.String() {
		t.Errorf("dependency subject %s/%s ref %s, want datasets/ml/data ref %s", dep.Upstream, dep.Repository, dep.Reference, data.digest)
	}
	if dep.Lineage.Dependencies != e.p || dep.Lineage.Depth != 2 || !slices.Equal(dep.Lineage.Chain, wantChain) {
		t.Errorf("dependency lineage context = %+v, want the proxy, depth 2, chain %v", dep.Lineage, wantChain)
	}
	if !slices.Equal(dep.Manifest, data.raw) || string(dep.MediaType) != data.mt {
		t.Errorf("dependency subject does not carry the dependency's manifest")
	}
	if e.hosts.requests(e.datasetsHost) == 0 {
		t.Error("the dependency was not fetched from the datasets upstream")
	}
	if got := counterValue(t, e.p, "portcullis_lineage_dependencies_total", map[string]string{"result": "allow"}); got != 2 {
		t.Errorf("lineage allow count = %v, want 2 (one verified, one cached)", got)
	}
}

func TestLineageUnknownRegistryIsNeverDialled(t *testing.T) {
	t.Parallel()
	var strangerHits atomic.Int64
	stranger := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		strangerHits.Add(1)
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(stranger.Close)
	strangerHost := strings.TrimPrefix(stranger.URL, "http://")

	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{})
	m := e.models.pushImage(t, "ml/model", "v1")
	data := e.datasets.pushImage(t, "ml/data", "v1")
	// The dependency exists at the datasets upstream, but the statement
	// names a host that is only reachable by dialling it.
	v.dependsOn(m.digest, depRef(strangerHost, "ml/data", data.digest))

	msg, detail := deniedBody(t, e.pull("models", "ml/model", m.digest))
	want := fmt.Sprintf(`dependency registry %q is not a configured upstream (configured: models, datasets (aliases data.example.com))`, strangerHost)
	if !strings.Contains(msg, want) || !slices.ContainsFunc(detailReasons(detail), func(r string) bool { return strings.Contains(r, want) }) {
		t.Errorf("denial %q (detail %v) does not say %q", msg, detail, want)
	}
	if n := strangerHits.Load(); n != 0 {
		t.Errorf("the unknown registry received %d requests", n)
	}
	for _, h := range e.hosts.all() {
		if h != e.models.host && h != e.datasets.host {
			t.Errorf("request to %s, which is not a configured upstream", h)
		}
	}
	if v.callsFor(data.digest) != 0 {
		t.Error("a dependency at an unknown registry was verified")
	}
	if got := counterValue(t, e.p, "portcullis_lineage_dependencies_total", map[string]string{"result": "deny"}); got != 1 {
		t.Errorf("lineage deny count = %v, want 1", got)
	}
}

// TestVerifyDependencyRefusesBeforeDialling covers dependency references
// that are refused on their face: none may cause a request.
func TestVerifyDependencyRefusesBeforeDialling(t *testing.T) {
	t.Parallel()
	good := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	chain := []string{"models/ml/model@sha256:" + strings.Repeat("cd", 32)}
	for _, tc := range []struct {
		name    string
		dep     verify.DependencyRef
		lc      verify.LineageContext
		reason  string // the denial must contain this
		wantErr bool
	}{
		{name: "unknown registry", dep: depRef("registry.evil.example", "ml/data", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: `dependency registry "registry.evil.example" is not a configured upstream`},
		{name: "empty registry", dep: depRef("", "ml/data", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: `dependency registry "" is not a configured upstream`},
		{name: "upstream URL host is not a key", dep: depRef("127.0.0.1", "ml/data", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "is not a configured upstream"},
		{name: "traversal in repository", dep: depRef("datasets", "ml/../admin", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "invalid repository name"},
		{name: "upper-case repository", dep: depRef("datasets", "ML/data", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "invalid repository name"},
		{name: "host in repository", dep: depRef("datasets", "evil.example:5000/ml", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "invalid repository name"},
		{name: "empty repository", dep: depRef("datasets", "", good), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "invalid repository name"},
		{name: "unsupported digest algorithm", dep: depRef("datasets", "ml/data", v1.Hash{Algorithm: "md5", Hex: strings.Repeat("ab", 16)}), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "unusable digest"},
		{name: "no digest", dep: depRef("datasets", "ml/data", v1.Hash{}), lc: verify.LineageContext{Depth: 1, Chain: chain},
			reason: "unusable digest"},
		{name: "depth spent", dep: depRef("datasets", "ml/data", good), lc: verify.LineageContext{Depth: -1, Chain: chain},
			reason: "lineage depth exhausted"},
		{name: "no chain", dep: depRef("datasets", "ml/data", good), lc: verify.LineageContext{Depth: 1}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := newLineageVerifier(3)
			e := newLineageEnv(t, v, lineageSetup{})
			got, err := e.p.VerifyDependency(context.Background(), tc.dep, tc.lc)
			switch {
			case tc.wantErr:
				if err == nil {
					t.Fatalf("verdict %+v, want an error", got)
				}
			case err != nil:
				t.Fatalf("error %v, want a denial", err)
			case got.Allowed || len(got.Reasons) != 1 || !strings.Contains(got.Reasons[0], tc.reason):
				t.Fatalf("verdict %+v, want a denial saying %q", got, tc.reason)
			}
			if hosts := e.hosts.all(); len(hosts) != 0 {
				t.Errorf("requests were made: %v", hosts)
			}
			if e.verdicts.len() != 0 {
				t.Error("a refusal on the face of the reference was cached")
			}
		})
	}
}

func TestLineageDependencyNotFound(t *testing.T) {
	t.Parallel()
	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{})
	m1 := e.models.pushImage(t, "ml/model", "v1")
	m2 := e.models.pushImage(t, "ml/model", "v2")
	missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0f", 32)}
	v.dependsOn(m1.digest, depRef("datasets", "ml/data", missing))
	v.dependsOn(m2.digest, depRef("data.example.com", "ml/data", missing))

	_, detail := deniedBody(t, e.pull("models", "ml/model", m1.digest))
	want := "dependency ml/data@" + missing.String() + " not found at upstream datasets"
	if !slices.ContainsFunc(detailReasons(detail), func(r string) bool { return strings.Contains(r, want) }) {
		t.Errorf("reasons %v do not say %q", detailReasons(detail), want)
	}
	key := dependencyKey(verdictKey(lineageFingerprint, "datasets", "ml/data", missing), 2)
	if cv, ok := e.verdicts.Get(key); !ok || cv.Allowed {
		t.Fatalf("the absent dependency's denial was not cached (%+v, %v)", cv, ok)
	}

	before := e.hosts.requests(e.datasetsHost)
	deniedBody(t, e.pull("models", "ml/model", m2.digest))
	if n := e.hosts.requests(e.datasetsHost) - before; n != 0 {
		t.Errorf("the cached absence was looked up again (%d requests)", n)
	}
}

func TestLineageDependencyUpstreamDownFailsClosed(t *testing.T) {
	t.Parallel()
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()

	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{datasetsURL: downURL})
	m := e.models.pushImage(t, "ml/model", "v1")
	v.dependsOn(m.digest, depRef("datasets", "ml/data", v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1e", 32)}))

	msg, detail := deniedBody(t, e.pull("models", "ml/model", m.digest))
	if !strings.Contains(msg, "could not verify") || !strings.Contains(msg, "fail closed") {
		t.Errorf("message %q is not a fail-closed answer", msg)
	}
	if detail["reason_code"] != "upstream" {
		t.Errorf("reason_code = %v, want upstream", detail["reason_code"])
	}
	if n := e.verdicts.len(); n != 0 {
		t.Errorf("%d verdicts cached after a failure to decide", n)
	}
	if e.hosts.requests(e.datasetsHost) == 0 {
		t.Error("the dependency's upstream was not tried")
	}
	if got := counterValue(t, e.p, "portcullis_lineage_dependencies_total", map[string]string{"result": "error"}); got != 1 {
		t.Errorf("lineage error count = %v, want 1", got)
	}

	// Nothing was remembered: the next pull tries again.
	before := e.hosts.requests(e.datasetsHost)
	deniedBody(t, e.pull("models", "ml/model", m.digest))
	if e.hosts.requests(e.datasetsHost) == before {
		t.Error("the second pull did not try the dependency again")
	}
	if v.callsFor(m.digest) != 2 {
		t.Errorf("root verified %d times, want 2", v.callsFor(m.digest))
	}
}

func TestLineageVerdictsAreDepthQualified(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		rootFirst bool
	}{
		{name: "dependency then pull", rootFirst: false},
		{name: "pull then dependency", rootFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := newLineageVerifier(3)
			e := newLineageEnv(t, v, lineageSetup{})
			m := e.models.pushImage(t, "ml/model", "v1")
			data := e.datasets.pushImage(t, "ml/data", "v1")
			v.dependsOn(m.digest, depRef("datasets", "ml/data", data.digest))

			pulls := []func() *httptest.ResponseRecorder{
				func() *httptest.ResponseRecorder { return e.pull("models", "ml/model", m.digest) },
				func() *httptest.ResponseRecorder { return e.pull("datasets", "ml/data", data.digest) },
			}
			if tc.rootFirst {
				slices.Reverse(pulls)
			}
			for range 2 { // the second round is served from the cache
				for _, pull := range pulls {
					if w := pull(); w.Code != http.StatusOK {
						t.Fatalf("status %d: %s", w.Code, w.Body)
					}
				}
			}
			subs := v.subjectsOf(data.digest)
			if len(subs) != 2 {
				t.Fatalf("dataset verified %d times, want twice: once as a dependency, once as a pull", len(subs))
			}
			var roots, deps int
			for _, s := range subs {
				if len(s.Lineage.Chain) == 0 && s.Lineage.Depth == 0 {
					roots++
				} else if s.Lineage.Depth == 2 {
					deps++
				}
			}
			if roots != 1 || deps != 1 {
				t.Errorf("dataset verified as %d roots and %d dependencies, want one each", roots, deps)
			}
		})
	}
}

func TestLineageConcurrentPullsShareOneDependencyVerification(t *testing.T) {
	t.Parallel()
	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{opts: []Option{WithManifestCache(newMapManifests())}})
	data := e.datasets.pushImage(t, "ml/data", "v1")
	var roots []pushed
	for i := range 10 {
		m := e.models.pushImage(t, "ml/model", fmt.Sprintf("v%d", i))
		v.dependsOn(m.digest, depRef("data.example.com", "ml/data", data.digest))
		roots = append(roots, m)
	}

	const pulls = 1000
	start := make(chan struct{})
	codes := make(chan int, pulls)
	var wg sync.WaitGroup
	for i := range pulls {
		wg.Go(func() {
			<-start
			codes <- e.pull("models", "ml/model", roots[i%len(roots)].digest).Code
		})
	}
	close(start)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Fatalf("a pull answered %d", c)
		}
	}
	if n := v.callsFor(data.digest); n != 1 {
		t.Errorf("shared dependency verified %d times, want 1", n)
	}
	for _, m := range roots {
		if n := v.callsFor(m.digest); n != 1 {
			t.Errorf("root %s verified %d times, want 1", m.digest, n)
		}
	}
}

// TestLineageCrossRequestCycleFinishes pulls A and B at the same time while
// A's provenance names B and B's names A. Both root verifications are held
// until both are running, so each one's dependency is the other's root. A
// wait cycle between them would only end at the verify timeout, answered
// as a fail-closed "could not verify", so the assertion on the reason
// detects a deadlock without measuring time.
func TestLineageCrossRequestCycleFinishes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		breaks  bool // the Verifier breaks the lineage contract
		because string
	}{
		{name: "verifier detects cycles", because: "lineage cycle"},
		{name: "verifier neither detects cycles nor spends depth", breaks: true, because: "lineage depth exhausted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := newLineageVerifier(3)
			v.keepDepth, v.noCycleCheck = tc.breaks, tc.breaks
			var (
				arrived  atomic.Int64
				bothIn   = make(chan struct{})
				openOnce sync.Once
			)
			v.hook = func(ctx context.Context, s verify.Subject) error {
				if len(s.Lineage.Chain) != 0 {
					return nil
				}
				if arrived.Add(1) == 2 {
					openOnce.Do(func() { close(bothIn) })
				}
				select {
				case <-bothIn:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			e := newLineageEnv(t, v, lineageSetup{opts: []Option{WithVerifyTimeout(10 * time.Second)}})
			a := e.models.pushImage(t, "ml/a", "v1")
			b := e.datasets.pushImage(t, "ml/b", "v1")
			v.dependsOn(a.digest, depRef("datasets", "ml/b", b.digest))
			v.dependsOn(b.digest, depRef("models", "ml/a", a.digest))

			var wg sync.WaitGroup
			var wa, wb *httptest.ResponseRecorder
			wg.Go(func() { wa = e.pull("models", "ml/a", a.digest) })
			wg.Go(func() { wb = e.pull("datasets", "ml/b", b.digest) })
			wg.Wait()
			for name, w := range map[string]*httptest.ResponseRecorder{"A": wa, "B": wb} {
				msg, detail := deniedBody(t, w)
				if strings.Contains(msg, "could not verify") {
					t.Errorf("pull of %s failed to decide (a wait cycle runs into the verify timeout): %s", name, msg)
					continue
				}
				if !slices.ContainsFunc(detailReasons(detail), func(r string) bool { return strings.Contains(r, tc.because) }) {
					t.Errorf("pull of %s denied for %v, want %q", name, detailReasons(detail), tc.because)
				}
			}
		})
	}
}

func TestLineageDenialNamesTheChain(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{logger: zap.New(core)})
	m := e.models.pushImage(t, "ml/model", "v1")
	data := e.datasets.pushImage(t, "ml/data", "v1")
	v.dependsOn(m.digest, depRef("datasets", "ml/data", data.digest))
	v.deny(data.digest)

	want := "ml/model@" + m.digest.String() + " ← ml/data@" + data.digest.String() + ": no valid signature"
	msg, detail := deniedBody(t, e.pull("models", "ml/model", m.digest))
	if !strings.Contains(msg, want) {
		t.Errorf("message %q does not name the chain %q", msg, want)
	}
	if rs := detailReasons(detail); !slices.Contains(rs, want) {
		t.Errorf("detail reasons %v do not name the chain %q", rs, want)
	}
	audit := logs.FilterLoggerName("audit").All()
	if len(audit) != 1 {
		t.Fatalf("%d audit events for one pull, want 1 (dependencies are part of the pull's decision)", len(audit))
	}
	f := audit[0].ContextMap()
	reasons, _ := f["reasons"].([]any)
	if f["decision"] != "deny" || f["digest"] != m.digest.String() || !slices.Contains(reasons, any(want)) {
		t.Errorf("audit event %v does not report the denial with the chain %q", f, want)
	}
}

func TestExplainFollowsLineage(t *testing.T) {
	t.Parallel()
	v := newLineageVerifier(3)
	e := newLineageEnv(t, v, lineageSetup{})
	m := e.models.pushImage(t, "ml/model", "v1")
	data := e.datasets.pushImage(t, "ml/data", "v1")
	v.dependsOn(m.digest, depRef("data.example.com", "ml/data", data.digest))

	got, err := e.p.Explain(context.Background(), "models/ml/model@"+m.digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Allowed || len(got.Lineage) != 1 || got.Lineage[0].Verdict == nil || !got.Lineage[0].Verdict.Allowed {
		t.Fatalf("explained verdict %+v, want allowed with one allowed dependency", got)
	}
	if v.callsFor(data.digest) != 1 {
		t.Errorf("dependency verified %d times, want 1", v.callsFor(data.digest))
	}
}
