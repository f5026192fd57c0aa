package config

import (
	"strings"
	"testing"
	"time"
)

func TestTracingConfig(t *testing.T) {
	t.Parallel()
	base := string(Example) + "\n"
	c, err := Parse([]byte(base+"tracing: {otlp_endpoint: 'https://collector.example:4318'}\n"), "tracing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr := c.Tracing
	if tr == nil || tr.ServiceName != "portcullis" || tr.SampleRatio == nil || *tr.SampleRatio != 1 ||
		tr.QueueSpans != 2048 || tr.Timeout.D() != 10*time.Second || tr.Insecure {
		t.Fatalf("defaults = %+v", tr)
	}
	if got := tr.Endpoint(); got != "https://collector.example:4318/v1/traces" {
		t.Errorf("Endpoint() = %q", got)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("https tracing should warn of nothing, got %q", w)
	}
	if c, err := Parse(Example, "example.yaml"); err != nil || c.Tracing != nil {
		t.Fatalf("without the section: %+v, %v", c.Tracing, err)
	}

	full := base + `tracing:
  otlp_endpoint: http://127.0.0.1:4318/otlp/v1/traces
  insecure: true
  sample_ratio: 0
  service_name: proxy-eu
  headers: [{name: Authorization, env: OTLP_AUTHORIZATION}]
  queue_spans: 10
  timeout: 2s
`
	c, err = Parse([]byte(full), "tracing.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tr = c.Tracing
	if *tr.SampleRatio != 0 || tr.ServiceName != "proxy-eu" || len(tr.Headers) != 1 || tr.Headers[0] != (AlertHeader{Name: "Authorization", Env: "OTLP_AUTHORIZATION"}) ||
		tr.QueueSpans != 10 || tr.Timeout.D() != 2*time.Second {
		t.Fatalf("parsed = %+v", tr)
	}
	if got := tr.Endpoint(); got != "http://127.0.0.1:4318/otlp/v1/traces" {
		t.Errorf("Endpoint() with a path = %q", got)
	}
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, "tracing: insecure: true") {
		t.Errorf("insecure tracing not warned about: %q", w)
	}

	// The commented example, uncommented, is a valid section.
	var block []string
	in := false
	for _, l := range strings.Split(string(Example), "\n") {
		switch {
		case l == "# tracing:":
			in = true
		case in && !strings.HasPrefix(l, "#   "):
			in = false
		}
		if in {
			block = append(block, strings.TrimPrefix(l, "# "))
		}
	}
	if len(block) < 2 {
		t.Fatal("example.yaml has no commented tracing section")
	}
	if _, err := Parse([]byte(base+strings.Join(block, "\n")+"\n"), "example-tracing.yaml"); err != nil {
		t.Errorf("the example's tracing section: %v", err)
	}

	for name, tc := range map[string]struct{ yaml, want string }{
		"no endpoint":       {"tracing: {service_name: p}", "tracing.otlp_endpoint: is required"},
		"plain http":        {"tracing: {otlp_endpoint: 'http://c.example:4318'}", "set tracing.insecure"},
		"other scheme":      {"tracing: {otlp_endpoint: 'grpc://c.example:4317'}", "must use https"},
		"no host":           {"tracing: {otlp_endpoint: 'https:///v1/traces'}", "has no host"},
		"credentials":       {"tracing: {otlp_endpoint: 'https://u:p@c.example'}", "must not contain credentials"},
		"query":             {"tracing: {otlp_endpoint: 'https://c.example/?a=b'}", "query or fragment"},
		"ratio above 1":     {"tracing: {otlp_endpoint: 'https://c.example', sample_ratio: 1.5}", "tracing.sample_ratio"},
		"negative ratio":    {"tracing: {otlp_endpoint: 'https://c.example', sample_ratio: -0.1}", "tracing.sample_ratio"},
		"blank service":     {"tracing: {otlp_endpoint: 'https://c.example', service_name: ' '}", "tracing.service_name"},
		"bad header name":   {"tracing: {otlp_endpoint: 'https://c.example', headers: [{name: 'Bad Header', env: X}]}", "is not a header name"},
		"bad env name":      {"tracing: {otlp_endpoint: 'https://c.example', headers: [{name: Authorization, env: 'A-B'}]}", "tracing.headers[0].env"},
		"header twice":      {"tracing: {otlp_endpoint: 'https://c.example', headers: [{name: Authorization, env: A}, {name: authorization, env: B}]}", "listed twice"},
		"ratio as string":   {"tracing: {otlp_endpoint: 'https://c.example', sample_ratio: '0.5'}", "tracing.sample_ratio"},
		"negative queue":    {"tracing: {otlp_endpoint: 'https://c.example', queue_spans: -1}", "tracing.queue_spans"},
		"negative timeout":  {"tracing: {otlp_endpoint: 'https://c.example', timeout: -1s}", "tracing.timeout"},
		"unknown key":       {"tracing: {otlp_endpoint: 'https://c.example', protocol: grpc}", "protocol"},
		"endpoint as table": {"tracing: {otlp_endpoint: {host: c}}", "otlp_endpoint"},
	} {
		_, err := Parse([]byte(base+tc.yaml+"\n"), "tracing.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
}
