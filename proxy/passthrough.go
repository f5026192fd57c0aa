package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
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
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
	return nil
}
