package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// config check reports a broken boundary file with file, line and key
// path and fails; the same tree without it passes.
func TestConfigCheckBoundaryFiles(t *testing.T) {
	s := newSignedSetup(t, "boundaries_dir: boundaries.d\n")
	dir := filepath.Join(filepath.Dir(s.cfgPath), "boundaries.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	good := "name: team-a\nowner: a@example.com\nversion: \"1\"\norder: 10\nmatch: {repositories: [\"team-a/**\"]}\nsignatures: {authorities: [{name: r, key: release}]}\n"
	write := func(n, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, n), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", good)
	write("b.yaml", strings.ReplaceAll(strings.Replace(good, "order: 10", "order: 20", 1), "team-a", "team-b")+"mood: enforce\n")
	code, stdout, stderr := runCmd("config", "check", s.cfgPath)
	if code != 1 || !strings.Contains(stderr, "b.yaml:7: mood: unknown key") || strings.Contains(stdout, ": ok") {
		t.Fatalf("code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runCmd("config", "check", s.cfgPath); code != 0 || !strings.Contains(stdout, "2 boundaries") {
		t.Fatalf("code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
