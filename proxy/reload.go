package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a configuration reload (the result label of
// portcullis_config_reloads_total).
const (
	// ReloadSuccess: the new configuration is in effect.
	ReloadSuccess = "success"
	// ReloadFailure: the new configuration was refused; the previous one
	// keeps serving.
	ReloadFailure = "failure"
	// ReloadRestartRequired: what could change live did, and the file
	// also changes settings that only a restart applies.
	ReloadRestartRequired = "restart_required"
)

// verifierCell boxes a Verifier so that it can be swapped atomically.
type verifierCell struct{ v Verifier }

// SetVerifier makes v decide on every request that starts from now on.
// A request already under way keeps the Verifier it started with to its
// end, including the lineage dependencies and evidence subjects it has
// decided: one request is never judged by two policies. Verdicts, coverage
// and summaries are keyed by the Verifier's fingerprint, so those of the
// previous policy are not taken for the new one's.
func (p *Proxy) SetVerifier(v Verifier) error {
	if v == nil {
		return errors.New("nil verifier")
	}
	p.verifier.Store(&verifierCell{v: v})
	return nil
}

// currentVerifier is the Verifier a request starting now uses. A request
// reads it once and carries it (manifestReq.v).
func (p *Proxy) currentVerifier() Verifier {
	return p.verifier.Load().v
}

// pinnedVerifier is the context key carrying the Verifier of the request
// a verification runs for, so that the lineage dependencies the Verifier
// asks for (it calls back with the context it was given) are decided by
// the same one.
type pinnedVerifier struct{}

func withVerifier(ctx context.Context, v Verifier) context.Context {
	return context.WithValue(ctx, pinnedVerifier{}, v)
}

// verifierFor is the Verifier pinned in ctx, else the current one (a
// caller outside any verification).
func (p *Proxy) verifierFor(ctx context.Context) Verifier {
	if v, ok := ctx.Value(pinnedVerifier{}).(Verifier); ok && v != nil {
		return v
	}
	return p.currentVerifier()
}

// reloadMetrics count configuration reloads.
type reloadMetrics struct {
	reloads         *prometheus.CounterVec
	lastSuccess     prometheus.Gauge
	restartRequired prometheus.Gauge
}

func newReloadMetrics(reg prometheus.Registerer) (*reloadMetrics, error) {
	m := &reloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_config_reloads_total",
			Help: "Configuration reloads by result: success (in effect), failure (refused, the previous configuration keeps serving) or restart_required (the live part is in effect, other changes wait for a restart).",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in effect was loaded (start or the last reload that applied), as a Unix time.",
		}),
		restartRequired: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "portcullis_config_restart_required",
			Help: "1 while the configuration file holds changes that only a restart applies, else 0.",
		}),
	}
	for _, c := range []prometheus.Collector{m.reloads, m.lastSuccess, m.restartRequired} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("failed to register reload metrics"), err)
		}
	}
	for _, r := range []string{ReloadSuccess, ReloadFailure, ReloadRestartRequired} {
		m.reloads.WithLabelValues(r)
	}
	m.lastSuccess.SetToCurrentTime()
	return m, nil
}

// RecordReload counts one configuration reload with one of the Reload*
// results. pendingRestart says whether the file now holds changes that
// wait for a restart (a later reload may undo them); a refused reload
// leaves that as it was.
func (p *Proxy) RecordReload(result string, pendingRestart bool) {
	m := p.reloadMetrics
	switch result {
	case ReloadSuccess, ReloadRestartRequired:
		m.lastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
	case ReloadFailure:
	default:
		// An unknown result would open an unbounded label.
		result = ReloadFailure
	}
	m.reloads.WithLabelValues(result).Inc()
	if result != ReloadFailure {
		if pendingRestart {
			m.restartRequired.Set(1)
		} else {
			m.restartRequired.Set(0)
		}
	}
}
