package main

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/config"
)

func TestHelpOnStdout(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--help"},
		{"serve", "--config", "x.yaml", "-h"},
		{"demo", "--help"},
		{"verify", "--help"},
		{"verify", "lab.local/app:v1", "--config", "x.yaml", "--help"},
		{"config", "--help"},
		{"config", "check", "--help"},
		{"config", "example", "-h"},
		{"version", "--help"},
		{"help", "verify"},
		{"mirror-config", "--help"},
		{"mirror-config", "containerd", "--help"},
		{"--help"},
	} {
		code, stdout, stderr := runCmd(args...)
		if code != 0 || !strings.Contains(stdout, "Usage") || stderr != "" {
			t.Errorf("%q: code %d, stderr %q, stdout %q", args, code, stderr, stdout)
		}
		if args[0] != "mirror-config" && args[0] != "--help" && !strings.Contains(stdout, "Exit codes:") {
			t.Errorf("%q: help does not describe exit codes:\n%s", args, stdout)
		}
	}
	// After "--" a help flag is an argument, not a request for help.
	if code, _, _ := runCmd("config", "check", "--", "--help"); code != 1 {
		t.Errorf("config check -- --help: code %d, want 1 (no such file)", code)
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"serve"},
		{"serve", "--bogus"},
		{"verify", "lab.local/app:v1"},
		{"verify", "a", "b", "--config", "x.yaml"},
		{"config"},
		{"config", "check"},
		{"config", "check", "a.yaml", "b.yaml"},
		{"config", "example", "extra"},
		{"config", "frob"},
		{"demo", "extra"},
		{"version", "extra"},
	} {
		if code, _, stderr := runCmd(args...); code != 2 || stderr == "" {
			t.Errorf("%q: code %d, stderr %q; want 2 and a usage message", args, code, stderr)
		}
	}
}

func TestFlagsAfterPositionals(t *testing.T) {
	s := newSignedSetup(t, "")
	code, stdout, stderr := runCmd("verify", "lab.local/app/signed:v1", "--config", s.cfgPath, "--json")
	if code != exitAllowed || !strings.Contains(stdout, `"allowed": true`) {
		t.Errorf("verify REF --config FILE --json: code %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runCmd("verify", "--json", "app/unsigned:v1", "--config", s.cfgPath)
	if code != exitDenied || !strings.Contains(stdout, `"allowed": false`) {
		t.Errorf("verify --json REF --config FILE: code %d\n%s%s", code, stdout, stderr)
	}
}

func TestVersion(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "0123abcd"
	code, stdout, _ := runCmd("version")
	for _, want := range []string{"v1.2.3", "0123abcd", runtime.Version()} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("version: code %d, %q lacks %q", code, stdout, want)
		}
	}
	// make build and the Dockerfile stamp exactly these variables.
	for _, f := range []string{"../../Makefile", "../../Dockerfile"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"-X main.version=", "-X main.commit="} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s does not stamp %s", f, want)
			}
		}
	}
}

// TestConfigExampleChecks: the example, written with the files it names,
// passes config check as written, and writing never overwrites.
func TestConfigExampleChecks(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := runCmd("config", "example", "--write-example-files", dir)
	if code != 0 || !strings.Contains(stdout, filepath.Join(dir, "keys", "cosign.pub")) {
		t.Fatalf("write-example-files: code %d\n%s%s", code, stdout, stderr)
	}
	cfg := filepath.Join(dir, "portcullis.yaml")
	if code, stdout, stderr := runCmd("config", "check", cfg); code != 0 || !strings.Contains(stdout, "ok") {
		t.Errorf("config check of the written example: code %d\n%s%s", code, stdout, stderr)
	}
	printed, _ := os.ReadFile(cfg)
	if _, stdout, _ := runCmd("config", "example"); stdout != string(printed) {
		t.Error("the written config differs from the printed example")
	}
	if code, _, stderr := runCmd("config", "example", "--write-example-files", dir); code != 1 || !strings.Contains(stderr, "not overwriting") {
		t.Errorf("second write: code %d, stderr %q; want a refusal", code, stderr)
	}
	// The files are what make it pass: without the key, check fails.
	if err := os.Remove(filepath.Join(dir, "keys", "cosign.pub")); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd("config", "check", cfg); code != 1 || !strings.Contains(stderr, "trust[0].keys[0]") {
		t.Errorf("check without the key: code %d, stderr %q", code, stderr)
	}
}

