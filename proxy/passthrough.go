package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

var passThroughHeaders = []string{"Content-Type", "OCI-Filters-Applied"}

// passThrough relays a read-only listing (referrers, tags) with its body
// bounded, so that an upstream cannot make the proxy buffer without limit.
func (p *Proxy) passThrough(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo, path string, q url.Values, unknownCode string) error {
	ctx := r.Context()
	hdr := http.Header{}
	if a := r.Header.Values("Accept"); len(a) > 0 {
		hdr["Accept"] = append([]string(nil), a...)
	}
	resp, err := u.client.Get(ctx, repo, path, q, hdr)
	if err != nil {
		return p.upstreamFailure(ctx, u, err, unknownCode, path)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, passThroughMax+1))
	if err != nil {
		return p.upstreamFailure(ctx, u, err, unknownCode, path)
	}
	if len(body) > passThroughMax {
		p.metrics.upstreamErrors.WithLabelValues(u.name, "too_large").Inc()
		return p.upstreamFailure(ctx, u, errors.New("response larger than 4 MiB"), unknownCode, path)
	}
	copyHeaders(w.Header(), resp.Header, passThroughHeaders)
	if next := nextLink(resp.Header.Values("Link"), r); next != "" {
		w.Header().Set("Link", next)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
	return nil
}

// Bounds on what a listing's query may carry, each way: the page tokens
// registries use (n, last, cache, page, opaque continuation tokens) are
// short, and a longer query is not a page.
const (
	maxLinkHeader = 4096
	maxPageParams = 16
)

// pageQuery is the query a listing request forwards upstream: the client's
// own parameters but ns, which routes the request here and means nothing
// upstream. Registries' page tokens are opaque, so none is dropped.
func pageQuery(r *http.Request) url.Values {
	q := url.Values{}
	for k, vs := range r.URL.Query() {
		if k == "ns" || len(q) >= maxPageParams {
			continue
		}
		q[k] = vs
	}
	return q
}

// nextLink rewrites an upstream's next-page link (RFC 8288: one or more
// Link header fields, each a comma-separated list of <uri>; params, rel
// quoted or not, possibly several relation types) for the client. The
// path becomes the client's own (alias prefix, library/ and ?ns= kept as
// the client sent them) and the upstream's query is kept whole, page
// tokens included, except for ns, which only the client sets: an upstream
// can choose the page, never the host, the path or the upstream. It
// returns "" when there is no usable next link.
func nextLink(fields []string, r *http.Request) string {
	total := 0
	for _, f := range fields {
		total += len(f)
	}
	if total == 0 || total > maxLinkHeader {
		return ""
	}
	for _, f := range fields {
		for _, l := range parseLinks(f) {
			if !l.rel("next") {
				continue
			}
			u, err := url.Parse(l.target)
			if err != nil {
				return ""
			}
			q := u.Query()
			q.Del("ns")
			if len(q) == 0 || len(q) > maxPageParams {
				// No page parameter names the same page again.
				return ""
			}
			if ns := r.URL.Query().Get("ns"); ns != "" {
				q.Set("ns", ns)
			}
			return "<" + r.URL.Path + "?" + q.Encode() + `>; rel="next"`
		}
	}
	return ""
}

type link struct {
	target string
	rels   []string
}

func (l link) rel(want string) bool {
	for _, r := range l.rels {
		if strings.EqualFold(r, want) {
			return true
		}
	}
	return false
}

// parseLinks reads the link-values of one Link field. A malformed value
// ends the parse: what came before it is kept, nothing after it is
// guessed at.
func parseLinks(field string) []link {
	var out []link
	s := field
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" || s[0] != '<' {
			return out
		}
		end := strings.IndexByte(s, '>')
		if end < 0 {
			return out
		}
		l := link{target: s[1:end]}
		s = s[end+1:]
		// Parameters up to the next top-level comma.
		for {
			s = strings.TrimLeft(s, " \t")
			if s == "" || s[0] == ',' {
				break
			}
			if s[0] != ';' {
				return out
			}
			s = strings.TrimLeft(s[1:], " \t")
			eq := strings.IndexAny(s, "=;,")
			name := s
			if eq >= 0 {
				name = s[:eq]
			}
			name = strings.TrimSpace(name)
			var value string
			if eq >= 0 && s[eq] == '=' {
				s = strings.TrimLeft(s[eq+1:], " \t")
				if strings.HasPrefix(s, `"`) {
					closing := strings.IndexByte(s[1:], '"')
					if closing < 0 {
						return out
					}
					value, s = s[1:1+closing], s[2+closing:]
				} else {
					stop := strings.IndexAny(s, ";,")
					if stop < 0 {
						stop = len(s)
					}
					value, s = strings.TrimSpace(s[:stop]), s[stop:]
				}
			} else if eq >= 0 {
				s = s[eq:]
			} else {
				s = ""
			}
			if strings.EqualFold(name, "rel") && l.rels == nil {
				l.rels = strings.Fields(value)
			}
		}
		out = append(out, l)
	}
}
