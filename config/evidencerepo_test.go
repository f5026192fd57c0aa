package config

import (
	"strings"
	"testing"
)

func TestValidateEvidenceRepository(t *testing.T) {
	t.Parallel()
	upstreams := `  - {name: mirror.example, url: https://a.example}
  - {name: src.example, url: https://b.example, aliases: [b]}
`
	sigs := func(kv string) string {
		return `  - name: mirrored
    signatures:
      authorities:
        - {name: a, key: k}
` + kv
	}
	rule := func(kv string) string {
		return sigs(`    attestations:
      - name: sbom
        predicate_type: https://spdx.dev/Document
        authorities: [a]
` + kv)
	}
	tests := []struct {
		name, boundaries, want string
	}{
		{"by name", sigs("      repository: src.example/src/{repository}\n      repository_strip_prefix: mirror/\n"), ""},
		{"by alias", sigs("      repository: b/{repository}\n"), ""},
		{"fixed repository", sigs("      repository: b/src/app\n"), ""},
		{"path of 255 bytes", sigs("      repository: b/" + strings.Repeat("a", 255) + "\n"), ""},
		{"path of 256 bytes", sigs("      repository: b/" + strings.Repeat("a", 256) + "\n"), "is not a repository path"},
		{"placeholder inside a component", sigs("      repository: b/sigs-{repository}\n"), ""},
		{"unknown upstream", sigs("      repository: ghcr.io/src/{repository}\n"),
			`p.yaml:14: boundaries[0].signatures.repository: "ghcr.io/src/{repository}": no upstream is named or aliased "ghcr.io"`},
		{"upstream only", sigs("      repository: b\n"), `boundaries[0].signatures.repository: "b" must be <upstream>/<repository>`},
		{"empty path", sigs("      repository: b/\n"), `must be <upstream>/<repository>`},
		{"invalid path", sigs("      repository: b/Src//{repository}\n"), `"Src//{repository}" is not a repository path`},
		{"unknown placeholder", sigs("      repository: b/{repo}\n"), `the only placeholder is {repository}`},
		{"strip prefix without repository", sigs("      repository_strip_prefix: mirror/\n"), `boundaries[0].signatures.repository_strip_prefix: needs repository`},
		{"strip prefix without placeholder", sigs("      repository: b/src/app\n      repository_strip_prefix: mirror\n"), `repository_strip_prefix: has no effect without {repository}`},
		{"bad strip prefix", sigs("      repository: b/{repository}\n      repository_strip_prefix: /mirror\n"), `repository_strip_prefix: "/mirror" is not a repository path prefix`},
		{"rule repository", rule("        repository: b/att/{repository}\n        repository_strip_prefix: mirror\n"), ""},
		{"rule unknown upstream", rule("        repository: c/att/{repository}\n"),
			`boundaries[0].attestations[0].repository: "c/att/{repository}": no upstream is named or aliased "c"`},
		{"rule strip prefix without repository", rule("        repository_strip_prefix: mirror\n"), `boundaries[0].attestations[0].repository_strip_prefix: needs repository`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(doc(upstreams, "", tc.boundaries, "")), "p.yaml")
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

func TestUpstreamFor(t *testing.T) {
	t.Parallel()
	c := &Config{Upstreams: []Upstream{{Name: "a.example"}, {Name: "b.example", Aliases: []string{"b"}}}}
	for key, want := range map[string]string{"a.example": "a.example", "b": "b.example", "b.example": "b.example", "c": ""} {
		u, ok := c.UpstreamFor(key)
		if got := ""; ok {
			got = u.Name
			if got != want {
				t.Errorf("UpstreamFor(%q) = %q, want %q", key, got, want)
			}
		} else if want != "" {
			t.Errorf("UpstreamFor(%q) found nothing, want %q", key, want)
		}
	}
}
