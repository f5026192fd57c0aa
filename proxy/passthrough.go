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
	if next := nextLink(resp.Header.Get("Link"), r); next != "" {
		w.Header().Set("Link", next)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
	return nil
}

// pageParams are the query parameters a pagination link may carry over.
var pageParams = []string{"n", "last", "artifactType"}

// nextLink rewrites an upstream's `Link: <…>; rel="next"` for the client:
// the path becomes the client's own (alias prefix, library/ and ?ns= kept
// as the client sent them) and only pagination parameters are carried
// over, so an upstream cannot point the client at another host or path.
// It returns "" when there is no usable next link.
func nextLink(link string, r *http.Request) string {
	if link == "" || len(link) > 4096 {
		return ""
	}
	target, params, ok := strings.Cut(link, ";")
	target = strings.TrimSpace(target)
	if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") || !strings.Contains(params, `rel="next"`) {
		return ""
	}
	u, err := url.Parse(strings.TrimSuffix(strings.TrimPrefix(target, "<"), ">"))
	if err != nil {
		return ""
	}
	q := url.Values{}
	for _, k := range pageParams {
		if v := u.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	if len(q) == 0 {
		return ""
	}
	if ns := r.URL.Query().Get("ns"); ns != "" {
		q.Set("ns", ns)
	}
	return "<" + r.URL.Path + "?" + q.Encode() + `>; rel="next"`
}
