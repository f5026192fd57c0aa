package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Lineage through the proxy is tested against the real verify.Engine with
// real signatures and provenance: the engine walks the provenance and asks
// the proxy, as its DependencyVerifier, for each dependency's verdict.

// Registry hosts the provenance names: the engine only treats a host with
// a dot, a port or "localhost" as a registry, and the proxy only as a
// lookup key into its upstreams.
const (
	modelsHost   = "models.example.com"
	datasetsHost = "data.example.com"
)

// lineagePolicy: models (upstream "models") need a release signature and
// their lineage verified, requiring an input named dataset*; datasets
// (upstream "datasets") need a signature of the data key. The "cyclic"
// boundary gives datasets under cyclic/ a lineage rule too.
func lineagePolicy(release, data *fixtures.KeySigner) verify.Policy {
	lineage := &verify.LineageRule{Depth: 3, Require: []string{"dataset*"}}
	return verify.Policy{Boundaries: []verify.Boundary{
		{
			Name: "models", Upstream: "models", Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("release", release)}, Lineage: lineage,
		},
		{
			Name: "cyclic", Upstream: "datasets", Repositories: []string{"cyclic/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("release", release)}, Lineage: lineage,
		},
		{
			Name: "datasets", Upstream: "datasets", Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("data", data)},
		},
	}}
}

// lineageEnv is a proxy in front of two upstreams, "models" (alias
// models.example.com) and "datasets" (alias data.example.com), each its
// own in-memory registry.
type lineageEnv struct {
	t                testing.TB
	models, datasets *upstreamRegistry
	datasetsHost     string // where the proxy dials "datasets"
	release, data    *fixtures.KeySigner
	p                *Proxy
	v                Verifier
	spy              *engineSpy // v, unless the setup brings its own Verifier
	verdicts         *mapVerdicts
	hosts            *hostSpy
	n                atomic.Int64
}

type lineageSetup struct {
	datasetsURL     string   // overrides the datasets upstream's URL
	datasetsAliases []string // more aliases of the datasets upstream
	opts            []Option
	logger          *zap.Logger
	hook            func(ctx context.Context, s verify.Subject) error
	verifier        Verifier // replaces the engine
	fail            func(r *http.Request) bool
}

