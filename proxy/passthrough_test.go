package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestNextLink(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		links  []string
		target string
		want   string
	}{
		{"containerd ns", []string{`</v2/library/alpine/tags/list?n=2&last=3.19>; rel="next"`}, "/v2/library/alpine/tags/list?ns=docker.io&n=2",
			`</v2/library/alpine/tags/list?last=3.19&n=2&ns=docker.io>; rel="next"`},
		{"alias prefix kept", []string{`</v2/acme/app/tags/list?last=v1&n=1>; rel="next"`}, "/v2/ghcr.io/acme/app/tags/list?n=1",
			`</v2/ghcr.io/acme/app/tags/list?last=v1&n=1>; rel="next"`},
		{"absolute upstream URL is reduced to its page", []string{`<https://registry.example/v2/acme/app/tags/list?last=v1>; rel="next"`}, "/v2/acme/app/tags/list",
			`</v2/acme/app/tags/list?last=v1>; rel="next"`},
		{"unquoted rel", []string{`</v2/x/tags/list?last=v1>; rel=next`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=v1>; rel="next"`},
		{"rel case and several relation types", []string{`</v2/x/tags/list?last=v1>; title="page 2"; REL="last Next"`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=v1>; rel="next"`},
		{"next among several links in one field", []string{`</v2/x/tags/list?last=a>; rel="prev", </v2/x/tags/list?last=z>; rel="next"`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=z>; rel="next"`},
		{"next in a second field", []string{`</v2/x/tags/list?last=a>; rel="prev"`, `</v2/x/tags/list?last=z>; rel=next`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=z>; rel="next"`},
		{"opaque page tokens kept", []string{`</v2/x/tags/list?n=100&last=v1&cache=c2VjcmV0&page=3>; rel="next"`}, "/v2/x/tags/list?n=100",
			`</v2/x/tags/list?cache=c2VjcmV0&last=v1&n=100&page=3>; rel="next"`},
		{"an upstream cannot route the client", []string{`</v2/x/tags/list?last=v1&ns=evil.example>; rel="next"`}, "/v2/x/tags/list?ns=docker.io",
			`</v2/x/tags/list?last=v1&ns=docker.io>; rel="next"`},
		{"an upstream ns alone is no page", []string{`</v2/x/tags/list?ns=evil.example>; rel="next"`}, "/v2/x/tags/list", ""},
		{"empty quoted parameter", []string{`</v2/x/tags/list?last=v1>; title=""; rel="next"`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=v1>; rel="next"`},
		{"empty unquoted parameter", []string{`</v2/x/tags/list?last=v1>; title=; rel=next`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=v1>; rel="next"`},
		{"parameter without a name", []string{`</v2/x/tags/list?last=v1>; =x; rel=next`}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=v1>; rel="next"`},
		{"not next", []string{`</v2/x/tags/list?last=v1>; rel="prev"`}, "/v2/x/tags/list", ""},
		{"next only as a substring", []string{`</v2/x/tags/list?last=v1>; rel="nextpage"`}, "/v2/x/tags/list", ""},
		{"no page parameters", []string{`</v2/x/tags/list>; rel="next"`}, "/v2/x/tags/list", ""},
		{"malformed", []string{`/v2/x/tags/list?last=v1; rel="next"`}, "/v2/x/tags/list", ""},
		{"unterminated quote", []string{`</v2/x/tags/list?last=v1>; rel="next`}, "/v2/x/tags/list", ""},
		{"too long", []string{`</v2/x/tags/list?last=` + strings.Repeat("a", maxLinkHeader) + `>; rel="next"`}, "/v2/x/tags/list", ""},
		{"exactly as long as allowed", []string{linkOfLength(maxLinkHeader)}, "/v2/x/tags/list",
			`</v2/x/tags/list?last=` + strings.Repeat("a", maxLinkHeader-len(linkOfLength(0))) + `>; rel="next"`},
		{"one byte longer", []string{linkOfLength(maxLinkHeader + 1)}, "/v2/x/tags/list", ""},
		{"as many page parameters as allowed", []string{linkWithParams(maxPageParams)}, "/v2/x/tags/list",
			"<" + "/v2/x/tags/list?" + linkParams(maxPageParams).Encode() + `>; rel="next"`},
		{"one page parameter more", []string{linkWithParams(maxPageParams + 1)}, "/v2/x/tags/list", ""},
		{"empty", nil, "/v2/x/tags/list", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("GET", tc.target, nil)
			if got := nextLink(tc.links, r); got != tc.want {
				t.Errorf("nextLink(%q) = %q, want %q", tc.links, got, tc.want)
			}
		})
	}
}

func TestParseLinks(t *testing.T) {
	t.Parallel()
	got := parseLinks(`<a?x=1,2>; rel="prev next"; title="x, y", <b>;rel=last ,<c>`)
	want := []link{{target: "a?x=1,2", rels: []string{"prev", "next"}}, {target: "b", rels: []string{"last"}}, {target: "c"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseLinks = %+v, want %+v", got, want)
	}
	// What follows a malformed value is not guessed at.
	if got := parseLinks(`<a>; rel=next, garbage <b>; rel=next`); len(got) != 1 || got[0].target != "a" {
		t.Errorf("parseLinks after garbage = %+v", got)
	}
}

// linkOfLength is a next link of n bytes (n at least its length without a
// page token), whose page token is a run of "a".
func linkOfLength(n int) string {
	const head, tail = `</v2/x/tags/list?last=`, `>; rel="next"`
	return head + strings.Repeat("a", max(n-len(head)-len(tail), 0)) + tail
}

func linkParams(n int) url.Values {
	q := url.Values{}
	for i := range n {
		q.Set("p"+strconv.Itoa(i), "1")
	}
	return q
}

// linkWithParams is a next link with n page parameters.
func linkWithParams(n int) string {
	return `</v2/x/tags/list?` + linkParams(n).Encode() + `>; rel="next"`
}

// TestTagsListBound: a listing is relayed up to passThroughMax bytes with
// the client's Accept, and refused whole one byte past it.
func TestTagsListBound(t *testing.T) {
	t.Parallel()
	listing := func(n int) []byte {
		var b bytes.Buffer
		b.WriteString(`{"name":"acme/app","tags":["`)
		b.WriteString(strings.Repeat("t", n-b.Len()-3))
		b.WriteString(`"]}`)
		return b.Bytes()
	}
	for _, size := range []int{passThroughMax, passThroughMax + 1} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			t.Parallel()
			body := listing(size)
			accepts := make(chan []string, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				accepts <- r.Header.Values("Accept")
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			}))
			t.Cleanup(up.Close)
			p, _ := newTestProxy(t, up.URL, allowAll())
			r := httptest.NewRequest(http.MethodGet, "/v2/acme/app/tags/list?ns=docker.io", nil)
			r.Header.Add("Accept", "application/json")
			r.Header.Add("Accept", "application/x-test")
			w := httptest.NewRecorder()
			p.ServeHTTP(w, r)
			if got := <-accepts; !reflect.DeepEqual(got, []string{"application/json", "application/x-test"}) {
				t.Errorf("Accept upstream = %q, want the client's", got)
			}
			if size > passThroughMax {
				if w.Code != http.StatusBadGateway || w.Body.Len() > 4096 {
					t.Fatalf("listing of %d bytes = %d (%d bytes), want 502", size, w.Code, w.Body.Len())
				}
				if n := counterValue(t, p, "portcullis_upstream_errors_total", map[string]string{"kind": "too_large"}); n != 1 {
					t.Errorf("too_large errors = %v, want 1", n)
				}
				return
			}
			if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), body) || w.Header().Get("Content-Length") != strconv.Itoa(size) {
				t.Fatalf("listing of %d bytes = %d, %d bytes (Content-Length %s), want it whole", size, w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
			}
		})
	}
}

