package proxy

import (
	"bufio"
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/portcullis-oci/portcullis/test/otlp"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// A client's trace: its pull must continue it.
const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
	clientParent  = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// newOTLPProvider is an SDK provider exporting to c over OTLP/HTTP, as
// serve sets it up: batched, flushed before the test reads c.
func newOTLPProvider(t *testing.T, c *otlp.Collector) *sdktrace.TracerProvider {
	t.Helper()
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(c.URL+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// traceHeaders records the traceparent of every request the proxy sends
// upstream, and whether each Verify call got a context with a span.
type traceHeaders struct {
	mu      sync.Mutex
	parents map[string]string // "host path" -> traceparent ("" when absent)
	spans   []bool
}

func (h *traceHeaders) request(r *http.Request) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.parents[r.URL.Host+" "+r.URL.Path] = r.Header.Get("traceparent")
	return false
}

func (h *traceHeaders) verify(ctx context.Context, _ verify.Subject) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.spans = append(h.spans, trace.SpanFromContext(ctx).SpanContext().IsValid())
	return nil
}

// tracedLineage is a model whose provenance (which a rule requires) lists
// a signed dataset on the second upstream, behind a proxy built with opts.
func tracedLineage(t *testing.T, opts ...Option) (*lineageEnv, *traceHeaders) {
	t.Helper()
	h := &traceHeaders{parents: map[string]string{}}
	e := newLineageEnv(t, lineageSetup{opts: opts, fail: h.request, hook: h.verify})
	pol := lineagePolicy(e.release, e.data)
	pol.Boundaries[0].Attestations = []verify.AttestationRule{provenanceRule("release")}
	e.spy.swap(t, pol)
	data := e.dataset("ml/data", true)
	e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))
	return e, h
}

