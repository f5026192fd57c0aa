package shared

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Defaults of the shared state.
const (
	// DefaultTimeout bounds one Redis call. A shared lookup must cost far
	// less than verifying again, and a slow Redis must not slow pulls.
	DefaultTimeout = 200 * time.Millisecond
	// DefaultMaxValueBytes bounds a value read from or written to Redis.
	DefaultMaxValueBytes = 16 << 10
	// DefaultKeyPrefix starts every key the proxies write.
	DefaultKeyPrefix = "portcullis:"
	// circuitFailures consecutive failures open the circuit for
	// circuitBackoff: long enough that a dead Redis costs a pull nothing,
	// short enough that sharing resumes within seconds of its return.
	circuitFailures = 3
	circuitBackoff  = 2 * time.Second
	// invalidLogEvery rate-limits the log of rejected values: a planted
	// flood must not flood the log too.
	invalidLogEvery = time.Minute
)

// ErrUnavailable is returned by Guard.Do without calling Redis while the
// circuit is open.
var ErrUnavailable = errors.New("shared state unavailable")

// ClientOptions says how to reach Redis: one server (Addr), a master
// found through Sentinel (Sentinel) or a Redis Cluster (Cluster), exactly
// one of them.
type ClientOptions struct {
	Addr     string
	Sentinel *SentinelOptions
	Cluster  *ClusterOptions
	// Username and Password authenticate to the server(s) holding the
	// data: the one server, the master Sentinel names, every cluster node.
	Username string
	Password string
	// DB is the database number; a cluster has only 0.
	DB int
	// TLS, when non-nil, encrypts every connection, to Sentinels too (and
	// authenticates the server with its roots).
	TLS *tls.Config
	// Timeout bounds dialling and each command; DefaultTimeout when zero.
	Timeout time.Duration
}

// SentinelOptions finds the master through Redis Sentinel. Reads and
// writes go to the master only: a replica may lag behind it, and a lease
// or a verdict read back from a replica could be one the master no longer
// holds.
type SentinelOptions struct {
	// Master is the master's name in the Sentinels' configuration.
	Master string
	// Addrs are Sentinels (host:port); the client asks them in turn.
	Addrs []string
	// Username and Password authenticate to the Sentinels, when they
	// require it.
	Username, Password string
}

// ClusterOptions reaches a Redis Cluster.
type ClusterOptions struct {
	// Addrs are seed nodes (host:port); the client learns the rest.
	Addrs []string
}

// NewClient returns a Redis client for o. It does not connect: the first
// command does, and a Redis that is down at start is an outage like any
// other, not a reason to refuse to start.
func NewClient(o ClientOptions) (redis.UniversalClient, error) {
	modes := 0
	for _, set := range []bool{o.Addr != "", o.Sentinel != nil, o.Cluster != nil} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return nil, errors.New("exactly one of a redis address, sentinel or cluster is required")
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	// MaxRetries -1: a retry would stretch a call past the timeout that
	// keeps a slow Redis from slowing pulls; the Guard decides what
	// happens next instead. A cluster still follows MOVED and ASK
	// redirections (MaxRedirects), which are routing, not retries.
	maint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	switch {
	case o.Sentinel != nil:
		s := o.Sentinel
		if s.Master == "" || len(s.Addrs) == 0 {
			return nil, errors.New("sentinel needs a master name and at least one sentinel address")
		}
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:            s.Master,
			SentinelAddrs:         s.Addrs,
			SentinelUsername:      s.Username,
			SentinelPassword:      s.Password,
			Username:              o.Username,
			Password:              o.Password,
			DB:                    o.DB,
			TLSConfig:             o.TLS,
			MaxRetries:            -1,
			DialTimeout:           o.Timeout,
			ReadTimeout:           o.Timeout,
			WriteTimeout:          o.Timeout,
			ContextTimeoutEnabled: true,
			DisableIdentity:       true,
			// Maintenance notifications are always off for a failover
			// client in go-redis.
		}), nil
	case o.Cluster != nil:
		if len(o.Cluster.Addrs) == 0 {
			return nil, errors.New("cluster needs at least one node address")
		}
		if o.DB != 0 {
			return nil, errors.New("a redis cluster has only database 0")
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                    o.Cluster.Addrs,
			Username:                 o.Username,
			Password:                 o.Password,
			TLSConfig:                o.TLS,
			MaxRetries:               -1,
			DialTimeout:              o.Timeout,
			ReadTimeout:              o.Timeout,
			WriteTimeout:             o.Timeout,
			ContextTimeoutEnabled:    true,
			DisableIdentity:          true,
			MaintNotificationsConfig: maint,
		}), nil
	}
	return redis.NewClient(&redis.Options{
		Addr:                     o.Addr,
		Username:                 o.Username,
		Password:                 o.Password,
		DB:                       o.DB,
		TLSConfig:                o.TLS,
		MaxRetries:               -1,
		DialTimeout:              o.Timeout,
		ReadTimeout:              o.Timeout,
		WriteTimeout:             o.Timeout,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		MaintNotificationsConfig: maint,
	}), nil
}

// masters lists the servers that each hold a share of the keys: the one
// server, or every master of a cluster. SCAN is the reason: on a cluster
// it walks only the node it is sent to.
func masters(ctx context.Context, c redis.UniversalClient) ([]redis.UniversalClient, error) {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return []redis.UniversalClient{c}, nil
	}
	var mu sync.Mutex
	var nodes []redis.UniversalClient
	err := cc.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		nodes = append(nodes, n)
		mu.Unlock()
		return nil
	})
	return nodes, err
}

