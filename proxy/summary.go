package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/portcullis-oci/portcullis/verify/summary"
)

// DefaultSummaryCacheSize bounds the verification summaries kept in
// memory: a few kilobytes each.
const DefaultSummaryCacheSize = 4096

// summaryStore holds the summaries Portcullis signed. A summary belongs to
// one verdict: it is made the first time it is asked for, served while
// that very verdict is in the verdict cache under the current policy
// fingerprint, and made anew for the next verdict. Nothing is ever
// written to an upstream.
type summaryStore struct {
	signer *summary.Signer
	// entries are keyed by verdict key; content maps
	// upstream\x00repository\x00digest of a summary's manifest, bundle and
	// config to the verdict key of the summary they belong to.
	entries *lru.Cache[string, *summaryEntry]
	content *lru.Cache[string, string]
	flights flightGroup[*summaryEntry]
}

type summaryEntry struct {
	key         string // verdict key
	fingerprint string
	subject     v1.Hash
	verdict     verdictIdentity
	sum         *summary.Summary
	// listed: the summary is merged into the subject's referrers (see
	// listable).
	listed bool
}

// listable says whether a summary may be listed among its subject's
// referrers without changing what a client concludes. cosign v2 switches
// to the sigstore bundle format for a digest as soon as any referrer is a
// bundle, and then no longer reads legacy .sig and .att signatures: a
// summary listed next to an image signed only the legacy way would make
// "cosign verify" fail through the proxy where it succeeds directly. Such
// a summary is still made and served by digest and from the admin API.
func listable(v verify.Verdict) bool {
	for _, s := range v.Signers {
		if s.Evidence == verify.FormatSigstoreBundle {
			return true
		}
	}
	return false
}

// verdictIdentity tells one verdict of a key from the next: a new
// verification has a new decision time.
type verdictIdentity struct {
	checkedAt time.Time
	boundary  string
}

func identify(v verify.Verdict) verdictIdentity {
	return verdictIdentity{checkedAt: v.CheckedAt, boundary: v.Boundary}
}

func (a verdictIdentity) same(b verdictIdentity) bool {
	return a.checkedAt.Equal(b.checkedAt) && a.boundary == b.boundary
}

func newSummaryStore(s *summary.Signer, size int) (*summaryStore, error) {
	entries, err := lru.New[string, *summaryEntry](size)
	if err != nil {
		return nil, err
	}
	// Three pieces of content per summary.
	content, err := lru.New[string, string](3 * size)
	if err != nil {
		return nil, err
	}
	return &summaryStore{signer: s, entries: entries, content: content}, nil
}

// summaryDescriptors lists the verification summaries Portcullis made for
// subject, to be merged into its referrers answer.
func (p *Proxy) summaryDescriptors(ctx context.Context, u *upstreamEntry, repo string, subject v1.Hash) []v1.Descriptor {
	e, err := p.summaryFor(ctx, u, repo, subject)
	if err != nil || e == nil || !e.listed {
		return nil
	}
	return []v1.Descriptor{e.sum.Descriptor}
}

// summaryFor returns the summary of subject's current verdict in
// upstream u and repo, making it if needed; nil when summaries are off or
// the verdict is not an enforce-mode allow. A subject without a cached
// verdict is verified first, exactly as a pull of it would be: a client
// may ask for the summary of a digest it has not pulled through the proxy
// (cosign verify-attestation by digest only lists referrers).
func (p *Proxy) summaryFor(ctx context.Context, u *upstreamEntry, repo string, subject v1.Hash) (*summaryEntry, error) {
	s, vc := p.opts.summaries, p.opts.verdicts
	if s == nil || vc == nil {
		return nil, nil
	}
	pv := p.currentVerifier()
	fp := pv.FingerprintFor(u.name, repo)
	key := verdictKey(fp, u.name, repo, subject)
	var have *verify.Manifest
	v, ok := vc.Get(key)
	if !ok {
		res, err := p.verifyShared(ctx, manifestReq{u: u, repo: repo, ref: subject.String(), v: pv}, key, subject, nil)
		if err != nil {
			return nil, err
		}
		v, have = res.verdict, &res.manifest
	}
	if summary.Summarizable(v, subject) != nil {
		return nil, nil
	}
	id := identify(v)
	if e, ok := s.entries.Get(key); ok && e.fingerprint == fp && e.verdict.same(id) {
		return e, nil
	}
	// Keyed by the verdict too, so that a caller holding the next verdict
	// never takes the summary of the one before.
	fkey := key + "\x00" + v.CheckedAt.UTC().Format(time.RFC3339Nano) + "\x00" + v.Boundary
	return s.flights.do(ctx, fkey, func(fctx context.Context) (*summaryEntry, error) {
		if e, ok := s.entries.Get(key); ok && e.fingerprint == fp && e.verdict.same(id) {
			return e, nil
		}
		vctx, cancel := context.WithTimeout(fctx, p.opts.verifyTimeout)
		defer cancel()
		// The referrer names its subject by media type and size, which
		// only the manifest's bytes give.
		m, _, err := p.manifestBytes(vctx, u, repo, subject, have)
		if err != nil {
			return nil, err
		}
		pm, err := p.parse(&m)
		if err != nil {
			return nil, err
		}
		sum, err := s.signer.Sign(summary.Input{
			Upstream: u.name, Repository: repo,
			Subject:     v1.Descriptor{MediaType: pm.mediaType, Digest: subject, Size: int64(len(m.Bytes))},
			Verdict:     v,
			Fingerprint: fp,
		})
		if err != nil {
			p.log.Error("could not sign a verification summary", zap.String("upstream", u.name),
				zap.String("repository", repo), zap.String("digest", subject.String()), zap.Error(err))
			return nil, err
		}
		e := &summaryEntry{key: key, fingerprint: fp, subject: subject, verdict: id, sum: sum, listed: listable(v)}
		s.entries.Add(key, e)
		for _, d := range []v1.Hash{sum.Descriptor.Digest, sum.BundleDigest, sum.ConfigDigest} {
			s.content.Add(blobKey(u.name, repo, d), key)
		}
		return e, nil
	})
}

