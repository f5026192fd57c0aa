package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/verify"
)

// manyLayers is an image manifest of about size bytes, nearly all of it
// distinct layer descriptors; nonce keeps manifests apart.
func manyLayers(nonce, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[`,
		types.OCIManifestSchema1, sha([]byte(strconv.Itoa(nonce))), nonce)
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":1}`, sha([]byte(fmt.Sprint(nonce, "/", i))))
	}
	b.WriteString("]}")
	return b.Bytes()
}

// TestParsedManifestsBounded: a parsed manifest holds about as much as its
// manifest, and denied manifests are parsed too (to tell evidence apart),
// so pulls of many large unsigned manifests must not make the proxy keep
// them all: what it keeps is bounded by the bytes of their manifests.
func TestParsedManifestsBounded(t *testing.T) {
	t.Parallel()
	const bound, size, n = 1 << 20, 300 << 10, 10
	manifests := map[string][]byte{}
	for i := range n {
		b := manyLayers(i, size)
		manifests[sha(b).String()] = b
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, ref, ok := strings.Cut(r.URL.Path, "/manifests/")
		b := manifests[ref]
		if !ok || b == nil {
			if r.URL.Path != "/v2/" {
				http.NotFound(w, r)
			}
			return
		}
		w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
		w.Header().Set("Docker-Content-Digest", ref)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	}))
	t.Cleanup(up.Close)
	p, _ := newTestProxy(t, up.URL, denyAll(verify.ModeEnforce), WithParsedManifestBytes(bound))
	for d := range manifests {
		if w := do(p, http.MethodGet, "/v2/acme/app/manifests/"+d+"?ns=docker.io"); w.Code != http.StatusForbidden {
			t.Fatalf("GET %s = %d, want 403", d, w.Code)
		}
	}
	var held int64
	for _, k := range p.parsed.keys() {
		e, _ := p.parsed.c.Peek(k)
		held += e.cost
	}
	if held != p.parsed.bytes.Load() {
		t.Errorf("parsed manifests held cost %d, counted %d", held, p.parsed.bytes.Load())
	}
	if held > bound {
		t.Errorf("parsed manifests of %d bytes kept after %d pulls of %d bytes each, bound %d", held, n, size, bound)
	}
	if p.parsed.c.Len() == 0 {
		t.Error("no parsed manifest kept: the test no longer exercises the bound")
	}
}

func TestParsedCacheAccounting(t *testing.T) {
	t.Parallel()
	pc, err := newParsedCache(100, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	pm := &parsedManifest{}
	cost := func(n int) int64 { return int64(n) + parsedEntryOverhead }
	pc.add("a", pm, 3000)
	pc.add("a", pm, 3000) // a second parse of the same bytes
	if got := pc.bytes.Load(); got != cost(3000) {
		t.Fatalf("bytes after adding one manifest twice = %d, want %d", got, cost(3000))
	}
	pc.add("b", pm, 3000)
	pc.add("c", pm, 3000)
	if _, ok := pc.get("a"); !ok {
		t.Fatal("a evicted while everything fit")
	}
	pc.add("d", pm, 3000) // past the bound: the least recently used (b) goes
	if _, ok := pc.peek("b"); ok || pc.bytes.Load() != 3*cost(3000) {
		t.Fatalf("after the bound: b kept = %v, bytes = %d, want b evicted and %d", ok, pc.bytes.Load(), 3*cost(3000))
	}
	pc.add("huge", pm, 10_000) // larger than the bound alone
	if _, ok := pc.peek("huge"); ok || pc.c.Len() != 3 {
		t.Fatalf("a manifest larger than the bound was kept (%d entries)", pc.c.Len())
	}
	pc.add("fits", pm, 10_000-parsedEntryOverhead) // exactly the bound
	if _, ok := pc.peek("fits"); !ok || pc.c.Len() != 1 || pc.bytes.Load() != 10_000 {
		t.Fatalf("a manifest of exactly the bound: kept %v, %d entries, %d bytes", ok, pc.c.Len(), pc.bytes.Load())
	}
}

// TestEvaluateParsesOnce: the parse made to verify a manifest is the one
// the proxy keeps, so a denied manifest is not parsed again to tell
// whether it is evidence; bytes that do not match their digest are never
// kept under it.
func TestEvaluateParsesOnce(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	other := reg.pushImage(t, "acme/app", "v2")
	key := img.digest.String() + " " + img.mt
	t.Run("denied", func(t *testing.T) {
		t.Parallel()
		p, _ := newTestProxy(t, reg.srv.URL, denyAll(verify.ModeEnforce), WithEvidenceTypes(nil))
		if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusForbidden {
			t.Fatalf("GET = %d, want 403", w.Code)
		}
		if _, ok := p.parsed.peek(key); !ok {
			t.Error("the verification's parse was not kept: anything that needs it parses the manifest again")
		}
	})
	t.Run("bytes that do not match", func(t *testing.T) {
		t.Parallel()
		p, _ := newTestProxy(t, reg.srv.URL, allowAll())
		// The upstream client hands out another image's manifest as img's.
		u := p.router.byKey["docker.io"]
		u.manifests = swappedManifests{manifestGetter: u.manifests, bytes: other.raw}
		w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String()))
		if w.Code == http.StatusOK {
			t.Fatal("bytes of another digest were served")
		}
		if pm, ok := p.parsed.peek(key); ok && len(pm.layers) > 0 && pm.layers[0].digest == other.layers[0] {
			t.Error("another manifest's parse is kept under the digest")
		}
	})
}

// swappedManifests hands out bytes for every digest, breaking the
// upstream client's promise that they were checked against it.
type swappedManifests struct {
	manifestGetter
	bytes []byte
}

func (s swappedManifests) GetManifest(ctx context.Context, repo, ref string, accept []string) (verify.Manifest, error) {
	m, err := s.manifestGetter.GetManifest(ctx, repo, ref, accept)
	if err == nil {
		m.Bytes = s.bytes
	}
	return m, err
}

// peek and keys read the cache without touching its order.
func (pc *parsedCache) peek(key string) (*parsedManifest, bool) {
	e, ok := pc.c.Peek(key)
	return e.pm, ok
}

func (pc *parsedCache) keys() []string { return pc.c.Keys() }
