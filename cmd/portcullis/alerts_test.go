package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/proxy/alert"
)

// TestDeniedPullAlerts: a denied pull through the served proxy reaches a
// configured webhook as a deny event naming the digest and the reason,
// and the alert metrics are served with the proxy's.
func TestDeniedPullAlerts(t *testing.T) {
	got := make(chan []byte, 10)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Authorization") == "Bearer alert-token" {
			got <- b
		}
	}))
	defer recv.Close()
	t.Setenv("TEST_ALERT_TOKEN", "Bearer alert-token")
	s := newSignedSetup(t, fmt.Sprintf(`alerts:
  - name: hook
    type: webhook
    url: %s/events
    insecure: true
    headers: [{name: Authorization, env: TEST_ALERT_TOKEN}]
`, recv.URL))
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, b string) { addrs <- [2]string{a, b} })
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatal(err)
	}
	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if c, _ := get("http://" + a[0] + "/v2/app/signed/manifests/v1"); c != http.StatusOK {
		t.Errorf("signed manifest: %d", c)
	}
	if c, _ := get("http://" + a[0] + "/v2/app/unsigned/manifests/v1"); c != http.StatusForbidden {
		t.Errorf("unsigned manifest: %d", c)
	}
	var ev struct {
		Kind     string `json:"kind"`
		Decision struct {
			Digest     string   `json:"digest"`
			Repository string   `json:"repository"`
			Reasons    []string `json:"reasons"`
		} `json:"decision"`
	}
	select {
	case b := <-got:
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no alert received")
	}
	if ev.Kind != "deny" || ev.Decision.Digest != s.unsigned.DigestStr() || ev.Decision.Repository != "app/unsigned" ||
		len(ev.Decision.Reasons) == 0 || !strings.Contains(ev.Decision.Reasons[0], "no signatures found") {
		t.Errorf("event %+v", ev)
	}
	if c, body := get("http://" + a[1] + "/metrics"); c != http.StatusOK ||
		!strings.Contains(body, `portcullis_alerts_dropped_total{reason="queue_full",sink="hook"} 0`) ||
		!strings.Contains(body, "portcullis_decisions_total") {
		t.Errorf("metrics: %d, alert and proxy metrics not both served", c)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case b := <-got:
		t.Errorf("an allowed pull alerted: %s", b)
	default:
	}
}

func TestAlertSinksFromConfig(t *testing.T) {
	t.Parallel()
	zero, five := config.Duration(0), config.Duration(5*time.Minute)
	env := map[string]string{"HOOK": "https://hooks.example/T/B/secret", "TOKEN": "Bearer x"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	sinks, err := alertSinks([]config.Alert{
		{Name: "a", Type: "slack", URLEnv: "HOOK", Headers: []config.AlertHeader{{Name: "Authorization", Env: "TOKEN"}},
			Events: []string{"deny"}, DedupWindow: &zero, Queue: 7, Timeout: config.Duration(time.Second), MaxAttempts: 2},
		{Name: "b", Type: "webhook", URL: "https://h.example", DedupWindow: &five},
	}, lookup)
	if err != nil {
		t.Fatal(err)
	}
	s := sinks[0]
	if s.URL != env["HOOK"] || s.Header["Authorization"] != "Bearer x" || s.DedupWindow >= 0 || s.Queue != 7 ||
		s.Timeout != time.Second || s.MaxAttempts != 2 || len(s.Kinds) != 1 || s.Kinds[0] != "deny" {
		t.Errorf("sink a: %+v", s)
	}
	if sinks[1].DedupWindow != 5*time.Minute {
		t.Errorf("sink b: dedup %v", sinks[1].DedupWindow)
	}
	// An unset secret refuses to start, naming the variable, not a value.
	_, err = alertSinks([]config.Alert{{Name: "a", Type: "slack", URLEnv: "MISSING"}}, lookup)
	if err == nil || !strings.Contains(err.Error(), "MISSING") {
		t.Errorf("unset url_env: %v", err)
	}
}

// TestAlertEventNamesMatch: every event name the config accepts is a kind
// the alert package knows, and the other way round.
func TestAlertEventNamesMatch(t *testing.T) {
	t.Parallel()
	var kinds []string
	for _, k := range alert.Kinds {
		kinds = append(kinds, string(k))
	}
	a, b := slices.Clone(kinds), slices.Clone(config.AlertEvents)
	slices.Sort(a)
	slices.Sort(b)
	if !slices.Equal(a, b) {
		t.Errorf("config accepts %v, alert knows %v", b, a)
	}
}

// TestAlertReceiverHeaderBound: limits.upstream_header_bytes bounds a
// receiver's answer too: 96 KiB of headers are read under a bound of
// 128 KiB and refused under the default 64 KiB.
func TestAlertReceiverHeaderBound(t *testing.T) {
	t.Parallel()
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		for i := range 24 {
			w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 4<<10))
		}
	}))
	defer recv.Close()
	for _, c := range []struct {
		limit config.ByteSize
		sent  bool
	}{{config.DefaultUpstreamHeaderBytes, false}, {128 << 10, true}} {
		cfg := &config.Config{Alerts: []config.Alert{{Name: "hook", Type: "webhook", URL: recv.URL, Insecure: true, MaxAttempts: 1}}}
		cfg.Limits.UpstreamHeaderBytes = c.limit
		d, err := alertDispatcher(cfg, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(d.Collectors()...)
		d.Emit(proxy.Event{Kind: proxy.EventDeny, Time: time.Now(), Message: "x"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := d.Close(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var sent, failed float64
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				switch mf.GetName() {
				case "portcullis_alerts_sent_total":
					sent += m.GetCounter().GetValue()
				case "portcullis_alerts_failed_total":
					failed += m.GetCounter().GetValue()
				}
			}
		}
		if (sent == 1) != c.sent || sent+failed != 1 {
			t.Errorf("limit %d: sent %v, failed %v; want delivered = %v", c.limit, sent, failed, c.sent)
		}
	}
}
