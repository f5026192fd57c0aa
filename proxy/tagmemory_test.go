package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Cold pulls from a repository signed with sigstore bundles stop asking
// the upstream for .sig tags that are never there once one verification
// there did without: the next cold pull makes no request for its .sig
// tag. An unsigned image there is still denied, naming the .sig tag
// its verification read; one signed the legacy way is still
// allowed, its .sig tag read one round trip later, and operators see both
// in portcullis_evidence_tag_predictions_total.
func TestColdPullsLeaveOutTagsTheRepositoryDoesNotUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := newRegistry(t)
	k := newKey(t)
	var bundled []pushed
	for _, tag := range []string{"v1", "v2"} {
		img := reg.pushImage(t, "acme/app", tag)
		if _, err := fixtures.AttachBundle(ctx, reg.ref(t, "acme/app", img.digest), k, fixtures.BundleSpec{}); err != nil {
			t.Fatal(err)
		}
		bundled = append(bundled, img)
	}
	unsigned := reg.pushImage(t, "acme/app", "unsigned")
	legacy := reg.pushImage(t, "acme/app", "v3")
	if err := fixtures.AttachLegacySignature(ctx, reg.ref(t, "acme/app", legacy.digest), k, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	eng := keyEngine(t, k)
	p, s := newTestProxy(t, reg.srv.URL, eng)
	// sigRequests lists the upstream requests since the first n for
	// img's .sig tag.
	sigRequests := func(n int, img pushed) []string {
		var sig []string
		for _, r := range s.since(n) {
			if strings.HasSuffix(r, "/manifests/sha256-"+img.digest.Hex+".sig") {
				sig = append(sig, r)
			}
		}
		return sig
	}
	pull := func(img pushed) []string {
		t.Helper()
		n := s.count()
		if w := do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+img.digest.String()); w.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", img.digest, w.Code, w.Body)
		}
		return sigRequests(n, img)
	}
	pull(bundled[0])
	if sig := pull(bundled[1]); len(sig) != 0 {
		t.Errorf("second cold pull in a bundle-signed repository asked for its .sig tag: %q", sig)
	}
	// Nothing left out lets an unsigned image through: its .sig tag is
	// read by the verification, which denies naming it.
	n := s.count()
	w := do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+unsigned.digest.String())
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "DENIED") || !strings.Contains(w.Body.String(), "sha256-"+unsigned.digest.Hex+".sig") {
		t.Fatalf("unsigned image: %d %s, want 403 DENIED naming its .sig tag", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), string(unsigned.raw)) {
		t.Error("the denial carries the unsigned manifest")
	}
	if sig := sigRequests(n, unsigned); len(sig) != 1 {
		t.Errorf("unsigned image: .sig tag asked for %d times, want 1", len(sig))
	}
	pull(bundled[0]) // verified again (no verdict cache): .sig unneeded again
	if sig := pull(legacy); len(sig) != 1 {
		t.Errorf("legacy-signed image: .sig tag asked for %d times, want 1", len(sig))
	}
	for result, want := range map[string]float64{"saved": 1, "missed": 2} {
		if got := testutil.ToFloat64(p.metrics.evidenceTags.WithLabelValues(result)); got != want {
			t.Errorf("portcullis_evidence_tag_predictions_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}

// Cold pulls from a repository signed with `cosign sign`'s .sig tags ask
// the upstream for the digest and its .sig tag alone once one
// verification there was decided by that tag: not its referrers, not its
// fallback tag. An unsigned image there is still denied naming every
// place in order, and one signed with a bundle is still allowed, its
// index read one round trip later; operators see both in
// portcullis_evidence_tag_predictions_total.
func TestColdPullsReadTheSigTagFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := newRegistry(t)
	k := newKey(t)
	var legacy []pushed
	for _, tag := range []string{"v1", "v2", "v3"} {
		img := reg.pushImage(t, "acme/app", tag)
		if err := fixtures.AttachLegacySignature(ctx, reg.ref(t, "acme/app", img.digest), k, fixtures.Tamper{}); err != nil {
			t.Fatal(err)
		}
		legacy = append(legacy, img)
	}
	unsigned := reg.pushImage(t, "acme/app", "unsigned")
	bundled := reg.pushImage(t, "acme/app", "v4")
	if _, err := fixtures.AttachBundle(ctx, reg.ref(t, "acme/app", bundled.digest), k, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	p, s := newTestProxy(t, reg.srv.URL, keyEngine(t, k))
	// indexRequests lists the upstream requests since the first n for
	// img's referrers or fallback tag.
	indexRequests := func(n int, img pushed) []string {
		var idx []string
		for _, r := range s.since(n) {
			if strings.HasSuffix(r, "/referrers/"+img.digest.String()) || strings.HasSuffix(r, "/manifests/sha256-"+img.digest.Hex) {
				idx = append(idx, r)
			}
		}
		return idx
	}
	pull := func(img pushed) []string {
		t.Helper()
		n := s.count()
		if w := do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+img.digest.String()); w.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", img.digest, w.Code, w.Body)
		}
		return indexRequests(n, img)
	}
	if idx := pull(legacy[0]); len(idx) != 2 {
		t.Errorf("first cold pull: referrers and fallback tag asked for as %q, want once each", idx)
	}
	if idx := pull(legacy[1]); len(idx) != 0 {
		t.Errorf("second cold pull in a .sig-signed repository asked for its index: %q", idx)
	}
	n := s.count()
	w := do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+unsigned.digest.String())
	places := "(checked referrers, sha256-" + unsigned.digest.Hex + ", sha256-" + unsigned.digest.Hex + ".sig)"
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "DENIED") || !strings.Contains(w.Body.String(), places) {
		t.Fatalf("unsigned image: %d %s, want 403 DENIED naming %s", w.Code, w.Body, places)
	}
	if idx := indexRequests(n, unsigned); len(idx) != 2 {
		t.Errorf("unsigned image: referrers and fallback tag asked for as %q, want once each", idx)
	}
	pull(legacy[2]) // read in order after the denial, decided by its .sig tag
	if idx := pull(bundled); len(idx) != 2 {
		t.Errorf("bundle-signed image: referrers and fallback tag asked for as %q, want once each", idx)
	}
	for result, want := range map[string]float64{"saved": 1, "missed": 2} {
		if got := testutil.ToFloat64(p.metrics.evidenceTags.WithLabelValues(result)); got != want {
			t.Errorf("portcullis_evidence_tag_predictions_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}
