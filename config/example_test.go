package config

import (
	"strings"
	"testing"
)

func TestExampleParses(t *testing.T) {
	t.Parallel()
	c, err := Parse(Example, "example.yaml")
	if err != nil {
		t.Fatalf("Parse(Example): %v", err)
	}
	if len(c.Upstreams) != 2 || len(c.Boundaries) != 2 || len(c.Trust) != 2 {
		t.Fatalf("unexpected shape: %d upstreams, %d boundaries, %d trust", len(c.Upstreams), len(c.Boundaries), len(c.Trust))
	}
	if got := c.Boundaries[0].Attestations[0].MaxAge.D().Hours(); got != 720 {
		t.Errorf("max_age = %vh, want 720h", got)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("example should use no escape hatch, got %q", w)
	}
	// The example names placeholder files relative to itself.
	c.Path = "/nonexistent/portcullis.yaml"
	err = c.CheckFiles()
	if err == nil || !strings.Contains(err.Error(), "trust[0].keys[0]") {
		t.Errorf("CheckFiles = %v, want the missing key file reported", err)
	}
}
