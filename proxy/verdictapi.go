package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// VerdictsPath prefixes GET /v1/verdicts/<upstream>/<repository>@<digest>
// on the admin listener.
const VerdictsPath = "/v1/verdicts/"

// maxVerdictReason bounds the reason of a verdict answer: containerd keeps
// at most 32 KiB of a verifier's output, and a reason is read by people.
const maxVerdictReason = 4096

// Decisions of a verdict answer.
const (
	VerdictAllow = "allow"
	VerdictWarn  = "warn"
	VerdictDeny  = "deny"
)

// sha256DigestRE is the only digest form the verdict API takes: it is the
// one a node's runtime resolves images to.
var sha256DigestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// VerdictAnswer is the JSON body of a verdict API answer. Allow and warn
// are answered 200, deny 403, a malformed request 400 (decision deny).
type VerdictAnswer struct {
	Digest     string `json:"digest"`
	Upstream   string `json:"upstream"`
	Repository string `json:"repository"`
	Boundary   string `json:"boundary"`
	Decision   string `json:"decision"`
	Reason     string `json:"reason"`
	Cached     bool   `json:"cached"`
}

// verdictRoutes answers the verdict API ahead of next. It is not a route
// on the admin mux: the mux redirects a path holding ".." or "//" to its
// cleaned form, while such a path is refused here, whole.
func (p *Proxy) verdictRoutes(next http.Handler) http.Handler {
	count := p.verdictAPIMetric()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, VerdictsPath) && !strings.HasPrefix(r.URL.EscapedPath(), VerdictsPath) {
			next.ServeHTTP(w, r)
			return
		}
		a, status := p.serveVerdict(r)
		label := a.Decision
		if status == http.StatusBadRequest || status == http.StatusMethodNotAllowed {
			label = "invalid"
		}
		if count != nil {
			count.WithLabelValues(label).Inc()
		}
		body, err := json.Marshal(a)
		if err != nil {
			http.Error(w, genericInternalError, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodGet)
		}
		w.WriteHeader(status)
		_, _ = w.Write(append(body, '\n'))
	})
}

// verdictAPIMetric registers portcullis_verdict_api_total, or takes the one
// an earlier admin handler of the same registry registered.
func (p *Proxy) verdictAPIMetric() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_verdict_api_total",
		Help: "Answers of the verdict API (GET /v1/verdicts/...) by decision: allow, warn, deny, or invalid for a malformed request.",
	}, []string{"decision"})
	reg := p.registerer()
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var dup prometheus.AlreadyRegisteredError
		if !errors.As(err, &dup) {
			p.log.Error("failed to register the verdict API metric", zap.Error(err))
			return c
		}
		existing, ok := dup.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return c
		}
		c = existing
	}
	for _, d := range []string{VerdictAllow, VerdictWarn, VerdictDeny, "invalid"} {
		c.WithLabelValues(d)
	}
	return c
}

// serveVerdict decides the digest a verdict request names, the way a pull
// of it through the proxy would be decided, and reports the decision.
// Whatever cannot be decided is a deny.
func (p *Proxy) serveVerdict(r *http.Request) (VerdictAnswer, int) {
	if r.Method != http.MethodGet {
		return VerdictAnswer{Decision: VerdictDeny, Reason: "only GET is supported"}, http.StatusMethodNotAllowed
	}
	host, repo, digest, perr := parseVerdictPath(r)
	if perr != nil {
		return VerdictAnswer{Decision: VerdictDeny, Reason: perr.Message}, http.StatusBadRequest
	}
	a := VerdictAnswer{Digest: digest.String(), Upstream: host, Repository: repo, Decision: VerdictDeny}
	u := p.router.byKey[host]
	if u == nil {
		u = p.router.byHost[host]
	}
	if u == nil {
		// A host no upstream serves is a deny, never a pass: a node that
		// asks about a registry the proxy does not front must not be
		// told that its images are fine.
		a.Reason = p.router.unknown(host).Message
		p.logVerdict(r, a)
		return a, http.StatusForbidden
	}
	if verr := validateRepo(repo); verr != nil {
		return VerdictAnswer{Decision: VerdictDeny, Reason: verr.Message}, http.StatusBadRequest
	}
	if u.dockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	a.Upstream, a.Repository = u.name, repo
	ctx := r.Context()
	ds := digestString(digest)
	mr := manifestReq{u: u, repo: repo, ref: ds, client: r.RemoteAddr, v: p.currentVerifier()}
	req := apiRequest{kind: routeManifest, name: repo, ref: ds, digest: digest}
	d, err := p.resolveManifest(ctx, mr, req, r)
	if err == nil {
		err = p.decideManifest(ctx, d, req)
	}
	if err == nil {
		err = p.applyRevocations(ctx, d)
	}
	if err != nil {
		a.Reason = truncate(verdictErrorReason(err), maxVerdictReason)
		p.logVerdict(r, a)
		return a, http.StatusForbidden
	}
	p.decide(d)
	p.track(d)
	v := d.verdict
	a.Boundary, a.Cached = v.Boundary, d.source == sourceCache
	reason := strings.Join(v.Reasons, "; ")
	switch {
	case v.Allowed:
		a.Decision = VerdictAllow
		if reason == "" {
			reason = fmt.Sprintf("allowed by boundary %q", v.Boundary)
		}
	case v.Served():
		a.Decision = VerdictWarn
		reason = fmt.Sprintf("would be denied by boundary %q (warn mode): %s", v.Boundary, reason)
	default:
		if reason == "" {
			reason = "denied by policy"
		}
		if v.Boundary != "" {
			reason = fmt.Sprintf("denied by boundary %q: %s", v.Boundary, reason)
		}
	}
	a.Reason = truncate(reason, maxVerdictReason)
	p.logVerdict(r, a)
	if a.Decision == VerdictDeny {
		return a, http.StatusForbidden
	}
	return a, http.StatusOK
}

