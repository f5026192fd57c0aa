package main

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/test/fixtures"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	if code, _, stderr := runCmd(); code != 2 || !strings.Contains(stderr, "Usage") {
		t.Errorf("no args: code %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd("frobnicate"); code != 2 || !strings.Contains(stderr, "unknown command") {
		t.Errorf("unknown command: code %d, stderr %q", code, stderr)
	}
	if code, stdout, _ := runCmd("config", "example"); code != 0 || !strings.Contains(stdout, "boundaries:") {
		t.Errorf("config example: code %d", code)
	}
}

// signedSetup is an in-memory upstream holding a key-signed and an unsigned
// image, and a config file trusting the key.
type signedSetup struct {
	reg              *fixtures.Registry
	cfgPath          string
	signed, unsigned name.Digest
}

func newSignedSetup(t *testing.T, extraConfig string) signedSetup {
	t.Helper()
	ctx := context.Background()
	reg, err := fixtures.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	key, err := fixtures.NewKeySigner("ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	push := func(repo string) name.Digest {
		ref, err := name.NewTag(reg.Host+"/"+repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		d, err := fixtures.PushImage(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	s := signedSetup{reg: reg, signed: push("app/signed"), unsigned: push("app/unsigned")}
	if err := fixtures.AttachLegacySignature(ctx, s.signed, key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), key.PublicKeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: lab.local, url: %q, aliases: [%q], insecure: true, timeout: 5s}
default_upstream: lab.local
trust:
  - {name: release, keys: [release.pub]}
boundaries:
  - name: apps
    match: {repositories: ["app/**"]}
    signatures: {authorities: [{name: release, key: release}]}
%s`, reg.URL(), reg.Host, extraConfig)
	s.cfgPath = filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConfigCheck(t *testing.T) {
	s := newSignedSetup(t, "")
	if code, stdout, stderr := runCmd("config", "check", s.cfgPath); code != 0 || !strings.Contains(stdout, "ok") {
		t.Fatalf("valid config: code %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("listen: \":5000\"\nupstreams:\n  - {name: a.io, url: ftp://x}\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCmd("config", "check", bad)
	if code != 1 {
		t.Fatalf("invalid config: code %d", code)
	}
	for _, want := range []string{"bad.yaml", "bogus", "upstreams[0].url"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("error output lacks %q:\n%s", want, stderr)
		}
	}
}

func TestVerifyExitCodes(t *testing.T) {
	s := newSignedSetup(t, "")
	code, stdout, stderr := runCmd("verify", "--config", s.cfgPath, "lab.local/app/signed:v1")
	if code != exitAllowed || !strings.Contains(stdout, "ALLOWED") || !strings.Contains(stdout, s.signed.DigestStr()) {
		t.Errorf("signed: code %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runCmd("verify", "--config", s.cfgPath, s.reg.Host+"/app/unsigned@"+s.unsigned.DigestStr())
	if code != exitDenied || !strings.Contains(stdout, "DENIED") || !strings.Contains(stdout, "no signatures found") {
		t.Errorf("unsigned: code %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = runCmd("verify", "--config", s.cfgPath, "--json", "app/unsigned:v1")
	if code != exitDenied || !strings.Contains(stdout, `"allowed": false`) {
		t.Errorf("json: code %d\n%s", code, stdout)
	}
	// An unknown registry is never dialled and decides nothing.
	code, _, stderr = runCmd("verify", "--config", s.cfgPath, "evil.example/app/signed:v1")
	if code != exitUndecided || !strings.Contains(stderr, "unknown registry") {
		t.Errorf("unknown registry: code %d, stderr %q", code, stderr)
	}
	// An unreachable upstream fails closed with "could not decide".
	s.reg.Close()
	code, _, stderr = runCmd("verify", "--config", s.cfgPath, "lab.local/app/signed:v1")
	if code != exitUndecided || !strings.Contains(stderr, "could not decide") {
		t.Errorf("unreachable: code %d, stderr %q", code, stderr)
	}
}

func TestServeAndGracefulShutdown(t *testing.T) {
	s := newSignedSetup(t, "")
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, b string) { addrs <- [2]string{a, b} })
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatal(err)
	}
	get := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get("http://" + a[0] + "/v2/app/signed/manifests/v1"); c != http.StatusOK {
		t.Errorf("signed manifest: %d", c)
	}
	if c := get("http://" + a[0] + "/v2/app/unsigned/manifests/v1"); c != http.StatusForbidden {
		t.Errorf("unsigned manifest: %d", c)
	}
	if c := get("http://" + a[1] + "/readyz"); c != http.StatusOK {
		t.Errorf("readyz: %d", c)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

func TestDemoOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("demo seeds a registry")
	}
	code, stdout, stderr := runCmd("demo", "--once", "--listen", "127.0.0.1:0")
	if code != 0 {
		t.Fatalf("demo: code %d\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"demo/signed-key:v1", "demo/unsigned:v1", "no signatures found", "crane manifest",
		"models/llm-poisoned@sha256:", "← datasets/scraped@sha256:", "stale: built"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}

// TestServePathDoesNotReachDemo keeps the demo's scaffolding (seeded
// registry, throwaway signers, test/fixtures) off the code serve runs:
// nothing reachable from runServe calls into the demo or fixtures package,
// none of the packages that path uses depends on them, and only demo.go
// imports the demo package.
func TestServePathDoesNotReachDemo(t *testing.T) {
	const (
		mod         = "github.com/portcullis-oci/portcullis"
		demoPkg     = mod + "/cmd/portcullis/internal/demo"
		fixturesPkg = mod + "/test/fixtures"
	)
	forbidden := map[string]bool{demoPkg: true, fixturesPkg: true}

	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	// calls maps each top-level function to the functions of this package
	// and the imported packages its body refers to.
	type refs struct{ funcs, pkgs map[string]bool }
	calls := map[string]refs{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		imports := map[string]string{}
		for _, imp := range file.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			n := path.Base(p)
			if imp.Name != nil {
				n = imp.Name.Name
			}
			imports[n] = p
			if forbidden[p] && !(p == demoPkg && f == "demo.go") {
				t.Errorf("%s imports %s: only demo.go may import the demo package, and no file of the command the fixtures", f, p)
			}
		}
		for _, d := range file.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			r := refs{funcs: map[string]bool{}, pkgs: map[string]bool{}}
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.SelectorExpr:
					if x, ok := n.X.(*ast.Ident); ok && imports[x.Name] != "" {
						r.pkgs[imports[x.Name]] = true
					}
				case *ast.Ident:
					r.funcs[n.Name] = true
				}
				return true
			})
			calls[fd.Name.Name] = r
		}
	}
	if _, ok := calls["runDemo"]; !ok {
		t.Fatal("runDemo not found: the walk below would prove nothing")
	}

	// walk returns the functions reachable from root and the packages
	// they refer to.
	walk := func(root string) (map[string]bool, map[string]bool) {
		reached, queue := map[string]bool{root: true}, []string{root}
		pkgs := map[string]bool{}
		for len(queue) > 0 {
			fn := queue[0]
			queue = queue[1:]
			for p := range calls[fn].pkgs {
				pkgs[p] = true
			}
			for callee := range calls[fn].funcs {
				if _, isFunc := calls[callee]; isFunc && !reached[callee] {
					reached[callee] = true
					queue = append(queue, callee)
				}
			}
		}
		return reached, pkgs
	}
	// The walk sees the demo where it is used, so its silence about serve
	// means something.
	if _, demoPkgs := walk("runDemo"); !demoPkgs[demoPkg] {
		t.Fatalf("the walk from runDemo does not reach %s", demoPkg)
	}
	reached, pkgs := walk("runServe")
	if !reached["serve"] || !reached["newProxy"] {
		t.Fatalf("the walk from runServe missed serve/newProxy (reached %v)", reached)
	}
	if reached["runDemo"] {
		t.Error("runServe reaches runDemo")
	}
	var modPkgs []string
	for p := range pkgs {
		if forbidden[p] {
			t.Errorf("serve's path uses package %s", p)
		}
		if strings.HasPrefix(p, mod+"/") {
			modPkgs = append(modPkgs, p)
		}
	}
	if len(modPkgs) == 0 {
		t.Fatal("serve's path uses no package of the module: the walk is broken")
	}

	deps := func(pkgs ...string) map[string]bool {
		out, err := exec.Command("go", append([]string{"list", "-deps"}, pkgs...)...).Output()
		if err != nil {
			t.Fatalf("go list -deps %v: %v", pkgs, err)
		}
		m := map[string]bool{}
		for _, l := range strings.Fields(string(out)) {
			m[l] = true
		}
		return m
	}
	for p := range deps(modPkgs...) {
		if forbidden[p] {
			t.Errorf("serve's path (%v) depends on %s", modPkgs, p)
		}
	}
	// The forbidden names are real: the demo package is where the fixtures
	// are used.
	if !deps(demoPkg)[fixturesPkg] {
		t.Errorf("%s does not depend on %s; update this test", demoPkg, fixturesPkg)
	}
}
