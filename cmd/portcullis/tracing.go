package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// tracingFlushTimeout bounds the export of the spans still queued at exit.
const tracingFlushTimeout = 5 * time.Second

// withTracing adds tracing to the proxy's options when the configuration
// has a tracing section. stop flushes the spans still queued and must run
// once the proxy has stopped serving.
func withTracing(cfg *config.Config, logger *zap.Logger, extra []proxy.Option) (opts []proxy.Option, stop func(), err error) {
	if cfg.Tracing == nil {
		return extra, func() {}, nil
	}
	tp, err := newTracerProvider(cfg.Tracing, os.LookupEnv)
	if err != nil {
		return nil, nil, err
	}
	logger.Info("tracing", zap.String("endpoint", cfg.Tracing.Endpoint()), zap.Float64("sample_ratio", float64(*cfg.Tracing.SampleRatio)),
		zap.String("service_name", cfg.Tracing.ServiceName))
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), tracingFlushTimeout)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			logger.Warn("tracing: spans not exported at exit", zap.Error(err))
		}
	}
	return append(extra, proxy.WithTracerProvider(tp)), stop, nil
}

// newTracerProvider builds the SDK provider exporting to t's collector
// over OTLP/HTTP. Spans are batched and exported in the background; when
// the queue is full new spans are dropped, so a slow collector never slows
// a pull. The sampler follows a client's sampled flag and samples the
// traces the proxy starts at t's ratio.
func newTracerProvider(t *config.Tracing, lookupEnv func(string) (string, bool)) (*sdktrace.TracerProvider, error) {
	headers := map[string]string{}
	for _, h := range t.Headers {
		v, ok := lookupEnv(h.Env)
		if !ok || v == "" {
			return nil, fmt.Errorf("tracing.headers: environment variable %s (header %s) is not set", h.Env, h.Name)
		}
		headers[h.Name] = v
	}
	opts := []otlptracehttp.Option{
		otlptracehttp.WithEndpointURL(t.Endpoint()),
		otlptracehttp.WithTimeout(t.Timeout.D()),
	}
	if len(headers) > 0 {
		opts = append(opts, otlptracehttp.WithHeaders(headers))
	}
	// Building the exporter dials nothing.
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", t.ServiceName),
		attribute.String("service.version", version),
	)
	return sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(float64(*t.SampleRatio)))),
		sdktrace.WithBatcher(exp,
			sdktrace.WithMaxQueueSize(t.QueueSpans),
			sdktrace.WithExportTimeout(t.Timeout.D()),
		),
	), nil
}
