package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/portcullis-oci/portcullis/verify"
)

// The warm path's hand-written helpers must answer exactly as the library
// code they replace: a different ns would route elsewhere, a different
// verdict key would lose (or, worse, share) cached verdicts.

func TestQueryValueMatchesURLQuery(t *testing.T) {
	t.Parallel()
	for _, q := range []string{
		"", "ns=docker.io", "a=1&ns=ghcr.io&ns=quay.io", "ns", "ns=", "=x&ns=a",
		"ns=a%2Eb", "n%73=docker.io", "ns=%zz&ns=ok", "%zz=1&ns=ok", "ns=a;b&ns=c",
		"x=1;ns=a", "ns=a+b", "&&ns=a&&", "NS=a", "ns=%E2%82%AC",
	} {
		want := (&url.URL{RawQuery: q}).Query().Get("ns")
		if got := queryValue(q, "ns"); got != want {
			t.Errorf("queryValue(%q) = %q, want %q", q, got, want)
		}
	}
}

func FuzzQueryValue(f *testing.F) {
	for _, s := range []string{"ns=docker.io", "a=1&ns=b", "ns=%zz&ns=c", "x;ns=a&ns=b", "n%73=a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		want := (&url.URL{RawQuery: q}).Query().Get("ns")
		if got := queryValue(q, "ns"); got != want {
			t.Fatalf("queryValue(%q) = %q, want %q", q, got, want)
		}
	})
}

