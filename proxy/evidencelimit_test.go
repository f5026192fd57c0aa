package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// TestEvidenceBudgetDenialThroughTheProxy stuffs a repository with bundles
// an untrusted key signed, each padded to 32 KiB, under a 96 KiB evidence
// budget. The pull is denied with the budget named, counted once per
// verification (not per request its cached denial answers) and never
// served; the one trusted signature listed after the stuffing is never
// reached.
func TestEvidenceBudgetDenialThroughTheProxy(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	const repo = "acme/stuffed"
	img := reg.pushImage(t, repo, "v1")
	trusted, stranger := newKey(t), newKey(t)
	pad := strings.Repeat("x", 32<<10)
	for i := 0; i < 8; i++ {
		spec := fixtures.BundleSpec{PredicateType: "https://example.com/padding/v1", Predicate: map[string]any{"pad": pad, "i": i}}
		if _, err := fixtures.AttachBundle(context.Background(), reg.ref(t, repo, img.digest), stranger, spec); err != nil {
			t.Fatal(err)
		}
	}
	pol := verify.Policy{Boundaries: []verify.Boundary{{
		Name: "images", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", trusted)},
	}}}
	eng, err := verify.New(pol, verify.WithEvidenceLimits(verify.EvidenceLimits{
		TotalBytes: 96 << 10, SignatureBytes: 64 << 10, AttestationBytes: 64 << 10, PredicateDepth: 16,
	}))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithVerdictCache(newMapVerdicts()))
	for i := 0; i < 3; i++ {
		w := do(p, http.MethodGet, manifestPath(repo, "v1"))
		if w.Code != http.StatusForbidden {
			t.Fatalf("stuffed subject = %d: %s", w.Code, w.Body)
		}
		if msg, _ := deniedBody(t, w); !strings.Contains(msg, "evidence budget exceeded") {
			t.Fatalf("denial %q does not name the evidence budget", msg)
		}
	}
	if got := counterValue(t, p, "portcullis_limit_exceeded_total", map[string]string{"limit": verify.LimitEvidenceBytes}); got != 1 {
		t.Errorf("limit_exceeded{evidence_bytes} = %v, want 1 (one verification, two cached answers)", got)
	}
	if d := lastDecision(t, p, img.digest); d.Decision != "deny" {
		t.Errorf("decision = %+v", d)
	}
}
