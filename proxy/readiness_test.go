package proxy

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestReadinessDetailAndCollectors(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	var detail atomic.Value
	detail.Store("")
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "portcullis_test_extra_total", Help: "test"})
	c.Inc()
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(),
		WithReadinessDetail(func() string { return detail.Load().(string) }), WithCollectors(c))
	admin := p.AdminHandler()
	if w := do(admin, http.MethodGet, "/readyz"); w.Code != http.StatusOK || w.Body.String() != "ready\n" {
		t.Errorf("/readyz healthy = %d %q", w.Code, w.Body.String())
	}
	detail.Store("shared state: redis unavailable")
	w := do(admin, http.MethodGet, "/readyz")
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "(shared state: redis unavailable)") {
		t.Errorf("/readyz degraded = %d %q, want 200 with the detail", w.Code, w.Body.String())
	}
	if w := do(admin, http.MethodGet, "/metrics"); !strings.Contains(w.Body.String(), "portcullis_test_extra_total 1") {
		t.Error("collector given WithCollectors not served at /metrics")
	}
	if _, err := New(nil, allowAll(), WithReadinessDetail(nil)); err == nil {
		t.Error("nil readiness detail accepted")
	}
}
