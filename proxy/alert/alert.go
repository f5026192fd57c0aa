package alert

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
)

// Type is a receiver's payload shape.
type Type string

// Receiver types.
const (
	Webhook     Type = "webhook"
	CloudEvents Type = "cloudevents"
	Slack       Type = "slack"
)

// Defaults for the zero values of SinkConfig.
const (
	DefaultDedupWindow = 5 * time.Minute
	DefaultQueue       = 1024
	DefaultTimeout     = 10 * time.Second
	DefaultMaxAttempts = 5
	// Backoff before attempt n+1 is DefaultBackoff·2^(n-1), at most
	// DefaultMaxBackoff, jittered down by up to half: five attempts give
	// up after about 15s of waiting.
	DefaultBackoff    = time.Second
	DefaultMaxBackoff = 30 * time.Second
	// DefaultSource is the CloudEvents source when none is set.
	DefaultSource = "urn:portcullis"
)

// Reasons an event is dropped, the reason label of
// portcullis_alerts_dropped_total.
const (
	DropQueueFull = "queue_full" // the sink's queue was full
	DropDuplicate = "duplicate"  // same kind, digest and boundary within the dedup window
	DropShutdown  = "shutdown"   // still queued or retrying when the flush deadline passed
)

const (
	// dedupEntries bounds the keys remembered for deduplication; clients
	// choose digests, so the set must not grow with them. The oldest key
	// is forgotten first, which at worst sends an alert twice.
	dedupEntries = 8192
	// maxResponseBytes is how much of a receiver's answer is read (and
	// discarded) so that its connection can be reused.
	maxResponseBytes = 64 << 10
	maxRedirects     = 3
	userAgent        = "portcullis-alerts"
)

// Kinds lists every event kind a filter may name.
var Kinds = []proxy.EventKind{
	proxy.EventDeny, proxy.EventWouldDeny, proxy.EventFailClosed, proxy.EventDrift,
	proxy.EventRevocationHit, proxy.EventReloadFailed,
	proxy.EventWatchAbsent, proxy.EventWatchStale, proxy.EventWatchChanged, proxy.EventWatchUnreachable,
	proxy.EventTrustedRootRefreshFailed, proxy.EventTrustedRootUnavailable,
}

// SinkConfig describes one receiver.
type SinkConfig struct {
	// Name labels the sink's metrics and log lines; required, unique.
	Name string
	Type Type
	// URL is where events are POSTed. It is never logged: a Slack URL's
	// path is its secret.
	URL string
	// Insecure allows a plain http URL.
	Insecure bool
	// Header is added to every request (e.g. Authorization); never logged.
	Header map[string]string
	// Kinds and Boundaries filter what is sent; empty sends all. With
	// Boundaries set, an event that names no boundary is not sent.
	Kinds      []proxy.EventKind
	Boundaries []string
	// DedupWindow: repeats of the same kind, digest and boundary within it
	// are sent once. 0 means DefaultDedupWindow; negative turns it off.
	DedupWindow time.Duration
	// Queue bounds the events waiting to be sent; 0 means DefaultQueue.
	Queue int
	// Timeout bounds each attempt; 0 means DefaultTimeout.
	Timeout time.Duration
	// MaxAttempts bounds the POSTs per event; 0 means DefaultMaxAttempts.
	MaxAttempts int
}

type options struct {
	logger     *zap.Logger
	registerer prometheus.Registerer
	transport  http.RoundTripper
	maxHeader  int64
	source     string
	backoff    time.Duration
	maxBackoff time.Duration
	now        func() time.Time
}

// Option configures a Dispatcher.
type Option func(*options) error

// WithLogger sets the logger for delivery failures. Default: zap.NewNop().
func WithLogger(l *zap.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithRegisterer registers the alert metrics on r. Default: a private
// registry nobody scrapes.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(o *options) error {
		if r == nil {
			return errors.New("nil registerer")
		}
		o.registerer = r
		return nil
	}
}

// WithTransport sets the round tripper requests go through. Default: a
// clone of http.DefaultTransport (which honours HTTPS_PROXY).
func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) error {
		if rt == nil {
			return errors.New("nil transport")
		}
		o.transport = rt
		return nil
	}
}

