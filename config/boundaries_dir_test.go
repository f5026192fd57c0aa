package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const dirMain = `upstreams:
  - name: docker.io
    url: https://registry-1.docker.io
trust:
  - name: k
    keys: [k.pub]
unmatched: insecure-allow
boundaries_dir: boundaries.d
`

func teamFile(name, order, repos, mode string) string {
	return `name: ` + name + `
owner: ` + name + `@example.com
version: "1"
order: ` + order + `
mode: ` + mode + `
match: {repositories: [` + repos + `]}
signatures:
  authorities:
    - {name: a, key: k}
`
}

// writeDir writes the main file and the boundary files; it returns the
// main file's path.
func writeDir(t *testing.T, main string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	bd := filepath.Join(dir, "boundaries.d")
	if err := os.Mkdir(bd, 0o755); err != nil {
		t.Fatal(err)
	}
	for n, body := range files {
		if err := os.WriteFile(filepath.Join(bd, n), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "portcullis.yaml")
	if err := os.WriteFile(p, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func names(bs []Boundary) string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	return strings.Join(out, ",")
}

func TestBoundariesDirOrder(t *testing.T) {
	t.Parallel()
	main := dirMain + `boundaries:
  - name: platform
    match: {repositories: ["platform/**"]}
    signatures:
      authorities: [{name: a, key: k}]
`
	p := writeDir(t, main, map[string]string{
		"a-team.yaml": teamFile("team-a", "20", `"a/**"`, "enforce"),
		"b-team.yml":  teamFile("team-b", "10", `"b/**"`, "warn"),
		"README.md":   "not a boundary",
	})
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(c.Boundaries); got != "platform,team-b,team-a" {
		t.Fatalf("order = %s, want inline first, then files by order", got)
	}
	b := c.Boundaries[1]
	if b.Owner != "team-b@example.com" || b.Version != "1" || *b.Order != 10 || filepath.Base(b.Source) != "b-team.yml" || b.Mode != ModeWarn || b.Signatures.Threshold != 1 {
		t.Errorf("team-b = %+v", b)
	}
	if ps := c.RefusedBoundaries(); len(ps) != 0 {
		t.Errorf("refused = %v", ps)
	}
	if got := c.BoundaryFiles(); len(got) != 2 || filepath.Base(got[0]) != "b-team.yml" {
		t.Errorf("BoundaryFiles = %v", got)
	}
	if got := c.BoundaryWatchPaths(); len(got) != 3 || got[0] != filepath.Join(filepath.Dir(p), "boundaries.d") {
		t.Errorf("BoundaryWatchPaths = %v", got)
	}
}

// A broken file is refused alone, with file, line and key path, and its
// stand-in keeps its place and match so its repositories are denied
// instead of falling through to a later boundary or to unmatched.
func TestBoundariesDirBrokenFileRefusedAlone(t *testing.T) {
	t.Parallel()
	broken := strings.Replace(teamFile("team-a", "10", `"a/**"`, "enforce"), "key: k", "key: k, colour: red", 1)
	p := writeDir(t, dirMain, map[string]string{
		"a.yaml":   broken,
		"b.yaml":   teamFile("team-b", "20", `"b/**"`, "enforce"),
		"all.yaml": teamFile("catch-all", "90", `"**"`, "warn"),
	})
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(c.Boundaries); got != "team-a,team-b,catch-all" {
		t.Fatalf("boundaries = %s", got)
	}
	a := c.Boundaries[0]
	if a.Refused == nil || a.Mode != ModeEnforce || len(a.Signatures.Authorities) != 0 || *a.Order != 10 || len(a.Match.Repositories) != 1 || a.Match.Repositories[0] != "a/**" {
		t.Fatalf("stand-in = %+v", a)
	}
	ps := c.RefusedBoundaries()
	if len(ps) != 1 {
		t.Fatalf("problems = %v", ps)
	}
	if got := ps[0].Error(); !strings.HasSuffix(ps[0].File, "a.yaml") || ps[0].Line != 9 || ps[0].Path != "signatures.authorities[0].colour" || !strings.Contains(got, "a.yaml:9: signatures.authorities[0].colour: unknown key") {
		t.Errorf("problem = %q (%+v)", got, ps[0])
	}
	if c.Boundaries[1].Refused != nil || c.Boundaries[2].Refused != nil {
		t.Error("a good file was refused with the broken one")
	}
}

// A file whose match or order cannot be read stands in for everything
// from where it would have been.
func TestBoundariesDirUnreadableStandIn(t *testing.T) {
	t.Parallel()
	// Named to sort last, so that only the order puts its stand-in first.
	p := writeDir(t, dirMain, map[string]string{
		"z.yaml":   "name: [unterminated\n",
		"b.yaml":   teamFile("team-b", "20", `"b/**"`, "enforce"),
		"c.yaml":   strings.Replace(teamFile("team-c", "30", `"c/**"`, "enforce"), `repositories: ["c/**"]`, `repositories: ["C//x"]`, 1),
		"all.yaml": teamFile("catch-all", "90", `"**"`, "warn"),
	})
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(c.Boundaries); got != "file:z.yaml,team-b,team-c,catch-all" {
		t.Fatalf("boundaries = %s", got)
	}
	a, cc := c.Boundaries[0], c.Boundaries[2]
	if a.Refused == nil || a.Order != nil || len(a.Match.Repositories) != 0 || a.Match.Upstream != "" {
		t.Errorf("syntax error stand-in = %+v, want first and matching everything", a)
	}
	if cc.Refused == nil || *cc.Order != 30 || len(cc.Match.Repositories) != 0 {
		t.Errorf("bad match stand-in = %+v, want at its order, matching everything", cc)
	}
	if a.Refused[0].Line != 1 {
		t.Errorf("syntax problem = %+v", a.Refused[0])
	}
}

// At one order a broken file's stand-in goes before a loaded file, which
// is then refused for the order: the broken file's repositories stay
// denied, never taken by the other file's match.
func TestBoundariesDirStandInFirstAtItsOrder(t *testing.T) {
	t.Parallel()
	broken := strings.Replace(teamFile("team-z", "10", `"z/**"`, "enforce"), "key: k", "key: k, colour: red", 1)
	p := writeDir(t, dirMain, map[string]string{
		"a.yaml": teamFile("lenient", "10", `"**"`, "warn"),
		"z.yaml": broken,
	})
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Boundaries) != 2 || filepath.Base(c.Boundaries[0].Source) != "z.yaml" || c.Boundaries[0].Refused == nil {
		t.Fatalf("boundaries = %s, want the broken file's stand-in first", names(c.Boundaries))
	}
	second := c.Boundaries[1]
	if second.Refused == nil || !strings.Contains(second.Refused[0].Error(), "order 10 is already used by") {
		t.Fatalf("the file sharing the order = %+v", second)
	}
}

// Boundary files alone are a configuration; no boundary at all is one
// only when unmatched subjects are (insecurely) allowed. Past
// MaxBoundaryFiles a directory is refused whole.
func TestBoundariesDirCounts(t *testing.T) {
	t.Parallel()
	deny := strings.Replace(dirMain, "unmatched: insecure-allow\n", "unmatched: deny\n", 1)
	if _, err := Load(writeDir(t, deny, map[string]string{"a.yaml": teamFile("team-a", "10", `"a/**"`, "enforce")})); err != nil {
		t.Errorf("one boundary file and no inline boundary: %v", err)
	}
	if _, err := Load(writeDir(t, deny, nil)); err == nil || !strings.Contains(err.Error(), "holds no boundary files and there are no inline boundaries") {
		t.Errorf("no boundary anywhere: %v", err)
	}
	if _, err := Load(writeDir(t, dirMain, nil)); err != nil {
		t.Errorf("no boundary anywhere, unmatched allowed: %v", err)
	}
	files := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			name := fmt.Sprintf("team-%04d", i)
			m[name+".yaml"] = teamFile(name, strconv.Itoa(i+1), `"`+name+`/**"`, "enforce")
		}
		return m
	}
	if _, err := Load(writeDir(t, deny, files(MaxBoundaryFiles))); err != nil {
		t.Errorf("%d boundary files: %v", MaxBoundaryFiles, err)
	}
	if _, err := Load(writeDir(t, deny, files(MaxBoundaryFiles+1))); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("holds %d boundary files, more than %d", MaxBoundaryFiles+1, MaxBoundaryFiles)) {
		t.Errorf("%d boundary files: %v", MaxBoundaryFiles+1, err)
	}
}

