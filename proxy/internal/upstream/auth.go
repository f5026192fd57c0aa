package upstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

const (
	// DefaultRepositories bounds the number of per-repository
	// authenticated transports kept; an evicted one is rebuilt (one token
	// exchange) on next use.
	DefaultRepositories = 1024
	// pingTTL is how long the upstream's answer to GET /v2/ (its auth
	// challenge) is reused for new repositories' handshakes.
	pingTTL = 10 * time.Minute
)

// repoCache keeps authenticated transports per repository. It is a 2Q
// cache: a repository used once waits in a small queue of recent entries,
// and only one used again moves to the main part. A flood of distinct
// (random) repository names churns the recent queue and cannot evict the
// repositories that are actually pulled.
type repoCache = lru.TwoQueueCache[string, http.RoundTripper]

func newRepoCache(size int) (*repoCache, error) {
	return lru.New2Q[string, http.RoundTripper](size)
}

// authTransport returns the authenticated transport for repo, performing
// the handshake on first use: the registry's challenge comes from the
// shared ping answer, so a new repository costs at most one token
// exchange. Concurrent first uses share one handshake, which runs on a
// context detached from any single caller (but bounded by the timeout) so
// one caller giving up does not fail the others.
func (c *Client) authTransport(ctx context.Context, repo string) (http.RoundTripper, error) {
	if rt, ok := c.transports.Get(repo); ok {
		return rt, nil
	}
	ch := c.setup.DoChan(repo, func() (any, error) {
		if rt, ok := c.transports.Get(repo); ok {
			return rt, nil
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		defer cancel()
		r := c.reg.Repo(repo)
		auth, err := authn.Resolve(sctx, c.keychain, r)
		if err != nil {
			return nil, fmt.Errorf("resolving credentials: %w", err)
		}
		rt, err := transport.NewWithContext(sctx, c.reg, auth, c.pinged, []string{r.Scope(transport.PullScope)})
		if err != nil {
			return nil, fmt.Errorf("authenticating: %w", err)
		}
		c.transports.Add(repo, rt)
		return rt, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, fmt.Errorf("upstream %s: %w", c.name, res.Err)
		}
		return res.Val.(http.RoundTripper), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("upstream %s: authenticating: %w", c.name, context.Cause(ctx))
	}
}

// pingCache answers the handshake's GET /v2/ from one shared answer, so
// that each repository's handshake does not ping the registry again. Only
// a 200 (no auth) or a 401 (the challenge) is kept, for pingTTL; any other
// answer is passed on and asked again next time. Every other request goes
// to inner unchanged.
type pingCache struct {
	inner http.RoundTripper
	base  url.URL

	flight singleflight.Group
	mu     sync.Mutex
	ans    *pingAnswer
}

type pingAnswer struct {
	status int
	header http.Header
	body   []byte
	at     time.Time
}

func (p *pingCache) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet || r.URL.Host != p.base.Host || r.URL.Path != "/v2/" || r.URL.RawQuery != "" {
		return p.inner.RoundTrip(r)
	}
	if r.Body != nil {
		r.Body.Close()
	}
	if r.URL.Scheme != p.base.Scheme {
		// The handshake pings both schemes of an insecure registry; the
		// client only ever speaks the configured one.
		return nil, fmt.Errorf("not pinging %s://%s: the upstream is configured as %s", r.URL.Scheme, r.URL.Host, p.base.Scheme)
	}
	p.mu.Lock()
	ans := p.ans
	p.mu.Unlock()
	if ans == nil || time.Since(ans.at) >= pingTTL {
		ch := p.flight.DoChan("ping", func() (any, error) { return p.ping(r) })
		select {
		case res := <-ch:
			if res.Err != nil {
				return nil, res.Err
			}
			ans = res.Val.(*pingAnswer)
		case <-r.Context().Done():
			return nil, context.Cause(r.Context())
		}
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", ans.status, http.StatusText(ans.status)),
		StatusCode:    ans.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        ans.header.Clone(),
		Body:          io.NopCloser(bytes.NewReader(ans.body)),
		ContentLength: int64(len(ans.body)),
		Request:       r,
	}, nil
}

func (p *pingCache) ping(r *http.Request) (*pingAnswer, error) {
	resp, err := p.inner.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return nil, err
	}
	ans := &pingAnswer{status: resp.StatusCode, header: resp.Header.Clone(), body: body, at: time.Now()}
	if ans.status == http.StatusOK || ans.status == http.StatusUnauthorized {
		p.mu.Lock()
		p.ans = ans
		p.mu.Unlock()
	}
	return ans, nil
}