func TestPageQuery(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest("GET", "/v2/x/tags/list?ns=docker.io&n=10&last=v1&cache=tok&artifactType=application%2Fspdx%2Bjson", nil)
	q := pageQuery(r)
	if q.Has("ns") {
		t.Error("ns, the proxy's routing parameter, was forwarded upstream")
	}
	for _, k := range []string{"n", "last", "cache", "artifactType"} {
		if !q.Has(k) {
			t.Errorf("%s dropped", k)
		}
	}
	var many strings.Builder
	for i := range 3 * maxPageParams {
		many.WriteString("&p")
		many.WriteString(strings.Repeat("x", i+1))
		many.WriteString("=1")
	}
	if q := pageQuery(httptest.NewRequest("GET", "/v2/x/tags/list?"+many.String()[1:], nil)); len(q) != maxPageParams {
		t.Errorf("%d parameters forwarded, want at most %d", len(q), maxPageParams)
	}
}

// TestTagsPaginationThroughTheProxy walks an upstream whose pages are
// named by an opaque token and linked with an unquoted rel, as several
// registries write it: every page is reached through the proxy, the token
// goes back upstream unchanged, and the client's ns never does.
func TestTagsPaginationThroughTheProxy(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		mu.Lock()
		seen = append(seen, r.URL.RawQuery)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Query().Get("cache") {
		case "":
			w.Header().Set("Link", `</v2/acme/app/tags/list?n=1&cache=dG9rMQ>; rel=next`)
			_, _ = w.Write([]byte(`{"name":"acme/app","tags":["a"]}`))
		case "dG9rMQ":
			w.Header().Add("Link", `</v2/acme/app/tags/list?n=1&cache=first>; rel="first"`)
			w.Header().Add("Link", `</v2/acme/app/tags/list?n=1&cache=dG9rMg>; rel="next"`)
			_, _ = w.Write([]byte(`{"name":"acme/app","tags":["b"]}`))
		default:
			_, _ = w.Write([]byte(`{"name":"acme/app","tags":["c"]}`))
		}
	}))
	t.Cleanup(up.Close)
	p, _ := newTestProxy(t, up.URL, allowAll())
	var tags []string
	next := "/v2/acme/app/tags/list?n=1&ns=docker.io"
	for i := 0; next != ""; i++ {
		if i > 5 {
			t.Fatal("pagination does not end")
		}
		w := do(p, http.MethodGet, next)
		if w.Code != http.StatusOK {
			t.Fatalf("GET %s = %d %s", next, w.Code, w.Body)
		}
		var page struct{ Tags []string }
		if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil {
			t.Fatal(err)
		}
		tags = append(tags, page.Tags...)
		next = ""
		if l := w.Header().Get("Link"); l != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
	}
	if !reflect.DeepEqual(tags, []string{"a", "b", "c"}) {
		t.Errorf("tags through the proxy = %q, want a, b, c", tags)
	}
	want := []string{"n=1", "cache=dG9rMQ&n=1", "cache=dG9rMg&n=1"}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("queries upstream = %q, want %q (page tokens kept, ns never sent)", seen, want)
	}
}

