package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/tufroot"
	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/wire"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// trustedRootCheckEvery is how often the refresh loop looks at the
// sources: refreshes that are due run, and a root that changed or expired
// rebuilds the policy. The refresh interval itself is per trust entry.
var trustedRootCheckEvery = 15 * time.Second

// withTrustedRoots logs the state of every trusted root kept through TUF,
// loudly when one is missing, and serves their metrics.
func withTrustedRoots(cfg *config.Config, logger *zap.Logger, extra []proxy.Option) []proxy.Option {
	for _, t := range cfg.Trust {
		if t.TUF == nil {
			continue
		}
		wire.TrustedRoots.Seed(t.Name)
		if s := wire.TrustedRoots.Lookup(t.Name); s != nil {
			logTrustedRoot(logger, s, "start")
		}
	}
	return append(extra, proxy.WithCollectors(wire.TrustedRoots.Collectors()...))
}

func logTrustedRoot(logger *zap.Logger, s *tufroot.Source, what string) {
	spec := s.Spec()
	st, lastErr := s.Current()
	_, _, err := s.Material()
	fields := []zap.Field{zap.String("trust", spec.Trust), zap.String("url", spec.URL), zap.String("event", what)}
	if st != nil {
		fields = append(fields, zap.String("digest", st.Digest), zap.Int64("root_version", st.RootVersion),
			zap.Int64("timestamp_version", st.TimestampVersion), zap.Time("expires", st.Expires), zap.String("from", st.From))
	}
	switch {
	case err != nil:
		logger.Error("trusted root unavailable: keyless authorities under this trust entry deny every subject until a root is fetched",
			append(fields, zap.NamedError("reason", err))...)
	case lastErr != nil:
		logger.Warn("trusted root refresh failed; the last good root is kept until its metadata expires",
			append(fields, zap.Error(lastErr))...)
	default:
		logger.Info("trusted root", fields...)
	}
}

// refreshTrustedRoots refreshes the TUF-kept roots of the configuration in
// effect when they are due and reloads the configuration when one of them
// changed or stopped being usable, so that the engine, and the policy
// fingerprint the cached verdicts are keyed by, follow the root. It runs
// until ctx ends.
func refreshTrustedRoots(ctx context.Context, r *reloader) {
	roots := wire.TrustedRoots
	compiled := map[string]string{} // trust -> identity the engine was built with
	r.mu.Lock()
	cfg := r.current
	r.mu.Unlock()
	for _, t := range cfg.Trust {
		if s := roots.Lookup(t.Name); t.TUF != nil && s != nil {
			_, compiled[t.Name], _ = s.Material()
		}
	}
	tick := time.NewTicker(trustedRootCheckEvery)
	defer tick.Stop()
	for {
		r.mu.Lock()
		cfg := r.current
		r.mu.Unlock()
		changed := false
		for _, t := range cfg.Trust {
			s := roots.Lookup(t.Name)
			if t.TUF == nil || s == nil {
				continue
			}
			if s.Due() {
				res := s.Refresh()
				switch {
				case res.Err != nil:
					logTrustedRoot(r.log, s, "refresh")
					r.p.Emit(proxy.Event{Kind: proxy.EventTrustedRootRefreshFailed,
						Message: "refresh of the trusted root of trust " + t.Name + " failed: " + res.Err.Error(),
						Details: map[string]string{"trust": t.Name, "url": t.TUF.URL, "error": res.Err.Error()}})
				case res.Changed:
					logTrustedRoot(r.log, s, "rotated")
				default:
					r.log.Info("trusted root refreshed, unchanged", zap.String("trust", t.Name),
						zap.Int64("timestamp_version", res.State.TimestampVersion), zap.Time("expires", res.State.Expires))
				}
			}
			_, id, err := s.Material()
			if prev, ok := compiled[t.Name]; ok && prev == id {
				continue
			}
			compiled[t.Name] = id
			changed = true
			if err != nil {
				logTrustedRoot(r.log, s, "unavailable")
				r.p.Emit(proxy.Event{Kind: proxy.EventTrustedRootUnavailable,
					Message: "trust " + t.Name + ": " + err.Error() + "; its keyless authorities deny every subject",
					Details: map[string]string{"trust": t.Name, "url": t.TUF.URL, "error": err.Error()}})
			}
		}
		if changed {
			// The reload reads the configuration again and compiles the
			// policy with the roots as they are now; a refused reload
			// is reported as any other and tried again at the next
			// change. The roots stop verifying at their expiry whether
			// or not a reload succeeds.
			r.reload("trusted-root")
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
