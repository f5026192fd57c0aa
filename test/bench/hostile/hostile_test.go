package hostile

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestReadStatsSelf(t *testing.T) {
	t.Parallel()
	s, err := ReadStats(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.HWM < s.RSS || s.FDs <= 0 || s.Threads <= 0 || s.Goroutines != -1 {
		t.Errorf("stats = %+v", s)
	}
}

func TestScrapeMetric(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "# HELP go_goroutines x\n# TYPE go_goroutines gauge\ngo_goroutines 42\ngo_goroutines_total{x=\"y\"} 7\n")
	}))
	defer srv.Close()
	v, err := ScrapeMetric(context.Background(), srv.Client(), srv.URL, "go_goroutines")
	if err != nil || v != 42 {
		t.Errorf("go_goroutines = %v, %v", v, err)
	}
	if _, err := ScrapeMetric(context.Background(), srv.Client(), srv.URL, "process_open_fds"); err == nil {
		t.Error("missing metric read")
	}
}

// TestTarpitFlood: every flood request is abandoned at the client's
// deadline, and the tarpit lets go of each once its caller has left.
func TestTarpitFlood(t *testing.T) {
	t.Parallel()
	tp, err := StartTarpit()
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	resp, err := http.Get(tp.URL + "/v2/")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("ping: %v %v", resp, err)
	}
	resp.Body.Close()
	res := Flood(context.Background(), tp.URL, "a/b", "?ns=x", 20, 5, 50*time.Millisecond)
	if res.Requests != 20 || res.Abandoned != 20 || len(res.Answered) != 0 {
		t.Fatalf("flood = %+v", res)
	}
	// A request abandoned before its connection was accepted never
	// reaches the tarpit (a loaded machine), so only the bounds hold.
	if tp.Total() < 1 || tp.Total() > 20 || tp.Peak() < 1 {
		t.Errorf("tarpit saw %d requests, peak %d", tp.Total(), tp.Peak())
	}
	deadline := time.Now().Add(10 * time.Second)
	for tp.Held() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if tp.Held() != 0 {
		t.Errorf("tarpit still holds %d requests of callers that left", tp.Held())
	}
}

func TestFloodCountsAnswers(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/sha256:") || r.URL.Query().Get("ns") != "up" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	res := Flood(context.Background(), srv.URL, "a/b", "?ns=up", 10, 3, 5*time.Second)
	if res.Answered[http.StatusNotFound] != 10 || res.Abandoned != 0 {
		t.Errorf("flood = %+v", res)
	}
	if got := res.Summary(); got != "404: 10" {
		t.Errorf("summary = %q", got)
	}
}

// TestStallStatuses: stalled clients are sent the answer they asked for,
// read only when Statuses is called.
func TestStallStatuses(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 4<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/blob" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		io.WriteString(w, big)
	}))
	defer srv.Close()
	st, err := OpenStalls(context.Background(), strings.TrimPrefix(srv.URL, "http://"), "/blob", 5, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Len() != 5 {
		t.Fatalf("len = %d", st.Len())
	}
	if got := st.Statuses(5 * time.Second); got["200"] != 5 {
		t.Errorf("statuses = %v", got)
	}
}

func TestEmptyObjectsPredicate(t *testing.T) {
	t.Parallel()
	p := emptyObjects(64<<10, 3)
	if len(p) > 64<<10 || len(p) < 64<<10-8 {
		t.Errorf("size = %d", len(p))
	}
	var v struct {
		BuildDefinition struct {
			ResolvedDependencies []map[string]any `json:"resolvedDependencies"`
		} `json:"buildDefinition"`
	}
	if err := json.Unmarshal(p, &v); err != nil {
		t.Fatal(err)
	}
	if n := len(v.BuildDefinition.ResolvedDependencies); n < 20000 {
		t.Errorf("%d empty objects", n)
	}
}

func TestOtherDigestNeverTheSubject(t *testing.T) {
	t.Parallel()
	d, err := name.NewDigest("r.test/a@sha256:" + strings.Repeat("a", 64))
	if err != nil {
		t.Fatal(err)
	}
	a, b := otherDigest(d, 0), otherDigest(d, 1)
	if a == b || a.String() == d.DigestStr() {
		t.Errorf("other digests %s %s for %s", a, b, d.DigestStr())
	}
}

func TestWatchdogKillsPastLimit(t *testing.T) {
	t.Parallel()
	killed := make(chan struct{})
	w := Watch(os.Getpid(), time.Millisecond, 1, func() { close(killed) })
	select {
	case <-killed:
	case <-time.After(10 * time.Second):
		t.Fatal("not killed past the limit")
	}
	peak, k := w.Stop()
	if !k || peak <= 1 {
		t.Errorf("peak %d killed %v", peak, k)
	}
	// Without a limit nothing is killed.
	w = Watch(os.Getpid(), time.Millisecond, 0, func() { t.Error("killed without a limit") })
	time.Sleep(20 * time.Millisecond)
	if _, k := w.Stop(); k {
		t.Error("killed without a limit")
	}
}
