package config

import (
	"strings"
	"testing"
	"time"
)

func TestWatchConfig(t *testing.T) {
	t.Parallel()
	digest := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		name, yaml, want string // want "" means valid
	}{
		{"tag", "watch:\n  - {ref: docker.io/acme/app:v1}\n", ""},
		{"digest", "watch:\n  - {ref: \"docker.io/acme/app@" + digest + "\", every: 1m}\n", ""},
		{"every below a minute", "watch:\n  - {ref: docker.io/acme/app:v1, every: 59s}\n", "watch[0].every: must be at least 1m0s"},
		{"stale_after below every", "watch:\n  - {ref: docker.io/acme/app:v1, every: 10m, stale_after: 5m}\n", "watch[0].stale_after: must be at least every"},
		{"unknown upstream", "watch:\n  - {ref: quay.io/acme/app:v1}\n", `no upstream is named or aliased "quay.io"`},
		{"no upstream", "watch:\n  - {ref: acme:v1}\n", "must start with an upstream"},
		{"no tag", "watch:\n  - {ref: docker.io/acme/app}\n", "must be <upstream>/<repository>:<tag>"},
		{"bad digest", "watch:\n  - {ref: \"docker.io/acme/app@sha256:abc\"}\n", "the digest must be"},
		{"bad repository", "watch:\n  - {ref: docker.io/Acme/app:v1}\n", "is not a repository path"},
		{"twice", "watch:\n  - {ref: docker.io/acme/app:v1}\n  - {ref: docker.io/acme/app:v1, every: 1h}\n", "watch[1].ref: \"docker.io/acme/app:v1\" is already watched by watch[0]"},
		{"unknown key", "watch:\n  - {ref: docker.io/acme/app:v1, period: 1m}\n", "period"},
		{"concurrency", "limits: {watch_concurrency: -1}\n", "limits.watch_concurrency: must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(doc("", "", "", tc.yaml)), "p.yaml")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse failed:\n%v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error\n%v\ndoes not contain\n%s", err, tc.want)
			}
		})
	}
}

func TestWatchDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", "", "watch:\n  - {ref: docker.io/acme/app:v1}\n  - {ref: docker.io/acme/db:v1, every: 2m}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Watch[0].Every.D() != 15*time.Minute || c.Watch[0].StaleAfter.D() != time.Hour {
		t.Errorf("defaults: %+v", c.Watch[0])
	}
	if c.Watch[1].StaleAfter.D() != 8*time.Minute {
		t.Errorf("stale_after default: %+v", c.Watch[1])
	}
	if c.Limits.WatchConcurrency != DefaultWatchConcurrency {
		t.Errorf("watch_concurrency = %d", c.Limits.WatchConcurrency)
	}
}

// TestExampleWatch parses the example's commented watch block: the
// documented keys are the real ones.
func TestExampleWatch(t *testing.T) {
	t.Parallel()
	var out []string
	in := false
	for _, l := range strings.Split(string(Example), "\n") {
		switch {
		case l == "# watch:":
			in = true
		case in && !strings.HasPrefix(l, "#   "):
			in = false
		}
		if in {
			l = strings.TrimPrefix(l, "# ")
		}
		out = append(out, l)
	}
	c, err := Parse([]byte(strings.Join(out, "\n")), "example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Watch) != 2 || c.Watch[0].StaleAfter.D() != time.Hour || c.Watch[1].Every.D() != DefaultWatchEvery {
		t.Fatalf("watch = %+v", c.Watch)
	}
}
