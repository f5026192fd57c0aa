package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// Bounds of the in-memory indexes the proxy keeps.
const (
	coverageSize    = 100_000
	blobAllowSize   = 100_000
	blobAllowTTL    = 10 * time.Minute
	tagCacheSize    = 10_000
	driftMemorySize = 100_000
	parsedCacheSize = 4096
	passThroughMax  = 4 << 20
)

// Proxy is the registry API front end: it routes, resolves, has manifests
// verified, and serves only what was allowed. Create it with New; it is
// safe for concurrent use and meant to live as long as the process.
type Proxy struct {
	router *router
	// verifier decides; SetVerifier swaps it while requests run, each of
	// which reads it once.
	verifier atomic.Pointer[verifierCell]
	opts     options
	log      *zap.Logger
	audit    *zap.Logger
	metrics  *metrics
	gatherer prometheus.Gatherer
	// tracer is nil with tracing off (see WithTracerProvider).
	tracer trace.Tracer
	// reloadMetrics count configuration reloads (see RecordReload).
	reloadMetrics *reloadMetrics
	// boundaryCounts count decisions per boundary (/v1/boundaries).
	boundaryCounts boundaryCounts

	// flights shares a pull's verification between concurrent requests,
	// depFlights a lineage dependency's between parent verifications;
	// slots bounds the pulls' verifications running at once.
	flights    rootFlights
	depFlights dependencyFlights
	slots      *verifyLimiter

	// manifestFetches shares an upstream GET of manifest bytes by digest
	// between the requests that need it at the same time.
	manifestFetches flightGroup[manifestFetch]

	// coverage maps a child manifest's verdict key to the served index
	// that lists it, while that index's verdict lasts.
	coverage *ttlCache[string, coverEntry]
	// blobs holds the blobs referenced by manifests served per repository,
	// with the size their descriptor declares and the decision that
	// opened them.
	blobs *ttlCache[string, blobGrant]
	// blobsKept maps the verdict key of a served image to the count of
	// blobs entries removed when its blobs were last added: while that
	// count holds and the entry is fresh, its blobs are all still open
	// for most of their TTL and a warm pull need not add them again.
	blobsKept *ttlCache[string, uint64]
	// shared shares blobs and coverage with other replicas; nil without.
	shared *sharing
	// tags caches tag→descriptor when a tag TTL is configured.
	tags *ttlCache[string, v1.Descriptor]
	// lastAllowed remembers whether a digest was last allowed, to detect
	// drift (allowed before, denied now).
	lastAllowed *lru.Cache[string, bool]
	// parsed keeps the parsed form of served manifests by digest and media
	// type, so a warm pull does not re-parse bytes it already parsed.
	parsed *parsedCache
	// evidence remembers which digest a manifest served as evidence is
	// about, for a later fetch of it by digest (cosign's tags name the
	// subject; the manifest behind them need not).
	evidence *ttlCache[string, v1.Hash]
	// evidenceRefused remembers why manifests shaped as evidence were
	// refused as such, for their size (see WithServedEvidenceBytes) or
	// their bytes (checkEvidenceShape).
	evidenceRefused *ttlCache[string, string]
	// evidenceShapes holds, per manifest digest, the outcome of checking
	// its blobs against their media types ("" when they are evidence):
	// the blobs are content-addressed, so the outcome is the bytes'.
	evidenceShapes *ttlCache[string, string]
	// shapeBytes bounds the evidence bytes held at once for checking.
	shapeBytes *semaphore.Weighted
	// clientAuth and adminTokens start as the options say and are
	// replaced by SetClientAuth.
	clientAuth  atomic.Pointer[ClientAuth]
	adminTokens atomic.Pointer[[]TokenHash]

	// revs is the revocation list enforced on every decision; refresh
	// re-verifies pulled allows before they expire (nil when off).
	revs    *Revocations
	refresh *refresher

	decisions decisionRing
	draining  atomic.Bool
	// streams are the blob streams running per upstream.
	streams *streamTable
	// fetches are the blob fetches concurrent pulls share, and the blob
	// cache.
	fetches *blobFetches
}

