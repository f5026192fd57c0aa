package proxy

import (
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// TestMetricsExposeRuntimeAndProcess: goroutines and open file descriptors
// are what a flood exhausts, so /metrics must show them without any extra
// wiring.
func TestMetricsExposeRuntimeAndProcess(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	w := do(p.AdminHandler(), http.MethodGet, "/metrics")
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics = %d", w.Code)
	}
	body, _ := io.ReadAll(w.Body)
	want := []string{"\ngo_goroutines ", "\ngo_memstats_heap_inuse_bytes ", "\ngo_gc_duration_seconds"}
	if runtime.GOOS == "linux" {
		want = append(want, "\nprocess_open_fds ", "\nprocess_resident_memory_bytes ", "\nprocess_max_fds ")
	}
	for _, s := range want {
		if !strings.Contains(string(body), s) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(s))
		}
	}
}

// TestRuntimeCollectorsNotDuplicated: a registerer that already carries the
// Go and process collectors, as prometheus.DefaultRegisterer does, is
// accepted and each series is gathered once.
func TestRuntimeCollectorsNotDuplicated(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ups := []Upstream{{Name: "docker.io", URL: "https://registry-1.docker.io"}}
	if _, err := New(ups, allowAll(), WithRegisterer(reg)); err != nil {
		t.Fatalf("New on a registerer with runtime collectors: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, mf := range mfs {
		seen[mf.GetName()]++
	}
	if seen["go_goroutines"] != 1 {
		t.Errorf("go_goroutines gathered %d times", seen["go_goroutines"])
	}
	if seen["portcullis_verifications_total"] != 1 {
		t.Errorf("portcullis metrics missing: %v", seen)
	}
}