func newLineageEnv(t *testing.T, setup lineageSetup) *lineageEnv {
	t.Helper()
	e := &lineageEnv{
		t:        t,
		models:   newRegistry(t),
		datasets: newRegistry(t),
		release:  newKey(t),
		data:     newKey(t),
		verdicts: newMapVerdicts(),
		hosts:    &hostSpy{rt: http.DefaultTransport.(*http.Transport).Clone(), fail: setup.fail},
	}
	e.spy = newEngineSpy(t, lineagePolicy(e.release, e.data))
	e.spy.hook = setup.hook
	e.v = e.spy
	if setup.verifier != nil {
		e.v = setup.verifier
	}
	dsURL := e.datasets.srv.URL
	if setup.datasetsURL != "" {
		dsURL = setup.datasetsURL
	}
	e.datasetsHost = strings.TrimPrefix(dsURL, "http://")
	ups := []Upstream{
		{Name: "models", URL: e.models.srv.URL, Aliases: []string{modelsHost}, Insecure: true},
		{Name: "datasets", URL: dsURL, Aliases: append([]string{datasetsHost}, setup.datasetsAliases...), Insecure: true},
	}
	opts := []Option{WithTransport(e.hosts), WithVerdictCache(e.verdicts)}
	if setup.logger != nil {
		opts = append(opts, WithLogger(setup.logger))
	}
	p, err := New(ups, e.v, append(opts, setup.opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	return e
}

func (e *lineageEnv) pull(upstreamName, repo string, d v1.Hash) *httptest.ResponseRecorder {
	return do(e.p, http.MethodGet, "/v2/"+upstreamName+"/"+repo+"/manifests/"+d.String())
}

// artifact is a ModelPack model or dataset pushed for a lineage test.
type artifact struct {
	digest v1.Hash
	raw    []byte
	mt     string
}

// push pushes a distinct ModelPack artifact to repo at reg.
func (e *lineageEnv) push(reg *upstreamRegistry, repo string, dataset bool) artifact {
	e.t.Helper()
	ref, err := name.ParseReference(reg.host+"/"+repo+":latest", name.Insecure)
	if err != nil {
		e.t.Fatal(err)
	}
	files := map[string][]byte{"part-0": fmt.Appendf(nil, "content %d of %s", e.n.Add(1), repo)}
	var d name.Digest
	if dataset {
		d, err = fixtures.PushDataset(context.Background(), ref, files)
	} else {
		d, err = fixtures.PushModel(context.Background(), ref, files, "")
	}
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := remote.Get(d)
	if err != nil {
		e.t.Fatal(err)
	}
	return artifact{digest: m.Digest, raw: m.Manifest, mt: string(m.MediaType)}
}

// model pushes a model to the models upstream with a release-signed
// provenance (which is also its signature) listing deps.
func (e *lineageEnv) model(repo string, deps ...fixtures.ResourceDescriptor) artifact {
	e.t.Helper()
	a := e.push(e.models, repo, false)
	e.models.attachProvenance(e.t, repo, a.digest, e.release, deps...)
	return a
}

// dataset pushes a dataset to the datasets upstream, signed by the data
// key when signed.
func (e *lineageEnv) dataset(repo string, signed bool) artifact {
	e.t.Helper()
	a := e.push(e.datasets, repo, true)
	if signed {
		e.datasets.sign(e.t, repo, a.digest, e.data)
	}
	return a
}

// input names repo@d at registry as a provenance input.
func input(inputName, registry, repo string, d v1.Hash) fixtures.ResourceDescriptor {
	return fixtures.ResourceDescriptor{Name: inputName, URI: "oci://" + registry + "/" + repo + "@" + d.String()}
}

// short is how the engine labels repo@d in a chain.
func short(repo string, d v1.Hash) string {
	return repo + "@" + d.Algorithm + ":" + d.Hex[:12]
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

// hostSpy records the host of every request the proxy makes; requests
// that fail says are answered with a connection error.
type hostSpy struct {
	mu    sync.Mutex
	hosts []string
	rt    http.RoundTripper
	fail  func(r *http.Request) bool
}

func (s *hostSpy) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.hosts = append(s.hosts, r.URL.Host)
	s.mu.Unlock()
	if s.fail != nil && s.fail(r) {
		return nil, errors.New("connection reset by peer")
	}
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
	e := newLineageEnv(t, lineageSetup{})
	data := e.dataset("ml/data", true)
	// The alias in another case must still route.
	m1 := e.model("ml/model", input("dataset-train", "Data.Example.COM", "ml/data", data.digest))
	m2 := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))

	for _, m := range []artifact{m1, m2} {
		if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
			t.Fatalf("pull %s: status %d: %s", m.digest, w.Code, w.Body)
		}
	}
	for d, want := range map[v1.Hash]int{m1.digest: 1, m2.digest: 1, data.digest: 1} {
		if got := e.spy.callsFor(d); got != want {
			t.Errorf("%s verified %d times, want %d", d, got, want)
		}
	}

	root := e.spy.subjectsOf(m1.digest)[0]
	if root.Lineage.Dependencies != e.p || root.Lineage.Depth != 0 || len(root.Lineage.Chain) != 0 {
		t.Errorf("root lineage context = %+v, want the proxy, depth 0 and no chain", root.Lineage)
	}
	dep := e.spy.subjectsOf(data.digest)[0]
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
	// The engine's verdict lists the dependency it followed.
	v, ok := e.verdicts.Get(verdictKey(e.v.FingerprintFor("models", "ml/model"), "models", "ml/model", m1.digest))
	if !ok || !v.Allowed || len(v.Lineage) != 1 || v.Lineage[0].Verdict == nil || !v.Lineage[0].Verdict.Allowed {
		t.Errorf("cached verdict %+v, want an allow listing the allowed dataset", v)
	}
}

