package proxy

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests           *prometheus.CounterVec
	duration           *prometheus.HistogramVec
	decisions          *prometheus.CounterVec
	verificationErrors *prometheus.CounterVec
	upstreamErrors     *prometheus.CounterVec
	blobBytes          prometheus.Counter
	verdictCache       *prometheus.CounterVec
	verifications      prometheus.Counter
	drift              *prometheus.CounterVec
	refreshes          *prometheus.CounterVec
	revocationHits     prometheus.Counter
	lineageDeps        *prometheus.CounterVec
	verifyRunning      prometheus.Gauge
	verifyQueued       prometheus.Gauge
	verifyRejected     *prometheus.CounterVec
	clientConns        prometheus.Gauge
	clientConnsLimited prometheus.Counter
	clientStalled      prometheus.Counter
	sendfileBytes      prometheus.Counter
	streamsEvicted     prometheus.Counter
	streamBufLimited   prometheus.Counter
	limitExceeded      *prometheus.CounterVec
	evidenceMisshapen  prometheus.Counter
	signatureLayers    *prometheus.CounterVec
	evidenceTags       *prometheus.CounterVec
	referrers          *prometheus.CounterVec
	authFailures       *prometheus.CounterVec

	// Series resolved once: a label lookup hashes every label value on
	// each call, which on a warm pull costs more than the answer itself.
	verdictHit, verdictMiss prometheus.Counter
	// durationBy is indexed by route kind + 1; 0 is "other". Each series
	// is created on first use, as WithLabelValues would.
	durationBy  [routeTags + 2]lazyObserver
	requestsBy  seriesCache[requestSeries]
	decisionsBy seriesCache[decisionSeries]
}

type lazyObserver struct {
	once sync.Once
	o    prometheus.Observer
}

type requestSeries struct {
	method string
	route  routeKind
	code   int
}

type decisionSeries struct {
	boundary, decision, mode string
	source                   verdictSource
}

// maxCachedSeries bounds a seriesCache; past it, lookups go through the
// vector's labels every time, as they would without the cache.
const maxCachedSeries = 4096

// seriesCache maps a comparable key to its counter, resolved on first use.
type seriesCache[K comparable] struct {
	m sync.Map // K → prometheus.Counter
	n atomic.Int64
}

func (c *seriesCache[K]) get(k K, resolve func() prometheus.Counter) prometheus.Counter {
	if v, ok := c.m.Load(k); ok {
		return v.(prometheus.Counter)
	}
	ctr := resolve()
	if c.n.Load() < maxCachedSeries {
		if _, loaded := c.m.LoadOrStore(k, ctr); !loaded {
			c.n.Add(1)
		}
	}
	return ctr
}

// request counts one answered registry request and its duration.
func (m *metrics) request(method string, route routeKind, code int, seconds float64) {
	method = methodLabel(method)
	m.requestsBy.get(requestSeries{method, route, code}, func() prometheus.Counter {
		return m.requests.WithLabelValues(method, routeLabel(route), strconv.Itoa(code))
	}).Inc()
	i := int(route) + 1
	if i < 0 || i >= len(m.durationBy) {
		i = 0
	}
	lo := &m.durationBy[i]
	lo.once.Do(func() { lo.o = m.duration.WithLabelValues(routeLabel(routeKind(i - 1))) })
	lo.o.Observe(seconds)
}

// decision counts one decision.
func (m *metrics) decision(boundary, decision, mode string, source verdictSource) {
	m.decisionsBy.get(decisionSeries{boundary, decision, mode, source}, func() prometheus.Counter {
		return m.decisions.WithLabelValues(boundary, decision, mode, source.label())
	}).Inc()
}

