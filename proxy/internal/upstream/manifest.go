package upstream

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/verify"
)

// defaultAccept lists every manifest media type the proxy understands; it
// is sent when the caller gives no Accept list.
var defaultAccept = []string{
	string(types.OCIImageIndex),
	string(types.OCIManifestSchema1),
	string(types.DockerManifestList),
	string(types.DockerManifestSchema2),
}

// MaxReferrersBytes bounds a referrers index.
const MaxReferrersBytes = 4 << 20

func acceptHeader(accept []string) http.Header {
	if len(accept) == 0 {
		accept = defaultAccept
	}
	// One value per entry, as Add would make them, in one allocation.
	return http.Header{"Accept": append([]string(nil), accept...)}
}

// Resolve finds the digest of ref (tag or digest) with HEAD, falling back to
// GET when the upstream sends no Docker-Content-Digest. When it had to GET,
// the verified manifest is returned too (Bytes non-nil) so the caller need
// not fetch again. accept is the client's Accept list (a default list of all
// OCI and Docker manifest types when empty).
//
// The HEAD answer must also carry a usable Content-Type and Content-Length
// (they become the descriptor); otherwise the manifest is fetched. When ref
// is a digest the returned descriptor's digest is always ref.
func (c *Client) Resolve(ctx context.Context, repo, ref string, accept []string) (v1.Descriptor, *verify.Manifest, error) {
	want, isDigest, err := c.checkArgs(repo, ref)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	resp, err := c.open(ctx, wholeCall, http.MethodHead, repo, "manifests/"+ref, nil, acceptHeader(accept), http.StatusOK)
	if err != nil {
		// Some registries do not implement HEAD on manifests.
		var ue *Error
		if !errors.As(err, &ue) || ue.Status != http.StatusMethodNotAllowed {
			return v1.Descriptor{}, nil, err
		}
		return c.resolveByGet(ctx, repo, ref, accept)
	}
	resp.Body.Close()

	announced, err := c.announcedDigest(resp.Header)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	if announced == nil {
		return c.resolveByGet(ctx, repo, ref, accept)
	}
	if isDigest {
		if announced.Algorithm != want.Algorithm {
			// Nothing to compare against; the GET hashes with ref's
			// algorithm.
			return c.resolveByGet(ctx, repo, ref, accept)
		}
		if *announced != want {
			return v1.Descriptor{}, nil, c.mismatch(ref, *announced)
		}
	}
	if resp.ContentLength > MaxManifestBytes {
		return v1.Descriptor{}, nil, fmt.Errorf("upstream %s: manifest %s is %d bytes: %w", c.name, ref, resp.ContentLength, ErrTooLarge)
	}
	mt := headerMediaType(resp.Header.Get("Content-Type"))
	if resp.ContentLength < 0 || mt == "" {
		return c.resolveByGet(ctx, repo, ref, accept)
	}
	return v1.Descriptor{MediaType: types.MediaType(mt), Size: resp.ContentLength, Digest: *announced}, nil, nil
}

func (c *Client) resolveByGet(ctx context.Context, repo, ref string, accept []string) (v1.Descriptor, *verify.Manifest, error) {
	m, err := c.GetManifest(ctx, repo, ref, accept)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	return v1.Descriptor{MediaType: m.MediaType, Size: int64(len(m.Bytes)), Digest: m.Digest}, &m, nil
}

// GetManifest fetches a manifest by tag or digest through a
// MaxManifestBytes limit and checks the body against the digest (the
// requested one, else Docker-Content-Digest). Mismatch is an error.
// Fetched by tag without Docker-Content-Digest, the digest is the body's
// sha256. The media type is Content-Type, or the body's mediaType when the
// header is absent or generic; a body whose mediaType contradicts the
// header is refused.
func (c *Client) GetManifest(ctx context.Context, repo, ref string, accept []string) (verify.Manifest, error) {
	want, isDigest, err := c.checkArgs(repo, ref)
	if err != nil {
		return verify.Manifest{}, err
	}
	resp, err := c.open(ctx, wholeCall, http.MethodGet, repo, "manifests/"+ref, nil, acceptHeader(accept), http.StatusOK)
	if err != nil {
		return verify.Manifest{}, err
	}
	defer resp.Body.Close()

	announced, err := c.announcedDigest(resp.Header)
	if err != nil {
		return verify.Manifest{}, err
	}
	switch {
	case isDigest:
		if announced != nil && announced.Algorithm == want.Algorithm && *announced != want {
			return verify.Manifest{}, c.mismatch(ref, *announced)
		}
	case announced != nil:
		want = *announced
	default:
		want = v1.Hash{Algorithm: "sha256"}
	}

	if resp.ContentLength > MaxManifestBytes {
		return verify.Manifest{}, fmt.Errorf("upstream %s: manifest %s is %d bytes: %w", c.name, ref, resp.ContentLength, ErrTooLarge)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestBytes+1))
	if err != nil {
		return verify.Manifest{}, fmt.Errorf("upstream %s: reading manifest %s: %w", c.name, ref, err)
	}
	if len(body) > MaxManifestBytes {
		return verify.Manifest{}, fmt.Errorf("upstream %s: manifest %s exceeds %d bytes: %w", c.name, ref, MaxManifestBytes, ErrTooLarge)
	}

	got, err := digestOf(want.Algorithm, body)
	if err != nil {
		return verify.Manifest{}, fmt.Errorf("upstream %s: %w", c.name, err)
	}
	if want.Hex != "" && got != want {
		return verify.Manifest{}, c.mismatch(ref, got)
	}

	mt, err := manifestMediaType(resp.Header.Get("Content-Type"), body)
	if err != nil {
		return verify.Manifest{}, fmt.Errorf("upstream %s: manifest %s: %w", c.name, ref, err)
	}
	return verify.Manifest{Digest: got, MediaType: mt, Bytes: body}, nil
}