// TestLineageDockerHubDependencyWithoutNamespace: provenance naming an
// official Docker Hub image without its namespace ("docker.io/corpus") is
// refused by the engine, which parses names strictly, before anything is
// fetched. A dependency reference that reaches the proxy that way from
// another verifier is the library/ repository there, as the same name
// pulled through the proxy would be, and a namespaced name is taken as it
// is.
func TestLineageDockerHubDependencyWithoutNamespace(t *testing.T) {
	t.Parallel()
	e := newLineageEnv(t, lineageSetup{datasetsAliases: []string{"docker.io"}})
	data := e.dataset("library/corpus", true)
	m := e.model("ml/model", input("dataset-train", "docker.io", "corpus", data.digest))
	w := e.pull("models", "ml/model", m.digest)
	if msg, _ := deniedBody(t, w); w.Code != http.StatusForbidden || !strings.Contains(msg, "invalid repository") {
		t.Fatalf("pull of a model naming docker.io/corpus: status %d: %s", w.Code, w.Body)
	}
	if n := e.hosts.requests(e.datasetsHost); n != 0 {
		t.Fatalf("%d requests to the datasets upstream for a refused name", n)
	}

	lc := verify.LineageContext{Depth: 1, Chain: []string{"models/ml/model@" + m.digest.String()}}
	for _, tc := range []struct {
		repo, want string
		d          v1.Hash
	}{
		{"corpus", "library/corpus", data.digest},
		{"corpus/text", "corpus/text", e.dataset("corpus/text", true).digest},
	} {
		v, err := e.p.VerifyDependency(context.Background(), depRef("docker.io", tc.repo, tc.d), lc)
		if err != nil || !v.Allowed {
			t.Fatalf("dependency docker.io/%s: %+v, %v", tc.repo, v, err)
		}
		if s := e.spy.subjectsOf(tc.d); len(s) != 1 || s[0].Upstream != "datasets" || s[0].Repository != tc.want {
			t.Fatalf("dependency docker.io/%s verified as %+v, want datasets/%s once", tc.repo, s, tc.want)
		}
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

	e := newLineageEnv(t, lineageSetup{})
	data := e.dataset("ml/data", true)
	// The dependency exists at the datasets upstream, but the statement
	// names a host that is only reachable by dialling it.
	m := e.model("ml/model", input("dataset-train", strangerHost, "ml/data", data.digest))

	msg, detail := deniedBody(t, e.pull("models", "ml/model", m.digest))
	want := fmt.Sprintf(`dependency registry %q is not a configured upstream (configured: models (aliases %s), datasets (aliases %s))`, strangerHost, modelsHost, datasetsHost)
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
	if e.spy.callsFor(data.digest) != 0 {
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
			e := newLineageEnv(t, lineageSetup{})
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
	e := newLineageEnv(t, lineageSetup{})
	missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0f", 32)}
	m1 := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", missing))
	m2 := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", missing))

	_, detail := deniedBody(t, e.pull("models", "ml/model", m1.digest))
	want := short("ml/model", m1.digest) + " ← " + short("ml/data", missing) + ": dependency ml/data@" + missing.String() + " not found at upstream datasets"
	if !slices.Contains(detailReasons(detail), want) {
		t.Errorf("reasons %v do not say %q", detailReasons(detail), want)
	}
	key := verify.DependencyKey(verdictKey(e.v.FingerprintFor("datasets", "ml/data"), "datasets", "ml/data", missing), verify.LineageContext{Depth: 2})
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

	e := newLineageEnv(t, lineageSetup{datasetsURL: downURL})
	m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1e", 32)}))

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
	if e.spy.callsFor(m.digest) != 2 {
		t.Errorf("root verified %d times, want 2", e.spy.callsFor(m.digest))
	}
}

// TestLineageDependencyEvidenceUnreachableFails makes the engine fail to
// decide on a dependency it could fetch: the upstream drops the connection
// when asked for the dependency's signatures. The pull fails closed.
func TestLineageDependencyEvidenceUnreachableFails(t *testing.T) {
	t.Parallel()
	var e *lineageEnv
	e = newLineageEnv(t, lineageSetup{fail: func(r *http.Request) bool {
		return r.URL.Host == e.datasetsHost && strings.Contains(r.URL.Path, "/referrers/")
	}})
	data := e.dataset("ml/data", true)
	m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))

	msg, _ := deniedBody(t, e.pull("models", "ml/model", m.digest))
	if !strings.Contains(msg, "could not verify") || !strings.Contains(msg, "fail closed") {
		t.Errorf("message %q is not a fail-closed answer", msg)
	}
	if e.spy.callsFor(data.digest) != 1 {
		t.Errorf("dependency verified %d times, want 1", e.spy.callsFor(data.digest))
	}
	if n := e.verdicts.len(); n != 0 {
		t.Errorf("%d verdicts cached after a failure to decide", n)
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
			e := newLineageEnv(t, lineageSetup{})
			data := e.dataset("ml/data", true)
			m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))

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
			subs := e.spy.subjectsOf(data.digest)
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
	e := newLineageEnv(t, lineageSetup{opts: []Option{WithManifestCache(newMapManifests())}})
	data := e.dataset("ml/data", true)
	var roots []artifact
	for range 10 {
		roots = append(roots, e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest)))
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
	if n := e.spy.callsFor(data.digest); n != 1 {
		t.Errorf("shared dependency verified %d times, want 1", n)
	}
	for _, m := range roots {
		if n := e.spy.callsFor(m.digest); n != 1 {
			t.Errorf("root %s verified %d times, want 1", m.digest, n)
		}
	}
}

