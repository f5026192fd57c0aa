package config

import (
	"strings"
	"testing"
	"time"
)

func TestAlerts(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, alerts, want string
	}{
		{"minimal", "  - {name: a, type: webhook, url: https://h.example/x}\n", ""},
		{"env url and headers", "  - {name: a, type: slack, url_env: SLACK_URL, headers: [{name: Authorization, env: TOKEN}]}\n", ""},
		{"filters", "  - {name: a, type: cloudevents, url: https://h.example, events: [deny, drift], boundaries: [all]}\n", ""},
		{"insecure http", "  - {name: a, type: webhook, url: http://127.0.0.1:9, insecure: true}\n", ""},
		{"no name", "  - {type: webhook, url: https://h.example}\n", "alerts[0].name: is required"},
		{"dup name", "  - {name: a, type: webhook, url: https://h.example}\n  - {name: a, type: slack, url: https://h.example}\n", `alert name "a" already used`},
		{"type", "  - {name: a, type: email, url: https://h.example}\n", `alerts[0].type: must be webhook, cloudevents or slack`},
		{"no url", "  - {name: a, type: webhook}\n", "alerts[0].url: is required"},
		{"both urls", "  - {name: a, type: webhook, url: https://h.example, url_env: U}\n", "url and url_env are exclusive"},
		{"plain http", "  - {name: a, type: webhook, url: http://h.example}\n", "plain http"},
		{"credentials", "  - {name: a, type: webhook, url: https://u:p@h.example}\n", "credentials"},
		{"env name", "  - {name: a, type: webhook, url_env: 1BAD}\n", `url_env: "1BAD" is not an environment variable name`},
		{"header name", "  - {name: a, type: webhook, url: https://h.example, headers: [{name: \"Bad Header\", env: T}]}\n", "is not a header name"},
		{"header env", "  - {name: a, type: webhook, url: https://h.example, headers: [{name: Authorization, env: \"$T\"}]}\n", "is not an environment variable name"},
		{"event", "  - {name: a, type: webhook, url: https://h.example, events: [allow]}\n", `alerts[0].events[0]: unknown event "allow"`},
		{"queue", "  - {name: a, type: webhook, url: https://h.example, queue: -1}\n", "alerts[0].queue: must be between"},
		{"attempts", "  - {name: a, type: webhook, url: https://h.example, max_attempts: 100}\n", "alerts[0].max_attempts"},
		{"timeout", "  - {name: a, type: webhook, url: https://h.example, timeout: 1h}\n", "alerts[0].timeout"},
		{"unknown key", "  - {name: a, type: webhook, url: https://h.example, retries: 3}\n", "retries"},
	} {
		_, err := Parse([]byte(doc("", "", "", "alerts:\n"+c.alerts)), "p.yaml")
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

// TestAlertURLNotInErrors: a URL may be a secret (a Slack webhook's path
// is), so a problem with it never repeats it.
func TestAlertURLNotInErrors(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(doc("", "", "", "alerts:\n  - {name: a, type: slack, url: http://hooks.example/services/XXsecretXX}\n")), "p.yaml")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("error %v", err)
	}
}

func TestAlertDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", "", "alerts:\n  - {name: a, type: webhook, url: https://h.example}\n  - {name: b, type: webhook, url: https://h.example, dedup_window: 0s}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := c.Alerts[0]
	if a.DedupWindow == nil || a.DedupWindow.D() != 5*time.Minute || a.Queue != 1024 || a.Timeout.D() != 10*time.Second || a.MaxAttempts != 5 {
		t.Errorf("defaults: %+v", a)
	}
	if b := c.Alerts[1]; b.DedupWindow == nil || *b.DedupWindow != 0 {
		t.Errorf("explicit 0s dedup_window: %v", b.DedupWindow)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
	c, err = Parse([]byte(doc("", "", "", "alerts:\n  - {name: a, type: webhook, url: http://127.0.0.1:9, insecure: true}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], `alert "a"`) {
		t.Errorf("warnings %q", w)
	}
}
