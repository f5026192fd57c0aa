package test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/portcullis-oci/portcullis"

type pkgInfo struct {
	ImportPath string
	Imports    []string // direct
	Deps       []string // transitive
}

func listPackages(t *testing.T) map[string]pkgInfo {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]pkgInfo{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkgInfo
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

// TestDependencyDirections pins the package boundaries: proxy is the only
// package that serves or dials HTTP; verify is pure; cache knows nothing of
// HTTP; config is translated in cmd, so neither proxy nor verify sees YAML
// types; nothing but cmd wires the packages together.
func TestDependencyDirections(t *testing.T) {
	pkgs := listPackages(t)
	rules := []struct {
		pkg      string
		noDirect []string // forbidden direct imports
		noDeps   []string // forbidden anywhere in the transitive closure
	}{
		{pkg: "verify", noDirect: []string{"net/http"}, noDeps: []string{module + "/proxy", module + "/cache", module + "/config", "go.uber.org/zap", module + "/test/fixtures"}},
		{pkg: "cache", noDirect: []string{"net/http"}, noDeps: []string{module + "/proxy", module + "/config", "go.uber.org/zap", module + "/test/fixtures"}},
		{pkg: "config", noDirect: []string{"net/http"}, noDeps: []string{module + "/proxy", module + "/verify", module + "/cache", "go.uber.org/zap"}},
		// YAML reaches proxy's closure through sigstore's libraries, so only
		// a direct import is forbidden: proxy never parses configuration.
		{pkg: "proxy", noDirect: []string{"go.yaml.in/yaml/v3", "gopkg.in/yaml.v3"}, noDeps: []string{module + "/config", module + "/cache", module + "/test/fixtures"}},
		// Test signers and the demo's seeding never reach the serving wiring.
		{pkg: "cmd/portcullis/internal/wire", noDeps: []string{module + "/test/fixtures", module + "/cmd/portcullis/internal/demo"}},
	}
	for _, r := range rules {
		p, ok := pkgs[module+"/"+r.pkg]
		if !ok {
			t.Errorf("package %s not found", r.pkg)
			continue
		}
		for _, bad := range r.noDirect {
			for _, imp := range p.Imports {
				if imp == bad {
					t.Errorf("%s imports %s directly", r.pkg, bad)
				}
			}
		}
		for _, bad := range r.noDeps {
			for _, d := range p.Deps {
				if d == bad {
					t.Errorf("%s depends on %s", r.pkg, bad)
				}
			}
		}
	}
	// Only proxy (and its internal packages) and the test harnesses may use
	// net/http directly.
	for path, p := range pkgs {
		rel := strings.TrimPrefix(path, module+"/")
		if strings.HasPrefix(rel, "proxy") || strings.HasPrefix(rel, "test") {
			continue
		}
		for _, imp := range p.Imports {
			if imp == "net/http" {
				t.Errorf("%s imports net/http; HTTP belongs in proxy", rel)
			}
		}
	}
	// gopkg.in/yaml.v3 is archived; go.yaml.in/yaml/v3 is its maintained
	// continuation.
	for path, p := range pkgs {
		if slices.Contains(p.Imports, "gopkg.in/yaml.v3") {
			t.Errorf("%s imports the archived gopkg.in/yaml.v3; use go.yaml.in/yaml/v3", path)
		}
	}
}
