package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/portcullis-oci/portcullis/verify/summary"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
)

type options struct {
	logger          *zap.Logger
	defaultUpstream string
	verdicts        VerdictCache
	manifests       ManifestCache
	transport       http.RoundTripper
	blobGating      bool
	tagTTL          time.Duration
	verifyTimeout   time.Duration
	coverageTTL     time.Duration
	registerer      prometheus.Registerer
	// Bound on root verifications; zero values mean the defaults
	// (see verifyLimiter).
	maxVerifications int
	verifyQueue      int
	verifyQueueSet   bool
	verifyQueueWait  time.Duration
	// streamBudget is shared by every blob stream of the proxy.
	streamBudget *streamBudget
	// clientStallGrace: see WithClientStallGrace; 0 evicts nothing.
	clientStallGrace time.Duration
	// parsedBytes: see WithParsedManifestBytes.
	parsedBytes int64
	// evidenceTypes: see WithEvidenceTypes.
	evidenceTypes    evidenceTypes
	evidenceTypesSet bool
	// servedEvidenceBytes: see WithServedEvidenceBytes.
	servedEvidenceBytes int64
	// events: see WithEventSink.
	events EventSink
	// clientAuth and adminTokens: see WithClientAuth, WithAdminTokens.
	clientAuth  *ClientAuth
	adminTokens []TokenHash
	// summaries: see WithSummaries; nil signs none.
	summaries *summaryStore
	// revocations: see WithRevocations; refresh: WithRefreshAhead.
	revocations *Revocations
	refresh     *RefreshAhead
	// tracerProvider: see WithTracerProvider; nil is off.
	tracerProvider trace.TracerProvider
	// readinessDetails and collectors: see WithReadinessDetail,
	// WithCollectors.
	readinessDetails []func() string
	collectors       []prometheus.Collector
	// shared: see WithSharedState; nil keeps all state local.
	shared SharedState
	// sharedUndecided counts blob requests answered 503 because the
	// shared state could not be asked (WithSharedState).
	sharedUndecided prometheus.Counter
	// sharedFlight: see WithSharedFlight; nil verifies alone.
	sharedFlight *sharedFlight
	// broadcast: see WithBroadcast; nil keeps revocations local.
	broadcast Broadcast
	// blobFetch: see WithBlobCache, WithBlobShare.
	blobFetch blobFetchOptions
}

func defaultOptions() options {
	return options{
		logger:              zap.NewNop(),
		blobGating:          true,
		verifyTimeout:       60 * time.Second,
		coverageTTL:         10 * time.Minute,
		streamBudget:        newStreamBudget(DefaultStreamBufferBudget),
		parsedBytes:         DefaultParsedManifestBytes,
		servedEvidenceBytes: DefaultServedEvidenceBytes,

		clientStallGrace: DefaultClientStallGrace,
	}
}

// Option configures a Proxy.
type Option func(*options) error

// WithLogger sets the logger for request lines and audit events (the latter
// on the child logger named "audit"). Default: zap.NewNop().
func WithLogger(l *zap.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithDefaultUpstream names the upstream used when a request carries neither
// ?ns= nor a known path prefix. Default: none, such requests are
// NAME_UNKNOWN.
func WithDefaultUpstream(name string) Option {
	return func(o *options) error {
		o.defaultUpstream = name
		return nil
	}
}

// WithVerdictCache sets the verdict cache. Default: none, every manifest
// request is verified.
func WithVerdictCache(c VerdictCache) Option {
	return func(o *options) error {
		o.verdicts = c
		return nil
	}
}

// WithManifestCache sets the cache of verified manifest bytes. Default:
// none, manifests are fetched from the upstream by digest.
func WithManifestCache(c ManifestCache) Option {
	return func(o *options) error {
		o.manifests = c
		return nil
	}
}

// WithParsedManifestBytes bounds the parsed manifests the proxy keeps, by
// the bytes of the manifests they were parsed from. Default:
// DefaultParsedManifestBytes.
func WithParsedManifestBytes(n int64) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("parsed manifest bytes must be positive, got %d", n)
		}
		o.parsedBytes = n
		return nil
	}
}

// WithTransport sets the base round tripper of every upstream client.
// Default: each upstream builds its own from its TLS settings.
func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) error {
		o.transport = rt
		return nil
	}
}

// WithBlobGating serves a blob only when a manifest served in the same
// repository references it. Default: true.
func WithBlobGating(on bool) Option {
	return func(o *options) error {
		o.blobGating = on
		return nil
	}
}

