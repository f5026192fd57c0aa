package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxBoundaryFiles bounds the files read from boundaries_dir; a directory
// holding more is refused as a whole.
const MaxBoundaryFiles = 1024

// Boundary files (boundaries_dir) let each team ship, review and roll out
// its own boundary. The rules:
//
//   - One boundary per *.yaml or *.yml file, with the inline schema plus
//     owner, version and order (all required). Parsing is as strict as the
//     main file's.
//   - Inline boundaries come first, in list order; the files follow,
//     ascending by order. Two files with one order, or one name (also an
//     inline one), are a problem of the later file (by order, then name),
//     which is refused.
//   - A file that cannot be loaded is refused alone: the others load. It
//     is not dropped, which would let its repositories fall through to a
//     later, possibly weaker boundary or to unmatched: it is replaced by a
//     boundary that denies what it matches, at its place. When its match
//     cannot be read it matches everything; when its order cannot be read
//     it stands first among the files. Its problems are kept (Refused) and
//     reported by config check, at start and in /v1/boundaries.
//   - On reload, KeepLastGood puts the last good version of a refused
//     file's boundary back in its place.

// loadBoundariesDir reads the boundary files and appends them, in order,
// to the inline boundaries. Problems of single files are recorded on
// their stand-in boundaries; only an unreadable directory is an error.
func (c *Config) loadBoundariesDir() error {
	if c.BoundariesDir == "" {
		return nil
	}
	dir := c.Resolve(c.BoundariesDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return &ValidationError{Problems: []Problem{c.ProblemAt("boundaries_dir", "%v", err)}}
	}
	var names []string
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); (ext == ".yaml" || ext == ".yml") && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	if len(names) > MaxBoundaryFiles {
		return &ValidationError{Problems: []Problem{c.ProblemAt("boundaries_dir", "%s holds %d boundary files, more than %d", dir, len(names), MaxBoundaryFiles)}}
	}
	if len(names) == 0 && len(c.Boundaries) == 0 && c.Unmatched != UnmatchedInsecureAllow {
		return &ValidationError{Problems: []Problem{c.ProblemAt("boundaries_dir", "%s holds no boundary files and there are no inline boundaries (nothing would be served)", dir)}}
	}
	slices.Sort(names)
	var files []Boundary
	for _, n := range names {
		files = append(files, c.loadBoundaryFile(filepath.Join(dir, n)))
	}
	c.Boundaries = c.arrange(c.Boundaries, files)
	return nil
}

// inline returns the boundaries that are not from files.
func (c *Config) inline() []Boundary {
	var out []Boundary
	for _, b := range c.Boundaries {
		if b.Source == "" {
			out = append(out, b)
		}
	}
	return out
}

