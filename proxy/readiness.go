package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// WithReadinessDetail adds f's text to the /readyz body while f returns a
// non-empty string. It is for a degraded but working dependency (the shared
// state being unreachable): the detail is shown, readiness stays OK, since
// the replica still serves correctly on its own. Default: none.
func WithReadinessDetail(f func() string) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("nil readiness detail")
		}
		o.readinessDetails = append(o.readinessDetails, f)
		return nil
	}
}

// WithCollectors registers cs with the proxy's metrics, so that components
// built outside the proxy are served at /metrics with it. Default: none.
func WithCollectors(cs ...prometheus.Collector) Option {
	return func(o *options) error {
		for _, c := range cs {
			if c == nil {
				return errors.New("nil collector")
			}
		}
		o.collectors = append(o.collectors, cs...)
		return nil
	}
}

func (p *Proxy) readinessNote() string {
	s := ""
	for _, f := range p.opts.readinessDetails {
		if d := f(); d != "" {
			s += " (" + d + ")"
		}
	}
	return s
}
