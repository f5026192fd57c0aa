package shared

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

type busRecorder struct {
	mu        sync.Mutex
	got       []string // kind|replica|entries|fingerprint
	connected int
}

func (r *busRecorder) on(kind, replica string, entries [][]byte, fp string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var es []string
	for _, e := range entries {
		es = append(es, string(e))
	}
	r.got = append(r.got, kind+"|"+replica+"|"+strings.Join(es, ",")+"|"+fp)
}

func (r *busRecorder) conn() {
	r.mu.Lock()
	r.connected++
	r.mu.Unlock()
}

func (r *busRecorder) snapshot() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...), r.connected
}

func newTestBus(t *testing.T, mr *miniredis.Miniredis, replica string, o BusOptions) (*Bus, *busRecorder) {
	t.Helper()
	c, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	o.KeyPrefix, o.Replica = "p:", replica
	b, err := NewBus(c, NewGuard(zap.NewNop(), nil, time.Second), o)
	if err != nil {
		t.Fatal(err)
	}
	rec := &busRecorder{}
	b.Start(rec.on, rec.conn)
	t.Cleanup(b.Close)
	return b, rec
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func subscribed(mr *miniredis.Miniredis, n int) func() bool {
	return func() bool { return mr.PubSubNumSub("p:v1:events")["p:v1:events"] == n }
}

const revEntry = `{"digest":"sha256:aa","reason":"r","by":"b","time":"2026-01-02T03:04:05Z"}`

func TestBusRevocationsRoundTrip(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, ra := newTestBus(t, mr, "A", BusOptions{})
	b, rb := newTestBus(t, mr, "B", BusOptions{})
	waitFor(t, "subscribed", subscribed(mr, 2))
	ctx := context.Background()
	if err := a.AddRevocations(ctx, map[string][]byte{"digest:sha256:aa": []byte(revEntry)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B received the add", func() bool { g, _ := rb.snapshot(); return len(g) == 1 })
	if g, _ := rb.snapshot(); g[0] != "revocation-add|A|"+revEntry+"|" {
		t.Errorf("B received %q", g[0])
	}
	stored, err := b.Revocations(ctx)
	if err != nil || len(stored) != 1 || string(stored["digest:sha256:aa"]) != revEntry {
		t.Fatalf("stored = %q, %v", stored, err)
	}
	if err := a.RemoveRevocations(ctx, map[string][]byte{"digest:sha256:aa": []byte(revEntry)}); err != nil {
		t.Fatal(err)
	}
	if err := a.PublishReload(ctx, "fp1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B received the lift and the reload", func() bool { g, _ := rb.snapshot(); return len(g) == 3 })
	if g, _ := rb.snapshot(); g[1] != "revocation-remove|A|"+revEntry+"|" || g[2] != "reload|A||fp1" {
		t.Errorf("B received %q", g[1:])
	}
	if stored, err := b.Revocations(ctx); err != nil || len(stored) != 0 {
		t.Errorf("stored after the lift = %q, %v", stored, err)
	}
	if g, _ := ra.snapshot(); len(g) != 0 {
		t.Errorf("A received its own messages: %q", g)
	}
}

// TestBusStoredRevocationsUntrusted: stored values that are too large,
// malformed or bound to another field are refused and counted; a hash with
// more entries than allowed is refused whole.
func TestBusStoredRevocationsUntrusted(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	b, _ := newTestBus(t, mr, "A", BusOptions{MaxEntries: 4, MaxValueBytes: 1024})
	ctx := context.Background()
	if err := b.AddRevocations(ctx, map[string][]byte{"digest:sha256:aa": []byte(revEntry)}); err != nil {
		t.Fatal(err)
	}
	good := mr.HGet("p:v1:revocations", "digest:sha256:aa")
	mr.HSet("p:v1:revocations", "digest:sha256:bb", good) // bound to aa
	mr.HSet("p:v1:revocations", "digest:sha256:cc", `{"v":1,"k":"`+bound("digest:sha256:cc")+`","e":{},"x":1}`)
	mr.HSet("p:v1:revocations", "digest:sha256:dd", `{"v":1,"k":"`+bound("digest:sha256:dd")+`","e":"`+strings.Repeat("x", 2000)+`"}`)
	stored, err := b.Revocations(ctx)
	if err != nil || len(stored) != 1 || stored["digest:sha256:aa"] == nil {
		t.Fatalf("stored = %q, %v; want only the genuine entry", stored, err)
	}
	if n := testutil.ToFloat64(b.g.errs.WithLabelValues("revocations_sync", "invalid")); n != 3 {
		t.Errorf("refused values counted = %v, want 3", n)
	}
	mr.HSet("p:v1:revocations", "digest:sha256:ee", good)
	if _, err := b.Revocations(ctx); err == nil {
		t.Error("a hash over MaxEntries was read")
	}
}

func TestBusParseStrict(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	c, _ := NewClient(ClientOptions{Addr: mr.Addr()})
	b, err := NewBus(c, NewGuard(zap.NewNop(), nil, 0), BusOptions{Replica: "A", MaxMessageBytes: 512})
	if err != nil {
		t.Fatal(err)
	}
	const tm = `"time":"2026-01-02T03:04:05Z"`
	bad := []string{
		"",
		"null",
		`{"v":1,"kind":"reload","replica":"B","fingerprint":"f",` + tm + `}{}`,
		`{"v":2,"kind":"reload","replica":"B","fingerprint":"f",` + tm + `}`,
		`{"v":1,"kind":"reload","replica":"B","fingerprint":"f",` + tm + `,"extra":1}`,
		`{"v":1,"kind":"reload","replica":"","fingerprint":"f",` + tm + `}`,
		`{"v":1,"kind":"reload","replica":"B\n","fingerprint":"f",` + tm + `}`,
		`{"v":1,"kind":"reload","replica":"B","fingerprint":"f"}`,
		`{"v":1,"kind":"reload","replica":"B",` + tm + `}`,
		`{"v":1,"kind":"reload","replica":"B","fingerprint":"f","entries":[{}],` + tm + `}`,
		`{"v":1,"kind":"purge","replica":"B",` + tm + `}`,
		`{"v":1,"kind":"revocation-add","replica":"B","entries":[],` + tm + `}`,
		`{"v":1,"kind":"revocation-add","replica":"B","entries":["x"],` + tm + `}`,
		`{"v":1,"kind":"revocation-add","replica":"B","fingerprint":"f","entries":[{}],` + tm + `}`,
		`{"v":1,"kind":"revocation-add","replica":"B","entries":[{"reason":"` + strings.Repeat("x", 512) + `"}],` + tm + `}`,
	}
	for i, p := range bad {
		if m, ok := b.parse(p); ok {
			t.Errorf("bad[%d] %q accepted: %+v", i, p, m)
		}
	}
	if n := testutil.ToFloat64(b.g.errs.WithLabelValues("events", "invalid")); n != float64(len(bad)) {
		t.Errorf("refused messages counted = %v, want %d", n, len(bad))
	}
	m, ok := b.parse(`{"v":1,"kind":"revocation-remove","replica":"B","entries":[{"digest":"x"}],` + tm + `}`)
	if !ok || m.Kind != KindRevocationRemove || m.Replica != "B" || len(m.Entries) != 1 || string(m.Entries[0]) != `{"digest":"x"}` {
		t.Errorf("valid message parsed as %+v, %v", m, ok)
	}
}

// TestBusResubscribes: after Redis restarts the subscription is made again
// and connected runs again, so the caller resynchronises; messages flow.
func TestBusResubscribes(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	_, rb := newTestBus(t, mr, "B", BusOptions{})
	waitFor(t, "subscribed", subscribed(mr, 1))
	if _, n := rb.snapshot(); n != 1 {
		t.Fatalf("connected ran %d times, want 1", n)
	}
	restart := redistest.Outage(t, mr)
	restart()
	waitFor(t, "subscribed again", func() bool { _, n := rb.snapshot(); return n >= 2 && subscribed(mr, 1)() })
	mr.Publish("p:v1:events", `{"v":1,"kind":"reload","replica":"C","fingerprint":"f","time":"2026-01-02T03:04:05Z"}`)
	waitFor(t, "message after the restart", func() bool { g, _ := rb.snapshot(); return len(g) == 1 })
}
