package verify

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var hexA = strings.Repeat("a", 64)

func TestParseOCIDependency(t *testing.T) {
	t.Parallel()
	tests := []struct {
		uri              string
		digest           map[string]string
		registry, repo   string
		notOCI           string
		wantDigestSuffix string
	}{
		{uri: "oci://registry.example/ml/data@sha256:" + hexA, registry: "registry.example", repo: "ml/data"},
		{uri: "oci://registry.example:5000/ml/data:v1@sha256:" + hexA, registry: "registry.example:5000", repo: "ml/data"},
		{uri: "oci://localhost/data", digest: map[string]string{"sha256": hexA}, registry: "localhost", repo: "data"},
		{uri: "ghcr.io/acme/base", digest: map[string]string{"sha256": hexA}, registry: "ghcr.io", repo: "acme/base"},
		{uri: "oci://registry.example/ml/data@sha256:" + hexA, digest: map[string]string{"sha256": hexA}, registry: "registry.example", repo: "ml/data"},
		{uri: "oci://registry.example/ml/data@sha256:" + hexA, digest: map[string]string{"sha256": strings.Repeat("b", 64)}, notOCI: "differ"},
		{uri: "oci://registry.example/ml/data:v1", notOCI: "no sha256 digest"},
		{uri: "oci://registry.example/ml/data@sha512:" + strings.Repeat("a", 128), notOCI: "no valid sha256"},
		{uri: "oci://registry.example/ml/data@sha256:" + strings.ToUpper(hexA), notOCI: "no valid sha256"},
		{uri: "oci://library/alpine@sha256:" + hexA, notOCI: "no registry host"},
		{uri: "oci://registry.example/ML/Data@sha256:" + hexA, notOCI: "invalid repository"},
		{uri: "git+https://github.com/acme/app@refs/heads/main", digest: map[string]string{"sha256": hexA}, notOCI: "not an OCI artifact"},
		{uri: "https://huggingface.co/datasets/x", digest: map[string]string{"sha256": hexA}, notOCI: "not an OCI artifact"},
		{uri: "pkg:docker/alpine@3.20", digest: map[string]string{"sha256": hexA}, notOCI: "not an OCI artifact"},
		{uri: "", digest: map[string]string{"sha256": hexA}, notOCI: "no registry host"},
		{uri: "://registry.example/ml/data@sha256:" + hexA, notOCI: "not an OCI artifact"},
		{uri: "oci://@sha256:" + hexA, notOCI: "no registry host"},
	}
	for _, tc := range tests {
		t.Run(tc.uri, func(t *testing.T) {
			t.Parallel()
			ref, why := parseOCIDependency(tc.uri, tc.digest)
			if tc.notOCI != "" {
				if ref != nil || !strings.Contains(why, tc.notOCI) {
					t.Fatalf("got %+v %q, want not OCI (%s)", ref, why, tc.notOCI)
				}
				return
			}
			if ref == nil {
				t.Fatalf("not OCI: %s", why)
			}
			if ref.Registry != tc.registry || ref.Repository != tc.repo || ref.Digest.Hex != hexA || ref.URI != tc.uri {
				t.Fatalf("ref = %+v", ref)
			}
		})
	}
}

func TestValidateLineageRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rule LineageRule
		want string // "" means valid
	}{
		{LineageRule{Depth: 1}, ""},
		{LineageRule{Depth: MaxLineageDepth, Require: []string{"dataset*"}, Ignore: []string{"tokenizer", "cache-?"}}, ""},
		{LineageRule{Depth: 2, Require: []string{"data*"}, Ignore: []string{"dataset-*"}}, ""}, // overlapping globs: require wins per name
		{LineageRule{}, "depth is 0"},
		{LineageRule{Depth: -1}, "out of range"},
		{LineageRule{Depth: MaxLineageDepth + 1}, "out of range"},
		{LineageRule{Depth: 1, Require: []string{""}}, `lineage require "": empty glob`},
		{LineageRule{Depth: 1, Require: []string{"data["}}, `lineage require "data["`},
		{LineageRule{Depth: 1, Ignore: []string{" "}}, `lineage ignore " ": empty glob`},
		{LineageRule{Depth: 1, Ignore: []string{"x", "["}}, `lineage ignore "["`},
		{LineageRule{Depth: 1, Require: []string{"a", "dataset*"}, Ignore: []string{"dataset*"}}, `lineage ignore "dataset*" is also required`},
	}
	for _, tc := range tests {
		err := validateLineageRule(&tc.rule)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", tc.rule, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.rule, err, tc.want)
		}
	}
}

