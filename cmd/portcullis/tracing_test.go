package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/otlp"
)

// TestServeExportsTraces: with a tracing section, serve exports the spans
// of a pull to the collector, with the configured service name and
// headers, at the latest when it stops.
func TestServeExportsTraces(t *testing.T) {
	col := otlp.New(t)
	t.Setenv("PORTCULLIS_TEST_OTLP_AUTH", "Bearer t0ken")
	s := newSignedSetup(t, "tracing:\n  otlp_endpoint: "+col.URL+"\n  insecure: true\n  service_name: portcullis-test\n"+
		"  headers: [{name: Authorization, env: PORTCULLIS_TEST_OTLP_AUTH}]\n")
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, _ string) { addrs <- a })
	}()
	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatal(err)
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/app/signed/manifests/v1", nil)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("signed manifest: %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not return after cancel")
	}

	if bad := col.Refused(); len(bad) > 0 {
		t.Fatalf("collector refused exports: %v", bad)
	}
	var names []string
	for _, sp := range col.Trace(traceID) {
		names = append(names, sp.Name)
		if sp.Service != "portcullis-test" {
			t.Errorf("span %q has service.name %q", sp.Name, sp.Service)
		}
	}
	for _, want := range []string{"GET manifests", "resolve tag", "verify", "discover evidence", "check signature"} {
		if !strings.Contains(strings.Join(names, "\n")+"\n", want+"\n") {
			t.Errorf("no %q span exported; got %v", want, names)
		}
	}
	hs := col.Headers()
	if len(hs) == 0 {
		t.Fatal("nothing exported")
	}
	for _, h := range hs {
		if h.Get("Authorization") != "Bearer t0ken" {
			t.Errorf("export without the configured Authorization header: %q", h.Get("Authorization"))
		}
	}
}

// TestTracingHeaderEnvUnset: a header whose variable is not set refuses
// the start, naming the variable, never a value.
func TestTracingHeaderEnvUnset(t *testing.T) {
	ratio := config.Ratio(1)
	tr := &config.Tracing{OTLPEndpoint: "https://collector.example:4318", SampleRatio: &ratio, ServiceName: "p",
		QueueSpans: 1, Timeout: config.Duration(time.Second),
		Headers: []config.AlertHeader{{Name: "Authorization", Env: "PORTCULLIS_TEST_UNSET"}}}
	lookup := func(string) (string, bool) { return "", false }
	if _, err := newTracerProvider(tr, lookup); err == nil || !strings.Contains(err.Error(), "PORTCULLIS_TEST_UNSET") {
		t.Fatalf("err = %v, want it to name the unset variable", err)
	}
	tr.Headers = nil
	tp, err := newTracerProvider(tr, lookup)
	if err != nil {
		t.Fatal(err)
	}
	_ = tp.Shutdown(context.Background())
}