// summaryContent finds the summary whose manifest, bundle or config is
// digest in upstream u and repo, while the verdict it summarises is still
// the cached one under the current policy.
func (p *Proxy) summaryContent(u *upstreamEntry, repo string, digest v1.Hash) *summaryEntry {
	s, vc := p.opts.summaries, p.opts.verdicts
	if s == nil || vc == nil {
		return nil
	}
	key, ok := s.content.Get(blobKey(u.name, repo, digest))
	if !ok {
		return nil
	}
	e, ok := s.entries.Get(key)
	if !ok || e.fingerprint != p.currentVerifier().FingerprintFor(u.name, repo) {
		return nil
	}
	v, ok := vc.Get(key)
	if !ok || summary.Summarizable(v, e.subject) != nil || !identify(v).same(e.verdict) {
		return nil
	}
	return e
}

// serveSummaryManifest answers a manifest request for a summary the proxy
// made, from memory; false when the request is for anything else.
func (p *Proxy) serveSummaryManifest(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, req apiRequest) bool {
	if req.isTag {
		return false
	}
	e := p.summaryContent(u, repo, req.digest)
	if e == nil || e.sum.Descriptor.Digest != req.digest {
		return false
	}
	h := w.Header()
	h.Set("Content-Type", string(e.sum.Descriptor.MediaType))
	h.Set("Docker-Content-Digest", req.digest.String())
	h.Set("ETag", `"`+req.digest.String()+`"`)
	h.Set("Content-Length", strconv.Itoa(len(e.sum.Manifest)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(e.sum.Manifest)
	}
	return true
}

// serveSummaryBlob answers a blob request for a summary's bundle or config
// from memory; false when the request is for anything else.
func (p *Proxy) serveSummaryBlob(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, digest v1.Hash) bool {
	e := p.summaryContent(u, repo, digest)
	if e == nil {
		return false
	}
	var (
		b  []byte
		mt string
	)
	switch digest {
	case e.sum.BundleDigest:
		b, mt = e.sum.Bundle, summary.BundleMediaType
	case e.sum.ConfigDigest:
		b, mt = e.sum.Config, summary.EmptyMediaType
	default:
		return false
	}
	h := w.Header()
	h.Set("Content-Type", mt)
	h.Set("Docker-Content-Digest", digest.String())
	h.Set("ETag", `"`+digest.String()+`"`)
	// ServeContent answers ranges, conditionals and HEAD.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	return true
}

// serveSummaryAdmin answers GET /v1/decisions/{digest}/summary with the
// summary bundle of digest. The upstream and repository come from the
// query (both or neither), else from the most recent enforce-mode allow of
// digest among the recent decisions.
func (p *Proxy) serveSummaryAdmin(w http.ResponseWriter, r *http.Request) {
	if p.opts.summaries == nil {
		writeText(w, http.StatusNotFound, "verification summaries are not configured\n")
		return
	}
	d, perr := parseDigest(r.PathValue("digest"))
	if perr != nil {
		writeText(w, http.StatusBadRequest, perr.Message+"\n")
		return
	}
	u, repo, err := p.summarySubject(r, d)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			writeText(w, e.Status, e.Message+"\n")
			return
		}
		writeText(w, http.StatusBadRequest, err.Error()+"\n")
		return
	}
	e, err := p.summaryFor(r.Context(), u, repo, d)
	if err != nil || e == nil {
		msg := fmt.Sprintf("no verification summary: %s is not allowed in enforce mode in %s/%s\n", d, u.name, repo)
		if err != nil {
			msg = fmt.Sprintf("no verification summary: %s in %s/%s could not be decided\n", d, u.name, repo)
		}
		writeText(w, http.StatusNotFound, msg)
		return
	}
	h := w.Header()
	h.Set("Content-Type", summary.BundleMediaType)
	h.Set("Docker-Content-Digest", e.sum.BundleDigest.String())
	h.Set("Content-Length", strconv.Itoa(len(e.sum.Bundle)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(e.sum.Bundle)
}

// summarySubject says where the admin API's summary of d is asked for.
// The query's upstream is a lookup key like ?ns=, never an address.
func (p *Proxy) summarySubject(r *http.Request, d v1.Hash) (*upstreamEntry, string, error) {
	q := r.URL.Query()
	up, repo := q.Get("upstream"), q.Get("repository")
	switch {
	case up != "" && repo != "":
		if perr := validateName(repo); perr != nil {
			return nil, "", perr
		}
		u, repo, perr := p.router.route(repo, up)
		if perr != nil {
			return nil, "", perr
		}
		return u, repo, nil
	case up != "" || repo != "":
		return nil, "", errors.New("give both upstream and repository, or neither")
	}
	for _, dec := range p.decisions.list() {
		if dec.Digest != d.String() || dec.Decision != "allow" || dec.Mode != verify.ModeEnforce {
			continue
		}
		if u := p.router.byKey[strings.ToLower(dec.Upstream)]; u != nil {
			return u, dec.Repository, nil
		}
	}
	return nil, "", errorf(http.StatusNotFound, CodeManifestUnknown,
		"no recent enforce-mode allow of %s: give upstream and repository", d)
}
