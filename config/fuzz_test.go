package config

import (
	"bytes"
	"testing"

	"go.yaml.in/yaml/v3"
)

func FuzzParse(f *testing.F) {
	seeds := []string{
		minimal,
		string(Example),
		doc("", "", keyless(`trust: root, issuer: "https://i", subject_regex: "^x"`), "unmatched: insecure-allow\n"),
		doc("", "", keyless(`trust: root, issuer_regex: "^https://i$", subject: s, insecure_skip_sct: true, sct_threshold: 0`), ""),
		doc("  - {name: lab, url: \"http://127.0.0.1:5001\", insecure: true, aliases: [\"[::1]:5000\"]}\n", "", "", "admin: \"\"\n"),
		"",
		"~",
		"lisen: 1\n",
		"listen: [\n",
		"a: &a [x, *a]\n",
		"<<: {listen: \":1\"}\n",
		minimal + "---\n" + minimal,
		minimal + "cache: {allow_ttl: 30}\n",
		"upstreams: {name: x}\n",
		"upstreams:\n  - name: x\n    name: y\n",
		"boundaries:\n  - signatures: {threshold: 99999999999999999999}\n",
		"listen: !!binary aGVsbG8=\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned both a config and an error")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not re-validate: %v", err)
		}
		// Writing the accepted config out and reading it back must give
		// the same configuration: what was checked is what is used.
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		c2, err := Parse(out, "roundtrip.yaml")
		if err != nil {
			t.Fatalf("re-parse of accepted config failed: %v\n%s", err, out)
		}
		out2, err := yaml.Marshal(c2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\n---\n%s", out, out2)
		}
	})
}