// verdictKeyReference is how verdict keys were first computed; keys in
// shared state written by older replicas must still be found.
func verdictKeyReference(fingerprint, upstreamName, repo string, d v1.Hash) string {
	h := sha256.New()
	for _, s := range []string{fingerprint, upstreamName, repo, d.String()} {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{':'})
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func FuzzVerdictKey(f *testing.F) {
	hx := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	f.Add("test-policy", "docker.io", "library/alpine", "sha256", hx)
	f.Add("", "", "", "", "")
	f.Add(string(make([]byte, 600)), "a", "b/c", "sha512", hx+hx)
	f.Fuzz(func(t *testing.T, fp, u, repo, alg, hx string) {
		d := v1.Hash{Algorithm: alg, Hex: hx}
		if got, want := verdictKey(fp, u, repo, d), verdictKeyReference(fp, u, repo, d); got != want {
			t.Fatalf("verdictKey = %s, want %s", got, want)
		}
	})
}

func TestDigestStringIsHashString(t *testing.T) {
	t.Parallel()
	d := v1.Hash{Algorithm: "sha256", Hex: "abc"}
	if digestString(d) != d.String() {
		t.Fatalf("digestString = %q, want %q", digestString(d), d.String())
	}
}

// TestWarmPathAnswer pins what a warm GET by digest answers and counts:
// the headers the pull needs, one request and one cached decision in the
// pre-resolved series, and no upstream request.
func TestWarmPathAnswer(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	p, s := newTestProxy(t, reg.srv.URL, allowAll(), WithVerdictCache(newMapVerdicts()), WithManifestCache(newMapManifests()))
	path := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"
	if w := do(p, http.MethodGet, path); w.Code != http.StatusOK {
		t.Fatalf("cold GET = %d: %s", w.Code, w.Body)
	}
	before := s.count()
	hits := testutil.ToFloat64(p.metrics.verdictCache.WithLabelValues("hit"))
	w := do(p, http.MethodGet, path)
	if w.Code != http.StatusOK {
		t.Fatalf("warm GET = %d: %s", w.Code, w.Body)
	}
	if n := s.count() - before; n != 0 {
		t.Errorf("%d upstream requests on the warm path", n)
	}
	h := w.Header()
	for k, want := range map[string]string{
		"Docker-Content-Digest":           img.digest.String(),
		"Etag":                            `"` + img.digest.String() + `"`,
		"Content-Type":                    img.mt,
		"Content-Length":                  strconv.Itoa(len(img.raw)),
		"Docker-Distribution-Api-Version": "registry/2.0",
	} {
		if got := h.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want [%q]", k, got, want)
		}
	}
	if w.Body.String() != string(img.raw) {
		t.Error("body is not the manifest")
	}
	if got := testutil.ToFloat64(p.metrics.verdictCache.WithLabelValues("hit")); got != hits+1 {
		t.Errorf("verdict cache hits = %v, want %v", got, hits+1)
	}
	if got := testutil.ToFloat64(p.metrics.requests.WithLabelValues("GET", "manifests", "200")); got != 2 {
		t.Errorf("requests{GET,manifests,200} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(p.metrics.decisions.WithLabelValues("prod", "allow", "enforce", "cache")); got != 1 {
		t.Errorf("decisions{prod,allow,enforce,cache} = %v, want 1", got)
	}
	// A path that never parsed is counted under route "other".
	do(p, http.MethodGet, "/v3/nothing")
	if got := testutil.ToFloat64(p.metrics.requests.WithLabelValues("GET", "other", "404")); got != 1 {
		t.Errorf("requests{GET,other,404} = %v, want 1", got)
	}
}

// blockingManifests counts the upstream GETs of manifest bytes and holds
// each until released.
type blockingManifests struct {
	manifestGetter
	calls   atomic.Int64
	release chan struct{}
}

func (b *blockingManifests) GetManifest(ctx context.Context, repo, ref string, accept []string) (verify.Manifest, error) {
	b.calls.Add(1)
	select {
	case <-b.release:
	case <-ctx.Done():
		return verify.Manifest{}, ctx.Err()
	}
	return b.manifestGetter.GetManifest(ctx, repo, ref, accept)
}

// TestManifestBytesFetchedOnceForConcurrentRequests: pulls that need a
// digest's bytes at the same time (a replica reading a new digest's verdict
// from shared state, every pull of it missing the manifest cache at once)
// cost one upstream GET, and each still gets checked bytes.
func TestManifestBytesFetchedOnceForConcurrentRequests(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	u := p.router.byKey["docker.io"]
	bm := &blockingManifests{manifestGetter: u.manifests, release: make(chan struct{})}
	u.manifests = bm
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &manifestDecision{mr: manifestReq{u: u, repo: "acme/app"}, desc: v1.Descriptor{Digest: img.digest}, digest: img.digest.String()}
			err := p.fetchBytes(context.Background(), d)
			if err == nil && (d.manifest.Digest != img.digest || string(d.manifest.Bytes) != string(img.raw)) {
				err = errors.New("wrong bytes")
			}
			if err == nil && d.bytesChecked {
				err = errors.New("upstream bytes marked checked")
			}
			errs <- err
		}()
	}
	key := u.name + "\x00acme/app\x00" + img.digest.String()
	deadline := time.Now().Add(10 * time.Second)
	for p.manifestFetches.waiters(key) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests waiting", p.manifestFetches.waiters(key), n)
		}
		time.Sleep(time.Millisecond)
	}
	close(bm.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if c := bm.calls.Load(); c != 1 {
		t.Errorf("%d upstream GETs for %d concurrent requests, want 1", c, n)
	}
}

// TestSharedManifestFetchStillRefusesMismatch: the shared fetch hands
// every waiter the same bytes, and bytes that do not match the digest are
// still refused for each.
func TestSharedManifestFetchStillRefusesMismatch(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	other := reg.pushImage(t, "acme/app", "v2")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	u := p.router.byKey["docker.io"]
	u.manifests = redirectedManifests{manifestGetter: u.manifests, to: other.digest.String()}
	d := &manifestDecision{mr: manifestReq{u: u, repo: "acme/app"}, desc: v1.Descriptor{Digest: img.digest}, digest: img.digest.String()}
	if err := p.fetchBytes(context.Background(), d); err == nil {
		t.Fatal("bytes of another digest were accepted")
	}
}

// redirectedManifests answers every fetch with the manifest named to.
type redirectedManifests struct {
	manifestGetter
	to string
}

func (s redirectedManifests) GetManifest(ctx context.Context, repo, _ string, accept []string) (verify.Manifest, error) {
	return s.manifestGetter.GetManifest(ctx, repo, s.to, accept)
}
