package tuffetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
)

// DefaultTimeout bounds one download when New is given none.
const DefaultTimeout = 30 * time.Second

// Fetcher is a fetcher.Fetcher with a deadline per download and a client
// of its own (never http.DefaultClient, whose settings other code may
// change).
type Fetcher struct {
	client    *http.Client
	timeout   time.Duration
	userAgent string
}

var _ fetcher.Fetcher = (*Fetcher)(nil)

// New returns a fetcher whose downloads each take at most timeout
// (DefaultTimeout when zero or negative) and whose answers' headers take
// at most maxHeaderBytes (the upstream client's default when zero or negative).
// rt, when non-nil, replaces the default transport (tests); the header
// bound is then rt's to keep.
func New(timeout time.Duration, userAgent string, maxHeaderBytes int64, rt http.RoundTripper) *Fetcher {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = upstream.DefaultMaxHeaderBytes
	}
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxResponseHeaderBytes = maxHeaderBytes
		rt = t
	}
	return &Fetcher{
		client:    &http.Client{Transport: rt, CheckRedirect: sameHost},
		timeout:   timeout,
		userAgent: userAgent,
	}
}

// sameHost follows a redirect only on the same host: a mirror moving a
// path is fine, handing the download to another host is not asked for.
func sameHost(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("too many redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		return fmt.Errorf("redirect to another host (%s) refused", req.URL.Host)
	}
	return nil
}

// DownloadFile reads at most maxLength bytes of urlPath. A longer body,
// announced or not, is an error: go-tuf gives the length it expects
// (from signed metadata, or its configured maximum per role).
func (f *Fetcher) DownloadFile(urlPath string, maxLength int64, _ time.Duration) ([]byte, error) {
	u, err := url.Parse(urlPath)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("tuf fetch: bad URL %q", urlPath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, urlPath, nil)
	if err != nil {
		return nil, err
	}
	if f.userAgent != "" {
		req.Header.Set("User-Agent", f.userAgent)
	}
	res, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		// go-tuf reads a 403/404 on the next root version as "no newer
		// root"; the typed error keeps that working.
		return nil, &metadata.ErrDownloadHTTP{StatusCode: res.StatusCode, URL: urlPath}
	}
	if h := res.Header.Get("Content-Length"); h != "" {
		if n, err := strconv.ParseInt(h, 10, 64); err == nil && n > maxLength {
			return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("download of %s: length %d is larger than the %d expected", urlPath, n, maxLength)}
		}
	}
	data, err := io.ReadAll(io.LimitReader(res.Body, maxLength+1))
	if err != nil {
		return nil, fmt.Errorf("download of %s: %w", urlPath, err)
	}
	if int64(len(data)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("download of %s is larger than the %d bytes expected", urlPath, maxLength)}
	}
	return data, nil
}
