package config

import "testing"

func TestSalvageKeepsWhatDecodes(t *testing.T) {
	doc := []byte("listen: 5\nbogus: 1\nupstreams:\n  - name: a.example\n    url: https://a.example\n    auth: {token_env: TOKEN}\n")
	if _, err := Parse(doc, "c.yaml"); err == nil {
		t.Fatal("Parse accepted the broken document")
	}
	c := Salvage(doc, "c.yaml")
	if c == nil || len(c.Upstreams) != 1 || c.Upstreams[0].Auth == nil || c.Upstreams[0].Auth.TokenEnv != "TOKEN" {
		t.Fatalf("Salvage = %+v, want the upstream and its auth", c)
	}
	p := c.ProblemAt("upstreams[0].auth.token_env", "x")
	if p.File != "c.yaml" || p.Line != 6 {
		t.Errorf("ProblemAt = %+v, want c.yaml line 6", p)
	}
	// A missing key is placed at its closest parent.
	if p := c.ProblemAt("upstreams[0].ca_file", "x"); p.Line != 4 {
		t.Errorf("ProblemAt(missing key) line %d, want 4", p.Line)
	}
	for _, bad := range []string{"{", ""} {
		if c := Salvage([]byte(bad), "c.yaml"); c != nil {
			t.Errorf("Salvage(%q) = %+v, want nil", bad, c)
		}
	}
}
