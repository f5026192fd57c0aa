package proxy

import (
	"context"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/portcullis-oci/portcullis/verify"
)

// Verifier decides on a subject. verify.Engine satisfies it.
type Verifier interface {
	// Verify returns a verdict for subject, reading evidence through f. A
	// non-nil error means no decision could be made; the proxy fails closed.
	Verify(ctx context.Context, subject verify.Subject, f verify.Fetcher) (verify.Verdict, error)
	// Fingerprint identifies the whole policy and its trust material.
	Fingerprint() string
	// FingerprintFor identifies the part of the policy and trust material
	// that can decide verdicts of upstream/repo; it is part of every
	// verdict cache key, so a change to a boundary that cannot match a
	// repository keeps that repository's verdicts.
	FingerprintFor(upstream, repo string) string
	// BoundaryName names the boundary Verify would decide a subject with
	// these coordinates under; false when none matches. An index's verdict
	// covers a child it lists only when the child, by its own repository
	// and artifact type, falls in the index's boundary.
	BoundaryName(upstream, repo, artifactType string) (string, bool)
	// BlobMode says how a blob of upstream/repo that no allowed manifest
	// references is decided: warn (served, the would-be denial recorded)
	// only when every boundary a manifest there could fall in is warn;
	// false when such a manifest could fall to unmatched. Blob gating
	// denies on anything but warn.
	BlobMode(upstream, repo string) (boundary string, mode verify.Mode, ok bool)
}

// VerdictCache stores verdicts by key. cache.Verdicts satisfies it. The
// cache chooses the lifetime from the verdict (allow vs deny TTL).
type VerdictCache interface {
	Get(key string) (verify.Verdict, bool)
	Add(key string, v verify.Verdict)
	// Remove drops key's verdict; RemoveFunc every verdict match is true
	// for, returning how many. A revocation purges through them.
	Remove(key string)
	RemoveFunc(match func(verify.Verdict) bool) int
}

// ManifestCache keeps verified manifest bytes by digest. cache.Manifests
// satisfies it; it bounds itself by total bytes. The proxy only adds bytes
// it has checked against their digest, and serves what Get returns without
// hashing it again: that is what makes a warm pull cheap.
type ManifestCache interface {
	Get(digest string) (verify.Manifest, bool)
	Add(m verify.Manifest)
}

// Upstream is one registry the proxy pulls from, already validated.
type Upstream struct {
	Name string
	// URL is scheme://host[:port]. http is only accepted with Insecure.
	URL      string
	Aliases  []string // lookup keys for ?ns= and path prefixes; Name is implied
	Insecure bool     // plain HTTP or unverified TLS, loudly logged
	// RootCAs is a PEM bundle added to the system pool; nil for system only.
	RootCAs []byte
	// Auth resolves credentials for the upstream; nil means anonymous.
	Auth authn.Keychain
	// Timeout bounds each upstream call (default 30s).
	Timeout time.Duration
	// IdleTimeout drops an upstream that sends no byte of a response
	// body for this long while it is read (default 30s); a blob stream
	// to the client is then aborted.
	IdleTimeout time.Duration
	// MaxConns caps connections to the upstream's host and to each
	// storage host it redirects to (default 64).
	MaxConns int
	// MaxHeaderBytes bounds the status line and headers of the
	// upstream's answers (default 64 KiB).
	MaxHeaderBytes int64
	// RedirectHosts may be reached by redirects (and token realms) even
	// at loopback, private or link-local addresses: "host", "host:port"
	// or "*.domain". Other hosts are refused at such addresses unless
	// the upstream's own host is one.
	RedirectHosts []string
}
