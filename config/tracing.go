package config

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Defaults of the tracing section.
const (
	DefaultTracingServiceName = "portcullis"
	DefaultTracingSampleRatio = 1.0
	// DefaultTracingQueueSpans bounds the finished spans waiting for
	// export; beyond it new spans are dropped, never waited for.
	DefaultTracingQueueSpans = 2048
	// DefaultTracingTimeout bounds one export to the collector.
	DefaultTracingTimeout = 10 * time.Second
	// DefaultTracingPath is where OTLP/HTTP collectors take traces.
	DefaultTracingPath = "/v1/traces"
)

// Tracing, when present, exports OpenTelemetry spans to a collector over
// OTLP/HTTP (protobuf). Absent: no span is started and no trace context is
// read from clients or sent to upstreams.
type Tracing struct {
	// OTLPEndpoint is the collector's URL, https://host[:port][/path];
	// without a path spans go to /v1/traces. Required.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// Insecure allows an http:// endpoint (plain text to the collector).
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of traces started by the proxy that are
	// recorded, 0 to 1 (default 1). A client's traceparent decides for its
	// own requests.
	SampleRatio *Ratio `yaml:"sample_ratio"`
	// ServiceName is the service.name resource attribute (default
	// portcullis).
	ServiceName string `yaml:"service_name"`
	// Headers are sent with each export, each value read from an
	// environment variable (a collector's credentials), as for alerts.
	Headers []AlertHeader `yaml:"headers"`
	// QueueSpans bounds the finished spans waiting for export (default
	// 2048); spans beyond it are dropped.
	QueueSpans int `yaml:"queue_spans"`
	// Timeout bounds one export (default 10s).
	Timeout Duration `yaml:"timeout"`
}

// Endpoint is the URL spans are posted to: OTLPEndpoint, with the default
// path when it has none.
func (t *Tracing) Endpoint() string {
	u, err := url.Parse(t.OTLPEndpoint)
	if err != nil {
		return t.OTLPEndpoint
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = DefaultTracingPath
	}
	return u.String()
}

func (t *Tracing) applyDefaults() {
	if t == nil {
		return
	}
	if t.ServiceName == "" {
		t.ServiceName = DefaultTracingServiceName
	}
	if t.SampleRatio == nil {
		v := Ratio(DefaultTracingSampleRatio)
		t.SampleRatio = &v
	}
	if t.QueueSpans == 0 {
		t.QueueSpans = DefaultTracingQueueSpans
	}
	if t.Timeout == 0 {
		t.Timeout = Duration(DefaultTracingTimeout)
	}
}

func (t *Tracing) validate(r *reporter) {
	if t.OTLPEndpoint == "" {
		r.addf("tracing.otlp_endpoint", "is required: the collector's OTLP/HTTP URL, e.g. https://otel-collector:4318")
	} else if u, err := url.Parse(t.OTLPEndpoint); err != nil {
		r.addf("tracing.otlp_endpoint", "%q is not a URL", t.OTLPEndpoint)
	} else {
		switch {
		case u.Scheme == "https":
		case u.Scheme == "http" && t.Insecure:
		case u.Scheme == "http":
			r.addf("tracing.otlp_endpoint", "%q uses plain http; set tracing.insecure: true to allow it", t.OTLPEndpoint)
		default:
			r.addf("tracing.otlp_endpoint", "%q must use https (or http with insecure: true)", t.OTLPEndpoint)
		}
		if u.Opaque != "" || u.Host == "" {
			r.addf("tracing.otlp_endpoint", "%q has no host", t.OTLPEndpoint)
		}
		if u.User != nil {
			r.addf("tracing.otlp_endpoint", "URL must not contain credentials; use headers_env")
		}
		if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
			r.addf("tracing.otlp_endpoint", "%q must not have a query or fragment", t.OTLPEndpoint)
		}
	}
	if t.SampleRatio != nil && !(*t.SampleRatio >= 0 && *t.SampleRatio <= 1) {
		r.addf("tracing.sample_ratio", "must be a number from 0 to 1, not %v", float64(*t.SampleRatio))
	}
	if strings.TrimSpace(t.ServiceName) == "" || len(t.ServiceName) > 255 {
		r.addf("tracing.service_name", "must be a non-empty name of at most 255 bytes")
	}
	seen := map[string]bool{}
	for i, h := range t.Headers {
		p := indexPath("tracing.headers", i)
		if !validHeaderName(h.Name) {
			r.addf(joinPath(p, "name"), "%q is not a header name", h.Name)
		} else if k := strings.ToLower(h.Name); seen[k] {
			r.addf(joinPath(p, "name"), "header %q is listed twice", h.Name)
		} else {
			seen[k] = true
		}
		if !envNameRE.MatchString(h.Env) {
			r.addf(joinPath(p, "env"), "%q is not an environment variable name", h.Env)
		}
	}
	if t.QueueSpans <= 0 {
		r.addf("tracing.queue_spans", "must be positive")
	}
	if t.Timeout <= 0 {
		r.addf("tracing.timeout", "must be positive")
	}
}

// Ratio is a number from 0 to 1.
type Ratio float64

// UnmarshalYAML accepts a YAML number from 0 to 1.
func (r *Ratio) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!float" && n.ShortTag() != "!!int") {
		return errors.New("must be a number from 0 to 1")
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
	if err != nil || !(v >= 0 && v <= 1) {
		return fmt.Errorf("must be a number from 0 to 1, not %s", n.Value)
	}
	*r = Ratio(v)
	return nil
}