// WithMaxHeaderBytes bounds a receiver's answer's status line and headers
// on the default transport (a transport set by WithTransport keeps its
// own). Default: the upstream client's, 64 KiB (net/http's is 10 MiB).
func WithMaxHeaderBytes(n int64) Option {
	return func(o *options) error {
		if n <= 0 {
			return errors.New("header bound must be positive")
		}
		o.maxHeader = n
		return nil
	}
}

// WithSource sets the CloudEvents source and the webhook payload's source,
// a URI reference naming this instance. Default: DefaultSource.
func WithSource(s string) Option {
	return func(o *options) error {
		if u, err := url.Parse(s); s == "" || err != nil || u.String() == "" {
			return fmt.Errorf("source %q is not a URI reference", s)
		}
		o.source = s
		return nil
	}
}

// WithBackoff sets the first and the largest wait between attempts.
// Default: DefaultBackoff, DefaultMaxBackoff.
func WithBackoff(first, most time.Duration) Option {
	return func(o *options) error {
		if first <= 0 || most < first {
			return errors.New("backoff must be positive and at most its maximum")
		}
		o.backoff, o.maxBackoff = first, most
		return nil
	}
}

// Dispatcher fans events out to its sinks. It implements proxy.EventSink.
type Dispatcher struct {
	sinks []*sink
	m     *metrics
}

var _ proxy.EventSink = (*Dispatcher)(nil)

// New starts one delivery goroutine per sink; Close stops them.
func New(sinks []SinkConfig, opts ...Option) (*Dispatcher, error) {
	o := options{logger: zap.NewNop(), source: DefaultSource, backoff: DefaultBackoff, maxBackoff: DefaultMaxBackoff, now: time.Now,
		maxHeader: upstream.DefaultMaxHeaderBytes}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.registerer == nil {
		o.registerer = prometheus.NewRegistry()
	}
	if o.transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxResponseHeaderBytes = o.maxHeader
		o.transport = t
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{m: m}
	names := map[string]bool{}
	for _, c := range sinks {
		if names[c.Name] {
			return nil, fmt.Errorf("alert sink %q: name already used", c.Name)
		}
		names[c.Name] = true
		s, err := newSink(c, o, m)
		if err != nil {
			return nil, err
		}
		d.sinks = append(d.sinks, s)
	}
	for _, s := range d.sinks {
		go s.run()
	}
	return d, nil
}

// Emit queues e on every sink that wants it. It never blocks.
func (d *Dispatcher) Emit(e proxy.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	for _, s := range d.sinks {
		s.emit(e)
	}
}

// Close stops accepting events and delivers what is queued until ctx
// ends; what is left then is dropped (reason shutdown). It returns
// ctx.Err() when the deadline cut delivery short.
func (d *Dispatcher) Close(ctx context.Context) error {
	for _, s := range d.sinks {
		s.close()
	}
	var err error
	for _, s := range d.sinks {
		select {
		case <-s.done:
		case <-ctx.Done():
			err = ctx.Err()
			s.cancel()
			<-s.done
		}
	}
	return err
}

type metrics struct {
	sent, failed, dropped *prometheus.CounterVec
}

// Collectors are the dispatcher's metrics, for a registry other than the
// one given to WithRegisterer (the proxy's, through proxy.WithCollectors).
func (d *Dispatcher) Collectors() []prometheus.Collector {
	return []prometheus.Collector{d.m.sent, d.m.failed, d.m.dropped}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_alerts_sent_total",
			Help: "Alert events a receiver accepted (2xx), by sink.",
		}, []string{"sink"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_alerts_failed_total",
			Help: "Alert events not delivered after the last attempt or refused with a non-retryable status, by sink.",
		}, []string{"sink"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_alerts_dropped_total",
			Help: "Alert events not sent, by sink and reason: queue_full, duplicate (within the dedup window), shutdown (cut off by the flush deadline).",
		}, []string{"sink", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.sent, m.failed, m.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("failed to register alert metrics"), err)
		}
	}
	return m, nil
}

// queued is an event with the id every attempt to deliver it carries, so
// that a receiver can recognise a retry.
type queued struct {
	ev proxy.Event
	id string
}