// holdRoots returns a hook that holds every root verification until two
// have started, so that two pulls verify at the same time.
func holdRoots() func(ctx context.Context, s verify.Subject) error {
	var (
		arrived  atomic.Int64
		bothIn   = make(chan struct{})
		openOnce sync.Once
	)
	return func(ctx context.Context, s verify.Subject) error {
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
		{name: "engine detects the cycle", because: "cycle: "},
		{name: "verifier neither detects cycles nor spends depth", breaks: true, because: "lineage depth exhausted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			setup := lineageSetup{opts: []Option{WithVerifyTimeout(10 * time.Second)}, hook: holdRoots()}
			var breaker *contractBreaker
			if tc.breaks {
				breaker = &contractBreaker{hook: holdRoots(), deps: map[v1.Hash][]verify.DependencyRef{}}
				setup.verifier = breaker
			}
			e := newLineageEnv(t, setup)
			a := e.push(e.models, "ml/a", false)
			b := e.push(e.datasets, "cyclic/b", false)
			e.models.attachProvenance(t, "ml/a", a.digest, e.release, input("dataset-b", datasetsHost, "cyclic/b", b.digest))
			e.datasets.attachProvenance(t, "cyclic/b", b.digest, e.release, input("dataset-a", modelsHost, "ml/a", a.digest))
			if breaker != nil {
				breaker.deps[a.digest] = []verify.DependencyRef{depRef(datasetsHost, "cyclic/b", b.digest)}
				breaker.deps[b.digest] = []verify.DependencyRef{depRef(modelsHost, "ml/a", a.digest)}
			}

			var wg sync.WaitGroup
			var wa, wb *httptest.ResponseRecorder
			wg.Go(func() { wa = e.pull("models", "ml/a", a.digest) })
			wg.Go(func() { wb = e.pull("datasets", "cyclic/b", b.digest) })
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

// contractBreaker is a Verifier that follows dependencies without spending
// depth and without detecting cycles. The engine does both, so no real
// verifier behaves like this; it exists to show that the rules the proxy
// applies to every dependency (flight keys by verify.DependencyKey, depth
// lowered by verify.AdmitDependency) end every lineage walk whatever the
// Verifier does.
type contractBreaker struct {
	hook func(ctx context.Context, s verify.Subject) error
	deps map[v1.Hash][]verify.DependencyRef // set before the first pull
}

func (c *contractBreaker) Fingerprint() string { return "contract-breaker" }

func (c *contractBreaker) FingerprintFor(string, string) string { return "contract-breaker" }

func (c *contractBreaker) BoundaryName(string, string, string) (string, bool) { return "lineage", true }
func (c *contractBreaker) BlobMode(string, string) (string, verify.Mode, bool) {
	return "lineage", verify.ModeEnforce, true
}

func (c *contractBreaker) Verify(ctx context.Context, s verify.Subject, _ verify.Fetcher) (verify.Verdict, error) {
	if err := c.hook(ctx, s); err != nil {
		return verify.Verdict{}, err
	}
	v := verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "lineage", Digest: s.Digest.String()}
	depth := s.Lineage.Depth
	if len(s.Lineage.Chain) == 0 {
		depth = 3
	}
	chain := append(slices.Clone(s.Lineage.Chain), s.Upstream+"/"+s.Repository+"@"+s.Digest.String())
	for _, d := range c.deps[s.Digest] {
		dv, err := s.Lineage.Dependencies.VerifyDependency(ctx, d, verify.LineageContext{Depth: depth, Chain: chain})
		if err != nil {
			return verify.Verdict{}, err
		}
		if !dv.Allowed {
			v.Allowed = false
			v.Reasons = append(v.Reasons, dv.Reasons...)
		}
	}
	return v, nil
}

func TestLineageDenialNamesTheChain(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	e := newLineageEnv(t, lineageSetup{logger: zap.New(core)})
	data := e.dataset("ml/data", false)
	m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))

	prefix := short("ml/model", m.digest) + " ← " + short("ml/data", data.digest) + ": "
	msg, detail := deniedBody(t, e.pull("models", "ml/model", m.digest))
	if !strings.Contains(msg, prefix) {
		t.Errorf("message %q does not name the chain %q", msg, prefix)
	}
	rs := detailReasons(detail)
	i := slices.IndexFunc(rs, func(r string) bool { return strings.HasPrefix(r, prefix) })
	if i < 0 {
		t.Fatalf("detail reasons %v do not name the chain %q", rs, prefix)
	}
	audit := logs.FilterLoggerName("audit").All()
	if len(audit) != 1 {
		t.Fatalf("%d audit events for one pull, want 1 (dependencies are part of the pull's decision)", len(audit))
	}
	f := audit[0].ContextMap()
	reasons, _ := f["reasons"].([]any)
	if f["decision"] != "deny" || f["digest"] != m.digest.String() || !slices.Contains(reasons, any(rs[i])) {
		t.Errorf("audit event %v does not report the denial with the chain %q", f, rs[i])
	}
}

func TestExplainFollowsLineage(t *testing.T) {
	t.Parallel()
	e := newLineageEnv(t, lineageSetup{})
	data := e.dataset("ml/data", true)
	m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))

	got, err := e.p.Explain(context.Background(), "models/ml/model@"+m.digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Allowed || len(got.Lineage) != 1 || got.Lineage[0].Verdict == nil || !got.Lineage[0].Verdict.Allowed {
		t.Fatalf("explained verdict %+v, want allowed with one allowed dependency", got)
	}
	if e.spy.callsFor(data.digest) != 1 {
		t.Errorf("dependency verified %d times, want 1", e.spy.callsFor(data.digest))
	}
}
