package proxy

import (
	"strings"

	"github.com/portcullis-oci/portcullis/verify"
)

var _ verify.FetcherSource = (*router)(nil)

// FetcherFor gives the evidence reader of the configured upstream whose
// name or alias is upstream, for a boundary that keeps its signatures on
// another upstream than the subject's. Like ?ns= and path prefixes, the
// name is only looked up: an unknown one is reported, never dialled.
func (rt *router) FetcherFor(upstream string) (verify.Fetcher, bool) {
	u := rt.byKey[strings.ToLower(upstream)]
	if u == nil || u.client == nil {
		return nil, false
	}
	return u.client, true
}
