package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// SharedFlight extends single flight across replicas: of the replicas
// that miss a verdict at once, the one that takes the lease verifies and
// the others wait for its verdict in the shared verdict cache.
type SharedFlight interface {
	// Acquire takes the lease on key (a verdict key). won: the caller
	// verifies, then calls release once its verdict is stored; the lease
	// lasts until then or until ctx ends. Not won with a nil error:
	// another replica holds it. An error means the lease cannot be used
	// (shared state unavailable, a value refused): the caller verifies
	// alone, without waiting.
	Acquire(ctx context.Context, key string) (release func(), won bool, err error)
}

// sharedFlightPoll is how often a replica waiting for another's verdict
// looks for it, and for the lease being free to take over.
const sharedFlightPoll = 50 * time.Millisecond

// Outcomes of a verification's turn (portcullis_shared_flight_total).
const (
	flightLed      = "led"       // took the lease at once and verified
	flightFollowed = "followed"  // another replica's verdict, after waiting
	flightTookOver = "took_over" // the holder left without a verdict: took the lease and verified
	flightTimedOut = "timed_out" // waited verify_timeout for nothing: verified alone
	flightAlone    = "alone"     // lease unusable (shared state down, value refused): verified alone
)

// sharedFlight is the proxy's side of a SharedFlight.
type sharedFlight struct {
	f        SharedFlight
	outcomes *prometheus.CounterVec
}

// WithSharedFlight has replicas sharing a verdict cache verify a digest
// once between them: the others wait for the verdict, at most the verify
// timeout, then verify alone. It needs a verdict cache shared by the
// replicas (WithVerdictCache); without one it does nothing. Default: none,
// each replica verifies what it misses.
func WithSharedFlight(f SharedFlight) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("nil shared flight")
		}
		sf := &sharedFlight{f: f, outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_shared_flight_total",
			Help: "Verifications this replica needed, by how the replicas shared them: led (took the lease and verified), followed (used another replica's verdict), took_over (the holder left without a verdict), timed_out (waited the verify timeout, then verified), alone (shared state unavailable).",
		}, []string{"outcome"})}
		for _, oc := range []string{flightLed, flightFollowed, flightTookOver, flightTimedOut, flightAlone} {
			sf.outcomes.WithLabelValues(oc)
		}
		o.sharedFlight = sf
		o.collectors = append(o.collectors, sf.outcomes)
		return nil
	}
}

func noRelease() {}

// sharedTurn decides whether this replica verifies key or uses another
// replica's verdict. It returns found with that verdict, or else release,
// to be called once this replica's verdict is stored. It never fails:
// whatever goes wrong with the lease, this replica verifies alone, and it
// waits no longer than the verify timeout. It takes no verification slot
// while waiting, so waiting for another replica never holds back local
// work.
func (p *Proxy) sharedTurn(ctx context.Context, key string) (release func(), v verify.Verdict, found bool) {
	sf, vc := p.opts.sharedFlight, p.opts.verdicts
	if sf == nil || vc == nil {
		return noRelease, verify.Verdict{}, false
	}
	var deadline <-chan time.Time
	var tick *time.Ticker
	for waited := false; ; waited = true {
		release, won, err := sf.f.Acquire(ctx, key)
		if err != nil {
			sf.outcomes.WithLabelValues(flightAlone).Inc()
			return noRelease, verify.Verdict{}, false
		}
		if won {
			// The holder stores its verdict before it releases the lease:
			// a lease free again may mean the verdict is there already.
			if v, ok := vc.Get(key); ok {
				release()
				sf.outcomes.WithLabelValues(flightFollowed).Inc()
				return noRelease, v, true
			}
			if waited {
				sf.outcomes.WithLabelValues(flightTookOver).Inc()
			} else {
				sf.outcomes.WithLabelValues(flightLed).Inc()
			}
			return release, verify.Verdict{}, false
		}
		if tick == nil {
			tick = time.NewTicker(sharedFlightPoll)
			defer tick.Stop()
			t := time.NewTimer(p.opts.verifyTimeout)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-ctx.Done():
			// Everyone waiting left; the slot acquisition that follows
			// ends the flight with their cause.
			return noRelease, verify.Verdict{}, false
		case <-deadline:
			sf.outcomes.WithLabelValues(flightTimedOut).Inc()
			p.log.Warn("waited the verify timeout for another replica's verdict: verifying here",
				zap.Duration("verify_timeout", p.opts.verifyTimeout))
			return noRelease, verify.Verdict{}, false
		case <-tick.C:
		}
		if v, ok := vc.Get(key); ok {
			sf.outcomes.WithLabelValues(flightFollowed).Inc()
			return noRelease, v, true
		}
	}
}