func (p *Proxy) logVerdict(r *http.Request, a VerdictAnswer) {
	level := zap.InfoLevel
	if a.Decision != VerdictAllow {
		level = zap.WarnLevel
	}
	if ce := p.log.Check(level, "verdict api"); ce != nil {
		ce.Write(zap.String("client", r.RemoteAddr), zap.String("upstream", a.Upstream),
			zap.String("repository", a.Repository), zap.String("digest", a.Digest),
			zap.String("decision", a.Decision), zap.Bool("cached", a.Cached), zap.String("reason", a.Reason))
	}
}

// verdictErrorReason says why nothing could be decided.
func verdictErrorReason(err error) string {
	var pe *Error
	if errors.As(err, &pe) {
		msg := pe.Message
		if m, ok := pe.Detail.(map[string]any); ok {
			if s, ok := m["reason"].(string); ok && s != "" {
				msg += ": " + s
			}
		}
		return msg
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return fmt.Sprintf("not decided: upstream answered %d", ue.Status)
	}
	return "not decided: " + err.Error()
}

// parseVerdictPath splits /v1/verdicts/<host>/<repository>@<digest>. It is
// as strict as a registry path: no escapes, no traversal, the repository
// grammar, and a sha256 digest only.
func parseVerdictPath(r *http.Request) (host, repo string, digest v1.Hash, perr *Error) {
	raw := r.URL.EscapedPath()
	decoded, err := url.PathUnescape(raw)
	if err != nil || raw != decoded {
		return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid path: escapes are not accepted")
	}
	for _, s := range []string{raw, r.URL.Path} {
		if strings.Contains(s, "..") || strings.Contains(s, "//") || strings.ContainsAny(s, "\\\x00") {
			return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid path")
		}
	}
	rest, ok := strings.CutPrefix(raw, VerdictsPath)
	if !ok || r.URL.Path != raw {
		return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid path")
	}
	name, ref, ok := strings.Cut(rest, "@")
	if !ok || strings.Contains(ref, "@") {
		return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeDigestInvalid,
			"expected %s<upstream>/<repository>@sha256:<hex>: a digest, never a tag", VerdictsPath)
	}
	if !sha256DigestRE.MatchString(ref) {
		return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeDigestInvalid, "invalid digest %q: sha256:<64 hex> only", truncate(ref, 140))
	}
	digest, perr = parseDigest(ref)
	if perr != nil {
		return "", "", v1.Hash{}, perr
	}
	host, repo, ok = strings.Cut(name, "/")
	if !ok || repo == "" {
		return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeNameInvalid, "expected <upstream>/<repository>, got %q", truncate(name, maxNameLength))
	}
	// Host names are case-insensitive; lookup keys are lower case.
	host = strings.ToLower(host)
	if len(host) > maxNsLength {
		return "", "", v1.Hash{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid registry %q", truncate(host, maxNsLength))
	}
	if verr := validateName(host + "/" + repo); verr != nil {
		return "", "", v1.Hash{}, verr
	}
	return host, repo, digest, nil
}