// FuzzNextLink: whatever an upstream sends, the client's next link is
// either absent or its own path with a query the upstream cannot route.
func FuzzNextLink(f *testing.F) {
	for _, s := range []string{
		`</v2/x/tags/list?last=v1>; rel="next"`,
		`</v2/x/tags/list?last=a>; rel=prev, </v2/x/tags/list?last=z&ns=evil>; rel=next`,
		`<a?x=1,2>; rel="prev next"; title="x, y", <b>;rel=last ,<c>`,
		`<>; rel=next`, `<`, `;;;,,,<x>;rel="`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, link string) {
		r := httptest.NewRequest("GET", "/v2/x/tags/list?ns=docker.io", nil)
		got := nextLink([]string{link}, r)
		if got == "" {
			return
		}
		const prefix = "</v2/x/tags/list?"
		if !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, `>; rel="next"`) {
			t.Fatalf("next link %q leaves the client's path", got)
		}
		q, err := url.ParseQuery(strings.TrimSuffix(strings.TrimPrefix(got, prefix), `>; rel="next"`))
		if err != nil {
			t.Fatalf("next link %q: %v", got, err)
		}
		if ns := q["ns"]; len(ns) != 1 || ns[0] != "docker.io" {
			t.Fatalf("next link %q routes to %q", got, ns)
		}
	})
}
