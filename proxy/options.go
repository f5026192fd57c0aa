package proxy

import (
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
}

func defaultOptions() options {
	return options{
		logger:        zap.NewNop(),
		blobGating:    true,
		verifyTimeout: 60 * time.Second,
		coverageTTL:   10 * time.Minute,
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
