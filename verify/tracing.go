package verify

import (
	"context"

	"go.opentelemetry.io/otel/trace"
)

// tracerName names the spans the engine starts.
const tracerName = "github.com/portcullis-oci/portcullis/verify"

// Names of the spans the engine starts.
const (
	spanDiscover    = "discover evidence"
	spanSignature   = "check signature"
	spanAttestation = "check attestation"
	spanLineage     = "lineage"
)

// startSpan starts a child of the span in ctx, with that span's provider.
// The engine has no provider of its own and exports nothing: it traces
// only inside a caller's recording span, and with none (tracing off, or a
// trace not sampled) it starts nothing and costs a context lookup.
func startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, parent
	}
	return parent.TracerProvider().Tracer(tracerName).Start(ctx, name)
}
