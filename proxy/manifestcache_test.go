package proxy

import (
	"bytes"
	"context"
	"net/http"
	"testing"

	"github.com/portcullis-oci/portcullis/verify"
)

// swappingManifests answers every lookup with one fixed manifest, whatever
// digest was asked for: a cache that breaks its promise.
type swappingManifests struct{ m verify.Manifest }

func (c swappingManifests) Get(string) (verify.Manifest, bool) { return c.m, true }
func (c swappingManifests) Add(verify.Manifest)                {}

// Bytes the manifest cache hands back for another digest are never served
// or verified as the requested manifest, on a cold pull or a warm one.
func TestManifestCacheForAnotherDigestIsNotTrusted(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	want := reg.pushImage(t, "acme/app", "v1")
	other := reg.pushImage(t, "acme/app", "v2")
	v := allowAll()
	var verified [][]byte
	v.fn = func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		verified = append(verified, s.Manifest)
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "b", Digest: s.Digest.String()}, nil
	}
	cache := swappingManifests{verify.Manifest{Digest: other.digest, MediaType: "application/vnd.oci.image.manifest.v1+json", Bytes: other.raw}}
	p, _ := newTestProxy(t, reg.srv.URL, v, WithManifestCache(cache), WithVerdictCache(newMapVerdicts()))
	for i := range 2 {
		w := do(p, http.MethodGet, "/v2/acme/app/manifests/"+want.digest.String()+"?ns=docker.io")
		if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), want.raw) {
			t.Fatalf("GET %d: status %d, served %d bytes, want the requested manifest's %d", i, w.Code, w.Body.Len(), len(want.raw))
		}
	}
	for _, b := range verified {
		if !bytes.Equal(b, want.raw) {
			t.Fatal("another digest's bytes were verified as the requested manifest")
		}
	}
}
