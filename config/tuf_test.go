package config

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func tufTrust(body string) string {
	return "  - name: sig\n    trusted_root:\n      tuf: {" + body + "}\n"
}

const tufKeyless = `  - name: b
    signatures:
      authorities:
        - name: ci
          keyless: {trust: sig, issuer: "https://issuer", subject: "me"}
`

func TestTrustedRootTUF(t *testing.T) {
	t.Parallel()
	ok := `url: "https://tuf-repo-cdn.sigstore.dev", root: root.json`
	tests := []struct {
		name, trust, want string
	}{
		{"minimal", tufTrust(ok), ""},
		{"all keys", tufTrust(ok + `, cache_dir: /var/cache/p, refresh: 1h, timeout: 10s`), ""},
		{"plain http mirror", tufTrust(`url: "http://127.0.0.1:8080/tuf", root: root.json`), ""},
		{"file form unchanged", "  - name: sig\n    trusted_root: trusted_root.json\n", ""},
		{"url required", tufTrust(`root: root.json`), "trust[0].trusted_root.tuf.url: is required"},
		{"root required", tufTrust(`url: "https://x.example"`), "trust[0].trusted_root.tuf.root: is required"},
		{"bad url", tufTrust(`url: "ftp://x.example", root: r.json`), "must be an http or https URL"},
		{"url with credentials", tufTrust(`url: "https://u:p@x.example", root: r.json`), "must not carry"},
		{"refresh too short", tufTrust(ok + `, refresh: 1s`), "refresh: must be at least 1m0s"},
		{"unknown key in tuf", tufTrust(ok + `, mirror: x`), "field mirror not found"},
		{"refresh not a duration", tufTrust(ok + `, refresh: 5`), "trust[0].trusted_root"},
		{"unknown key beside tuf", "  - name: sig\n    trusted_root: {tuf: {" + ok + "}, file: x}\n", `unknown key "file"`},
		{"empty mapping", "  - name: sig\n    trusted_root: {}\n", "needs the key tuf"},
		{"list refused", "  - name: sig\n    trusted_root: [a]\n", "must be a file name or a mapping"},
		{"keys and tuf", "  - name: sig\n    keys: [k.pub]\n    trusted_root: {tuf: {" + ok + "}}\n", "set exactly one of keys and trusted_root, not both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(doc("", tt.trust, tufKeyless, "")), "p.yaml")
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestTrustedRootTUFDefaultsAndRoundTrip(t *testing.T) {
	t.Parallel()
	src := doc("", tufTrust(`url: "https://tuf.example", root: root.json`), tufKeyless, "")
	c, err := Parse([]byte(src), "/etc/portcullis/p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.Path = "/etc/portcullis/p.yaml"
	tr := c.Trust[0]
	if tr.TUF == nil || tr.TrustedRoot != "" || tr.TUF.Refresh.D() != DefaultTUFRefresh || tr.TUF.Timeout.D() != DefaultTUFTimeout {
		t.Fatalf("trust %+v", tr)
	}
	if d := c.TUFCacheDir("sig", tr.TUF); !strings.HasSuffix(d, "portcullis/tuf/sig") {
		t.Fatalf("default cache dir %q", d)
	}
	tr.TUF.CacheDir = "cache"
	if d := c.TUFCacheDir("sig", tr.TUF); d != "/etc/portcullis/cache" {
		t.Fatalf("cache dir %q", d)
	}
	if files := c.WatchedFiles(); !contains(files, "/etc/portcullis/root.json") {
		t.Fatalf("pinned root not among the files read: %v", files)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(out, "again.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if c2.Trust[0].TUF == nil || c2.Trust[0].TUF.URL != "https://tuf.example" || c2.Trust[0].TUF.Refresh.D() != 24*time.Hour {
		t.Fatalf("round trip lost the tuf source: %+v", c2.Trust[0])
	}
	// The file form stays a string.
	c3, err := Parse([]byte(doc("", "", "", "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c3.Trust[1].TrustedRoot != "root.json" || c3.Trust[1].TUF != nil {
		t.Fatalf("file form: %+v", c3.Trust[1])
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
