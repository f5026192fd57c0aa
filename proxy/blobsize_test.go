package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// An upstream may not stream more of a blob than the verified manifest's
// descriptor declares, even when its own Content-Length agrees with the
// longer body: the stream is refused before any byte reaches the client.
func TestBlobCutAtDescriptorSize(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	layer := img.layers[0]

	// A front that answers the layer with its real bytes plus a tail,
	// under a Content-Length that covers the tail.
	target, _ := url.Parse(reg.srv.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	var real []byte
	lying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			rp.ServeHTTP(w, r)
			return
		}
		body := append(append([]byte(nil), real...), bytes.Repeat([]byte("z"), 5)...)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(body)
		}
	}))
	t.Cleanup(lying.Close)
	real = fetchBlob(t, reg.srv.URL, "acme/app", layer)

	p, _ := newTestProxy(t, lying.URL, allowAll())
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/"+img.digest.String()+"?ns=docker.io"); w.Code != http.StatusOK {
		t.Fatalf("manifest: %d %s", w.Code, w.Body)
	}
	w := do(p, http.MethodGet, "/v2/acme/app/blobs/"+layer.String()+"?ns=docker.io")
	if w.Code != http.StatusBadGateway {
		t.Fatalf("overlong blob: status %d, want 502", w.Code)
	}
	if bytes.Contains(w.Body.Bytes(), real[:16]) {
		t.Fatal("blob bytes were served")
	}
	// The same blob at its declared length is served.
	p2, _ := newTestProxy(t, reg.srv.URL, allowAll())
	do(p2, http.MethodGet, "/v2/acme/app/manifests/"+img.digest.String()+"?ns=docker.io")
	if w := do(p2, http.MethodGet, "/v2/acme/app/blobs/"+layer.String()+"?ns=docker.io"); w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), real) {
		t.Fatalf("honest blob: status %d, %d bytes", w.Code, w.Body.Len())
	}
}

func fetchBlob(t *testing.T, base, repo string, d v1.Hash) []byte {
	t.Helper()
	resp, err := http.Get(base + "/v2/" + repo + "/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetch blob: %d %v", resp.StatusCode, err)
	}
	return b
}
