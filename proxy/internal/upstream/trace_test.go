package upstream

import (
	"context"
	"io"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// TestTraceContextOnlyToRegistry: with a propagator, each request to the
// registry carries the caller's traceparent and the storage host a blob is
// redirected to gets none; without one, nobody gets one.
func TestTraceContextOnlyToRegistry(t *testing.T) {
	t.Parallel()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	const want = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	for _, tc := range []struct {
		name string
		prop propagation.TextMapPropagator
	}{{"on", propagation.TraceContext{}}, {"off", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := newFakeUpstream(t, authNone)
			img, _, _ := push(t, up.host(), "app", "v1")
			layers, _ := img.Layers()
			d, _ := layers[0].Digest()
			rc, _ := layers[0].Compressed()
			blob, _ := io.ReadAll(rc)
			st := newStorage(t, map[string][]byte{d.String(): blob})
			up.redirectBlobs = st.URL
			c := newTestClient(t, Config{URL: up.URL, Insecure: true, Propagator: tc.prop})
			if _, err := c.Blob(ctx, "app", d, 1<<20); err != nil {
				t.Fatal(err)
			}
			var registry int
			for _, r := range up.all() {
				if !strings.Contains(r.Path, "/blobs/") {
					continue
				}
				registry++
				got := r.Header.Get("traceparent")
				if tc.prop != nil && got != want {
					t.Errorf("registry request traceparent %q, want %q", got, want)
				}
				if tc.prop == nil && got != "" {
					t.Errorf("registry request traceparent %q without a propagator", got)
				}
			}
			if registry == 0 {
				t.Fatal("registry saw no blob request")
			}
			sreqs := st.all()
			if len(sreqs) == 0 {
				t.Fatal("the blob was not redirected to storage")
			}
			for _, r := range sreqs {
				if got := r.Header.Get("traceparent"); got != "" {
					t.Errorf("storage received traceparent %q", got)
				}
			}
		})
	}
}