// New builds a proxy in front of upstreams. Every upstream must have a
// distinct name and aliases; v decides on every manifest served.
func New(upstreams []Upstream, v Verifier, opts ...Option) (*Proxy, error) {
	if len(upstreams) == 0 {
		return nil, errors.New("no upstreams configured")
	}
	if v == nil {
		return nil, errors.New("nil verifier")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("invalid option: %w", err)
		}
	}
	p := &Proxy{
		opts:     o,
		log:      o.logger,
		audit:    o.logger.Named("audit"),
		tracer:   o.tracer(),
		coverage: newTTLCache[string, coverEntry](coverageSize, o.coverageTTL),
		blobs:    newTTLCache[string, blobGrant](blobAllowSize, blobAllowTTL),
		// A tenth of the blobs' TTL: a pull that skips adding them
		// leaves its blobs open for at least nine tenths of it, and each
		// served image's blobs are added again at most once a minute.
		blobsKept: newTTLCache[string, uint64](blobAllowSize, blobAllowTTL/10),
		streams:   newStreamTable(),
		evidence:  newTTLCache[string, v1.Hash](evidenceMemorySize, evidenceMemoryTTL),
		// Only manifests refused as evidence, so that a denial answered
		// from the verdict cache, without the bytes, still says why.
		evidenceRefused: newTTLCache[string, string](evidenceMemorySize/10, evidenceMemoryTTL),
		evidenceShapes:  newTTLCache[string, string](evidenceMemorySize, evidenceShapeTTL),
		shapeBytes:      semaphore.NewWeighted(o.servedEvidenceBytes),
	}
	// The blobs' clock, which tests may replace, is the one both expire by.
	p.blobsKept.now = func() time.Time { return p.blobs.now() }
	p.verifier.Store(&verifierCell{v: v})
	p.clientAuth.Store(o.clientAuth)
	adminTokens := o.adminTokens
	p.adminTokens.Store(&adminTokens)
	if !o.evidenceTypesSet {
		p.opts.evidenceTypes = append(evidenceTypes{}, DefaultEvidenceTypes...)
	}
	if o.tagTTL > 0 {
		p.tags = newTTLCache[string, v1.Descriptor](tagCacheSize, o.tagTTL)
	}
	la, err := lru.New[string, bool](driftMemorySize)
	if err != nil {
		return nil, err
	}
	p.lastAllowed = la
	if p.parsed, err = newParsedCache(parsedCacheSize, o.parsedBytes); err != nil {
		return nil, err
	}

	rt, err := newRouter(upstreams, o)
	if err != nil {
		return nil, err
	}
	p.router = rt

	reg := o.registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, p.gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		p.gatherer = g
	}
	if p.metrics, err = newMetrics(reg); err != nil {
		return nil, err
	}
	p.metrics.seed(upstreamNames(upstreams), v)
	if p.reloadMetrics, err = newReloadMetrics(reg); err != nil {
		return nil, err
	}
	if err = p.registerBoundaryMetrics(reg); err != nil {
		return nil, err
	}
	for _, c := range o.collectors {
		if err = reg.Register(c); err != nil {
			return nil, err
		}
	}
	if p.fetches, err = newBlobFetches(p, o.blobFetch, reg); err != nil {
		return nil, err
	}
	p.slots = newVerifyLimiter(o, p.metrics, p.log)
	if err := p.initRefresh(); err != nil {
		return nil, err
	}
	p.initRevocations()
	// Set once the list in force at start is applied: only revocations
	// added later make older shared entries suspect (see revoked).
	p.shared = newSharing(o.shared)
	p.startBroadcast()
	if !o.blobGating {
		p.log.Warn("blob gating is disabled: any blob of a configured upstream can be pulled through the proxy")
	}
	return p, nil
}

