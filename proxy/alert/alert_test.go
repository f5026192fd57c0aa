package alert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/verify"
)

// received is one request a receiver got.
type received struct {
	header http.Header
	body   []byte
	path   string
}

// receiver is a real HTTP receiver. status, when set, picks the answer to
// the n-th request (0-based); gate, when set, holds every request until it
// is closed.
type receiver struct {
	srv     *httptest.Server
	got     chan received
	entered chan struct{}
	gate    chan struct{}
	mu      sync.Mutex
	n       int
	status  func(n int) int
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	r := &receiver{got: make(chan received, 100), entered: make(chan struct{}, 100)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.entered <- struct{}{}
		if r.gate != nil {
			select {
			case <-r.gate:
			case <-req.Context().Done():
				return
			}
		}
		r.mu.Lock()
		n := r.n
		r.n++
		r.mu.Unlock()
		code := http.StatusOK
		if r.status != nil {
			code = r.status(n)
		}
		r.got <- received{header: req.Header.Clone(), body: b, path: req.URL.Path}
		w.WriteHeader(code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) next(t *testing.T) received {
	t.Helper()
	select {
	case g := <-r.got:
		return g
	case <-time.After(30 * time.Second):
		t.Fatal("receiver got nothing")
		return received{}
	}
}

// none asserts that nothing else arrived. Sinks deliver in order, so
// callers emit a sentinel first and wait for it: anything sent before it
// has arrived by then.
func (r *receiver) none(t *testing.T) {
	t.Helper()
	select {
	case g := <-r.got:
		t.Errorf("unexpected delivery: %s", g.body)
	default:
	}
}

func newDispatcher(t *testing.T, c SinkConfig, opts ...Option) *Dispatcher {
	t.Helper()
	if c.Name == "" {
		c.Name = "test"
	}
	if c.Type == "" {
		c.Type = Webhook
	}
	c.Insecure = true
	d, err := New([]SinkConfig{c}, append([]Option{WithBackoff(time.Millisecond, 2*time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = d.Close(ctx)
	})
	return d
}

func denyEvent(digest, boundary, reason string) proxy.Event {
	d := &proxy.Decision{Kind: "manifest", Upstream: "docker.io", Repository: "acme/app", Digest: digest,
		Boundary: boundary, Decision: "deny", Mode: verify.ModeEnforce, Reasons: []string{reason}, Client: "10.0.0.7"}
	return proxy.Event{Kind: proxy.EventDeny, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Decision: d,
		Message: "deny docker.io/acme/app@" + digest + " (boundary " + boundary + "): " + reason}
}

func digestN(n int) string { return fmt.Sprintf("sha256:%064x", n) }

func counter(t *testing.T, c prometheus.Counter) int {
	t.Helper()
	return int(testutil.ToFloat64(c))
}

func TestWebhookPayload(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	d := newDispatcher(t, SinkConfig{URL: r.srv.URL + "/hook", Header: map[string]string{"Authorization": "Bearer s3cret"}},
		WithSource("urn:portcullis:test"))
	d.Emit(denyEvent(digestN(1), "prod", "no valid signature"))
	g := r.next(t)
	if g.path != "/hook" || g.header.Get("Content-Type") != "application/json" || g.header.Get("Authorization") != "Bearer s3cret" {
		t.Errorf("path %q, headers %v", g.path, g.header)
	}
	var got struct {
		ID       string          `json:"id"`
		Source   string          `json:"source"`
		Kind     string          `json:"kind"`
		Time     time.Time       `json:"time"`
		Message  string          `json:"message"`
		Decision *proxy.Decision `json:"decision"`
	}
	if err := json.Unmarshal(g.body, &got); err != nil {
		t.Fatalf("%v: %s", err, g.body)
	}
	if got.ID == "" || got.Source != "urn:portcullis:test" || got.Kind != "deny" || got.Time.IsZero() ||
		got.Decision == nil || got.Decision.Digest != digestN(1) || got.Decision.Reasons[0] != "no valid signature" ||
		!strings.Contains(got.Message, digestN(1)) {
		t.Errorf("payload %s", g.body)
	}
}

func TestCloudEventsBinaryMode(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	d := newDispatcher(t, SinkConfig{Type: CloudEvents, URL: r.srv.URL}, WithSource("urn:portcullis:test"))
	d.Emit(denyEvent(digestN(1), "prod", "no valid signature"))
	d.Emit(proxy.Event{Kind: proxy.EventReloadFailed, Message: "reload failed: boundaries[0]: bad", Details: map[string]string{"file": "p.yaml"}})
	ids := map[string]bool{}
	for i, wantType := range []string{"dev.portcullis.decision.deny", "dev.portcullis.reload.failed"} {
		g := r.next(t)
		h := g.header
		if h.Get("Ce-Specversion") != "1.0" || h.Get("Ce-Type") != wantType || h.Get("Ce-Source") != "urn:portcullis:test" ||
			h.Get("Content-Type") != "application/json" {
			t.Errorf("event %d: headers %v", i, h)
		}
		if _, err := time.Parse(time.RFC3339Nano, h.Get("Ce-Time")); err != nil {
			t.Errorf("event %d: ce-time %q: %v", i, h.Get("Ce-Time"), err)
		}
		id := h.Get("Ce-Id")
		if id == "" || ids[id] {
			t.Errorf("event %d: ce-id %q not unique", i, id)
		}
		ids[id] = true
		var data struct {
			ID   string `json:"id"`
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(g.body, &data); err != nil || data.ID != id {
			t.Errorf("event %d: data %s (%v)", i, g.body, err)
		}
		if i == 0 && h.Get("Ce-Subject") != "docker.io/acme/app@"+digestN(1) {
			t.Errorf("ce-subject %q", h.Get("Ce-Subject"))
		}
	}
}

// TestSlackEscapes: a repository name or reason cannot mention a channel
// or forge a link in the Slack message.
func TestSlackEscapes(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	d := newDispatcher(t, SinkConfig{Type: Slack, URL: r.srv.URL})
	d.Emit(denyEvent(digestN(1), "prod", "<!channel> see <https://evil.example|docs> & more"))
	g := r.next(t)
	var m struct {
		Text   string `json:"text"`
		Blocks []struct {
			Type string `json:"type"`
			Text *struct {
				Type, Text string
			} `json:"text"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(g.body, &m); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(g.body), "<!channel>") || strings.Contains(m.Text, "<https://") {
		t.Errorf("unescaped: %s", g.body)
	}
	if !strings.Contains(m.Text, "&lt;!channel&gt;") || !strings.Contains(m.Text, "&amp; more") || !strings.Contains(m.Text, "*deny*") ||
		!strings.Contains(m.Text, digestN(1)) {
		t.Errorf("text %q", m.Text)
	}
	if len(m.Blocks) != 2 || m.Blocks[0].Type != "section" || m.Blocks[0].Text == nil || m.Blocks[0].Text.Text != m.Text || m.Blocks[1].Type != "context" {
		t.Errorf("blocks %s", g.body)
	}
}

func TestFilters(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	d := newDispatcher(t, SinkConfig{URL: r.srv.URL, Kinds: []proxy.EventKind{proxy.EventDeny}, Boundaries: []string{"prod"}})
	warn := denyEvent(digestN(1), "prod", "x")
	warn.Kind = proxy.EventWouldDeny
	d.Emit(warn)                                   // kind filtered
	d.Emit(denyEvent(digestN(2), "dev", "x"))      // boundary filtered
	d.Emit(proxy.Event{Kind: proxy.EventDeny})     // names no boundary
	d.Emit(denyEvent(digestN(3), "prod", "x"))     // sent
	sentinel := denyEvent(digestN(4), "prod", "x") // sent after it
	d.Emit(sentinel)
	for _, want := range []string{digestN(3), digestN(4)} {
		if g := r.next(t); !strings.Contains(string(g.body), want) {
			t.Errorf("got %s, want %s", g.body, want)
		}
	}
	r.none(t)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func withClock(c *clock) Option {
	return func(o *options) error { o.now = c.now; return nil }
}

func TestDedupWindow(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	d := newDispatcher(t, SinkConfig{URL: r.srv.URL, DedupWindow: time.Minute}, withClock(c))
	s := d.sinks[0]
	e := denyEvent(digestN(1), "prod", "x")
	d.Emit(e)
	c.add(59 * time.Second)
	d.Emit(e) // within the window
	other := e
	other.Kind = proxy.EventDrift
	d.Emit(other) // another kind of the same digest is its own alert
	d.Emit(denyEvent(digestN(1), "dev", "x"))
	for range 3 {
		r.next(t)
	}
	r.none(t)
	if n := counter(t, s.duplicate); n != 1 {
		t.Errorf("duplicates counted %d, want 1", n)
	}
	c.add(2 * time.Second) // past the window: sent again
	d.Emit(e)
	if g := r.next(t); !strings.Contains(string(g.body), digestN(1)) || !strings.Contains(string(g.body), `"kind":"deny"`) {
		t.Errorf("after the window: %s", g.body)
	}
	if n := counter(t, s.duplicate); n != 1 {
		t.Errorf("duplicates counted %d, want 1", n)
	}

	// A negative window turns deduplication off.
	r2 := newReceiver(t)
	d2 := newDispatcher(t, SinkConfig{URL: r2.srv.URL, DedupWindow: -1}, withClock(c))
	d2.Emit(e)
	d2.Emit(e)
	r2.next(t)
	r2.next(t)
}

func TestRetries(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		status     func(n int) int
		attempts   int
		sent, fail int
	}{
		{"500 then success", func(n int) int { return map[bool]int{true: 500, false: 200}[n < 2] }, 3, 1, 0},
		{"always 503", func(int) int { return 503 }, 4, 0, 1},
		{"429 then success", func(n int) int { return map[bool]int{true: 429, false: 204}[n < 1] }, 2, 1, 0},
		{"400 is final", func(int) int { return 400 }, 1, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newReceiver(t)
			r.status = c.status
			d := newDispatcher(t, SinkConfig{URL: r.srv.URL, MaxAttempts: 4})
			d.Emit(denyEvent(digestN(1), "prod", "x"))
			var ids []string
			for range c.attempts {
				var b struct{ ID string }
				_ = json.Unmarshal(r.next(t).body, &b)
				ids = append(ids, b.ID)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := d.Close(ctx); err != nil {
				t.Fatal(err)
			}
			r.none(t)
			for _, id := range ids {
				if id != ids[0] {
					t.Errorf("retry changed the id: %v", ids)
				}
			}
			s := d.sinks[0]
			if got := [2]int{counter(t, s.sent), counter(t, s.failed)}; got != [2]int{c.sent, c.fail} {
				t.Errorf("sent, failed = %v, want %d, %d", got, c.sent, c.fail)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	s := &sink{backoff: time.Second, maxBackoff: 8 * time.Second}
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 9: 8 * time.Second} {
		for range 200 {
			if w := s.wait(attempt); w < want/2 || w > want {
				t.Fatalf("attempt %d: waited %v, want within [%v, %v]", attempt, w, want/2, want)
			}
		}
	}
}

// TestEmitNeverBlocks: with the receiver stuck, Emit returns at once;
// what the queue cannot hold is dropped and counted.
func TestEmitNeverBlocks(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	r.gate = make(chan struct{})
	d := newDispatcher(t, SinkConfig{URL: r.srv.URL, Queue: 2, DedupWindow: -1})
	s := d.sinks[0]
	d.Emit(denyEvent(digestN(0), "prod", "x"))
	<-r.entered // the worker is stuck in the first POST
	for i := 1; i <= 7; i++ {
		d.Emit(denyEvent(digestN(i), "prod", "x"))
	}
	if n := counter(t, s.queueFull); n != 5 {
		t.Errorf("queue_full drops %d, want 5", n)
	}
	close(r.gate)
	for range 3 {
		r.next(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r.none(t)
	if n := counter(t, s.sent); n != 3 {
		t.Errorf("sent %d, want 3", n)
	}
}

// TestCloseFlushes: Close returns only once what was queued is delivered.
func TestCloseFlushes(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	r.gate = make(chan struct{})
	d := newDispatcher(t, SinkConfig{URL: r.srv.URL, DedupWindow: -1})
	for i := range 5 {
		d.Emit(denyEvent(digestN(i), "prod", "x"))
	}
	closed := make(chan error, 1)
	go func() { closed <- d.Close(context.Background()) }()
	<-r.entered
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with deliveries pending", err)
	default:
	}
	close(r.gate)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if n := len(r.got); n != 5 {
		t.Errorf("delivered %d before Close returned, want 5", n)
	}
	d.Emit(denyEvent(digestN(9), "prod", "x")) // after Close: dropped, no panic
	if n := counter(t, d.sinks[0].shutd); n != 1 {
		t.Errorf("shutdown drops %d, want 1", n)
	}
}

// TestCloseDeadline: a receiver that never answers cannot hold shutdown
// past the deadline; what was not delivered is counted.
func TestCloseDeadline(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	r.gate = make(chan struct{})
	defer close(r.gate)
	d := newDispatcher(t, SinkConfig{URL: r.srv.URL, DedupWindow: -1, Timeout: time.Hour})
	for i := range 3 {
		d.Emit(denyEvent(digestN(i), "prod", "x"))
	}
	<-r.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Close = %v, want the context's error", err)
	}
	s := d.sinks[0]
	if got := [3]int{counter(t, s.shutd), counter(t, s.sent), counter(t, s.failed)}; got != [3]int{3, 0, 0} {
		t.Errorf("shutdown, sent, failed = %v, want 3, 0, 0", got)
	}
}

// TestURLIsSecret: neither a delivery failure's log line nor a config
// error shows the URL, whose path is a Slack webhook's credential.
func TestURLIsSecret(t *testing.T) {
	t.Parallel()
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL + "/services/T000/B000/XXXXsecretXXXX"
	dead.Close()
	core, logs := observer.New(zap.DebugLevel)
	d := newDispatcher(t, SinkConfig{Type: Slack, URL: url, MaxAttempts: 2}, WithLogger(zap.New(core)))
	d.Emit(denyEvent(digestN(1), "prod", "x"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := counter(t, d.sinks[0].failed); n != 1 {
		t.Fatalf("failed %d, want 1", n)
	}
	if logs.Len() == 0 {
		t.Fatal("a failed delivery was not logged")
	}
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, "secret") {
			t.Errorf("log shows the URL: %s", line)
		}
	}
	_, err := New([]SinkConfig{{Name: "s", Type: Slack, URL: "http://hooks.example/services/XXXXsecretXXXX"}})
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("New = %v, want an error without the URL", err)
	}
}

// TestRedirectToOtherHostRefused: the alert and its Authorization header
// go nowhere the operator did not name.
func TestRedirectToOtherHostRefused(t *testing.T) {
	t.Parallel()
	other := newReceiver(t)
	same := newReceiver(t)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/moved" {
			http.Redirect(w, req, "/here", http.StatusTemporaryRedirect)
			return
		}
		if req.URL.Path == "/here" {
			w.WriteHeader(http.StatusOK)
			same.got <- received{path: req.URL.Path, header: req.Header.Clone()}
			return
		}
		http.Redirect(w, req, other.srv.URL+"/steal", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	d := newDispatcher(t, SinkConfig{URL: redirector.URL + "/hook", MaxAttempts: 2, Header: map[string]string{"Authorization": "Bearer s3cret"}})
	d.Emit(denyEvent(digestN(1), "prod", "x"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	other.none(t)
	if n := counter(t, d.sinks[0].failed); n != 1 {
		t.Errorf("failed %d, want 1", n)
	}
	// Within the receiver's own origin a redirect is followed.
	d2 := newDispatcher(t, SinkConfig{URL: redirector.URL + "/moved"})
	d2.Emit(denyEvent(digestN(1), "prod", "x"))
	if g := same.next(t); g.path != "/here" {
		t.Errorf("followed to %q", g.path)
	}
}

func TestNewRefuses(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		cfg  SinkConfig
		want string
	}{
		{"no name", SinkConfig{Type: Webhook, URL: "https://a.example"}, "name is required"},
		{"type", SinkConfig{Name: "a", Type: "email", URL: "https://a.example"}, "type"},
		{"plain http", SinkConfig{Name: "a", Type: Webhook, URL: "http://a.example"}, "plain http"},
		{"scheme", SinkConfig{Name: "a", Type: Webhook, URL: "ftp://a.example"}, "scheme"},
		{"relative", SinkConfig{Name: "a", Type: Webhook, URL: "/hook"}, "absolute"},
		{"credentials", SinkConfig{Name: "a", Type: Webhook, URL: "https://u:p@a.example"}, "credentials"},
		{"kind", SinkConfig{Name: "a", Type: Webhook, URL: "https://a.example", Kinds: []proxy.EventKind{"allow"}}, "unknown event kind"},
		{"queue", SinkConfig{Name: "a", Type: Webhook, URL: "https://a.example", Queue: -1}, "negative"},
	} {
		if _, err := New([]SinkConfig{c.cfg}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: New = %v, want %q", c.name, err, c.want)
		}
	}
	dup := SinkConfig{Name: "a", Type: Webhook, URL: "https://a.example"}
	if _, err := New([]SinkConfig{dup, dup}); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Errorf("duplicate name: %v", err)
	}
}

func TestCloudEventTypes(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, k := range Kinds {
		ty := CloudEventType(k)
		if !strings.HasPrefix(ty, "dev.portcullis.") || strings.Contains(ty, "event.") || seen[ty] {
			t.Errorf("%s: type %q", k, ty)
		}
		seen[ty] = true
	}
}

// TestReceiverHeaderBound: a receiver's answer is read up to the header
// bound; one past it fails the delivery instead of costing the proxy up to
// net/http's 10 MiB per attempt.
func TestReceiverHeaderBound(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		pad        int // header bytes the receiver answers with
		opts       []Option
		sent, fail int
	}{
		{"16 KiB under the default", 16 << 10, nil, 1, 0},
		{"128 KiB over the default", 128 << 10, nil, 0, 1},
		{"128 KiB under 256 KiB", 128 << 10, []Option{WithMaxHeaderBytes(256 << 10)}, 1, 0},
		{"16 KiB over 8 KiB", 16 << 10, []Option{WithMaxHeaderBytes(8 << 10)}, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				for i := range c.pad / (4 << 10) {
					w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 4<<10))
				}
				w.WriteHeader(http.StatusOK)
			}))
			t.Cleanup(srv.Close)
			d := newDispatcher(t, SinkConfig{URL: srv.URL, MaxAttempts: 1}, c.opts...)
			d.Emit(denyEvent(digestN(1), "prod", "x"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := d.Close(ctx); err != nil {
				t.Fatal(err)
			}
			s := d.sinks[0]
			if got := [2]int{counter(t, s.sent), counter(t, s.failed)}; got != [2]int{c.sent, c.fail} {
				t.Errorf("sent, failed = %v, want %d, %d", got, c.sent, c.fail)
			}
		})
	}
	if _, err := New(nil, WithMaxHeaderBytes(0)); err == nil {
		t.Error("a header bound of 0 was accepted")
	}
}