func TestBoundariesDirRequiredAndDuplicates(t *testing.T) {
	t.Parallel()
	inline := dirMain + `boundaries:
  - name: platform
    signatures:
      authorities: [{name: a, key: k}]
`
	p := writeDir(t, inline, map[string]string{
		"a.yaml": teamFile("team-a", "10", `"a/**"`, "enforce"),
		"b.yaml": teamFile("team-b", "10", `"b/**"`, "enforce"),
		"c.yaml": teamFile("platform", "30", `"c/**"`, "enforce"),
		"d.yaml": "name: team-d\nmatch: {repositories: [\"d/**\"]}\nsignatures: {authorities: [{name: a, key: k}]}\n",
	})
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"b.yaml": "order 10 is already used", "c.yaml": `boundary name "platform" is already used`, "d.yaml": "owner: is required"}
	got := map[string]string{}
	for _, pr := range c.RefusedBoundaries() {
		got[filepath.Base(pr.File)] += pr.Error() + "\n"
	}
	for f, w := range want {
		if !strings.Contains(got[f], w) {
			t.Errorf("%s: problems %q, want %q", f, got[f], w)
		}
	}
	if _, bad := got["a.yaml"]; bad {
		t.Errorf("a.yaml refused: %s", got["a.yaml"])
	}
	if !strings.Contains(got["d.yaml"], "version: is required") || !strings.Contains(got["d.yaml"], "order: is required") {
		t.Errorf("d.yaml: %s", got["d.yaml"])
	}
	// The duplicate-order stand-in keeps its order and match: b/** stays
	// denied rather than unmatched.
	for _, b := range c.Boundaries {
		if filepath.Base(b.Source) == "b.yaml" && (b.Order == nil || b.Match.Repositories[0] != "b/**") {
			t.Errorf("b.yaml stand-in = %+v", b)
		}
	}
	seen := map[string]bool{}
	for _, b := range c.Boundaries {
		if seen[b.Name] {
			t.Errorf("name %q used twice", b.Name)
		}
		seen[b.Name] = true
	}
}

