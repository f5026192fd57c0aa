package verify

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPure pins the package's role: it reads evidence only through a
// Fetcher, never speaks HTTP itself, never logs, and knows nothing of the
// proxy or the configuration file.
func TestPure(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	banned := []string{"net/http", "go.uber.org/zap", "log", "log/slog",
		"github.com/portcullis-oci/portcullis/proxy", "github.com/portcullis-oci/portcullis/config",
		"github.com/portcullis-oci/portcullis/cache"}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, b := range banned {
				if p == b || strings.HasPrefix(p, b+"/") {
					t.Errorf("%s imports %s", f, p)
				}
			}
		}
	}
}
