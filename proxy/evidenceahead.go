package proxy

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
)

// aheadReader is a Verifier that can start reading a subject's evidence
// before the subject's manifest is in (verify.Engine.ReadAhead). A
// Verifier without it reads evidence once Verify is called.
type aheadReader interface {
	ReadAhead(ctx context.Context, upstream, repo string, digest v1.Hash, f verify.Fetcher) (verify.Fetcher, func())
}

// aheadFetcherKey is the context key of the evidence Fetcher a
// verification of one subject reads through.
type aheadFetcherKey struct{}

type aheadFetcher struct {
	upstream, repo string
	digest         v1.Hash
	f              verify.Fetcher
}

// localManifestCache is a ManifestCache with a second level elsewhere
// (shared state) that can be asked for this process's copy alone.
type localManifestCache interface {
	GetLocal(digest string) (verify.Manifest, bool)
}

// readEvidenceAhead starts reading the evidence of digest in mr's
// upstream and repository while its manifest is fetched: a cold
// verification is mostly round trips to the upstream, and the first of
// the evidence ones need not wait for the manifest's. The returned
// context carries the Fetcher evaluate reads evidence through for that
// digest; stop ends what is still being read and must be called once the
// verification is over. Nothing is decided differently: the Verifier
// takes what was read ahead only when and as it asks for it.
func (p *Proxy) readEvidenceAhead(ctx context.Context, mr manifestReq, digest v1.Hash, have *verify.Manifest) (context.Context, func()) {
	ar, ok := mr.v.(aheadReader)
	if !ok || mr.u.client == nil || (have != nil && have.Digest == digest) {
		return ctx, func() {}
	}
	if mc := p.opts.manifests; mc != nil {
		get := mc.Get
		if l, ok := mc.(localManifestCache); ok {
			// A probe, not a fetch: a shared cache's Redis is asked once,
			// by the manifest fetch that follows.
			get = l.GetLocal
		}
		if m, ok := get(digest.String()); ok && m.Digest == digest {
			// The manifest is in hand: there is no round trip to overlap.
			return ctx, func() {}
		}
	}
	f, stop := ar.ReadAhead(ctx, mr.u.name, mr.repo, digest, mr.u.client)
	return context.WithValue(ctx, aheadFetcherKey{}, aheadFetcher{upstream: mr.u.name, repo: mr.repo, digest: digest, f: f}), stop
}

// evidenceFetcher is the Fetcher the verification of digest in mr's
// upstream and repository reads evidence through: the one reading ahead
// for exactly that subject, else the upstream's client. The context of a
// dependency's verification carries its parent's, which is not its own.
func evidenceFetcher(ctx context.Context, mr manifestReq, digest v1.Hash) verify.Fetcher {
	if a, ok := ctx.Value(aheadFetcherKey{}).(aheadFetcher); ok && a.digest == digest && a.upstream == mr.u.name && a.repo == mr.repo && a.f != nil {
		return a.f
	}
	return mr.u.client
}