func TestBoundariesInlineOrderRefused(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(minimal+"    order: 3\n"), "p.yaml")
	if err == nil || !strings.Contains(err.Error(), "boundaries[0].order: is only for boundary files") {
		t.Fatalf("err = %v", err)
	}
}

func TestBoundariesDirMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte(dirMain), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "boundaries_dir") {
		t.Fatalf("err = %v", err)
	}
}

// A reload keeps the last good version of a file that broke, and says so.
func TestKeepLastGood(t *testing.T) {
	t.Parallel()
	p := writeDir(t, dirMain, map[string]string{
		"a.yaml": teamFile("team-a", "10", `"a/**"`, "warn"),
		"b.yaml": teamFile("team-b", "20", `"b/**"`, "enforce"),
	})
	prev, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	bd := filepath.Join(filepath.Dir(p), "boundaries.d")
	if err := os.WriteFile(filepath.Join(bd, "a.yaml"), []byte(teamFile("team-a", "10", `"a/**"`, "enforce")+"bogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	next, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if next.Boundaries[0].Refused == nil {
		t.Fatal("broken file not refused")
	}
	next.KeepLastGood(prev)
	a := next.Boundaries[0]
	if a.Refused != nil || a.Mode != ModeWarn || len(a.Stale) != 1 || !strings.Contains(a.Stale[0].Error(), "bogus: unknown key") {
		t.Fatalf("kept = %+v", a)
	}
	if len(next.RefusedBoundaries()) != 1 {
		t.Errorf("stale problems not reported: %v", next.RefusedBoundaries())
	}
	// Still broken at the next reload: the same good version stays.
	again, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	again.KeepLastGood(next)
	if a := again.Boundaries[0]; a.Refused != nil || a.Mode != ModeWarn {
		t.Errorf("second reload = %+v", a)
	}
	// Without a previous good version the stand-in stays.
	fresh, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	fresh.KeepLastGood(nil)
	if fresh.Boundaries[0].Refused == nil {
		t.Error("stand-in replaced without a last good version")
	}
}

// FuzzBoundaryFile: whatever a boundary file holds, loading it neither
// panics nor yields a boundary that is neither valid nor refused.
func FuzzBoundaryFile(f *testing.F) {
	for _, s := range []string{
		teamFile("team-a", "10", `"a/**"`, "enforce"),
		teamFile("team-a", "x", `"a/**"`, "warn"),
		"name: [\n",
		"",
		"a: &a [x, *a]\n",
		teamFile("t", "1", `"**"`, "enforce") + "---\nname: u\n",
		"order: 99999999999999999999\n",
	} {
		f.Add([]byte(s))
	}
	main, err := Parse([]byte(dirMain+"boundaries:\n  - name: x\n    signatures: {authorities: [{name: a, key: k}]}\n"), "main.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b := main.parseBoundaryFile(data, "b.yaml")
		if b.Refused != nil {
			if b.Mode != ModeEnforce || len(b.Signatures.Authorities) != 0 || len(b.Attestations) != 0 || b.Source != "b.yaml" {
				t.Fatalf("stand-in carries rules: %+v", b)
			}
			return
		}
		if b.Order == nil || b.Owner == "" || b.Version == "" || b.Name == "" || len(b.Signatures.Authorities) == 0 {
			t.Fatalf("accepted an incomplete boundary: %+v", b)
		}
	})
}