type sink struct {
	name        string
	url         string
	header      map[string]string
	encode      encoder
	client      *http.Client
	log         *zap.Logger
	source      string
	kinds       map[proxy.EventKind]bool
	boundaries  map[string]bool
	window      time.Duration
	timeout     time.Duration
	maxAttempts int
	backoff     time.Duration
	maxBackoff  time.Duration
	now         func() time.Time

	sent, failed                prometheus.Counter
	queueFull, duplicate, shutd prometheus.Counter

	mu     sync.Mutex
	closed bool
	seen   *lru.Cache[string, time.Time]
	queue  chan queued

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newSink(c SinkConfig, o options, m *metrics) (*sink, error) {
	if c.Name == "" {
		return nil, errors.New("alert sink: name is required")
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("alert sink %q: %s", c.Name, fmt.Sprintf(format, args...))
	}
	// The URL is a secret: errors say what is wrong with it, never what it is.
	u, err := url.Parse(c.URL)
	switch {
	case err != nil || u.Host == "" || u.Opaque != "":
		return nil, fail("url is not an absolute http(s) URL")
	case u.User != nil:
		return nil, fail("url must not contain credentials; use a header")
	case u.Scheme == "https":
	case u.Scheme == "http" && c.Insecure:
	case u.Scheme == "http":
		return nil, fail("url uses plain http; set insecure to allow it")
	default:
		return nil, fail("url scheme must be https (or http with insecure)")
	}
	s := &sink{
		name: c.Name, url: c.URL, header: maps.Clone(c.Header), log: o.logger.With(zap.String("sink", c.Name)),
		source: o.source, window: c.DedupWindow, timeout: c.Timeout, maxAttempts: c.MaxAttempts,
		backoff: o.backoff, maxBackoff: o.maxBackoff, now: o.now, done: make(chan struct{}),
	}
	switch c.Type {
	case Webhook:
		s.encode = encodeWebhook
	case CloudEvents:
		s.encode = encodeCloudEvent
	case Slack:
		s.encode = encodeSlack
	default:
		return nil, fail("type %q is not webhook, cloudevents or slack", c.Type)
	}
	if s.window == 0 {
		s.window = DefaultDedupWindow
	}
	if s.timeout == 0 {
		s.timeout = DefaultTimeout
	}
	if s.maxAttempts == 0 {
		s.maxAttempts = DefaultMaxAttempts
	}
	queue := c.Queue
	if queue == 0 {
		queue = DefaultQueue
	}
	if queue < 0 || s.timeout < 0 || s.maxAttempts < 0 {
		return nil, fail("queue, timeout and max_attempts must not be negative")
	}
	for k, v := range s.header {
		if !validHeader(k, v) {
			return nil, fail("header %q has an invalid name or value", k)
		}
	}
	if len(c.Kinds) > 0 {
		s.kinds = map[proxy.EventKind]bool{}
		for _, k := range c.Kinds {
			if !knownKind(k) {
				return nil, fail("unknown event kind %q", k)
			}
			s.kinds[k] = true
		}
	}
	if len(c.Boundaries) > 0 {
		s.boundaries = map[string]bool{}
		for _, b := range c.Boundaries {
			s.boundaries[b] = true
		}
	}
	if s.seen, err = lru.New[string, time.Time](dedupEntries); err != nil {
		return nil, err
	}
	s.queue = make(chan queued, queue)
	s.client = &http.Client{Transport: o.transport, CheckRedirect: sameOrigin}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.sent, s.failed = m.sent.WithLabelValues(c.Name), m.failed.WithLabelValues(c.Name)
	s.queueFull = m.dropped.WithLabelValues(c.Name, DropQueueFull)
	s.duplicate = m.dropped.WithLabelValues(c.Name, DropDuplicate)
	s.shutd = m.dropped.WithLabelValues(c.Name, DropShutdown)
	return s, nil
}

// validHeader: the name is an RFC 9110 token, the value has no control
// characters that would split the request.
func validHeader(name, value string) bool {
	if name == "" || strings.ContainsFunc(value, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
		return false
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return false
		}
	}
	return true
}

func knownKind(k proxy.EventKind) bool {
	for _, known := range Kinds {
		if k == known {
			return true
		}
	}
	return false
}