// TestConfigCheckReportsEverything: one run names every missing file, unset
// environment variable and broken CEL condition, each with file:line and
// key path.
func TestConfigCheckReportsEverything(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "portcullis.yaml")
	doc := `listen: "127.0.0.1:0"
clients: {anonymous: true}
upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
    auth: {username_env: PORTCULLIS_TEST_UNSET_USER, password_env: PORTCULLIS_TEST_UNSET_PASS}
trust:
  - name: k
    keys: [keys/missing.pub]
boundaries:
  - name: b
    match: {upstream: "*", repositories: ["**"]}
    signatures: {authorities: [{name: a, key: k}]}
    attestations:
      - name: p
        predicate_type: "https://slsa.dev/provenance/v1"
        authorities: [a]
        condition: 'predicate.x +'
      - name: q
        predicate_type: "https://slsa.dev/provenance/v1"
        authorities: [a]
        condition: 'predicate.builder == "x"'
      - name: r
        predicate_type: "https://slsa.dev/provenance/v1"
        authorities: [a]
        condition: '"not a bool"'
`
	want := []string{
		cfg + ":9: trust[0].keys[0]:",
		cfg + ":6: upstreams[0].auth.username_env: environment variable PORTCULLIS_TEST_UNSET_USER is not set",
		cfg + ":6: upstreams[0].auth.password_env: environment variable PORTCULLIS_TEST_UNSET_PASS is not set",
		cfg + ":18: boundaries[0].attestations[0].condition: CEL:",
		cfg + ":26: boundaries[0].attestations[2].condition: CEL: result type is string",
	}
	for _, tc := range []struct {
		name, extra string
		want        []string
	}{
		{"file valid", "", want},
		// A problem in the file itself does not hide those of what it names.
		{"file invalid too", "bogus: 1\n", append([]string{cfg + ":27: bogus:"}, want...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(cfg, []byte(doc+tc.extra), 0o600); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCmd("config", "check", cfg)
			if code != 1 {
				t.Fatalf("code %d, want 1\n%s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("output lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "attestations[1]") {
				t.Errorf("a valid condition was reported:\n%s", stderr)
			}
		})
	}
}

func TestPreflightEnvironment(t *testing.T) {
	cfg, err := config.Parse([]byte(`listen: "127.0.0.1:0"
clients: {anonymous: true}
upstreams:
  - {name: a.example, url: "https://a.example", auth: {token_env: TOKEN_A}}
  - {name: b.example, url: "https://b.example", auth: {username_env: USER_B, password_env: PASS_B}}
trust: [{name: k, keys: [k.pub]}]
boundaries:
  - {name: b, match: {upstream: "*", repositories: ["**"]}, signatures: {authorities: [{name: a, key: k}]}}
`), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"USER_B": "u", "PASS_B": ""}
	var got []string
	for _, p := range preflight(cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }) {
		if strings.Contains(p.Message, "environment variable") {
			got = append(got, p.Path)
		}
	}
	// Set but empty is not absent; whether empty is acceptable is decided
	// where the value is used.
	if len(got) != 1 || got[0] != "upstreams[0].auth.token_env" {
		t.Errorf("unset variables reported at %q, want only upstreams[0].auth.token_env", got)
	}
}

func TestDeployConfigChecks(t *testing.T) {
	p := filepath.Join("..", "..", "deploy", "base", "config", "portcullis.yaml")
	if code, stdout, stderr := runCmd("config", "check", p); code != 0 {
		t.Errorf("config check %s: code %d\n%s%s", p, code, stdout, stderr)
	}
}

func TestDemoListen(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().String()
	if got, moved := demoListen(taken, false); !moved || got != "127.0.0.1:0" {
		t.Errorf("taken default %s: got %s, moved %v; want a free port", taken, got, moved)
	}
	if got, moved := demoListen(taken, true); moved || got != taken {
		t.Errorf("taken explicit %s: got %s, moved %v; an explicit address is kept", taken, got, moved)
	}
	l.Close()
	if got, moved := demoListen(taken, false); moved || got != taken {
		t.Errorf("free default %s: got %s, moved %v", taken, got, moved)
	}
}

// TestDemoOnTakenPort holds the demo's default port, when it can, and runs
// the demo, which must say so and run on another.
func TestDemoOnTakenPort(t *testing.T) {
	if testing.Short() {
		t.Skip("demo seeds a registry")
	}
	l, err := net.Listen("tcp", defaultDemoListen)
	if err != nil {
		t.Logf("%s is taken already: %v", defaultDemoListen, err)
	} else {
		defer l.Close()
	}
	code, stdout, stderr := runCmd("demo", "--once")
	if code != 0 || !strings.Contains(stdout, "in use") || !strings.Contains(stdout, "demo/signed-key:v1") {
		t.Fatalf("demo with %s taken: code %d\n%s\n%s", defaultDemoListen, code, stdout, stderr)
	}
	if strings.Contains(stdout, "http://"+defaultDemoListen) {
		t.Errorf("demo claims the taken port:\n%s", stdout)
	}
}