// arrange orders file boundaries after the inline ones and refuses those
// whose order or name is already taken.
func (c *Config) arrange(inline, files []Boundary) []Boundary {
	inline = slices.Clone(inline)
	files = slices.Clone(files)
	// A stand-in whose order is unknown goes first; at one order a
	// stand-in precedes a loaded boundary.
	slices.SortStableFunc(files, func(a, b Boundary) int {
		if (a.Order == nil) != (b.Order == nil) {
			if a.Order == nil {
				return -1
			}
			return 1
		}
		if a.Order != nil {
			if n := cmp.Compare(*a.Order, *b.Order); n != 0 {
				return n
			}
		}
		if (a.Refused != nil) != (b.Refused != nil) {
			if a.Refused != nil {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Source, b.Source)
	})
	names := map[string]string{}
	for _, b := range inline {
		names[b.Name] = "an inline boundary"
	}
	orders := map[int]string{}
	for i := range files {
		b := &files[i]
		if b.Refused == nil {
			var problems []Problem
			if prev, dup := orders[*b.Order]; dup {
				problems = append(problems, b.problem("order", "order %d is already used by %s", *b.Order, prev))
			}
			if prev, dup := names[b.Name]; dup {
				problems = append(problems, b.problem("name", "boundary name %q is already used by %s", b.Name, prev))
			}
			if len(problems) > 0 {
				// It keeps its place and match: what it would have
				// matched is denied, not passed to a later boundary.
				*b = refuse(*b, problems)
			}
		}
		if b.Order != nil {
			if _, taken := orders[*b.Order]; !taken {
				orders[*b.Order] = b.Source
			}
		}
		if _, taken := names[b.Name]; !taken && b.Refused == nil {
			names[b.Name] = b.Source
		}
	}
	// Metrics and verdicts name boundaries: a stand-in whose name is
	// taken is named after its file.
	seen := map[string]bool{}
	for _, b := range inline {
		seen[b.Name] = true
	}
	for i := range files {
		b := &files[i]
		if seen[b.Name] {
			b.Name = "file:" + filepath.Base(b.Source)
		}
		seen[b.Name] = true
	}
	return append(inline, files...)
}

// problem is a problem of a boundary file at a key path.
func (b *Boundary) problem(path, format string, args ...any) Problem {
	r := reporter{file: b.Source, lines: b.lines}
	return Problem{File: b.Source, Line: r.lineOf(path), Path: path, Message: fmt.Sprintf(format, args...)}
}

// refuse turns b into its stand-in: same place, same match, no rules.
func refuse(b Boundary, problems []Problem) Boundary {
	return Boundary{Name: b.Name, Match: b.Match, Mode: ModeEnforce, Owner: b.Owner, Version: b.Version, Order: b.Order,
		Source: b.Source, Refused: problems, lines: b.lines}
}

// loadBoundaryFile parses and validates one boundary file. A file with
// problems comes back as its stand-in (Refused set).
func (c *Config) loadBoundaryFile(file string) Boundary {
	data, err := readLimited(file)
	if err != nil {
		return standIn(file, nil, false, []Problem{{File: file, Message: err.Error()}})
	}
	return c.parseBoundaryFile(data, file)
}

func (c *Config) parseBoundaryFile(data []byte, file string) Boundary {
	w := &walker{reporter: reporter{file: file, lines: map[string]int{}}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			w.addAt(0, "", "empty boundary file")
		} else {
			_ = w.syntaxError(err)
		}
		return standIn(file, nil, false, w.problems)
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		w.addAt(next.Line, "", "a boundary file holds exactly one YAML document")
		return standIn(file, nil, false, w.problems)
	}
	if len(root.Content) != 1 {
		w.addAt(0, "", "empty boundary file")
		return standIn(file, nil, false, w.problems)
	}
	w.walk(root.Content[0], reflect.TypeFor[Boundary](), "")
	if w.nodes > maxNodes {
		return standIn(file, nil, false, w.problems)
	}
	// The walk pruned what it refused, so the rest decodes and is
	// validated too: one run reports every problem, and a stand-in keeps
	// the match and order that could be read.
	var b Boundary
	if err := root.Decode(&b); err != nil {
		w.addAt(0, "", "%s", cleanYAMLError(err))
		return standIn(file, nil, false, w.problems)
	}
	b.Source, b.lines = file, w.lines
	b.applyDefaults()
	vr := &reporter{file: file, lines: w.lines}
	scratch := &reporter{lines: map[string]int{}}
	upstreams := c.validateUpstreams(scratch)
	trust := c.validateTrust(scratch)
	if b.Name == "" {
		vr.addf("name", "is required")
	}
	if strings.TrimSpace(b.Owner) == "" {
		vr.addf("owner", "is required in a boundary file")
	}
	if strings.TrimSpace(b.Version) == "" {
		vr.addf("version", "is required in a boundary file")
	}
	if b.Order == nil {
		vr.addf("order", "is required in a boundary file: it places the boundary among the others")
	}
	validateBoundary(vr, "", &b, upstreams, trust)
	problems := append(w.problems, vr.problems...)
	if len(problems) == 0 {
		return b
	}
	slices.SortStableFunc(problems, func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) })
	return standIn(file, &b, true, problems)
}

