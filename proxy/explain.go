package proxy

import (
	"context"
	"fmt"
	"strings"

	"github.com/portcullis-oci/portcullis/verify"
)

// Explain decides on one reference the way a manifest pull would, but
// without the caches and without serving anything: it backs the
// `portcullis verify` command. ref is "<registry>/<repository>[:tag|@digest]"
// where <registry> is a configured upstream name or alias, or just
// "<repository>…" when a default upstream is configured. A non-nil error
// means no decision could be made.
func (p *Proxy) Explain(ctx context.Context, ref string) (verify.Verdict, error) {
	nameTag, digest, byDigest := strings.Cut(ref, "@")
	repoName, tag := nameTag, "latest"
	if i := strings.LastIndex(nameTag, ":"); i > strings.LastIndex(nameTag, "/") {
		repoName, tag = nameTag[:i], nameTag[i+1:]
	}
	if verr := validateName(repoName); verr != nil {
		return verify.Verdict{}, verr
	}
	u, repo, rerr := p.router.route(repoName, "")
	if rerr != nil {
		return verify.Verdict{}, rerr
	}
	want := tag
	if byDigest {
		if _, derr := parseDigest(digest); derr != nil {
			return verify.Verdict{}, derr
		}
		want = digest
	}
	desc, have, err := u.client.Resolve(ctx, repo, want, nil)
	if err != nil {
		return verify.Verdict{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	m, _, err := p.manifestBytes(ctx, u, repo, desc.Digest, have)
	if err != nil {
		return verify.Verdict{}, fmt.Errorf("fetch %s@%s: %w", repo, desc.Digest, err)
	}
	return p.evaluate(ctx, manifestReq{u: u, repo: repo, ref: want, client: "cli", v: p.currentVerifier()}, m)
}