func (c *Client) checkArgs(repo, ref string) (v1.Hash, bool, error) {
	if err := validRepo(repo); err != nil {
		return v1.Hash{}, false, fmt.Errorf("upstream %s: %w", c.name, err)
	}
	want, isDigest, err := parseRef(ref)
	if err != nil {
		return v1.Hash{}, false, fmt.Errorf("upstream %s: %w", c.name, err)
	}
	return want, isDigest, nil
}

func (c *Client) mismatch(ref string, got v1.Hash) error {
	return fmt.Errorf("upstream %s: %w: requested %s, got %s", c.name, ErrDigestMismatch, ref, got)
}

// announcedDigest parses Docker-Content-Digest; nil when absent. A present
// but malformed or unsupported one is an error: the upstream is confused
// or lying, and guessing would hide it.
func (c *Client) announcedDigest(h http.Header) (*v1.Hash, error) {
	s := h.Get("Docker-Content-Digest")
	if s == "" {
		return nil, nil
	}
	d, err := v1.NewHash(s)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w: Docker-Content-Digest %q: %v", c.name, ErrInvalidResponse, sanitize(s, 200), err)
	}
	return &d, nil
}

func digestOf(algorithm string, b []byte) (v1.Hash, error) {
	h, err := v1.Hasher(algorithm)
	if err != nil {
		return v1.Hash{}, err
	}
	h.Write(b)
	return v1.Hash{Algorithm: algorithm, Hex: hex.EncodeToString(h.Sum(nil))}, nil
}

// headerMediaType returns the media type of a Content-Type header without
// parameters, or "" when it is absent, malformed or too generic to name a
// manifest type.
func headerMediaType(ct string) string {
	if ct == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return ""
	}
	switch mt {
	case "application/json", "application/octet-stream", "text/plain":
		return ""
	}
	return mt
}

func manifestMediaType(ct string, body []byte) (types.MediaType, error) {
	var probe struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return "", fmt.Errorf("%w: manifest is not a JSON object: %v", ErrInvalidResponse, err)
	}
	if mt := headerMediaType(ct); mt != "" {
		if probe.MediaType != "" && probe.MediaType != mt {
			return "", fmt.Errorf("%w: Content-Type %q contradicts mediaType %q", ErrInvalidResponse, sanitize(mt, 128), sanitize(probe.MediaType, 128))
		}
		return types.MediaType(mt), nil
	}
	switch {
	case probe.MediaType != "":
		return types.MediaType(probe.MediaType), nil
	// OCI made mediaType optional at first; the shape is then decisive.
	case probe.Manifests != nil:
		return types.OCIImageIndex, nil
	case probe.Config != nil:
		return types.OCIManifestSchema1, nil
	}
	return "", fmt.Errorf("%w: cannot determine manifest media type", ErrInvalidResponse)
}

// Manifest implements verify.Fetcher.
func (c *Client) Manifest(ctx context.Context, repo, ref string) (verify.Manifest, error) {
	return c.GetManifest(ctx, repo, ref, nil)
}

// Referrers implements verify.Fetcher. The index is parsed strictly: one
// JSON value of at most MaxReferrersBytes, schemaVersion 2, an OCI index
// media type when one is given, and a digest and non-negative size on
// every descriptor.
func (c *Client) Referrers(ctx context.Context, repo string, digest v1.Hash) (*v1.IndexManifest, error) {
	page, err := c.ReferrersPage(ctx, repo, digest, nil)
	if err != nil {
		return nil, err
	}
	return page.Index, nil
}

