package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/portcullis-oci/portcullis/config"
)

// TestLineageConfig keeps the lineage phase's configuration loadable and
// shaped as the measurement assumes: the lineage boundary first, the
// alias the provenance statements name routed to the one upstream.
func TestLineageConfig(t *testing.T) {
	t.Parallel()
	cfg, err := config.Parse([]byte(lineageConfig("http://127.0.0.1:5000").YAML()), "lineage.yaml")
	if err != nil {
		t.Fatalf("lineage config does not load: %v", err)
	}
	if len(cfg.Upstreams) != 1 || !slices.Contains(cfg.Upstreams[0].Aliases, lineageAlias) {
		t.Errorf("upstreams = %+v, want one with alias %q", cfg.Upstreams, lineageAlias)
	}
	if len(cfg.Boundaries) != 3 {
		t.Fatalf("got %d boundaries, want 3", len(cfg.Boundaries))
	}
	// The attested subjects' boundary requires provenance and follows
	// none of it: they are the like-for-like unit of a chain's levels.
	ab := cfg.Boundaries[1]
	if ab.Lineage != nil || len(ab.Attestations) != 1 || !slices.Equal(ab.Match.Repositories, []string{attestedRepo}) {
		t.Errorf("attested boundary = %+v, want provenance on %s and no lineage", ab, attestedRepo)
	}
	lb := cfg.Boundaries[0]
	if lb.Lineage == nil || lb.Lineage.Depth != 3 || !slices.Equal(lb.Lineage.Require, []string{"*"}) {
		t.Errorf("lineage boundary lineage = %+v, want depth 3 requiring every dependency", lb.Lineage)
	}
	if len(lb.Attestations) != 1 || lb.Attestations[0].PredicateType != "https://slsa.dev/provenance/v1" {
		t.Errorf("lineage boundary attestations = %+v, want one SLSA v1 provenance rule", lb.Attestations)
	}
	// Every level with provenance must fall in the lineage boundary and
	// the corpus, which has none, outside it.
	for i, l := range lineageLevels {
		in := slices.Contains(lb.Match.Repositories, l.repo)
		if want := i < len(lineageLevels)-1; in != want {
			t.Errorf("%s in lineage boundary = %v, want %v", l.repo, in, want)
		}
	}
}

func TestChainText(t *testing.T) {
	t.Parallel()
	hex := func(c string) string { return "sha256:" + strings.Repeat(c, 64) }
	var c chain
	for i, r := range []string{"lineage/model", "lineage/base", "lineage/corpus"} {
		d, err := name.NewDigest("origin.bench.test/"+r+"@"+hex(string(rune('a'+i))), name.StrictValidation)
		if err != nil {
			t.Fatal(err)
		}
		c = append(c, d)
	}
	want := "lineage/model@sha256:aaaaaaaaaaaa ← lineage/base@sha256:bbbbbbbbbbbb ← lineage/corpus@sha256:cccccccccccc"
	if got := chainText(c); got != want {
		t.Errorf("chainText = %q, want %q", got, want)
	}
}

func TestEnvelopeText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		want    []string
		wantErr bool
	}{
		{
			name: "message and nested detail",
			body: `{"errors":[{"code":"DENIED","message":"denied by boundary lineage","detail":{"reasons":["a ← b: no signatures found"],"n":3}}]}`,
			want: []string{"DENIED: denied by boundary lineage", "a ← b: no signatures found"},
		},
		{name: "no detail", body: `{"errors":[{"code":"DENIED","message":"no"}]}`, want: []string{"DENIED: no"}},
		{name: "no errors", body: `{"errors":[]}`, wantErr: true},
		{name: "not JSON", body: `<html>forbidden</html>`, wantErr: true},
		{name: "truncated", body: `{"errors":[{"code":"DENIED"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := envelopeText([]byte(tt.body))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("envelopeText = %q, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("envelopeText = %q, missing %q", got, w)
				}
			}
		})
	}
}

func TestDefaultConfigParses(t *testing.T) {
	cfg, err := config.Parse([]byte(defaultConfig("http://127.0.0.1:5000").YAML()), "default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Boundaries) != 1 || len(cfg.Upstreams[0].Aliases) != 0 {
		t.Fatalf("default config: %d boundaries, aliases %v", len(cfg.Boundaries), cfg.Upstreams[0].Aliases)
	}
}
