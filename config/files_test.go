package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory")
	}
	withPath := &Config{Path: "/etc/portcullis/portcullis.yaml"}
	noPath := &Config{}
	tests := []struct {
		c    *Config
		in   string
		want string
	}{
		{withPath, "", ""},
		{withPath, "keys/cosign.pub", "/etc/portcullis/keys/cosign.pub"},
		{withPath, "../root.json", "/etc/root.json"},
		{withPath, "/abs/k.pub", "/abs/k.pub"},
		{withPath, "~/.docker/config.json", filepath.Join(home, ".docker/config.json")},
		{noPath, "keys/cosign.pub", "keys/cosign.pub"},
	}
	for _, tc := range tests {
		if got := tc.c.Resolve(tc.in); got != tc.want {
			t.Errorf("Resolve(%q) with Path %q = %q, want %q", tc.in, tc.c.Path, got, tc.want)
		}
	}
}

func TestCheckFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "k.pub", "root.json", "tls.crt", "tls.key", "docker.json", "vsa.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	good := `tls: {cert: tls.crt, key: tls.key}
upstreams:
  - {name: a.example, url: "https://a.example", ca_file: ca.pem}
  - {name: b.example, url: "https://b.example", auth: {docker_config: docker.json}}
trust:
  - {name: k, keys: [k.pub]}
  - {name: root, trusted_root: root.json}
boundaries:
  - {name: b, signatures: {authorities: [{name: a, key: k}]}}
summaries: {key: vsa.key}
clients: {anonymous: true}
`
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c, err := Load(write("good.yaml", good))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckFiles(); err != nil {
		t.Fatalf("CheckFiles: %v", err)
	}

	bad := strings.NewReplacer("ca.pem", "missing-ca.pem", "k.pub", "adir", "root.json", "gone.json", "tls.key", "nokey", "docker.json", "nodocker.json", "vsa.key", "novsa.key").Replace(good)
	p := write("bad.yaml", bad)
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	err = c.CheckFiles()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("CheckFiles = %v, want *ValidationError", err)
	}
	want := []string{
		p + ":1: tls.key: open " + filepath.Join(dir, "nokey"),
		p + ":3: upstreams[0].ca_file: open " + filepath.Join(dir, "missing-ca.pem"),
		p + ":4: upstreams[1].auth.docker_config: open " + filepath.Join(dir, "nodocker.json"),
		p + ":10: summaries.key: open " + filepath.Join(dir, "novsa.key"),
		p + ":6: trust[0].keys[0]: " + filepath.Join(dir, "adir") + " is not a regular file",
		p + ":7: trust[1].trusted_root: open " + filepath.Join(dir, "gone.json"),
	}
	if len(ve.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ve.Problems), len(want), err)
	}
	for i, w := range want {
		if got := ve.Problems[i].Error(); !strings.HasPrefix(got, w) {
			t.Errorf("problem %d = %q, want prefix %q", i, got, w)
		}
	}
}

func TestReadLimited(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadLimited(p, 5); err != nil || string(b) != "12345" {
		t.Fatalf("at the limit: %q, %v", b, err)
	}
	if _, err := ReadLimited(p, 4); err == nil || !strings.Contains(err.Error(), "larger than 4 bytes") {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := ReadLimited(dir, 1<<20); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory: %v", err)
	}
}
