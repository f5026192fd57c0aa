package config

import (
	"net/url"
	"slices"
	"strings"
	"time"
)

// Alert is one receiver of alert events.
type Alert struct {
	Name string `yaml:"name"`
	// Type is the payload shape: webhook (JSON), cloudevents (CloudEvents
	// 1.0, HTTP binary mode) or slack (incoming webhook).
	Type string `yaml:"type"`
	// URL, or URLEnv naming the environment variable that holds it (for
	// URLs that are secrets, like Slack's). Exactly one is set.
	URL    string `yaml:"url"`
	URLEnv string `yaml:"url_env"`
	// Insecure allows a plain http URL (loopback and labs).
	Insecure bool `yaml:"insecure"`
	// Headers are added to every request, each value read from an
	// environment variable (e.g. Authorization from ALERT_TOKEN).
	Headers []AlertHeader `yaml:"headers"`
	// Events and Boundaries filter what is sent; absent sends all.
	Events     []string `yaml:"events"`
	Boundaries []string `yaml:"boundaries"`
	// DedupWindow: repeats of the same kind, digest and boundary within it
	// are sent once (default 5m; 0s turns it off).
	DedupWindow *Duration `yaml:"dedup_window"`
	Queue       int       `yaml:"queue"`        // events waiting per receiver; default 1024
	Timeout     Duration  `yaml:"timeout"`      // per attempt; default 10s
	MaxAttempts int       `yaml:"max_attempts"` // default 5
}

// AlertHeader is a request header whose value is a secret kept in the
// environment.
type AlertHeader struct {
	Name string `yaml:"name"`
	Env  string `yaml:"env"`
}

// Alert defaults.
const (
	AlertWebhook         = "webhook"
	AlertCloudEvents     = "cloudevents"
	AlertSlack           = "slack"
	DefaultAlertDedup    = 5 * time.Minute
	DefaultAlertQueue    = 1024
	DefaultAlertTimeout  = 10 * time.Second
	DefaultAlertAttempts = 5
	maxAlertQueue        = 1 << 20
	maxAlertAttempts     = 20
	maxAlertTimeout      = 5 * time.Minute
)

// AlertEvents are the event kinds an alert's events filter may name.
var AlertEvents = []string{
	"deny", "would-deny", "fail-closed", "drift", "revocation-hit", "reload-failed",
	"watch-absent", "watch-stale", "watch-changed", "watch-unreachable",
	"trusted-root-refresh-failed", "trusted-root-unavailable",
}

func (a *Alert) applyDefaults() {
	if a.DedupWindow == nil {
		d := Duration(DefaultAlertDedup)
		a.DedupWindow = &d
	}
	if a.Queue == 0 {
		a.Queue = DefaultAlertQueue
	}
	if a.Timeout == 0 {
		a.Timeout = Duration(DefaultAlertTimeout)
	}
	if a.MaxAttempts == 0 {
		a.MaxAttempts = DefaultAlertAttempts
	}
}

func (c *Config) validateAlerts(r *reporter) {
	names := map[string]string{}
	for i := range c.Alerts {
		p := indexPath("alerts", i)
		a := &c.Alerts[i]
		if a.Name == "" {
			r.addf(joinPath(p, "name"), "is required")
		} else if prev, dup := names[a.Name]; dup {
			r.addf(joinPath(p, "name"), "alert name %q already used by %s", a.Name, prev)
		} else {
			names[a.Name] = p
		}
		switch a.Type {
		case AlertWebhook, AlertCloudEvents, AlertSlack:
		default:
			r.addf(joinPath(p, "type"), "must be webhook, cloudevents or slack, not %q", a.Type)
		}
		// The URL may be a secret (Slack's path is): say what is wrong
		// with it, never what it is.
		switch {
		case a.URL != "" && a.URLEnv != "":
			r.addf(p, "url and url_env are exclusive")
		case a.URL == "" && a.URLEnv == "":
			r.addf(joinPath(p, "url"), "is required (or url_env)")
		case a.URLEnv != "" && !envNameRE.MatchString(a.URLEnv):
			r.addf(joinPath(p, "url_env"), "%q is not an environment variable name", a.URLEnv)
		case a.URL != "":
			if msg := checkAlertURL(a.URL, a.Insecure); msg != "" {
				r.addf(joinPath(p, "url"), "%s", msg)
			}
		}
		for j, h := range a.Headers {
			hp := indexPath(joinPath(p, "headers"), j)
			if !validHeaderName(h.Name) {
				r.addf(joinPath(hp, "name"), "%q is not a header name", h.Name)
			}
			if !envNameRE.MatchString(h.Env) {
				r.addf(joinPath(hp, "env"), "%q is not an environment variable name", h.Env)
			}
		}
		for j, e := range a.Events {
			if !slices.Contains(AlertEvents, e) {
				r.addf(indexPath(joinPath(p, "events"), j), "unknown event %q (one of %v)", e, AlertEvents)
			}
		}
		// Boundary names are not checked against the boundaries: those of
		// boundaries_dir are loaded after this check.
		for j, b := range a.Boundaries {
			if b == "" {
				r.addf(indexPath(joinPath(p, "boundaries"), j), "is empty")
			}
		}
		if a.DedupWindow != nil && *a.DedupWindow < 0 {
			r.addf(joinPath(p, "dedup_window"), "must not be negative")
		}
		if a.Queue <= 0 || a.Queue > maxAlertQueue {
			r.addf(joinPath(p, "queue"), "must be between 1 and %d", maxAlertQueue)
		}
		if a.Timeout <= 0 || a.Timeout.D() > maxAlertTimeout {
			r.addf(joinPath(p, "timeout"), "must be positive and at most %s", maxAlertTimeout)
		}
		if a.MaxAttempts <= 0 || a.MaxAttempts > maxAlertAttempts {
			r.addf(joinPath(p, "max_attempts"), "must be between 1 and %d", maxAlertAttempts)
		}
	}
}

// checkAlertURL returns what is wrong with an alert URL, or "".
func checkAlertURL(raw string, insecure bool) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "" || u.Opaque != "":
		return "is not an absolute http(s) URL"
	case u.User != nil:
		return "must not contain credentials; use headers"
	case u.Scheme == "https", u.Scheme == "http" && insecure:
		return ""
	case u.Scheme == "http":
		return "uses plain http; set insecure: true to allow it (loopback and labs only)"
	default:
		return "must use https (or http with insecure: true)"
	}
}

// validHeaderName: a header name is an RFC 9110 token.
func validHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for _, c := range h {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return false
		}
	}
	return true
}
