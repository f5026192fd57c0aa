package proxy

import (
	"net/http"
	"testing"
)

// BenchmarkWarmManifest measures the handler alone on the warm paths: a
// cached verdict and cached bytes, so no upstream request is made for a
// digest (the HEAD by tag still makes its one upstream HEAD).
func BenchmarkWarmManifest(b *testing.B) {
	reg := newRegistry(b)
	img := reg.pushImage(b, "acme/app", "v1")
	p, s := newTestProxy(b, reg.srv.URL, allowAll(), WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))
	byDigest := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"
	if w := do(p, http.MethodGet, byDigest); w.Code != http.StatusOK {
		b.Fatalf("cold GET = %d", w.Code)
	}
	b.Run("GET by digest", func(b *testing.B) {
		before := s.count()
		b.ReportAllocs()
		for b.Loop() {
			if w := do(p, http.MethodGet, byDigest); w.Code != http.StatusOK {
				b.Fatalf("GET = %d", w.Code)
			}
		}
		if n := s.count() - before; n != 0 {
			b.Fatalf("%d upstream requests on the warm path", n)
		}
	})
	b.Run("HEAD by tag", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if w := do(p, http.MethodHead, "/v2/acme/app/manifests/v1?ns=docker.io", acceptHeaders(containerdAccept)...); w.Code != http.StatusOK {
				b.Fatalf("HEAD = %d", w.Code)
			}
		}
	})
}