var errRedirect = errors.New("receiver redirected to another scheme or host; not followed")

// sameOrigin follows a receiver's redirects only within its own scheme and
// host: an alert and its headers go nowhere the operator did not name.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return errors.New("too many redirects")
	}
	if req.URL.Scheme != via[0].URL.Scheme || req.URL.Host != via[0].URL.Host {
		return errRedirect
	}
	return nil
}

func eventBoundary(e proxy.Event) string {
	if e.Decision != nil {
		return e.Decision.Boundary
	}
	return e.Details["boundary"]
}

func eventDigest(e proxy.Event) string {
	if e.Decision != nil {
		return e.Decision.Digest
	}
	return e.Details["digest"]
}

func (s *sink) wants(e proxy.Event) bool {
	if s.kinds != nil && !s.kinds[e.Kind] {
		return false
	}
	if s.boundaries != nil && !s.boundaries[eventBoundary(e)] {
		return false
	}
	return true
}

// dedupKey: an event about no digest (a reload failure) is a repeat only
// when it says the same thing.
func dedupKey(e proxy.Event) string {
	k := string(e.Kind) + "\x00" + eventBoundary(e) + "\x00" + eventDigest(e)
	if eventDigest(e) == "" {
		k += "\x00" + e.Message
	}
	return k
}

func (s *sink) emit(e proxy.Event) {
	if !s.wants(e) {
		return
	}
	key := dedupKey(e)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.shutd.Inc()
		return
	}
	now := s.now()
	if s.window > 0 {
		if first, ok := s.seen.Get(key); ok && now.Sub(first) < s.window {
			s.duplicate.Inc()
			return
		}
	}
	select {
	case s.queue <- queued{ev: e, id: newID()}:
		if s.window > 0 {
			s.seen.Add(key, now)
		}
	default:
		s.queueFull.Inc()
	}
}

func (s *sink) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.queue)
	}
}

func (s *sink) run() {
	defer close(s.done)
	defer s.cancel()
	for q := range s.queue {
		s.deliver(q)
	}
}

func (s *sink) deliver(q queued) {
	if s.ctx.Err() != nil {
		s.shutd.Inc()
		return
	}
	p, err := s.encode(q.ev, q.id, s.source)
	if err != nil {
		s.failed.Inc()
		s.log.Error("alert not encoded", zap.String("kind", string(q.ev.Kind)), zap.Error(err))
		return
	}
	for attempt := 1; ; attempt++ {
		retry, err := s.post(p)
		if err == nil {
			s.sent.Inc()
			return
		}
		if s.ctx.Err() != nil {
			s.shutd.Inc()
			return
		}
		if !retry || attempt >= s.maxAttempts {
			s.failed.Inc()
			s.log.Warn("alert not delivered", zap.String("kind", string(q.ev.Kind)), zap.String("id", q.id),
				zap.Int("attempts", attempt), zap.Error(err))
			return
		}
		t := time.NewTimer(s.wait(attempt))
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			s.shutd.Inc()
			return
		}
	}
}

// wait is the jittered exponential backoff after the given attempt.
func (s *sink) wait(attempt int) time.Duration {
	d := s.backoff
	for i := 1; i < attempt && d < s.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.maxBackoff)
	return d/2 + mrand.N(d/2+1)
}

// post makes one attempt; retry says whether another may succeed.
func (s *sink) post(p payload) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(p.body))
	if err != nil {
		return false, errors.New("cannot build request")
	}
	for k, vs := range p.header {
		req.Header[k] = vs
	}
	for k, v := range s.header {
		req.Header.Set(k, v)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := s.client.Do(req)
	if err != nil {
		return true, redact(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
	_ = resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return false, nil
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		return true, fmt.Errorf("receiver answered %d", c)
	default:
		return false, fmt.Errorf("receiver answered %d", c)
	}
}

// redact drops the URL net/http puts into its errors.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if errors.Is(ue.Err, errRedirect) {
			return errRedirect
		}
		return fmt.Errorf("%s: %s", strings.ToLower(ue.Op), ue.Err.Error())
	}
	return err
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// payload is an encoded event: body and content headers.
type payload struct {
	body   []byte
	header http.Header
}

type encoder func(e proxy.Event, id, source string) (payload, error)