// TestTracingPull: a pull continues the client's trace; tag resolution,
// the verification, evidence discovery, each signature and attestation
// check and each lineage dependency are spans under it, in that
// structure; every upstream request carries the trace.
func TestTracingPull(t *testing.T) {
	t.Parallel()
	col := otlp.New(t)
	tp := newOTLPProvider(t, col)
	e, h := tracedLineage(t, WithTracerProvider(tp))

	w := do(e.p, http.MethodGet, "/v2/models/ml/model/manifests/latest", "traceparent", clientParent)
	if w.Code != http.StatusOK {
		t.Fatalf("pull: %d %s", w.Code, w.Body)
	}
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if bad := col.Refused(); len(bad) > 0 {
		t.Fatalf("collector refused exports: %v", bad)
	}
	spans := col.Trace(clientTraceID)
	byID := map[string]otlp.Span{}
	for _, s := range spans {
		byID[s.SpanID] = s
	}
	// path is the names from the root down to s.
	path := func(s otlp.Span) string {
		names := []string{s.Name}
		for p, ok := byID[s.ParentSpanID]; ok; p, ok = byID[p.ParentSpanID] {
			names = append([]string{p.Name}, names...)
		}
		return strings.Join(names, " > ")
	}
	var paths []string
	for _, s := range spans {
		paths = append(paths, path(s))
	}
	want := []string{
		"GET manifests",
		"GET manifests > resolve tag",
		"GET manifests > verify",
		"GET manifests > verify > discover evidence",
		"GET manifests > verify > discover evidence > check signature",
		"GET manifests > verify > discover evidence > check attestation",
		"GET manifests > verify > lineage",
		"GET manifests > verify > lineage > verify dependency",
		"GET manifests > verify > lineage > verify dependency > verify",
		"GET manifests > verify > lineage > verify dependency > verify > discover evidence",
		"GET manifests > verify > lineage > verify dependency > verify > discover evidence > check signature",
	}
	for _, p := range want {
		if !slices.Contains(paths, p) {
			t.Errorf("no span %q in the trace; spans:\n%s", p, strings.Join(paths, "\n"))
		}
	}

	var root, resolve otlp.Span
	for _, s := range spans {
		switch s.Name {
		case "GET manifests":
			root = s
		case "resolve tag":
			resolve = s
		}
	}
	if root.ParentSpanID != clientSpanID || root.Kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("request span parent %s kind %v, want the client's span %s, server", root.ParentSpanID, root.Kind, clientSpanID)
	}
	if root.Attributes["http.response.status_code"] != "200" || root.Attributes["portcullis.upstream"] != "models" ||
		root.Attributes["portcullis.repository"] != "ml/model" {
		t.Errorf("request span attributes %v", root.Attributes)
	}
	for _, s := range spans {
		if s.Name == "verify" && (s.Attributes["portcullis.allowed"] != "true" || s.Attributes["portcullis.boundary"] == "") {
			t.Errorf("verify span %v, want an allow naming its boundary", s.Attributes)
		}
		if s.Name == "verify dependency" && (s.Attributes["portcullis.result"] != "allow" || s.Attributes["portcullis.repository"] != "ml/data") {
			t.Errorf("dependency span %v, want an allow of ml/data", s.Attributes)
		}
		if s.Name == "check attestation" && (s.Attributes["portcullis.verified"] != "true" || s.Attributes["portcullis.rule"] != "provenance") {
			t.Errorf("attestation span %v, want the provenance verified", s.Attributes)
		}
		if s.Name == "check signature" && s.Attributes["portcullis.authority"] == "" {
			t.Errorf("signature span %v, want the authority it counted for", s.Attributes)
		}
	}

	// Every upstream API call carries the trace; the tag's resolution
	// carries the resolve span as its parent.
	h.mu.Lock()
	defer h.mu.Unlock()
	var hosts []string
	for req, parent := range h.parents {
		host, p, _ := strings.Cut(req, " ")
		if p == "/v2/" {
			continue // the registry's ping, made by the auth transport
		}
		if !strings.HasPrefix(parent, "00-"+clientTraceID+"-") {
			t.Errorf("upstream request %s carries traceparent %q, want trace %s", req, parent, clientTraceID)
		}
		if strings.HasSuffix(p, "/manifests/latest") && parent != "00-"+clientTraceID+"-"+resolve.SpanID+"-01" {
			t.Errorf("tag resolution sent traceparent %q, want the resolve span %s", parent, resolve.SpanID)
		}
		if !slices.Contains(hosts, host) {
			hosts = append(hosts, host)
		}
	}
	if len(hosts) != 2 {
		t.Errorf("upstream requests went to %v, want both upstreams", hosts)
	}
	if len(h.spans) != 2 || !h.spans[0] || !h.spans[1] {
		t.Errorf("Verify saw a span in its context: %v, want true for the model and the dataset", h.spans)
	}
}

// TestTracingOff: without a tracer provider no span reaches the verifier
// and no traceparent reaches an upstream, even when the client sent one.
func TestTracingOff(t *testing.T) {
	t.Parallel()
	e, h := tracedLineage(t)
	w := do(e.p, http.MethodGet, "/v2/models/ml/model/manifests/latest", "traceparent", clientParent)
	if w.Code != http.StatusOK {
		t.Fatalf("pull: %d %s", w.Code, w.Body)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.parents) == 0 {
		t.Fatal("no upstream request seen")
	}
	for req, parent := range h.parents {
		if parent != "" {
			t.Errorf("upstream request %s carries traceparent %q with tracing off", req, parent)
		}
	}
	if len(h.spans) != 2 || h.spans[0] || h.spans[1] {
		t.Errorf("Verify saw a span in its context: %v, want none with tracing off", h.spans)
	}
}

