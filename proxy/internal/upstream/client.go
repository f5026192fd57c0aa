package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
)

// MaxManifestBytes is the largest manifest (or index) accepted from an
// upstream; larger ones are refused before they are read whole.
const MaxManifestBytes = 4 << 20

// Config describes one upstream registry.
type Config struct {
	Name     string
	URL      string // scheme://host[:port]
	Insecure bool   // allow http:// and skip TLS verification
	RootCAs  []byte // PEM added to the system pool
	Auth     authn.Keychain
	Timeout  time.Duration // per call; default 30s
	// Transport is the base round tripper (tests inject spies); default a
	// clone of http.DefaultTransport with RootCAs/Insecure applied.
	Transport http.RoundTripper
}

// Client talks to one upstream registry. Safe for concurrent use.
// It implements verify.Fetcher.
type Client struct{}

var _ verify.Fetcher = (*Client)(nil)

// New validates cfg and returns a client. Nothing is dialled.
func New(cfg Config) (*Client, error) { panic("unimplemented") }

// Name is the configured upstream name.
func (c *Client) Name() string { panic("unimplemented") }

// Resolve finds the digest of ref (tag or digest) with HEAD, falling back to
// GET when the upstream sends no Docker-Content-Digest. When it had to GET,
// the verified manifest is returned too (Bytes non-nil) so the caller need
// not fetch again. accept is the client's Accept list (a default list of all
// OCI and Docker manifest types when empty).
func (c *Client) Resolve(ctx context.Context, repo, ref string, accept []string) (v1.Descriptor, *verify.Manifest, error) {
	panic("unimplemented")
}

// GetManifest fetches a manifest by tag or digest through a
// MaxManifestBytes limit and checks the body against the digest (the
// requested one, else Docker-Content-Digest). Mismatch is an error.
func (c *Client) GetManifest(ctx context.Context, repo, ref string, accept []string) (verify.Manifest, error) {
	panic("unimplemented")
}

// OpenBlob opens a blob for streaming. method is GET or HEAD; hdr may carry
// Range/If-* headers to forward. Redirects to storage hosts are followed
// without the upstream's credentials. The caller must close the body. A non
// 2xx upstream answer is returned as *Error (body already drained and
// closed).
func (c *Client) OpenBlob(ctx context.Context, method, repo string, digest v1.Hash, hdr http.Header) (*http.Response, error) {
	panic("unimplemented")
}

// Get performs a read-only GET of an API path under /v2/<repo>/ (e.g.
// "tags/list", "referrers/sha256:…") with query, for pass-through
// endpoints. Non-2xx answers are returned as *Error.
func (c *Client) Get(ctx context.Context, repo, path string, query url.Values, hdr http.Header) (*http.Response, error) {
	panic("unimplemented")
}

// Referrers implements verify.Fetcher.
func (c *Client) Referrers(ctx context.Context, repo string, digest v1.Hash) (*v1.IndexManifest, error) {
	panic("unimplemented")
}

// Manifest implements verify.Fetcher.
func (c *Client) Manifest(ctx context.Context, repo, ref string) (verify.Manifest, error) {
	panic("unimplemented")
}

// Blob implements verify.Fetcher: the whole blob, read through limit and
// checked against digest.
func (c *Client) Blob(ctx context.Context, repo string, digest v1.Hash, limit int64) ([]byte, error) {
	panic("unimplemented")
}

// Error is an upstream's non-2xx answer, kept so the proxy can pass its
// status and diagnostics on. Body is at most 64 KiB.
type Error struct {
	Status int
	Header http.Header
	Body   []byte
}

func (e *Error) Error() string { panic("unimplemented") }

// IsTransient reports whether err is a failure to reach or hear from the
// upstream (connection refused, DNS, timeout, 5xx, 429) rather than an
// answer about the content.
func IsTransient(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
