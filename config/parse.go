package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize is the largest configuration file Load reads.
const MaxFileSize = 1 << 20

// maxNodes bounds the work spent walking a document, aliases expanded, so
// that a small file cannot make the checker do unbounded work.
const maxNodes = 200_000

// Load reads, parses and validates the configuration file at path. Files
// the configuration refers to are not opened; see CheckFiles.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, &ValidationError{Problems: []Problem{{File: path, Message: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}}}
	}
	cfg, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	cfg.Path = path
	if err := cfg.loadBoundariesDir(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Parse decodes one YAML document strictly, applies defaults and validates
// the result. filename is used in error messages only. Any error is a
// *ValidationError listing every problem found; when the YAML itself is
// malformed, that is the only problem reported.
func Parse(data []byte, filename string) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, &ValidationError{Problems: []Problem{{File: filename, Message: fmt.Sprintf("document is larger than %d bytes", MaxFileSize)}}}
	}
	w := &walker{reporter: reporter{file: filename, lines: map[string]int{}}}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	switch err := dec.Decode(&root); {
	case errors.Is(err, io.EOF):
		// An empty document decodes to the zero Config, which validation
		// then rejects for its missing upstreams.
	case err != nil:
		return nil, w.syntaxError(err)
	default:
		var next yaml.Node
		switch err := dec.Decode(&next); {
		case errors.Is(err, io.EOF):
		case err != nil:
			return nil, w.syntaxError(err)
		default:
			w.addAt(next.Line, "", "multiple YAML documents are not allowed; the configuration must be a single document")
			return nil, w.err()
		}
		if len(root.Content) == 1 {
			w.walk(root.Content[0], reflect.TypeFor[Config](), "")
		}
		if len(w.problems) > 0 {
			return nil, w.withSemanticProblems(&root)
		}
	}

	cfg := &Config{}
	if len(root.Content) == 1 {
		// The walk above has already checked keys and types with precise
		// paths; the strict decoder is the one that fills the struct.
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil {
			return nil, w.syntaxError(err)
		}
	}
	cfg.lines = w.lines
	cfg.applyDefaults()
	if err := cfg.validate(filename); err != nil {
		return nil, err
	}
	return cfg, nil
}

// withSemanticProblems adds, to the structural problems the walk found,
// the validation problems of the rest of the document, so that one run
// reports everything. The walk has pruned what it refused from root, so
// the remainder decodes. A validation problem on a path that is an
// ancestor or descendant of a structural one is dropped: it is most likely
// a consequence of that problem (a refused value decodes as zero).
func (w *walker) withSemanticProblems(root *yaml.Node) error {
	if w.nodes > maxNodes {
		return w.err()
	}
	cfg := &Config{}
	if err := root.Decode(cfg); err != nil {
		// Pruning missed something; the structural problems stand alone.
		return w.err()
	}
	cfg.lines = w.lines
	cfg.applyDefaults()
	err := cfg.validate(w.file)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		return w.err()
	}
	structural := w.problems
	for _, p := range ve.Problems {
		related := false
		for _, s := range structural {
			if relatedPath(p.Path, s.Path) {
				related = true
				break
			}
		}
		if !related {
			w.problems = append(w.problems, p)
		}
	}
	slices.SortStableFunc(w.problems, func(a, b Problem) int { return cmp.Compare(a.Line, b.Line) })
	return w.err()
}

// relatedPath reports whether one key path contains the other. The
// document itself ("") is related to nothing, so a problem with the whole
// document does not hide the rest.
func relatedPath(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	within := func(child, parent string) bool {
		return child == parent || strings.HasPrefix(child, parent+".") || strings.HasPrefix(child, parent+"[")
	}
	return within(a, b) || within(b, a)
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 error into problems that carry the file name
// and, when yaml reports one, the line.
func (w *walker) syntaxError(err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	for _, m := range msgs {
		m = strings.TrimSpace(m)
		if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
			line, _ := strconv.Atoi(sm[1])
			w.addAt(line, "", "%s", sm[2])
			continue
		}
		w.addAt(0, "", "%s", strings.TrimPrefix(m, "yaml: "))
	}
	return w.err()
}

// walker checks a YAML node tree against the Go types it will be decoded
// into, so that unknown keys, duplicate keys and wrong types are reported
// with their key path, and records the line of every key path. It prunes
// what it reports from the tree (refused values become null, refused keys
// are dropped) so that the rest can still be decoded and validated.
type walker struct {
	reporter
	nodes int
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if w.nodes++; w.nodes > maxNodes {
		if w.nodes == maxNodes+1 {
			w.addf(path, "document is too large or uses excessive aliasing")
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return
		}
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return
	}
	if tag := n.ShortTag(); !strings.HasPrefix(tag, "!!") {
		w.addAt(n.Line, path, "unsupported YAML tag %q", tag)
		nullify(n)
		return
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			w.addAt(n.Line, path, "%s", cleanYAMLError(err))
			nullify(n)
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		w.walk(n, t.Elem(), path)
	case reflect.Struct:
		w.walkStruct(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.addAt(n.Line, path, "must be a list")
			nullify(n)
			return
		}
		for i, c := range n.Content {
			p := indexPath(path, i)
			w.lines[p] = c.Line
			w.walk(c, t.Elem(), p)
		}
	case reflect.String:
		w.scalar(n, path, "!!str", "a string")
	case reflect.Bool:
		w.scalar(n, path, "!!bool", "true or false")
	case reflect.Int:
		if w.scalar(n, path, "!!int", "an integer") {
			if _, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, strconv.IntSize); err != nil {
				w.addAt(n.Line, path, "integer %s is out of range", n.Value)
				nullify(n)
			}
		}
	default:
		// Unreachable for the Config schema; refuse rather than accept
		// something unchecked.
		w.addAt(n.Line, path, "unsupported value")
		nullify(n)
	}
}

// nullify turns n into a YAML null, which decodes as the zero value.
func nullify(n *yaml.Node) {
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
}

func (w *walker) scalar(n *yaml.Node, path, tag, what string) bool {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != tag {
		w.addAt(n.Line, path, "must be %s", what)
		nullify(n)
		return false
	}
	return true
}

func (w *walker) walkStruct(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		w.addAt(n.Line, path, "must be a mapping")
		nullify(n)
		return
	}
	fields := yamlFields(t)
	seen := make(map[string]int, len(n.Content)/2)
	kept := make([]*yaml.Node, 0, len(n.Content))
	defer func() { n.Content = kept }()
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			w.addAt(k.Line, path, "merge keys (<<) are not supported")
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			w.addAt(k.Line, path, "keys must be strings")
			continue
		}
		p := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			w.addAt(k.Line, p, "duplicate key (first defined at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		w.lines[p] = k.Line
		ft, ok := fields[k.Value]
		if !ok {
			w.addAt(k.Line, p, "unknown key")
			continue
		}
		kept = append(kept, k, v)
		w.walk(v, ft, p)
	}
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// yamlFields maps the YAML keys of struct type t to their field types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}

// cleanYAMLError strips yaml.v3's "yaml: unmarshal errors:\n  line N:"
// decoration; the caller supplies file, line and path itself.
func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		m := strings.TrimSpace(te.Errors[0])
		if sm := yamlLineRE.FindStringSubmatch(m); sm != nil {
			return sm[2]
		}
		return m
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}