// Guard runs Redis calls with a timeout and a circuit breaker, counts
// their failures and logs outages once. It is safe for concurrent use.
type Guard struct {
	log     *zap.Logger
	timeout time.Duration
	now     func() time.Time

	errs *prometheus.CounterVec
	up   prometheus.Gauge

	mu          sync.Mutex
	fails       int       // consecutive failures
	openUntil   time.Time // circuit open (calls skipped) until then
	down        bool      // an outage has been logged and not yet its end
	downSince   time.Time
	lastErr     string
	lastInvalid time.Time // last rejected value logged
	invalidSkip int       // rejected values not logged since
	// generation counts successes that followed a failure: what was
	// written during or before the failure may be gone (see Generation).
	generation uint64
}

// NewGuard returns a Guard bounding each call by timeout (DefaultTimeout
// when zero or less). Its metrics are registered on reg when reg is not
// nil; the Guard is also a prometheus.Collector for callers that register
// it elsewhere.
func NewGuard(logger *zap.Logger, reg prometheus.Registerer, timeout time.Duration) *Guard {
	if logger == nil {
		logger = zap.NewNop()
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	g := &Guard{
		log:     logger,
		timeout: timeout,
		now:     time.Now,
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_shared_errors_total",
			Help: "Failed or refused operations on the shared state (Redis), by operation and kind: error, timeout, unavailable (circuit open, Redis skipped), invalid (a value refused).",
		}, []string{"op", "kind"}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_shared_up",
			Help: "1 while the shared state (Redis) is in use, 0 while this replica works alone.",
		}),
	}
	g.up.Set(1)
	if reg != nil {
		// A second Guard on the same registry (tests) keeps the first's
		// collectors; its own counts are then not exported.
		_ = reg.Register(g)
	}
	return g
}

// Describe implements prometheus.Collector.
func (g *Guard) Describe(ch chan<- *prometheus.Desc) {
	g.errs.Describe(ch)
	g.up.Describe(ch)
}

// Collect implements prometheus.Collector.
func (g *Guard) Collect(ch chan<- prometheus.Metric) {
	g.errs.Collect(ch)
	g.up.Collect(ch)
}

// Seed creates the error series of ops at zero, so that increase() sees
// their first event.
func (g *Guard) Seed(ops ...string) {
	for _, op := range ops {
		for _, kind := range []string{"error", "timeout", "unavailable", "invalid"} {
			g.errs.WithLabelValues(op, kind)
		}
	}
}

// Do runs fn with a context bounded by the Guard's timeout. It returns
// ErrUnavailable without calling fn while the circuit is open. redis.Nil
// (a missing key) is a success. An error because ctx itself ended (the
// client went away) is returned but says nothing of Redis's health.
func (g *Guard) Do(ctx context.Context, op string, fn func(context.Context) error) error {
	g.mu.Lock()
	if g.now().Before(g.openUntil) {
		g.mu.Unlock()
		g.errs.WithLabelValues(op, "unavailable").Inc()
		return ErrUnavailable
	}
	g.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, g.timeout)
	err := fn(cctx)
	cancel()
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		g.succeeded()
	case ctx.Err() != nil:
	default:
		kind := "error"
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			kind = "timeout"
		}
		g.errs.WithLabelValues(op, kind).Inc()
		g.failed(op, err)
	}
	return err
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

func (g *Guard) succeeded() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fails > 0 || g.down {
		g.generation++
	}
	g.fails = 0
	g.openUntil = time.Time{}
	if g.down {
		g.down = false
		g.up.Set(1)
		g.log.Info("shared state (redis) reachable again: sharing resumed", zap.Duration("outage", g.now().Sub(g.downSince)))
	}
}

func (g *Guard) failed(op string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fails++
	g.lastErr = err.Error()
	if g.fails < circuitFailures {
		return
	}
	g.openUntil = g.now().Add(circuitBackoff)
	if !g.down {
		g.down = true
		g.downSince = g.now()
		g.up.Set(0)
		g.log.Warn("shared state (redis) unavailable: working alone from local state until it returns",
			zap.String("op", op), zap.Error(err), zap.Duration("retry_every", circuitBackoff))
	}
}

// Generation changes each time Redis answers again after a failed call:
// writes made around an outage may have been lost, so callers that skip
// writing what they wrote recently write it again.
func (g *Guard) Generation() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.generation
}

// Invalid counts a value refused by op and logs it, at most once a minute.
// key is the logical key it was read for (never the value: it is
// untrusted and may be large).
func (g *Guard) Invalid(op, key string, err error) {
	g.errs.WithLabelValues(op, "invalid").Inc()
	g.mu.Lock()
	now := g.now()
	if !g.lastInvalid.IsZero() && now.Sub(g.lastInvalid) < invalidLogEvery {
		g.invalidSkip++
		g.mu.Unlock()
		return
	}
	skipped := g.invalidSkip
	g.lastInvalid, g.invalidSkip = now, 0
	g.mu.Unlock()
	g.log.Warn("shared state (redis): value refused; is something other than the proxies writing to redis?",
		zap.String("op", op), zap.String("key", key), zap.Error(err), zap.Int("refused_unlogged_since_last", skipped))
}

// Healthy reports whether Redis is in use (no outage under way).
func (g *Guard) Healthy() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.down
}

// Detail is the /readyz note for an outage, "" when healthy.
func (g *Guard) Detail() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.down {
		return ""
	}
	return fmt.Sprintf("shared state: redis unavailable since %s (%s); working alone from local state",
		g.downSince.UTC().Format(time.RFC3339), g.lastErr)
}
