package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/verify"
)

// Where a referrers answer came from (the source label of
// portcullis_referrers_total).
const (
	referrersAPI      = "api"
	referrersFallback = "fallback"
	referrersEmpty    = "empty"
)

// maxReferrersAnswer bounds the listing written to the client. The
// upstream's part was read within passThroughMax, but re-encoding can
// grow it (invalid UTF-8 becomes \ufffd) and summaries are added to it.
const maxReferrersAnswer = 2 * passThroughMax

// serveReferrers answers GET /v2/<name>/referrers/<digest> for every
// upstream. Where the upstream has the referrers API its page is relayed;
// where it answers 404 (distribution 2.8, older Harbor) the listing is
// synthesised from the sha256-<hex> fallback tag, as OCI 1.1 clients
// would do themselves. Either way the answer is re-encoded from a strict
// parse, filtered by artifactType here whatever the upstream did (the
// filter is idempotent, and an upstream that ignored it would otherwise
// leak the rest), and carries the proxy's own verification summaries.
func (p *Proxy) serveReferrers(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, subject v1.Hash) error {
	ctx := r.Context()
	var (
		listed      []v1.Descriptor
		annotations map[string]string
		next        string
		source      = referrersAPI
		// The fallback index is always the whole listing; a page of the
		// API is the first one only when the client sent no page token.
		withSummaries = true
	)
	page, err := u.client.ReferrersPage(ctx, repo, subject, pageQuery(r))
	switch {
	case err == nil:
		listed, annotations = page.Index.Manifests, page.Index.Annotations
		next = nextLink(page.Links, r)
		withSummaries = firstReferrersPage(r)
	case errors.Is(err, verify.ErrNoReferrersAPI) && ctx.Err() == nil:
		idx, err := p.fallbackReferrers(r, u, repo, subject)
		if err != nil {
			return err
		}
		source = referrersEmpty
		if idx != nil {
			source, listed = referrersFallback, idx.Manifests
		}
	default:
		if errors.Is(err, upstream.ErrTooLarge) {
			p.metrics.upstreamErrors.WithLabelValues(u.name, "too_large").Inc()
		}
		return p.upstreamFailure(ctx, u, err, CodeManifestUnknown, "referrers")
	}

	var summaries []v1.Descriptor
	if withSummaries {
		summaries = p.summaryDescriptors(ctx, u, repo, subject)
	}
	filter := artifactTypeFilter(r)
	out := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     mergeReferrers(listed, summaries, filter),
		Annotations:   annotations,
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Annotations are upstream text; HTML escaping would multiply it.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("encoding referrers of %s: %w", subject, err)
	}
	if buf.Len() > maxReferrersAnswer {
		p.metrics.upstreamErrors.WithLabelValues(u.name, "too_large").Inc()
		return errorf(http.StatusBadGateway, CodeUnknown, "referrers of %s at upstream %s exceed %d bytes", subject, u.name, maxReferrersAnswer)
	}
	p.metrics.referrers.WithLabelValues(u.name, source).Inc()

	h := w.Header()
	h.Set("Content-Type", string(types.OCIImageIndex))
	if filter != nil {
		h.Set("OCI-Filters-Applied", "artifactType")
	}
	if next != "" {
		h.Set("Link", next)
	}
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
	return nil
}

// fallbackReferrers reads the referrers tag schema's index of subject in
// repo: nil when there is none, an error when it cannot be read or is not
// a well-formed OCI image index. A malformed index is never an empty
// listing: that would hide signatures the client may need.
func (p *Proxy) fallbackReferrers(r *http.Request, u *upstreamEntry, repo string, subject v1.Hash) (*v1.IndexManifest, error) {
	ctx := r.Context()
	tag := fallbackTag(subject)
	m, err := u.client.GetManifest(ctx, repo, tag, []string{string(types.OCIImageIndex)})
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, clientGone(ctx)
	case errors.Is(err, verify.ErrNotFound):
		return nil, nil
	case errors.Is(err, upstream.ErrInvalidResponse):
		return nil, p.malformedFallback(u, tag, err)
	default:
		return nil, p.upstreamFailure(ctx, u, err, CodeManifestUnknown, "referrers fallback")
	}
	if m.MediaType != types.OCIImageIndex {
		return nil, p.malformedFallback(u, tag, fmt.Errorf("media type %q", truncate(string(m.MediaType), 128)))
	}
	idx, err := upstream.ParseReferrersIndex(m.Bytes)
	if err != nil {
		return nil, p.malformedFallback(u, tag, err)
	}
	return idx, nil
}

func (p *Proxy) malformedFallback(u *upstreamEntry, tag string, err error) error {
	p.metrics.upstreamErrors.WithLabelValues(u.name, "invalid").Inc()
	p.log.Warn("malformed referrers fallback index", zap.String("upstream", u.name), zap.String("tag", tag), zap.Error(err))
	return errorf(http.StatusBadGateway, CodeUnknown,
		"upstream %s has no referrers API and its referrers fallback tag %s is not a valid OCI image index", u.name, tag)
}

// fallbackTag is the referrers tag schema's tag for subject:
// <alg>-<hex>, the hex cut to 64 characters so that a sha512 digest still
// makes a valid tag.
func fallbackTag(subject v1.Hash) string {
	hex := subject.Hex
	if len(hex) > 64 {
		hex = hex[:64]
	}
	return subject.Algorithm + "-" + hex
}

// artifactTypeFilter is the set of artifact types the client asked for,
// nil when it asked for no filter. Several values are any of them, as
// registries that accept the parameter repeated read it.
func artifactTypeFilter(r *http.Request) map[string]bool {
	var f map[string]bool
	for _, v := range r.URL.Query()["artifactType"] {
		if v == "" {
			continue
		}
		if f == nil {
			f = map[string]bool{}
		}
		f[v] = true
	}
	return f
}

// firstReferrersPage tells a client's first referrers request from one
// that follows a next link: a first request carries at most the filter, a
// page size and ns, anything else is a page token the upstream handed out.
func firstReferrersPage(r *http.Request) bool {
	for k := range r.URL.Query() {
		switch k {
		case "ns", "artifactType", "n":
		default:
			return false
		}
	}
	return true
}

// mergeReferrers lists the upstream's descriptors, then the summaries,
// each digest once and only those matching filter (nil: all). A listing
// uses the referrer's artifactType as given; a descriptor without one
// matches no filter. The result is never nil, so it encodes as [].
func mergeReferrers(listed, summaries []v1.Descriptor, filter map[string]bool) []v1.Descriptor {
	out := make([]v1.Descriptor, 0, len(listed)+len(summaries))
	seen := make(map[v1.Hash]bool, len(listed)+len(summaries))
	for _, list := range [][]v1.Descriptor{listed, summaries} {
		for _, d := range list {
			if seen[d.Digest] {
				continue
			}
			seen[d.Digest] = true
			if filter != nil && !filter[d.ArtifactType] {
				continue
			}
			out = append(out, d)
		}
	}
	return out
}
