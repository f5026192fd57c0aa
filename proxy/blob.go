package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
)

// Request headers forwarded to the upstream for blobs: ranges and
// conditionals only. Client credentials are never forwarded.
var blobRequestHeaders = []string{"Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since"}

// Response headers passed back to the client. Content-Length is the
// upstream client's checked length, Content-Range is only relayed on a 206
// and Docker-Content-Digest is always the requested digest, so none of
// them is copied.
var blobResponseHeaders = []string{"Accept-Ranges", "Content-Type", "ETag", "Last-Modified"}

func (p *Proxy) serveBlob(w http.ResponseWriter, r *http.Request, u *upstreamEntry, repo string, digest v1.Hash) error {
	if p.serveSummaryBlob(w, r, u, repo, digest) {
		return nil
	}
	// size bounds the stream: a verified manifest's descriptor says how
	// long the blob is, so an upstream cannot stream past it. Without gating
	// the upstream's own length (Content-Length, Content-Range or a HEAD)
	// bounds it; the digest check still rejects any body that is not the
	// blob.
	size := int64(-1)
	// wouldDeny is set when the blob is served only because its
	// repository is in warn boundaries; the would-be denial is recorded
	// once the upstream shows it has the blob.
	var wouldDeny *blobGate
	if p.opts.blobGating {
		if g, ok := p.blobs.get(blobKey(u.name, repo, digest)); ok {
			size = g.size
		} else if s, ok, undecided := p.sharedBlob(r.Context(), blobKey(u.name, repo, digest)); ok {
			size = s
		} else {
			g := p.gateFor(u, repo)
			if g.mode != verify.ModeWarn {
				if undecided {
					return p.undecidedBlob(w, u, repo, digest)
				}
				return p.ungatedBlob(r, u, repo, digest, g)
			}
			wouldDeny = &g
		}
	}
	if served, err := p.serveBlobShared(w, r, u, repo, digest, size, wouldDeny); served {
		return err
	}
	hdr := http.Header{}
	for _, k := range blobRequestHeaders {
		for _, v := range r.Header.Values(k) {
			hdr.Add(k, v)
		}
	}
	ctx := r.Context()
	// Registered before the upstream blob is opened, so a pull waiting
	// for a stream connection can free one held by a stalled client.
	st := p.startStream(r, u, repo, digest)
	defer p.streams.remove(st)
	opened := p.whileOpening(st, u)
	resp, err := u.client.OpenBlob(ctx, r.Method, repo, digest, size, hdr)
	opened()
	if err != nil {
		if errors.Is(err, upstream.ErrUnexpectedPartial) {
			// A part of a blob cannot be checked against its digest, and
			// the client asked for all of it.
			p.log.Error("upstream answered a whole-blob request with partial content", zap.String("upstream", u.name),
				zap.String("repository", repo), zap.String("digest", digest.String()), zap.Error(err))
			p.metrics.upstreamErrors.WithLabelValues(u.name, "unexpected_partial").Inc()
			return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered a request for the whole blob with partial content", u.name)
		}
		var ue *upstream.Error
		if errors.As(err, &ue) && ue.Status == http.StatusRequestedRangeNotSatisfiable {
			copyHeaders(w.Header(), ue.Header, []string{"Content-Range"})
			return errorf(http.StatusRequestedRangeNotSatisfiable, CodeBlobUnknown, "requested range not satisfiable")
		}
		return p.upstreamFailure(ctx, u, err, CodeBlobUnknown, "blob")
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent, http.StatusNotModified:
	default:
		p.metrics.upstreamErrors.WithLabelValues(u.name, "status_other").Inc()
		return errorf(http.StatusBadGateway, CodeUnknown, "upstream %s answered %d for a blob", u.name, resp.StatusCode)
	}
	// The upstream has the blob: in an enforce boundary this is where it
	// would have been denied.
	if wouldDeny != nil {
		p.recordBlob(r, u, repo, digest, *wouldDeny)
	}
	if resp.StatusCode == http.StatusNotModified {
		copyHeaders(w.Header(), resp.Header, []string{"ETag", "Last-Modified", "Docker-Content-Digest"})
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	copyHeaders(w.Header(), resp.Header, blobResponseHeaders)
	w.Header().Set("Docker-Content-Digest", digest.String())
	if resp.ContentLength >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	// A 200 is the whole blob even when a range was asked for (the
	// upstream may ignore Range); it is relayed, hashed, as a 200, never
	// with a Content-Range claiming a part. A 206 is either the whole blob,
	// hashed, or the part the client asked for, which the client checks
	// once it has assembled the blob.
	if resp.StatusCode == http.StatusPartialContent {
		copyHeaders(w.Header(), resp.Header, []string{"Content-Range"})
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return nil
	}
	// A verified body (a 200 or a whole-blob 206) hashes on a second
	// goroutine and holds back the last chunk until the digest matches; a
	// partial 206 is copied as is. Both stream on buffers from the
	// proxy's budget, and either fails rather than yield a byte past its
	// announced length.
	cw := &clientWriter{w: w}
	n, limited, err := upstream.Stream(cw, resp.Body, p.opts.streamBudget.StreamBudget)
	p.metrics.blobBytes.Add(float64(n))
	if limited {
		p.metrics.streamBufLimited.Inc()
		if p.opts.streamBudget.report.allow(time.Now(), time.Minute) {
			p.log.Info("stream buffer budget in use: blob streams beyond it run on small buffers",
				zap.Int64("budget_bytes", p.opts.streamBudget.Limit()))
		}
	}
	if err != nil {
		if st.wasEvicted() {
			// Dropped for a waiting pull, logged and counted there.
			panic(http.ErrAbortHandler)
		}
		if cw.err != nil && errors.Is(cw.err, os.ErrDeadlineExceeded) {
			// The listener's idle deadline dropped a client that took
			// nothing for the idle timeout; the connection is already
			// closed and counted.
			p.log.Info("client stalled: blob stream dropped", zap.String("client", r.RemoteAddr),
				zap.String("upstream", u.name), zap.String("repository", repo),
				zap.String("digest", digest.String()), zap.Int64("bytes", n))
			panic(http.ErrAbortHandler)
		}
		mismatch := errors.Is(err, upstream.ErrDigestMismatch)
		tooLong := errors.Is(err, upstream.ErrTooLarge)
		if mismatch || tooLong || r.Context().Err() == nil {
			// The status is already sent; aborting the connection is the
			// only way left to tell the client the body is not the blob.
			// Wrong or over-long bytes are reported even if the client
			// left meanwhile: the upstream sent them either way.
			kind := "blob_stream"
			switch {
			case mismatch:
				kind = "blob_digest_mismatch"
			case tooLong:
				kind = "blob_too_long"
			case errors.Is(err, upstream.ErrUpstreamStalled):
				kind = "upstream_stalled"
			}
			p.log.Warn("blob stream failed", zap.String("upstream", u.name), zap.String("repository", repo),
				zap.String("digest", digest.String()), zap.Int64("bytes", n), zap.Error(err))
			p.metrics.upstreamErrors.WithLabelValues(u.name, kind).Inc()
		}
		// Aborting closes the client's connection; the deferred Close of
		// the upstream body closes the upstream's.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// clientWriter keeps the first error writing to the client, so a stream
// that failed can tell the client's side from the upstream's.
type clientWriter struct {
	w   io.Writer
	err error
}

func (c *clientWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// DefaultStreamBufferBudget is the default of WithStreamBufferBudget:
// eight streams at full speed on 1 MiB buffer pairs. Beyond that, streams
// run on small buffers for about a fifth more CPU per byte, and 300
// clients that stop reading cost well under 128 KiB each, budget included.
const DefaultStreamBufferBudget = 16 << 20

// streamBudget is the large-buffer budget a proxy's blob streams share,
// with the gate that keeps its exhaustion to one log line a minute.
type streamBudget struct {
	*upstream.StreamBudget
	report logGate
}

func newStreamBudget(bytes int64) *streamBudget {
	return &streamBudget{StreamBudget: upstream.NewStreamBudget(bytes)}
}

// blobGate is how a blob no allowed manifest references is decided in
// its repository.
type blobGate struct {
	boundary string
	mode     verify.Mode
}

// gateFor asks the Verifier which mode covers every manifest the
// repository could hold. A repository a manifest could leave to
// unmatched is enforced: under "deny" its manifests are refused, and
// under "insecure-allow" gating is what keeps unverified repositories to
// the blobs of manifests actually pulled.
func (p *Proxy) gateFor(u *upstreamEntry, repo string) blobGate {
	b, mode, ok := p.currentVerifier().BlobMode(u.name, repo)
	if !ok || mode != verify.ModeWarn {
		mode = verify.ModeEnforce
	}
	if !ok {
		b = ""
	}
	return blobGate{boundary: b, mode: mode}
}

// ungatedBlob answers for a blob no verified manifest references, in a
// repository where that is enforced. One upstream HEAD tells a blob that
// does not exist (404 BLOB_UNKNOWN, as the distribution spec and its
// conformance suite expect, and not a decision) from one that does and is
// denied; no byte of it is ever fetched. Anything else the HEAD meets (an
// unreachable upstream, a 401) is the denial.
func (p *Proxy) ungatedBlob(r *http.Request, u *upstreamEntry, repo string, digest v1.Hash, g blobGate) error {
	resp, err := u.client.OpenBlob(r.Context(), http.MethodHead, repo, digest, -1, nil)
	if err == nil {
		resp.Body.Close()
	}
	var ue *upstream.Error
	if errors.As(err, &ue) && ue.Status == http.StatusNotFound {
		return errorf(http.StatusNotFound, CodeBlobUnknown, "blob %s not found at upstream %s", digest, u.name)
	}
	reason := p.recordBlob(r, u, repo, digest, g)
	return &Error{
		Status:  http.StatusForbidden,
		Code:    CodeDenied,
		Message: fmt.Sprintf("blob %s is not referenced by any verified manifest in %s", digest, repo),
		Detail: map[string]any{
			"boundary":   g.boundary,
			"digest":     digest.String(),
			"upstream":   u.name,
			"repository": repo,
			"reasons":    []string{reason},
		},
	}
}

// recordBlob reports a blob-gating denial (enforce) or would-be denial
// (warn) like a manifest decision: audit event, ring and the decisions
// metric with source "blob-gating". Every request is reported, as every
// manifest request is; a client repeating a denied request repeats the
// event. It returns the reason.
func (p *Proxy) recordBlob(r *http.Request, u *upstreamEntry, repo string, digest v1.Hash, g blobGate) string {
	decision := "deny"
	if g.mode == verify.ModeWarn {
		decision = "warn"
	}
	reason := fmt.Sprintf("blob %s is not referenced by any verified manifest in %s/%s", digest, u.name, repo)
	p.metrics.decisions.WithLabelValues(g.boundary, decision, string(g.mode), sourceGating.label()).Inc()
	p.record(Decision{
		Time:       time.Now().UTC(),
		Kind:       KindBlob,
		Client:     r.RemoteAddr,
		Principal:  PrincipalFrom(r.Context()).String(),
		Upstream:   u.name,
		Repository: repo,
		Reference:  digest.String(),
		Digest:     digest.String(),
		Boundary:   g.boundary,
		Decision:   decision,
		Mode:       g.mode,
		Reasons:    []string{reason},
	})
	return reason
}

func copyHeaders(dst, src http.Header, keys []string) {
	for _, k := range keys {
		if v := src.Values(k); len(v) > 0 {
			dst[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
	}
}
