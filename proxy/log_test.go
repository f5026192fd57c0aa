package proxy

import (
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestLogging(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	core, logs := observer.New(zapcore.DebugLevel)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithLogger(zap.New(core)))

	do(p, http.MethodGet, "/v2/acme/app/manifests/v1?ns=docker.io", "Authorization", "Bearer s3cr3t-token")
	do(p, http.MethodGet, "/v2/acme/app/blobs/"+img.layers[0].String()+"?ns=docker.io", "Authorization", "Basic czNjcjN0")

	requests := logs.FilterMessage("request").All()
	if len(requests) != 2 {
		t.Fatalf("%d request lines for 2 requests", len(requests))
	}
	f := requests[0].ContextMap()
	for k, want := range map[string]any{"method": "GET", "upstream": "docker.io", "repository": "acme/app", "status": int64(200), "digest": img.digest.String(), "ns": "docker.io"} {
		if f[k] != want {
			t.Errorf("request line %s = %v, want %v", k, f[k], want)
		}
	}
	audit := logs.FilterLoggerName("audit").All()
	if len(audit) != 1 {
		t.Fatalf("%d audit events for one manifest decision", len(audit))
	}
	a := audit[0].ContextMap()
	for k, want := range map[string]any{"decision": "allow", "reference": "v1", "digest": img.digest.String(), "boundary": "prod", "cached": false, "covered_by": ""} {
		if a[k] != want {
			t.Errorf("audit %s = %v, want %v", k, a[k], want)
		}
	}
	for _, e := range logs.All() {
		for k, v := range e.ContextMap() {
			if s, ok := v.(string); ok && (strings.Contains(s, "s3cr3t") || strings.Contains(s, "czNjcjN0")) {
				t.Errorf("credential logged in %q field %s", e.Message, k)
			}
		}
	}
}