// routeLabel names a route in metrics; a request that never parsed is
// "other".
func routeLabel(k routeKind) string {
	if k < 0 {
		return "other"
	}
	return k.String()
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_requests_total",
			Help: "Registry API requests by method, route and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "portcullis_request_duration_seconds",
			Help:    "Time to answer a registry API request, by route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"route"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_decisions_total",
			Help: "Decisions by boundary, decision (allow, deny, warn), mode and the verdict's source: verified for this request, the verdict cache, coverage by an allowed index, or blob-gating for a blob no allowed manifest references (deny or warn only).",
		}, []string{"boundary", "decision", "mode", "source"}),
		verificationErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_verification_errors_total",
			Help: "Verifications that could not reach a decision and failed closed, by reason.",
		}, []string{"reason"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_upstream_errors_total",
			Help: "Failed upstream calls by upstream and kind.",
		}, []string{"upstream", "kind"}),
		blobBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_blob_bytes_total",
			Help: "Blob bytes streamed to clients.",
		}),
		verdictCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_verdict_cache_total",
			Help: "Verdict cache lookups by result (hit, miss).",
		}, []string{"result"}),
		verifications: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_verifications_total",
			Help: "Verifier calls (after cache and request coalescing).",
		}),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_drift_total",
			Help: "Digests that were allowed before and are denied now, by boundary.",
		}, []string{"boundary"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_refresh_ahead_total",
			Help: "Background re-verifications of allowed digests before their verdict expired, by result (allow, deny, error, shared: another replica holds the lease or already refreshed it).",
		}, []string{"result"}),
		revocationHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_revocation_hits_total",
			Help: "Manifest requests denied (or, in warn boundaries, served as would-deny) because of a revocation.",
		}),
		lineageDeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_lineage_dependencies_total",
			Help: "Lineage dependencies decided for a parent subject, by result (allow, deny, error, cancelled: stopped because another dependency already decided the parent).",
		}, []string{"result"}),
		verifyRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_verifications_running",
			Help: "Root verifications holding a slot (see max verifications).",
		}),
		verifyQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_verifications_queued",
			Help: "Root verifications waiting for a slot.",
		}),
		verifyRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_verifications_rejected_total",
			Help: "Verifications refused a slot and answered 429, by reason (queue_full, queue_timeout).",
		}, []string{"reason"}),
		clientConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_client_connections",
			Help: "Client connections open on the registry listener.",
		}),
		clientConnsLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_client_connections_limited_total",
			Help: "Client connections that waited to be accepted because max client connections were open.",
		}),
		sendfileBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_client_sendfile_bytes_total",
			Help: "Bytes sent to clients straight from a file with sendfile(2): blobs served from the verified blob cache over plain TCP.",
		}),
		clientStalled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_client_stalled_total",
			Help: "Client connections dropped because the client took no byte of a response for the client idle timeout.",
		}),
		streamsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_client_streams_evicted_total",
			Help: "Blob streams whose client had stalled past the client stall grace, dropped to free an upstream stream connection for a waiting pull.",
		}),
		limitExceeded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_limit_exceeded_total",
			Help: "Verifications denied because a limit on the evidence they may read was reached, by limit (evidence_bytes, evidence_items), and manifests shaped as evidence not served as such for what they declare (served_evidence_bytes).",
		}, []string{"limit"}),
		evidenceMisshapen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_evidence_misshapen_total",
			Help: "Manifests shaped as evidence not served as such because a blob of theirs is not a document of the format its media type names (checked once per manifest digest).",
		}),
		signatureLayers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_signature_layer_predictions_total",
			Help: "cosign simple-signing layers of .sig tags that verifications opened, by whether their payload was predicted from the upstream's names (hit: no upstream request for it) or not (miss: read from the upstream; signed under a name the upstream's aliases do not list, or with annotations).",
		}, []string{"result"}),
		evidenceTags: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_evidence_tag_predictions_total",
			Help: "cosign .sig and .att tags not read ahead because the last verification in their repository did not need them, and referrers lists with fallback tags not read ahead because the repository's last verification was decided by its .sig tag alone, by whether this one did not need them either (saved: upstream requests fewer) or did (missed: read by the verification itself, at most one round trip later).",
		}, []string{"result"}),
		streamBufLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "portcullis_stream_buffer_budget_exhausted_total",
			Help: "Blob streams that ran, at least partly, on small buffers because the stream buffer budget was in use.",
		}),
		referrers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_referrers_total",
			Help: "Referrers listings answered, by upstream and source: the upstream's referrers API (api), its sha256-<hex> fallback tag (fallback), or neither (empty).",
		}, []string{"upstream", "source"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_auth_failures_total",
			Help: "Requests answered 401 because they carried no valid credentials, by listener (registry, admin).",
		}, []string{"listener"}),
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.duration, m.decisions, m.verificationErrors, m.upstreamErrors,
		m.blobBytes, m.verdictCache, m.verifications, m.drift, m.refreshes, m.revocationHits, m.lineageDeps,
		m.verifyRunning, m.verifyQueued, m.verifyRejected,
		m.clientConns, m.clientConnsLimited, m.clientStalled, m.sendfileBytes, m.streamsEvicted, m.streamBufLimited, m.limitExceeded, m.evidenceMisshapen,
		m.signatureLayers, m.evidenceTags, m.referrers, m.authFailures,
	} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("failed to register metrics"), err)
		}
	}
	// Goroutines, heap, open file descriptors and resident memory are what
	// a flood or a stalled client exhausts first. A registerer that already
	// carries these collectors (prometheus.DefaultRegisterer does) keeps
	// its own.
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			var dup prometheus.AlreadyRegisteredError
			if !errors.As(err, &dup) {
				return nil, errors.Join(errors.New("failed to register runtime metrics"), err)
			}
		}
	}
	// Pre-create the series dashboards alert on, so that a rate() over
	// them is defined before the first event.
	m.verdictHit = m.verdictCache.WithLabelValues("hit")
	m.verdictMiss = m.verdictCache.WithLabelValues("miss")
	for _, r := range []string{"allow", "deny", "error", "cancelled"} {
		m.lineageDeps.WithLabelValues(r)
	}
	for _, s := range []string{"hit", "miss"} {
		m.signatureLayers.WithLabelValues(s)
	}
	for _, s := range []string{"saved", "missed"} {
		m.evidenceTags.WithLabelValues(s)
	}
	m.verifyRejected.WithLabelValues(rejectQueueFull)
	m.verifyRejected.WithLabelValues(rejectQueueTimeout)
	return m, nil
}
