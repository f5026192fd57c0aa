package proxy

import (
	"github.com/portcullis-oci/portcullis/verify"
)

// Values of bounded labels, pre-created so that every family is listed on
// /metrics from the start and increase() over a series sees its first
// event (a series that appears at 1 shows no increase).
var (
	upstreamErrorKinds = []string{
		"not_found", "status_4xx", "status_5xx", "status_other", "redirect_refused", "upstream_stalled",
		"conn_limit", "unreachable", "invalid", "too_large", "unexpected_partial",
		"blob_stream", "blob_digest_mismatch", "blob_too_long",
	}
	verificationErrorReasons = []string{"digest", "fetch", "verifier", "timeout", "upstream"}
	referrerSources          = []string{"api", "fallback", "empty"}
)

// boundaryLister is what a Verifier that can list its boundaries offers
// (verify.Engine does); their decision series are pre-created.
type boundaryLister interface {
	Boundaries() []verify.BoundaryInfo
}

// seed pre-creates the series of every label value known at start: the
// bounded sets above, each configured upstream and, when v lists them,
// each boundary. Series of unbounded values (status codes other than 200,
// boundaries added by a reload) appear at their first event.
func (m *metrics) seed(upstreams []string, v Verifier) {
	for _, route := range []routeKind{routeBase, routeManifest, routeBlob, routeReferrers, routeTags} {
		m.duration.WithLabelValues(route.String())
		m.requests.WithLabelValues("GET", route.String(), "200")
	}
	for _, r := range verificationErrorReasons {
		m.verificationErrors.WithLabelValues(r)
	}
	for _, l := range []string{verify.LimitEvidenceBytes, verify.LimitEvidenceItems, limitServedEvidence} {
		m.limitExceeded.WithLabelValues(l)
	}
	for _, u := range upstreams {
		for _, k := range upstreamErrorKinds {
			m.upstreamErrors.WithLabelValues(u, k)
		}
		for _, s := range referrerSources {
			m.referrers.WithLabelValues(u, s)
		}
	}
	for _, r := range []string{"allow", "deny", "error", "shared"} {
		m.refreshes.WithLabelValues(r)
	}
	for _, l := range []string{"registry", "admin"} {
		m.authFailures.WithLabelValues(l)
	}
	// A failure to decide is recorded under no boundary.
	m.decisions.WithLabelValues("", "deny", string(verify.ModeEnforce), sourceVerified.label())
	bl, ok := v.(boundaryLister)
	if !ok {
		return
	}
	for _, b := range bl.Boundaries() {
		decision := "deny"
		if b.Mode == verify.ModeWarn {
			decision = "warn"
		}
		m.decisions.WithLabelValues(b.Name, "allow", string(b.Mode), sourceVerified.label())
		m.decisions.WithLabelValues(b.Name, decision, string(b.Mode), sourceVerified.label())
		m.drift.WithLabelValues(b.Name)
	}
}

func upstreamNames(ups []Upstream) []string {
	out := make([]string, len(ups))
	for i, u := range ups {
		out[i] = u.Name
	}
	return out
}
