package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/names"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/verify"
)

// Limits and grammars from the OCI distribution specification.
const (
	maxNameLength = 255
	maxNsLength   = 253 + 6 // a DNS name and ":port"
)

var (
	// hostPortRE is a registry host with a port, the only prefix form that
	// the component grammar does not already accept.
	hostPortRE = regexp.MustCompile(`^[a-z0-9]+(?:[.-][a-z0-9]+)*:[0-9]{1,5}$`)
	tagRE      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	algRE      = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*$`)
)

type routeKind int

const (
	routeBase routeKind = iota
	routeManifest
	routeBlob
	routeReferrers
	routeTags
)

func (k routeKind) String() string {
	switch k {
	case routeBase:
		return "base"
	case routeManifest:
		return "manifests"
	case routeBlob:
		return "blobs"
	case routeReferrers:
		return "referrers"
	case routeTags:
		return "tags"
	default:
		return "unknown"
	}
}

// apiRequest is a parsed /v2/ request, before routing to an upstream.
type apiRequest struct {
	kind routeKind
	// name is the repository name as the client wrote it, alias prefix
	// included.
	name string
	// ref is the tag or digest of a manifest request, or the digest of a
	// blob or referrers request.
	ref    string
	digest v1.Hash // set when ref is a digest
	isTag  bool
}

// parseAPIPath parses the path of a /v2/ request strictly. Nothing is looked
// up or dialled before it succeeds.
func parseAPIPath(r *http.Request) (apiRequest, *Error) {
	raw := r.URL.EscapedPath()
	if strings.IndexByte(raw, '%') >= 0 || raw != r.URL.Path {
		// Registry paths never need escaping; an escaped one is an attempt
		// to make two parsers disagree. Without a '%' the path is its own
		// decoded form, so the checks below see every form at once.
		if _, err := url.PathUnescape(raw); err != nil {
			return apiRequest{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid path encoding")
		}
		return apiRequest{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid repository name")
	}
	// Traversal and empty segments are refused so that no layer below (or
	// an upstream that decodes differently) can be tricked.
	if strings.Contains(raw, "..") || strings.Contains(raw, "//") || strings.ContainsAny(raw, "\\\x00") {
		return apiRequest{}, errorf(http.StatusBadRequest, CodeNameInvalid, "invalid repository name")
	}
	if raw == "/v2" || raw == "/v2/" {
		return apiRequest{kind: routeBase}, nil
	}
	rest, ok := strings.CutPrefix(raw, "/v2/")
	if !ok {
		return apiRequest{}, errorf(http.StatusNotFound, CodeNameUnknown, "not found")
	}
	// <name>/<endpoint>/<last>, where name has at least one segment: the
	// last two segments are cut off the end, so no slice of segments is
	// built.
	var name, endpoint, last string
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		last = rest[i+1:]
		if j := strings.LastIndexByte(rest[:i], '/'); j >= 0 {
			name, endpoint = rest[:j], rest[j+1:i]
		}
	}
	var req apiRequest
	switch {
	case name == "":
		return apiRequest{}, errorf(http.StatusNotFound, CodeNameUnknown, "not found")
	case endpoint == "tags" && last == "list":
		req.kind = routeTags
	case endpoint == "manifests":
		req.kind = routeManifest
		req.ref = last
	case endpoint == "blobs":
		req.kind = routeBlob
		req.ref = last
	case endpoint == "referrers":
		req.kind = routeReferrers
		req.ref = last
	default:
		return apiRequest{}, errorf(http.StatusNotFound, CodeNameUnknown, "not found")
	}
	if err := validateName(name); err != nil {
		return apiRequest{}, err
	}
	req.name = name
	switch req.kind {
	case routeManifest:
		if strings.Contains(req.ref, ":") {
			d, err := parseDigest(req.ref)
			if err != nil {
				return apiRequest{}, err
			}
			req.digest = d
		} else {
			if !tagRE.MatchString(req.ref) {
				// No manifest can have this tag: it is unknown, as the
				// distribution spec answers. MANIFEST_INVALID is a push
				// code, about a manifest body.
				return apiRequest{}, errorf(http.StatusNotFound, CodeManifestUnknown, "invalid tag %q: no manifest can be tagged so", truncate(req.ref, 130))
			}
			req.isTag = true
		}
	case routeBlob, routeReferrers:
		d, err := parseDigest(req.ref)
		if err != nil {
			return apiRequest{}, err
		}
		req.digest = d
	}
	return req, nil
}

// validateName applies the distribution name grammar. The first component
// may also be a registry host with a port, which only routing can accept.
func validateName(name string) *Error {
	if name == "" || len(name) > maxNameLength {
		return errorf(http.StatusBadRequest, CodeNameInvalid, "invalid repository name")
	}
	first := true
	for c := range strings.SplitSeq(name, "/") {
		if names.IsComponent(c) || (first && hostPortRE.MatchString(c)) {
			first = false
			continue
		}
		return errorf(http.StatusBadRequest, CodeNameInvalid, "invalid repository name %q", name)
	}
	return nil
}

// parseDigest accepts only the algorithms the proxy can check itself: those
// go-containerregistry can hash (sha256, sha512), with lower-case hex of
// the algorithm's length.
func parseDigest(s string) (v1.Hash, *Error) {
	h, err := v1.NewHash(s)
	if err == nil {
		return h, nil
	}
	if alg, hex, ok := strings.Cut(s, ":"); ok && hex != "" && algRE.MatchString(alg) {
		if _, herr := v1.Hasher(alg); herr != nil {
			return v1.Hash{}, errorf(http.StatusBadRequest, CodeDigestInvalid, "unsupported digest algorithm %q", truncate(alg, 32))
		}
	}
	return v1.Hash{}, errorf(http.StatusBadRequest, CodeDigestInvalid, "invalid digest %q", truncate(s, 140))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// upstreamEntry is one configured upstream with its lookup keys.
type upstreamEntry struct {
	name      string
	keys      []string // Name, then aliases, de-duplicated
	dockerHub bool     // library/ is implied for single-component names
	// registryNames are the names a signer may have called this registry
	// by: its URL's host, Docker Hub's canonical one, its keys. They only
	// help predict evidence bytes (verify.Subject.RegistryNames).
	registryNames []string
	client        *upstream.Client
	// manifests is where manifest bytes are fetched by digest: client,
	// except in tests that need an upstream client breaking its promise
	// of checked bytes.
	manifests manifestGetter
}

// manifestGetter fetches a manifest whose bytes it has checked against ref
// when ref is a digest. *upstream.Client satisfies it.
type manifestGetter interface {
	GetManifest(ctx context.Context, repo, ref string, accept []string) (verify.Manifest, error)
}

// router maps ?ns= values and path prefixes to upstreams. Keys are lookup
// keys only: an unknown one is refused, never dialled.
type router struct {
	byKey map[string]*upstreamEntry
	// byHost maps the registry host[:port] of each upstream's URL to it,
	// for callers that name images by registry address (the verdict API);
	// an address two upstreams share maps to neither.
	byHost  map[string]*upstreamEntry
	def     *upstreamEntry
	listing string // "docker.io (aliases …), ghcr.io" for messages
}

// route resolves the upstream and the repository at that upstream.
func (rt *router) route(name, ns string) (*upstreamEntry, string, *Error) {
	var u *upstreamEntry
	repo := name
	switch {
	case ns != "":
		if len(ns) > maxNsLength {
			ns = truncate(ns, maxNsLength)
		}
		u = rt.byKey[strings.ToLower(ns)]
		if u == nil {
			return nil, "", rt.unknown(ns)
		}
	default:
		first, tail, hasTail := strings.Cut(name, "/")
		if e := rt.byKey[first]; e != nil && hasTail {
			u, repo = e, tail
		} else if hasTail && strings.ContainsAny(first, ".:") {
			return nil, "", rt.unknown(first)
		} else if rt.def != nil {
			u = rt.def
		} else {
			return nil, "", &Error{
				Status:  http.StatusNotFound,
				Code:    CodeNameUnknown,
				Message: fmt.Sprintf("no registry given for %q and no default upstream: configured upstreams: %s", name, rt.listing),
			}
		}
	}
	if err := validateRepo(repo); err != nil {
		return nil, "", err
	}
	if u.dockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return u, repo, nil
}

// validateRepo re-checks the repository after a prefix was stripped: a
// host:port component is only acceptable as the routing prefix.
func validateRepo(repo string) *Error {
	for c := range strings.SplitSeq(repo, "/") {
		if !names.IsComponent(c) {
			return errorf(http.StatusBadRequest, CodeNameInvalid, "invalid repository name %q", repo)
		}
	}
	return nil
}

func (rt *router) unknown(host string) *Error {
	return &Error{
		Status:  http.StatusNotFound,
		Code:    CodeNameUnknown,
		Message: fmt.Sprintf("unknown registry %q: configured upstreams: %s", host, rt.listing),
	}
}