func newRouter(upstreams []Upstream, o options) (*router, error) {
	rt := &router{byKey: map[string]*upstreamEntry{}, byHost: map[string]*upstreamEntry{}}
	var listing []string
	hosts := map[string]int{}
	for _, u := range upstreams {
		if u.Name == "" {
			return nil, errors.New("upstream with empty name")
		}
		c, err := upstream.New(upstream.Config{
			Name:      u.Name,
			URL:       u.URL,
			Insecure:  u.Insecure,
			RootCAs:   u.RootCAs,
			Auth:      u.Auth,
			Timeout:   u.Timeout,
			Transport: o.transport,

			IdleTimeout:    u.IdleTimeout,
			MaxConns:       u.MaxConns,
			MaxHeaderBytes: u.MaxHeaderBytes,
			RedirectHosts:  u.RedirectHosts,
			Propagator:     o.propagator(),
		})
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", u.Name, err)
		}
		e := &upstreamEntry{name: u.Name, client: c, manifests: c}
		for _, k := range append([]string{u.Name}, u.Aliases...) {
			k = strings.ToLower(k)
			if slices.Contains(e.keys, k) {
				continue
			}
			if k == "" {
				return nil, fmt.Errorf("upstream %q: empty alias", u.Name)
			}
			if other, dup := rt.byKey[k]; dup {
				return nil, fmt.Errorf("upstream %q: name or alias %q already used by upstream %q", u.Name, k, other.name)
			}
			rt.byKey[k] = e
			e.keys = append(e.keys, k)
			if k == "docker.io" {
				e.dockerHub = true
			}
		}
		if h := registryHost(u.URL); h != "" {
			hosts[h]++
			rt.byHost[h] = e
			e.registryNames = append(e.registryNames, h)
		}
		if e.dockerHub {
			// What go-containerregistry, and so cosign, names Docker Hub.
			e.registryNames = append(e.registryNames, "index.docker.io")
		}
		for _, k := range e.keys {
			if !slices.Contains(e.registryNames, k) {
				e.registryNames = append(e.registryNames, k)
			}
		}
		if u.Insecure {
			o.logger.Warn("upstream is insecure: plain HTTP or unverified TLS", zap.String("upstream", u.Name), zap.String("url", u.URL))
		}
		if len(u.RedirectHosts) > 0 {
			o.logger.Warn("upstream may redirect to these hosts even at internal addresses",
				zap.String("upstream", u.Name), zap.Strings("redirect_hosts", u.RedirectHosts))
		}
		if len(u.Aliases) > 0 {
			listing = append(listing, fmt.Sprintf("%s (aliases %s)", u.Name, strings.Join(u.Aliases, ", ")))
		} else {
			listing = append(listing, u.Name)
		}
	}
	rt.listing = strings.Join(listing, ", ")
	for h, n := range hosts {
		if n > 1 {
			// Two upstreams at one address (say, with different
			// credentials): the address alone does not say which.
			delete(rt.byHost, h)
		}
	}
	if o.defaultUpstream != "" {
		def := rt.byKey[strings.ToLower(o.defaultUpstream)]
		if def == nil {
			return nil, fmt.Errorf("default upstream %q is not configured", o.defaultUpstream)
		}
		rt.def = def
	}
	return rt, nil
}

// reqState collects what the request line and metrics report. The status
// recorder lives in it so that a request costs one allocation for both.
type reqState struct {
	rec        statusRecorder
	route      routeKind
	upstream   string
	repository string
	digest     string
	ns         string
	// principal is the authenticated client (see WithClientAuth).
	principal string
}

// ServeHTTP serves the read-only registry API.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &reqState{rec: statusRecorder{ResponseWriter: w}, route: -1, ns: queryValue(r.URL.RawQuery, "ns")}
	rec := &st.rec
	if p.tracer != nil {
		var span trace.Span
		r, span = p.startRequest(r)
		defer func() { endRequest(span, r.Method, st, rec.statusCode()) }()
	}
	defer func() {
		status := rec.statusCode()
		d := time.Since(start)
		p.metrics.request(r.Method, st.route, status, d.Seconds())
		// The one line per request. Headers are never logged: they may
		// carry credentials. Fields are built only when the line is.
		ce := p.log.Check(zap.InfoLevel, "request")
		if ce == nil {
			return
		}
		ce.Write(
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.String("ns", truncate(st.ns, maxNsLength)),
			zap.String("upstream", st.upstream),
			zap.String("repository", st.repository),
			zap.String("digest", st.digest),
			zap.Int("status", status),
			zap.Int64("bytes", rec.bytes),
			zap.Duration("duration", d),
			zap.String("client", r.RemoteAddr),
			zap.String("principal", st.principal),
		)
	}()
	p.serve(rec, r, st)
}

// apiVersion is the value of Docker-Distribution-API-Version, shared by
// every answer: net/http only reads header values, and an Add to the key
// would append to a copy (the slice is full).
var apiVersion = []string{"registry/2.0"}

// maxQueryParams is net/url's default bound on query parameters, past
// which URL.Query parses none.
const maxQueryParams = 10000