// WithTagTTL lets a tag's digest be reused for d without asking the
// upstream. Default: 0, every tag request resolves upstream. Only the
// tag-to-digest mapping is cached; the digest is still verified.
func WithTagTTL(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return errors.New("negative tag TTL")
		}
		o.tagTTL = d
		return nil
	}
}

// WithVerifyTimeout bounds one verification, including the evidence it
// fetches. Default: 60s.
func WithVerifyTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return errors.New("verify timeout must be positive")
		}
		o.verifyTimeout = d
		return nil
	}
}

// WithCoverageTTL bounds how long an allowed index covers the children it
// lists: a child in the index's boundary is served on the index's verdict
// until d after that verdict was decided. Set it to the verdict cache's
// allow TTL so coverage lives exactly as long as the verdict it rests on.
// 0 turns coverage off: every child is verified on its own. Default: 10m.
func WithCoverageTTL(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return errors.New("negative coverage TTL")
		}
		o.coverageTTL = d
		return nil
	}
}

// WithRegisterer registers the proxy's metrics on r. Default: a private
// registry served at /metrics by AdminHandler. When r is also a
// prometheus.Gatherer, /metrics serves it.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(o *options) error {
		if r == nil {
			return errors.New("nil registerer")
		}
		o.registerer = r
		return nil
	}
}

// WithMaxVerifications bounds the verifications running at once to n.
// Only a client's pull takes a slot; the lineage dependencies it has
// verified run inside it. Verdict-cache hits take none. Default:
// 4 × runtime.GOMAXPROCS(0).
func WithMaxVerifications(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return errors.New("max verifications must be at least 1")
		}
		o.maxVerifications = n
		return nil
	}
}

// WithVerifyQueue lets up to size verifications wait for a slot, each for
// at most wait; past either bound the client is answered 429
// TOOMANYREQUESTS with a Retry-After. size 0 turns the queue off. Default:
// 8 × the max verifications, 10s.
func WithVerifyQueue(size int, wait time.Duration) Option {
	return func(o *options) error {
		if size < 0 {
			return errors.New("negative verify queue size")
		}
		if wait <= 0 {
			return errors.New("verify queue wait must be positive")
		}
		o.verifyQueue, o.verifyQueueSet, o.verifyQueueWait = size, true, wait
		return nil
	}
}

// WithStreamBufferBudget bounds the bytes of large (1 MiB) buffers that
// blob streams hold at once. A stream takes large buffers while the budget
// has room and gives them back when it ends; every other stream runs on
// small (24 KiB) ones. However many clients stop reading, the large
// buffers they hold stay within the budget and each of the others holds
// two small ones until it is dropped. 0 streams everything on small
// buffers. Default: DefaultStreamBufferBudget (64 MiB).
func WithStreamBufferBudget(bytes int64) Option {
	return func(o *options) error {
		if bytes < 0 {
			return errors.New("negative stream buffer budget")
		}
		o.streamBudget = newStreamBudget(bytes)
		return nil
	}
}

// WithClientStallGrace lets a pull that needs one of an upstream's stream
// connections, all of them taken, drop the blob stream whose client has
// taken no byte for longest, once that is at least d. Clients that stop
// reading then hold an upstream's stream connections for d, not for the
// whole client idle timeout. It applies only to connections accepted by
// Serve. 0 turns eviction off. Default: DefaultClientStallGrace (5s).
func WithClientStallGrace(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return errors.New("negative client stall grace")
		}
		o.clientStallGrace = d
		return nil
	}
}

// WithSummaries has s sign a verification summary (an SLSA VSA in a
// sigstore bundle) of every enforce-mode allow, the first time it is
// asked for as a referrer of the digest or from the admin API, and serve
// it, its bundle and its config from memory in that upstream and
// repository only. A summary lives exactly as long as its verdict is in
// the verdict cache under the current policy fingerprint, so summaries
// need WithVerdictCache; without one none is made. At most size summaries
// are kept (0 means DefaultSummaryCacheSize). Default: none.
func WithSummaries(s *summary.Signer, size int) Option {
	return func(o *options) error {
		if s == nil {
			return errors.New("nil summary signer")
		}
		if size < 0 {
			return errors.New("negative summary cache size")
		}
		if size == 0 {
			size = DefaultSummaryCacheSize
		}
		st, err := newSummaryStore(s, size)
		if err != nil {
			return err
		}
		o.summaries = st
		return nil
	}
}