func TestParseDependenciesNames(t *testing.T) {
	t.Parallel()
	v1pred := []byte(`{"buildDefinition":{"resolvedDependencies":[
		{"name":"dataset-train","uri":"oci://r.example/data/train@sha256:` + hexA + `"},
		{"uri":"oci://r.example/models/base@sha256:` + hexA + `"},
		{"uri":"git+https://github.com/acme/train@refs/heads/main","digest":{"gitCommit":"abc"}}]}}`)
	deps, err := parseDependencies(PredicateSLSAProvenanceV1, v1pred)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range deps {
		got = append(got, d.Name)
	}
	if strings.Join(got, ",") != "dataset-train,base,train" || deps[0].Ref == nil || deps[1].Ref == nil || deps[2].Ref != nil {
		t.Fatalf("deps = %+v", deps)
	}
	if deps[2].Unpinned || deps[0].Unpinned {
		t.Errorf("a git input or a pinned OCI input counted as unpinned: %+v", deps)
	}
	unpinned, err := parseDependencies(PredicateSLSAProvenanceV02, []byte(`{"materials":[{"uri":"oci://r.example/models/base:latest"},{"uri":"oci://library/alpine@sha256:`+hexA+`"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range unpinned {
		if d.Ref != nil || !d.Unpinned || d.NotOCI == "" {
			t.Errorf("oci:// input that cannot be verified: %+v", d)
		}
	}
	if _, err := parseDependencies(PredicateSLSAProvenanceV1, []byte(`{"buildDefinition":{"resolvedDependencies":{"not":"a list"}}}`)); err == nil {
		t.Error("malformed resolvedDependencies parsed")
	}
	if _, err := parseDependencies(PredicateSPDX, []byte(`{}`)); err == nil {
		t.Error("a non-provenance predicate parsed as provenance")
	}
	many := map[string]any{"materials": make([]any, maxProvenanceDependencies+1)}
	b, _ := json.Marshal(many)
	if _, err := parseDependencies(PredicateSLSAProvenanceV02, b); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized materials: %v", err)
	}
}

func FuzzProvenanceDependencies(f *testing.F) {
	f.Add(PredicateSLSAProvenanceV1, []byte(`{"buildDefinition":{"resolvedDependencies":[{"name":"d","uri":"oci://r.example/a/b:t@sha256:`+hexA+`"}]}}`))
	f.Add(PredicateSLSAProvenanceV02, []byte(`{"materials":[{"uri":"r.example/a","digest":{"sha256":"`+hexA+`"}},{"uri":"git+https://x/y"}]}`))
	f.Add(PredicateSLSAProvenanceV1, []byte(`{"buildDefinition":{"resolvedDependencies":[{"uri":"oci://@sha256:"},{"uri":"oci:///"},{"uri":"a:b/c@d"}]}}`))
	f.Add(PredicateSLSAProvenanceV02, []byte(`null`))
	f.Fuzz(func(t *testing.T, pt string, predicate []byte) {
		deps, err := parseDependencies(pt, predicate)
		if err != nil {
			return
		}
		for _, d := range deps {
			if d.Ref == nil {
				if d.NotOCI == "" {
					t.Fatalf("dependency %q rejected without a reason", d.URI)
				}
				continue
			}
			r := d.Ref
			if r.Digest.Algorithm != "sha256" || !isHex64(r.Digest.Hex) || r.Registry == "" || r.Repository == "" || r.URI != d.URI || d.Name == "" {
				t.Fatalf("accepted a malformed dependency: %+v", r)
			}
			if _, err := name.NewRepository(r.Registry+"/"+r.Repository, name.StrictValidation); err != nil {
				t.Fatalf("accepted repository %q: %v", r.Registry+"/"+r.Repository, err)
			}
		}
	})
}

func FuzzStatement(f *testing.F) {
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v0.1","subject":[{"name":"x","digest":{"sha256":"` + hexA + `"}}],"predicateType":"https://slsa.dev/provenance/v0.2","predicate":{"metadata":{"buildFinishedOn":"2026-01-01T00:00:00Z"}}}`))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"p","predicate":[]}`))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{}],"predicateType":"p","predicate":null} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStatement(b, DefaultPredicateDepth)
		if err != nil {
			return
		}
		if (st.Type != StatementV01 && st.Type != StatementV1) || st.PredicateType == "" || len(st.Subject) == 0 {
			t.Fatalf("accepted a malformed statement: %+v", st)
		}
		// An accepted predicate is an object within the depth limit, so
		// parsing it when a rule reads it cannot fail.
		if _, err := st.object(); err != nil || jsonDepth(st.Predicate, DefaultPredicateDepth) > DefaultPredicateDepth {
			t.Fatalf("accepted predicate %q: %v", st.Predicate, err)
		}
		_ = statementTime(st)
	})
}

func TestLineageWalkRules(t *testing.T) {
	t.Parallel()
	hexB, hexC := strings.Repeat("b", 64), strings.Repeat("c", 64)
	digest := func(hx string) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: hx} }
	subject := func(depth int, chain ...string) Subject {
		return Subject{Upstream: "models", Repository: "ml/a", Digest: digest(hexA), Lineage: LineageContext{Depth: depth, Chain: chain}}
	}
	self := "models/ml/a@sha256:" + hexA

	t.Run("depth budget", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name  string
			s     Subject
			depth int // of the dependencies; -1 means none may be followed
		}{
			{"root starts from the boundary's depth", subject(0), 2},
			{"dependency spends one", subject(2, "x/y@sha256:"+hexB), 1},
			{"last level", subject(1, "x/y@sha256:"+hexB), 0},
			// 0 on a root means "the boundary's depth"; on a dependency it
			// must not restart the budget.
			{"dependency with no depth left", subject(0, "x/y@sha256:"+hexB), -1},
			{"negative depth", subject(-1, "x/y@sha256:"+hexB), -1},
		} {
			lc, ok := dependencyLineage(tc.s, 3)
			if tc.depth < 0 {
				if ok {
					t.Errorf("%s: followed with %+v, want the budget spent", tc.name, lc)
				}
				continue
			}
			want := append(slices.Clone(tc.s.Lineage.Chain), self)
			if !ok || lc.Depth != tc.depth || !slices.Equal(lc.Chain, want) {
				t.Errorf("%s: %+v %v, want depth %d chain %v", tc.name, lc, ok, tc.depth, want)
			}
		}
		// Siblings derived from one parent chain must not share storage.
		parent := make([]string, 1, 4)
		parent[0] = "x/y@sha256:" + hexB
		a, _ := dependencyLineage(subject(2, parent...), 3)
		b := subject(2, parent...)
		b.Repository = "ml/b"
		if lb, _ := dependencyLineage(b, 3); a.Chain[1] != self || lb.Chain[1] != "models/ml/b@sha256:"+hexA {
			t.Errorf("derived chains alias each other: %v %v", a.Chain, lb.Chain)
		}
	})

	t.Run("cycle through another repository with the same digest", func(t *testing.T) {
		t.Parallel()
		chain := []string{"models/ml/a@sha256:" + hexA, "datasets/data/b@sha256:" + hexB}
		dep := DependencyRef{Registry: "mirror.example", Repository: "other/copy", Digest: digest(hexA)}
		reason, ok := cycleReason(chain, dep)
		want := "cycle: ml/a@sha256:aaaaaaaaaaaa ← data/b@sha256:bbbbbbbbbbbb ← other/copy@sha256:aaaaaaaaaaaa"
		if !ok || reason != want {
			t.Errorf("cycleReason = %q %v, want %q", reason, ok, want)
		}
		dep.Repository, dep.Digest = "ml/a", digest(hexC) // the same name with other content is no cycle
		if reason, ok := cycleReason(chain, dep); ok {
			t.Errorf("no cycle reported as %q", reason)
		}
	})

	t.Run("admission", func(t *testing.T) {
		t.Parallel()
		chain := []string{self}
		for _, tc := range []struct {
			name          string
			depth, within int
			nested        bool
			want          int // -1 means denied
		}{
			{"from a pull", 5, 0, false, 5},
			{"below the calling verification", 1, 2, true, 1},
			{"at the calling verification's depth is lowered", 2, 2, true, 1},
			{"above the calling verification's depth is lowered", 9, 2, true, 1},
			{"the last level is verified", 0, 0, false, 0},
			{"lowered to the last level", 5, 1, true, 0},
			{"lowered below zero", 3, 0, true, -1},
			{"depth exhausted", -1, 0, false, -1},
		} {
			lc, ok, err := AdmitDependency(LineageContext{Depth: tc.depth, Chain: chain}, tc.within, tc.nested)
			switch {
			case err != nil:
				t.Errorf("%s: %v", tc.name, err)
			case tc.want < 0 && ok:
				t.Errorf("%s: admitted at depth %d, want a denial", tc.name, lc.Depth)
			case tc.want >= 0 && (!ok || lc.Depth != tc.want || !slices.Equal(lc.Chain, chain)):
				t.Errorf("%s: %+v %v, want depth %d", tc.name, lc, ok, tc.want)
			}
			if ok && &lc.Chain[0] == &chain[0] {
				t.Errorf("%s: the admitted chain is the caller's", tc.name)
			}
		}
		if _, ok, err := AdmitDependency(LineageContext{Depth: 1}, 0, false); err == nil || ok {
			t.Errorf("a dependency without a chain was admitted (%v, %v)", ok, err)
		}
	})

	t.Run("verdict key", func(t *testing.T) {
		t.Parallel()
		const pull = "fingerprint\x00datasets\x00ml/data\x00sha256:" + "00"
		k1 := DependencyKey(pull, LineageContext{Depth: 1, Chain: []string{self}})
		k2 := DependencyKey(pull, LineageContext{Depth: 2, Chain: []string{self}})
		if k1 == k2 || k1 == pull || k2 == pull || k1 == DependencyKey(pull+"x", LineageContext{Depth: 1}) {
			t.Errorf("keys do not keep depths and pulls apart: %q %q %q", pull, k1, k2)
		}
		if other := DependencyKey(pull, LineageContext{Depth: 1, Chain: []string{"x/y@sha256:" + hexB, self}}); other != k1 {
			t.Errorf("the chain is part of the key: %q != %q", other, k1)
		}
	})
}

// A provenance may list up to maxProvenanceDependencies inputs; one more
// and it is refused before any is parsed.
func TestParseDependenciesLimit(t *testing.T) {
	t.Parallel()
	list := func(n int) []byte {
		deps := make([]map[string]any, n)
		for i := range deps {
			deps[i] = map[string]any{"uri": "https://example.com/input", "digest": map[string]string{"sha256": hexA}}
		}
		b, err := json.Marshal(map[string]any{"buildDefinition": map[string]any{"resolvedDependencies": deps}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	deps, err := parseDependencies(PredicateSLSAProvenanceV1, list(maxProvenanceDependencies))
	if err != nil || len(deps) != maxProvenanceDependencies {
		t.Fatalf("%d dependencies: %d parsed, %v", maxProvenanceDependencies, len(deps), err)
	}
	if _, err := parseDependencies(PredicateSLSAProvenanceV1, list(maxProvenanceDependencies+1)); err == nil || !strings.Contains(err.Error(), "more than 10000") {
		t.Fatalf("%d dependencies: %v", maxProvenanceDependencies+1, err)
	}
}