// TestTracingSampledOut: a client that says its trace is not sampled gets
// no span exported, and its upstream requests still carry its trace id.
func TestTracingSampledOut(t *testing.T) {
	t.Parallel()
	col := otlp.New(t)
	tp := newOTLPProvider(t, col)
	e, h := tracedLineage(t, WithTracerProvider(tp))
	w := do(e.p, http.MethodGet, "/v2/models/ml/model/manifests/latest", "traceparent", "00-"+clientTraceID+"-"+clientSpanID+"-00")
	if w.Code != http.StatusOK {
		t.Fatalf("pull: %d %s", w.Code, w.Body)
	}
	if err := tp.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := col.Spans(); len(s) != 0 {
		t.Errorf("%d spans exported for a trace the client did not sample", len(s))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for req, parent := range h.parents {
		if !strings.HasSuffix(req, "/v2/") && !strings.HasPrefix(parent, "00-"+clientTraceID+"-") {
			t.Errorf("upstream request %s carries traceparent %q, want the client's trace", req, parent)
		}
	}
}

// TestTracingOptionRefusesNil: a nil provider is a wiring mistake.
func TestTracingOptionRefusesNil(t *testing.T) {
	t.Parallel()
	ups := []Upstream{{Name: "docker.io", URL: "https://registry-1.docker.io"}}
	if _, err := New(ups, allowAll(), WithTracerProvider(nil)); err == nil {
		t.Fatal("New accepted a nil tracer provider")
	}
}

// recordingRegisterer remembers every collector registered through it.
type recordingRegisterer struct {
	*prometheus.Registry
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.mu.Lock()
	r.collectors = append(r.collectors, c)
	r.mu.Unlock()
	return r.Registry.Register(c)
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// families names the metric families of the collectors registered.
func (r *recordingRegisterer) families() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.collectors {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			// Desc has no accessor for its name; its String() is
			// Desc{fqName: "…", …}.
			s := d.String()
			if i := strings.Index(s, `fqName: "`); i >= 0 {
				s = s[i+len(`fqName: "`):]
				if j := strings.IndexByte(s, '"'); j > 0 {
					out = append(out, s[:j])
				}
			}
		}
	}
	return out
}

// TestMetricFamiliesAtStart: before any request, /metrics lists every
// portcullis_ family the proxy registered, so that dashboards and rate()
// over them are defined from the first scrape.
func TestMetricFamiliesAtStart(t *testing.T) {
	t.Parallel()
	rec := &recordingRegisterer{Registry: prometheus.NewRegistry()}
	reg := newRegistry(t)
	e := newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{
		{Name: "models", Mode: verify.ModeEnforce, Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", newKey(t))}},
		{Name: "trial", Mode: verify.ModeWarn, Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", newKey(t))}},
	}})
	p, _ := newTestProxy(t, reg.srv.URL, e.eng.Load(), WithRegisterer(rec))
	w := do(p.AdminHandler(), http.MethodGet, "/metrics")
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics = %d", w.Code)
	}
	listed := map[string]bool{}
	sc := bufio.NewScanner(w.Body)
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "# TYPE "); ok {
			listed[strings.Fields(name)[0]] = true
		}
	}
	var registered []string
	for _, f := range rec.families() {
		if strings.HasPrefix(f, "portcullis_") {
			registered = append(registered, f)
		}
	}
	if len(registered) < 20 {
		t.Fatalf("only %d portcullis_ families registered: %v", len(registered), registered)
	}
	for _, f := range registered {
		if !listed[f] {
			t.Errorf("family %s is registered but not on /metrics at start", f)
		}
	}
	body := do(p.AdminHandler(), http.MethodGet, "/metrics").Body.String()
	for _, series := range []string{
		`portcullis_decisions_total{boundary="models",decision="deny",mode="enforce",source="verified"} 0`,
		`portcullis_decisions_total{boundary="trial",decision="warn",mode="warn",source="verified"} 0`,
		`portcullis_upstream_errors_total{kind="unreachable",upstream="ghcr.io"} 0`,
		`portcullis_drift_total{boundary="models"} 0`,
	} {
		if !strings.Contains(body, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
}