// standIn is the boundary that takes a refused file's place: it denies
// what the file's boundary would have matched. parsed is what could be
// read (nil: nothing); known says its match and order were decoded, in
// which case those are kept unless a problem concerns them.
func standIn(file string, parsed *Boundary, known bool, problems []Problem) Boundary {
	s := Boundary{Name: "file:" + filepath.Base(file), Mode: ModeEnforce, Source: file, Refused: problems}
	if parsed == nil || !known {
		return s
	}
	touches := func(key string) bool {
		for _, p := range problems {
			if p.Path == key || strings.HasPrefix(p.Path, key+".") || strings.HasPrefix(p.Path, key+"[") {
				return true
			}
		}
		return false
	}
	if parsed.Name != "" && !touches("name") {
		s.Name = parsed.Name
	}
	if !touches("order") {
		s.Order = parsed.Order
	}
	if !touches("match") {
		s.Match = parsed.Match
	}
	s.Owner, s.Version = parsed.Owner, parsed.Version
	return s
}

func readLimited(file string) ([]byte, error) {
	data, err := ReadLimited(file, MaxFileSize)
	if err != nil && !errors.Is(err, errTooLarge) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("file is larger than %d bytes", MaxFileSize)
	}
	return data, nil
}

// RefusedBoundaries lists the problems of every boundary file that could
// not be loaded (its stand-in denies what it matches) or reloaded (its last
// good version is kept). Config check fails on any; serve logs them and
// starts.
func (c *Config) RefusedBoundaries() []Problem {
	var out []Problem
	for _, b := range c.Boundaries {
		out = append(out, b.Refused...)
		out = append(out, b.Stale...)
	}
	return out
}

// BoundaryFiles lists the boundary files read from boundaries_dir, refused
// ones included, in the order they are decided.
func (c *Config) BoundaryFiles() []string {
	var out []string
	for _, b := range c.Boundaries {
		if b.Source != "" {
			out = append(out, b.Source)
		}
	}
	return out
}

// KeepLastGood replaces each refused boundary file's stand-in with the
// boundary prev loaded from the same file, when prev had one and it is
// still valid under c's upstreams and trust. The kept boundary carries the
// new version's problems as Stale. A reload calls it so that a broken edit
// leaves the boundary as it was instead of denying its repositories.
func (c *Config) KeepLastGood(prev *Config) {
	if prev == nil {
		return
	}
	last := map[string]Boundary{}
	for _, b := range prev.Boundaries {
		if b.Source != "" && b.Refused == nil {
			b.Stale = nil
			last[b.Source] = b
		}
	}
	var files []Boundary
	changed := false
	scratch := &reporter{lines: map[string]int{}}
	upstreams := c.validateUpstreams(scratch)
	trust := c.validateTrust(scratch)
	for _, b := range c.Boundaries {
		if b.Source == "" {
			continue
		}
		if old, ok := last[b.Source]; ok && b.Refused != nil {
			r := &reporter{file: b.Source, lines: map[string]int{}}
			validateBoundary(r, "", &old, upstreams, trust)
			if len(r.problems) == 0 {
				old.Stale = b.Refused
				b = old
				changed = true
			}
		}
		files = append(files, b)
	}
	if changed {
		c.Boundaries = c.arrange(c.inline(), files)
	}
}

// RefuseBoundaryFile replaces the boundary read from file with its
// stand-in, recording a problem at the key path: a problem found after
// loading (a condition that does not compile, a key the engine refuses)
// refuses that file alone, as a parse problem would.
func (c *Config) RefuseBoundaryFile(file, path, format string, args ...any) {
	for i := range c.Boundaries {
		b := &c.Boundaries[i]
		if b.Source != file {
			continue
		}
		p := b.problem(path, format, args...)
		if b.Refused != nil {
			b.Refused = append(b.Refused, p)
			return
		}
		*b = refuse(*b, []Problem{p})
		return
	}
}

// BoundaryWatchPaths are the paths a reload watches for boundary files:
// the directory itself (files added or removed) and every file read from
// it; nil without boundaries_dir.
func (c *Config) BoundaryWatchPaths() []string {
	if c.BoundariesDir == "" {
		return nil
	}
	return append([]string{c.Resolve(c.BoundariesDir)}, c.BoundaryFiles()...)
}
