package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/proxy/alert"
)

// alertFlushTimeout bounds how long events still queued at shutdown are
// given to reach their receivers.
const alertFlushTimeout = 10 * time.Second

// withAlerts starts the alert receivers of cfg and adds the options that
// send the proxy's events to them (and serve their metrics with the
// proxy's). stop flushes what is queued, waiting at most
// alertFlushTimeout.
func withAlerts(cfg *config.Config, logger *zap.Logger, extra []proxy.Option) (opts []proxy.Option, stop func(), err error) {
	if len(cfg.Alerts) == 0 {
		return extra, func() {}, nil
	}
	d, err := alertDispatcher(cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	for _, a := range cfg.Alerts {
		logger.Info("alerts", zap.String("name", a.Name), zap.String("type", a.Type), zap.Strings("events", a.Events),
			zap.Strings("boundaries", a.Boundaries))
	}
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), alertFlushTimeout)
		defer cancel()
		if err := d.Close(ctx); err != nil {
			logger.Warn("alerts: events not delivered at exit", zap.Error(err))
		}
	}
	// The alert metrics join the proxy's own registry: no second
	// registry that would have to be the only WithRegisterer.
	return append(extra, proxy.WithCollectors(d.Collectors()...), proxy.WithEventSink(d)), stop, nil
}

// alertDispatcher starts the receivers of cfg.Alerts.
func alertDispatcher(cfg *config.Config, logger *zap.Logger) (*alert.Dispatcher, error) {
	sinks, err := alertSinks(cfg.Alerts, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	source := alert.DefaultSource
	if h, err := os.Hostname(); err == nil && h != "" {
		source += ":" + h
	}
	// A receiver's answer is bounded like an upstream's.
	return alert.New(sinks, alert.WithLogger(logger.Named("alerts")), alert.WithSource(source),
		alert.WithMaxHeaderBytes(cfg.Limits.UpstreamHeaderBytes.Int64()))
}

// alertSinks translates the config, reading secrets from the environment.
// Errors name the variable, never its value.
func alertSinks(alerts []config.Alert, lookupEnv func(string) (string, bool)) ([]alert.SinkConfig, error) {
	env := func(a config.Alert, key, name string) (string, error) {
		v, ok := lookupEnv(name)
		if !ok || v == "" {
			return "", fmt.Errorf("alert %q: environment variable %s (%s) is not set", a.Name, name, key)
		}
		return v, nil
	}
	var out []alert.SinkConfig
	for _, a := range alerts {
		s := alert.SinkConfig{
			Name: a.Name, Type: alert.Type(a.Type), URL: a.URL, Insecure: a.Insecure, Boundaries: a.Boundaries,
			Queue: a.Queue, Timeout: a.Timeout.D(), MaxAttempts: a.MaxAttempts, DedupWindow: alert.DefaultDedupWindow,
		}
		if a.DedupWindow != nil {
			// In the file 0s turns deduplication off; alert reads 0 as
			// its default and a negative window as off.
			if s.DedupWindow = a.DedupWindow.D(); s.DedupWindow == 0 {
				s.DedupWindow = -1
			}
		}
		if a.URLEnv != "" {
			u, err := env(a, "url_env", a.URLEnv)
			if err != nil {
				return nil, err
			}
			s.URL = u
		}
		if len(a.Headers) > 0 {
			s.Header = map[string]string{}
			for _, h := range a.Headers {
				v, err := env(a, "header "+h.Name, h.Env)
				if err != nil {
					return nil, err
				}
				s.Header[h.Name] = v
			}
		}
		for _, k := range a.Events {
			s.Kinds = append(s.Kinds, proxy.EventKind(k))
		}
		out = append(out, s)
	}
	return out, nil
}
