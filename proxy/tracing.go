package proxy

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the spans the proxy starts; the verifier's spans carry
// their own package's name.
const tracerName = "github.com/portcullis-oci/portcullis/proxy"

// Names of the spans the proxy starts (the request span is named after its
// method and route, "GET manifest").
const (
	spanResolveTag = "resolve tag"
	spanVerify     = "verify"
	spanDependency = "verify dependency"
)

// traceContext is the only propagation format: W3C trace context. Baggage
// is not propagated, so nothing a client puts in a header travels to an
// upstream but a trace and span id and the sampled flag.
var traceContext = propagation.TraceContext{}

// noSpan is what span helpers hand out with tracing off: it records nothing
// and costs nothing to end.
var noSpan = trace.SpanFromContext(context.Background())

// WithTracerProvider turns tracing on: the proxy starts a server span per
// request (continuing a W3C traceparent the client sent), child spans for
// tag resolution, each verification and each lineage dependency, and sends
// traceparent to its upstreams. The verifier's spans (evidence discovery,
// each signature and attestation check) are started from the context the
// proxy hands it, so they use the same provider. Default: off, no span is
// started and no header is added or read.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) error {
		if tp == nil {
			return errors.New("nil tracer provider")
		}
		o.tracerProvider = tp
		return nil
	}
}

// tracer is the proxy's tracer, nil with tracing off so that the request
// path can skip every span with one comparison.
func (o options) tracer() trace.Tracer {
	if o.tracerProvider == nil {
		return nil
	}
	return o.tracerProvider.Tracer(tracerName)
}

// propagator is what the upstream clients inject into their requests; nil
// with tracing off.
func (o options) propagator() propagation.TextMapPropagator {
	if o.tracerProvider == nil {
		return nil
	}
	return traceContext
}

// startSpan starts a child span of ctx's, or nothing with tracing off.
func (p *Proxy) startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	if p.tracer == nil {
		return ctx, noSpan
	}
	return p.tracer.Start(ctx, name)
}

// startRequest starts the request's server span, as a child of the
// client's span when it sent a valid traceparent. The client's sampled
// flag is honoured (the provider's sampler is parent based): a client can
// ask for its pulls to be traced, never for anything else.
func (p *Proxy) startRequest(r *http.Request) (*http.Request, trace.Span) {
	ctx := traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := p.tracer.Start(ctx, methodLabel(r.Method), trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("http.request.method", methodLabel(r.Method)),
			attribute.String("url.path", truncate(r.URL.Path, maxNameLength+256)),
		)
	}
	return r.WithContext(ctx), span
}

// endRequest names the request span after its route, once known, and
// ends it.
func endRequest(span trace.Span, method string, st *reqState, status int) {
	if span.IsRecording() {
		route := "other"
		if st.route >= 0 {
			route = st.route.String()
		}
		span.SetName(methodLabel(method) + " " + route)
		span.SetAttributes(
			attribute.Int("http.response.status_code", status),
			attribute.String("portcullis.upstream", st.upstream),
			attribute.String("portcullis.repository", st.repository),
			attribute.String("portcullis.digest", st.digest),
		)
		if status >= http.StatusInternalServerError {
			span.SetStatus(codes.Error, strconv.Itoa(status))
		}
	}
	span.End()
}

// endResolve ends a tag resolution span.
func endResolve(span trace.Span, tag string, d v1.Descriptor, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("portcullis.tag", tag))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "tag not resolved")
		} else {
			span.SetAttributes(attribute.String("portcullis.digest", d.Digest.String()))
		}
	}
	span.End()
}

// startVerify starts the span of one verification, root or dependency.
func (p *Proxy) startVerify(ctx context.Context, mr manifestReq, d v1.Hash) (context.Context, trace.Span) {
	ctx, span := p.startSpan(ctx, spanVerify)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("portcullis.upstream", mr.u.name),
			attribute.String("portcullis.repository", mr.repo),
			attribute.String("portcullis.digest", d.String()),
			attribute.Int("portcullis.lineage.depth", len(mr.lineage.Chain)),
		)
	}
	return ctx, span
}

// endVerify records a verification's outcome: a verdict, or an error (a
// failure to decide, which fails closed).
func endVerify(span trace.Span, v verify.Verdict, err error) {
	if span.IsRecording() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "could not decide")
		} else {
			span.SetAttributes(
				attribute.String("portcullis.boundary", v.Boundary),
				attribute.Bool("portcullis.allowed", v.Allowed),
				attribute.String("portcullis.mode", string(v.Mode)),
				attribute.Int("portcullis.signers", len(v.Signers)),
			)
		}
	}
	span.End()
}

// startDependency starts the span of one lineage dependency's decision.
func (p *Proxy) startDependency(ctx context.Context, dep verify.DependencyRef) (context.Context, trace.Span) {
	ctx, span := p.startSpan(ctx, spanDependency)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("portcullis.dependency.name", truncate(dep.Name, maxReasonLength)),
			attribute.String("portcullis.dependency.registry", truncate(dep.Registry, maxNsLength)),
			attribute.String("portcullis.repository", truncate(dep.Repository, maxNameLength)),
			attribute.String("portcullis.digest", dep.Digest.String()),
		)
	}
	return ctx, span
}

// endDependency records a dependency's result (allow, deny or error).
func endDependency(span trace.Span, result string, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.String("portcullis.result", result))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "could not decide")
		}
	}
	span.End()
}