// queryValue is URL.Query().Get(key) without building the map: the first
// value of key among the &-separated pairs, pairs holding a semicolon or
// failing to unescape skipped, as url.ParseQuery skips them.
func queryValue(rawQuery, key string) string {
	if rawQuery == "" || strings.Count(rawQuery, "&") >= maxQueryParams {
		return ""
	}
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		k, err := url.QueryUnescape(k)
		if err != nil || k != key {
			continue
		}
		if v, err = url.QueryUnescape(v); err != nil {
			continue
		}
		return v
	}
	return ""
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, st *reqState) {
	w.Header()["Docker-Distribution-Api-Version"] = apiVersion
	// Authentication comes first, so an unauthenticated client learns
	// nothing, not even which paths parse; /v2/ challenges too, as
	// clients probe it before anything else.
	r, ok := p.authenticateRequest(w, r, st)
	if !ok {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Refused before parsing: nothing is looked up for a write.
		writeError(w, r, errorf(http.StatusMethodNotAllowed, CodeUnsupported, "%s is not supported: this registry is a read-only proxy", methodLabel(r.Method)))
		return
	}
	req, perr := parseAPIPath(r)
	if perr != nil {
		writeError(w, r, perr)
		return
	}
	st.route = req.kind
	if req.digest.Hex != "" {
		// parseDigest accepted ref whole: it is the digest's string form.
		st.digest = req.ref
	}
	if !methodAllowed(req.kind, r.Method) {
		writeError(w, r, errorf(http.StatusMethodNotAllowed, CodeUnsupported, "%s is not supported: this registry is a read-only proxy", methodLabel(r.Method)))
		return
	}
	if req.kind == routeBase {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write([]byte("{}"))
		}
		return
	}
	u, repo, perr := p.router.route(req.name, st.ns)
	if perr != nil {
		writeError(w, r, perr)
		return
	}
	st.upstream, st.repository = u.name, repo
	if err := p.authorize(r, u.name, repo); err != nil {
		writeError(w, r, err)
		return
	}
	var err error
	switch req.kind {
	case routeManifest:
		err = p.serveManifest(w, r, u, repo, req, st)
	case routeBlob:
		err = p.serveBlob(w, r, u, repo, req.digest)
	case routeReferrers:
		err = p.serveReferrers(w, r, u, repo, req.digest)
	case routeTags:
		err = p.passThrough(w, r, u, repo, "tags/list", pageQuery(r), CodeNameUnknown)
	}
	if err != nil {
		writeError(w, r, err)
	}
}

func methodAllowed(k routeKind, m string) bool {
	switch k {
	case routeManifest, routeBlob, routeBase:
		return m == http.MethodGet || m == http.MethodHead
	default:
		return m == http.MethodGet
	}
}

// methodLabel bounds the cardinality of the method label.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	default:
		return "OTHER"
	}
}

// statusRecorder captures status and size for the request line. It
// deliberately does not implement io.ReaderFrom, so blob copies go through
// the stream's own buffers, whose size the stream buffer budget decides.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// fileWriter is a statusRecorder that lets net/http send a file with
// sendfile(2) (clientConn.ReadFrom); used only for blobs served from the
// verified blob cache, whose bytes need no stream buffer and no hashing.
type fileWriter struct{ *statusRecorder }

func (f fileWriter) ReadFrom(src io.Reader) (int64, error) {
	s := f.statusRecorder
	if s.status == 0 {
		s.status = http.StatusOK
	}
	rf, ok := s.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{s}, src)
	}
	n, err := rf.ReadFrom(src)
	s.bytes += n
	return n, err
}

// forFile is w able to send a file with sendfile(2) when w is the
// proxy's own recorder; w itself otherwise.
func forFile(w http.ResponseWriter) http.ResponseWriter {
	if s, ok := w.(*statusRecorder); ok {
		return fileWriter{s}
	}
	return w
}

func (s *statusRecorder) statusCode() int {
	if s.status == 0 {
		// Nothing written: net/http answers 200 with an empty body.
		return http.StatusOK
	}
	return s.status
}

// registryHost is the host[:port] an image name uses for the registry at
// rawURL: lower case, without the scheme's default port.
func registryHost(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return ""
	}
	h := strings.ToLower(u.Host)
	switch {
	case u.Scheme == "https" && strings.HasSuffix(h, ":443"):
		h = strings.TrimSuffix(h, ":443")
	case u.Scheme == "http" && strings.HasSuffix(h, ":80"):
		h = strings.TrimSuffix(h, ":80")
	}
	return h
}
