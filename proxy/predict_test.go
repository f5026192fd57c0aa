package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A cold verification of a digest `cosign sign` signed under the
// upstream's own address predicts the signature layer instead of reading
// it: one round trip to the upstream fewer, the same verdict. Signatures
// whose layer is not the prediction are read and decided as always.
func TestColdLegacyVerificationPredictsTheSignatureLayer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	tests := []struct {
		name       string
		tamper     fixtures.Tamper
		want       int
		blobReads  int
		reasonPart string
	}{
		{name: "signed as cosign signs", want: http.StatusOK, blobReads: 0},
		{name: "payload changed after signing", tamper: fixtures.Tamper{ModifyPayload: true}, want: http.StatusForbidden, blobReads: 1, reasonPart: "does not verify"},
		{name: "signature of another digest", tamper: fixtures.Tamper{SignDigest: &other}, want: http.StatusForbidden, blobReads: 1, reasonPart: "is not the subject"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newRegistry(t)
			img := reg.pushImage(t, "acme/app", "v1")
			k := newKey(t)
			if err := fixtures.AttachLegacySignature(ctx, reg.ref(t, "acme/app", img.digest), k, tc.tamper); err != nil {
				t.Fatal(err)
			}
			eng := keyEngine(t, k)
			p, s := newTestProxy(t, reg.srv.URL, eng)
			w := do(p, http.MethodGet, "/v2/docker.io/acme/app/manifests/"+img.digest.String())
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if tc.reasonPart != "" && !strings.Contains(w.Body.String(), tc.reasonPart) {
				t.Errorf("denial does not say %q: %s", tc.reasonPart, w.Body)
			}
			blobs := 0
			for _, r := range s.since(0) {
				if strings.Contains(r, "/blobs/") {
					blobs++
				}
			}
			if blobs != tc.blobReads {
				t.Errorf("%d blob reads upstream, want %d: %q", blobs, tc.blobReads, s.since(0))
			}
			// Operators see how often prediction spares the read.
			for result, want := range map[string]int{"hit": 1 - tc.blobReads, "miss": tc.blobReads} {
				if got := testutil.ToFloat64(p.metrics.signatureLayers.WithLabelValues(result)); got != float64(want) {
					t.Errorf("portcullis_signature_layer_predictions_total{result=%q} = %v, want %d", result, got, want)
				}
			}
		})
	}
}
