package config

import (
	"strings"
	"testing"
)

func TestSummariesConfig(t *testing.T) {
	t.Parallel()
	base := string(Example) + "\n"
	good := base + "summaries: {key: keys/portcullis.key, password_env: PORTCULLIS_KEY_PASSWORD, verifier_id: 'https://portcullis.example/prod', policy_uri: 'https://git.example/p.yaml', cache_size: 10}\n"
	c, err := Parse([]byte(good), "summaries.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Summaries; s == nil || s.Key != "keys/portcullis.key" || s.PasswordEnv != "PORTCULLIS_KEY_PASSWORD" || s.CacheSize != 10 {
		t.Fatalf("summaries = %+v", c.Summaries)
	}
	if c, err := Parse(Example, "example.yaml"); err != nil || c.Summaries != nil {
		t.Fatalf("without the section: %+v, %v", c.Summaries, err)
	}
	for name, tc := range map[string]struct{ yaml, want string }{
		"no key":            {"summaries: {verifier_id: 'https://x.example'}", "summaries.key: is required"},
		"bad env name":      {"summaries: {key: k, password_env: 'A-B'}", "summaries.password_env"},
		"relative verifier": {"summaries: {key: k, verifier_id: portcullis}", "summaries.verifier_id"},
		"relative policy":   {"summaries: {key: k, policy_uri: policy.yaml}", "summaries.policy_uri"},
		"negative cache":    {"summaries: {key: k, cache_size: -1}", "summaries.cache_size"},
		"unknown key":       {"summaries: {key: k, tlog: true}", "tlog"},
	} {
		_, err := Parse([]byte(base+tc.yaml+"\n"), "summaries.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
	}
}
