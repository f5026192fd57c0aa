package mirrorconfig

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// tomlDoc is the subset of TOML the generators emit: comments on their own
// lines, key = string | bool | array of strings, [tables] with quoted
// segments and [[arrays of tables]]. Parsing anything else fails, so a
// generator that starts emitting something new must have its test updated.
type tomlDoc struct {
	top    map[string]any
	tables map[string]map[string]any   // key: segments joined by "\x00"
	arrays map[string][]map[string]any // [[name]]
}

func parseTOML(t *testing.T, b []byte) tomlDoc {
	t.Helper()
	d := tomlDoc{top: map[string]any{}, tables: map[string]map[string]any{}, arrays: map[string][]map[string]any{}}
	cur := d.top
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[["):
			name, ok := strings.CutSuffix(strings.TrimPrefix(line, "[["), "]]")
			if !ok {
				t.Fatalf("line %d: bad array header %q", n, line)
			}
			cur = map[string]any{}
			d.arrays[name] = append(d.arrays[name], cur)
		case strings.HasPrefix(line, "["):
			name, ok := strings.CutSuffix(strings.TrimPrefix(line, "["), "]")
			if !ok {
				t.Fatalf("line %d: bad table header %q", n, line)
			}
			key := strings.Join(splitTableName(t, name), "\x00")
			if _, dup := d.tables[key]; dup {
				t.Fatalf("line %d: duplicate table %q", n, line)
			}
			cur = map[string]any{}
			d.tables[key] = cur
		default:
			k, v, ok := strings.Cut(line, " = ")
			if !ok {
				t.Fatalf("line %d: not a key/value: %q", n, line)
			}
			if _, dup := cur[k]; dup {
				t.Fatalf("line %d: duplicate key %q", n, k)
			}
			cur[k] = parseValue(t, v)
		}
	}
	return d
}

func splitTableName(t *testing.T, name string) []string {
	t.Helper()
	var segs []string
	for name != "" {
		if name[0] == '"' {
			end := strings.Index(name[1:], `"`) + 1
			for end > 0 && name[end-1] == '\\' {
				next := strings.Index(name[end+1:], `"`)
				if next < 0 {
					t.Fatalf("unterminated quoted key in %q", name)
				}
				end += next + 1
			}
			s, err := strconv.Unquote(name[:end+1])
			if err != nil {
				t.Fatalf("bad quoted key in %q: %v", name, err)
			}
			segs = append(segs, s)
			name = name[end+1:]
		} else {
			i := strings.IndexByte(name, '.')
			if i < 0 {
				i = len(name)
			}
			segs = append(segs, name[:i])
			name = name[i:]
		}
		name = strings.TrimPrefix(name, ".")
	}
	return segs
}

func parseValue(t *testing.T, v string) any {
	t.Helper()
	switch {
	case v == "true" || v == "false":
		return v == "true"
	case v != "" && len(v) < 10 && strings.Trim(v, "0123456789") == "":
		n, _ := strconv.Atoi(v)
		return n
	case strings.HasPrefix(v, `"`):
		s, err := strconv.Unquote(v)
		if err != nil {
			t.Fatalf("bad string %s: %v", v, err)
		}
		return s
	case strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]"):
		var out []string
		for _, e := range strings.Split(v[1:len(v)-1], ",") {
			s, err := strconv.Unquote(strings.TrimSpace(e))
			if err != nil {
				t.Fatalf("bad array element in %s: %v", v, err)
			}
			out = append(out, s)
		}
		return out
	}
	t.Fatalf("unsupported value %q", v)
	return nil
}

func (d tomlDoc) String() string {
	return fmt.Sprintf("top=%v tables=%v arrays=%v", d.top, d.tables, d.arrays)
}
