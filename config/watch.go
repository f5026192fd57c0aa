package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Watch defaults and bounds.
const (
	DefaultWatchEvery       = 15 * time.Minute
	MinWatchEvery           = time.Minute
	DefaultWatchConcurrency = 2
	// DefaultWatchStaleFactor times every is a watch's default stale_after.
	DefaultWatchStaleFactor = 4
)

// Watch is one reference the proxy re-verifies on a schedule.
type Watch struct {
	// Ref is "<upstream name or alias>/<repository>:<tag>" or
	// "<upstream name or alias>/<repository>@<digest>".
	Ref string `yaml:"ref"`
	// Every is the time between two runs (default 15m, at least 1m).
	Every Duration `yaml:"every"`
	// StaleAfter alerts on a run that is not an allow when the last allow
	// is older than this (default 4 × every, at least every).
	StaleAfter Duration `yaml:"stale_after"`
}

var (
	watchTagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	watchDigestRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)
)

func (c *Config) applyWatchDefaults() {
	if c.Limits.WatchConcurrency == 0 {
		c.Limits.WatchConcurrency = DefaultWatchConcurrency
	}
	for i := range c.Watch {
		w := &c.Watch[i]
		if w.Every == 0 {
			w.Every = Duration(DefaultWatchEvery)
		}
		if w.StaleAfter == 0 {
			w.StaleAfter = DefaultWatchStaleFactor * w.Every
		}
	}
}

// validateWatches checks every watch names a configured upstream and a
// tag or digest, at most once each.
func (c *Config) validateWatches(r *reporter, upstreams map[string]*Upstream) {
	if c.Limits.WatchConcurrency <= 0 {
		r.addf("limits.watch_concurrency", "must be positive")
	}
	seen := map[string]string{}
	for i := range c.Watch {
		w := &c.Watch[i]
		p := indexPath("watch", i)
		if prev, dup := seen[w.Ref]; dup {
			r.addf(joinPath(p, "ref"), "%q is already watched by %s", w.Ref, prev)
		}
		seen[w.Ref] = p
		if msg := checkWatchRef(w.Ref, upstreams); msg != "" {
			r.addf(joinPath(p, "ref"), "%q: %s", w.Ref, msg)
		}
		if w.Every.D() < MinWatchEvery {
			r.addf(joinPath(p, "every"), "must be at least %s, not %s", MinWatchEvery, w.Every)
		}
		if w.StaleAfter.D() < w.Every.D() {
			r.addf(joinPath(p, "stale_after"), "must be at least every (%s), not %s", w.Every, w.StaleAfter)
		}
	}
}

func checkWatchRef(ref string, upstreams map[string]*Upstream) string {
	name, ref2, byDigest := strings.Cut(ref, "@")
	if byDigest {
		if !watchDigestRE.MatchString(ref2) {
			return "the digest must be sha256:<64 hex> or sha512:<128 hex>"
		}
	} else {
		i := strings.LastIndex(ref, ":")
		if i < 0 || i < strings.LastIndex(ref, "/") {
			return "must be <upstream>/<repository>:<tag> or <upstream>/<repository>@<digest>"
		}
		name = ref[:i]
		if !watchTagRE.MatchString(ref[i+1:]) {
			return fmt.Sprintf("%q is not a tag", ref[i+1:])
		}
	}
	key, repo, ok := strings.Cut(name, "/")
	if !ok || key == "" {
		return "must start with an upstream name or alias"
	}
	if upstreamByKey(upstreams, key) == nil {
		return fmt.Sprintf("no upstream is named or aliased %q", key)
	}
	if len(name) > 255 || !repoPathRE.MatchString(repo) {
		return fmt.Sprintf("%q is not a repository path", repo)
	}
	return ""
}
