package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	File    string // file name as given to Parse or Load; may be ""
	Line    int    // 1-based; 0 when unknown
	Path    string // key path such as "upstreams[1].aliases[0]"; "" for the document
	Message string
}

// Error renders the problem as "file:line: path: message", leaving out the
// parts that are unknown.
func (p Problem) Error() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
	} else if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// ValidationError carries every problem found in a configuration, so that a
// single run of "config check" reports all of them.
type ValidationError struct {
	Problems []Problem
}

// maxListed bounds how many problems Error lists; a badly broken file
// would otherwise produce a message as large as itself.
const maxListed = 100

// Error lists the problems one per line.
func (e *ValidationError) Error() string {
	n := min(len(e.Problems), maxListed)
	lines := make([]string, n, n+1)
	for i, p := range e.Problems[:n] {
		lines[i] = p.Error()
	}
	if rest := len(e.Problems) - n; rest > 0 {
		lines = append(lines, fmt.Sprintf("... and %d more problems", rest))
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the individual problems to errors.Is and errors.As.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// reporter accumulates problems and attributes them to the nearest line
// known for the key path (or one of its parents).
type reporter struct {
	file     string
	lines    map[string]int
	problems []Problem
}

func (r *reporter) addf(path, format string, args ...any) {
	r.problems = append(r.problems, Problem{
		File:    r.file,
		Line:    r.lineOf(path),
		Path:    path,
		Message: fmt.Sprintf(format, args...),
	})
}

func (r *reporter) addAt(line int, path, format string, args ...any) {
	r.problems = append(r.problems, Problem{File: r.file, Line: line, Path: path, Message: fmt.Sprintf(format, args...)})
}

// lineOf finds the line of path, falling back to its closest parent so
// that a missing key is reported where its enclosing block starts.
func (r *reporter) lineOf(path string) int {
	for path != "" {
		if l, ok := r.lines[path]; ok {
			return l
		}
		path = parentPath(path)
	}
	return 0
}

func (r *reporter) err() error {
	if len(r.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: r.problems}
}

// parentPath strips the last ".key" or "[i]" from a key path.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(parent string, i int) string {
	return fmt.Sprintf("%s[%d]", parent, i)
}