// ReferrersPage is one page of an upstream's referrers listing.
type ReferrersPage struct {
	Index *v1.IndexManifest
	// Links are the answer's Link header fields, which name the next page
	// when the upstream paginates.
	Links []string
}

// ReferrersAbsentFor is how long an upstream that answered a referrers
// request as a registry without the API does (a 404 that is not a
// registry error, such as distribution 2.8's "404 page not found") is
// not asked again: its referrers requests then fail at once with
// verify.ErrNoReferrersAPI, sparing every cold verification one request
// (the fallback tag is read either way). A registry that gains the API is
// asked again after this long.
const ReferrersAbsentFor = 5 * time.Minute

// ReferrersPage reads one page of the referrers of digest as Referrers
// does, with query (artifactType, page tokens) forwarded upstream. A 404
// wraps verify.ErrNoReferrersAPI.
func (c *Client) ReferrersPage(ctx context.Context, repo string, digest v1.Hash, query url.Values) (ReferrersPage, error) {
	if _, _, err := c.checkArgs(repo, digest.String()); err != nil {
		return ReferrersPage{}, err
	}
	now := time.Now
	if c.now != nil {
		now = c.now
	}
	if until := c.referrersAbsent.Load(); until != 0 && now().UnixNano() < until {
		return ReferrersPage{}, fmt.Errorf("upstream %s: %w (it answered without one lately)", c.name, verify.ErrNoReferrersAPI)
	}
	hdr := http.Header{"Accept": {string(types.OCIImageIndex)}}
	resp, err := c.open(ctx, wholeCall, http.MethodGet, repo, "referrers/"+digest.String(), query, hdr, http.StatusOK)
	if err != nil {
		var ue *Error
		if errors.As(err, &ue) && ue.Status == http.StatusNotFound {
			// A registry with the API never answers 404 (OCI
			// distribution spec); one without it answers its own "no
			// such route". A 404 that is a registry error (NAME_UNKNOWN
			// from a registry bending the spec) says nothing of the
			// other repositories, so only the first is remembered.
			if code, _, _ := ue.firstDiagnostic(); code == "" {
				c.referrersAbsent.Store(now().Add(ReferrersAbsentFor).UnixNano())
			}
			// The *Error is not wrapped: it would also match
			// verify.ErrNotFound, which is not what this means.
			return ReferrersPage{}, fmt.Errorf("upstream %s: %w (%s)", c.name, verify.ErrNoReferrersAPI, ue.Error())
		}
		return ReferrersPage{}, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxReferrersBytes {
		return ReferrersPage{}, fmt.Errorf("upstream %s: referrers of %s: %w", c.name, digest, ErrTooLarge)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxReferrersBytes+1))
	if err != nil {
		return ReferrersPage{}, fmt.Errorf("upstream %s: reading referrers of %s: %w", c.name, digest, err)
	}
	if len(body) > MaxReferrersBytes {
		return ReferrersPage{}, fmt.Errorf("upstream %s: referrers of %s: %w", c.name, digest, ErrTooLarge)
	}
	idx, err := parseReferrers(body)
	if err != nil {
		return ReferrersPage{}, fmt.Errorf("upstream %s: referrers of %s: %w", c.name, digest, err)
	}
	return ReferrersPage{Index: idx, Links: append([]string(nil), resp.Header.Values("Link")...)}, nil
}

// ParseReferrersIndex parses an image index listing referrers (a referrers
// answer, or the fallback tag's index) as strictly as Referrers does. Its
// errors wrap ErrInvalidResponse.
func ParseReferrersIndex(body []byte) (*v1.IndexManifest, error) {
	return parseReferrers(body)
}

func parseReferrers(body []byte) (*v1.IndexManifest, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var idx v1.IndexManifest
	if err := dec.Decode(&idx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidResponse, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after index", ErrInvalidResponse)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("%w: index schemaVersion %d", ErrInvalidResponse, idx.SchemaVersion)
	}
	if idx.MediaType != "" && idx.MediaType != types.OCIImageIndex {
		return nil, fmt.Errorf("%w: index mediaType %q", ErrInvalidResponse, sanitize(string(idx.MediaType), 128))
	}
	for i, d := range idx.Manifests {
		if d.Digest.Algorithm == "" || d.Size < 0 || strings.TrimSpace(string(d.MediaType)) == "" {
			return nil, fmt.Errorf("%w: index entry %d incomplete", ErrInvalidResponse, i)
		}
	}
	return &idx, nil
}
