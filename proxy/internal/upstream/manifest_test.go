package upstream

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/verify"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authNone)
	img, dig, raw := push(t, up.host(), "library/app", "v1")
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ name, ref string }{
		{"tag", "v1"},
		{"digest", dig.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sp := newSpy()
			c := newTestClient(t, Config{URL: up.URL, Insecure: true, Transport: sp})
			desc, m, err := c.Resolve(context.Background(), "library/app", tc.ref, nil)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if desc.Digest != dig || desc.Size != int64(len(raw)) || desc.MediaType != mt {
				t.Errorf("descriptor = %+v, want digest %s size %d type %s", desc, dig, len(raw), mt)
			}
			if m != nil {
				t.Errorf("manifest returned although HEAD carried the digest")
			}
			if n := sp.count(http.MethodHead, "/manifests/"); n != 1 {
				t.Errorf("HEAD manifest requests = %d, want 1", n)
			}
			if n := sp.count(http.MethodGet, "/manifests/"); n != 0 {
				t.Errorf("GET manifest requests = %d, want 0", n)
			}
		})
	}
}

func TestResolveSendsAccept(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authNone)
	push(t, up.host(), "app", "v1")
	c := newTestClient(t, Config{URL: up.URL, Insecure: true})

	accept := []string{string(types.OCIManifestSchema1), string(types.OCIImageIndex)}
	if _, _, err := c.Resolve(context.Background(), "app", "v1", accept); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range up.all() {
		if r.Method == http.MethodHead {
			got = r.Header.Values("Accept")
		}
	}
	if strings.Join(got, ",") != strings.Join(accept, ",") {
		t.Errorf("Accept = %v, want %v", got, accept)
	}
}

// manifestServer serves one manifest body for every manifest request,
// letting each test decide on headers.
type manifestServer struct {
	body        []byte
	contentType string
	// headDigest and getDigest are the Docker-Content-Digest values sent.
	headDigest, getDigest string
	// chunked omits Content-Length by flushing before the body.
	chunked bool
}

func (s *manifestServer) start(t *testing.T) (*httptest.Server, *journal) {
	j := &journal{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.record(r)
		if r.URL.Path == "/v2/" {
			return
		}
		if s.contentType != "" {
			w.Header().Set("Content-Type", s.contentType)
		}
		switch r.Method {
		case http.MethodHead:
			if s.headDigest != "" {
				w.Header().Set("Docker-Content-Digest", s.headDigest)
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(s.body)))
		case http.MethodGet:
			if s.getDigest != "" {
				w.Header().Set("Docker-Content-Digest", s.getDigest)
			}
			if s.chunked {
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
			}
			_, _ = w.Write(s.body)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, j
}

const ociManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

func TestResolveFallsBackToGet(t *testing.T) {
	t.Parallel()
	body := []byte(ociManifest)
	dig := sha256Hash(body)
	for _, tc := range []struct {
		name string
		ref  string
		srv  manifestServer
	}{
		{"tag without digest header", "v1", manifestServer{body: body, contentType: string(types.OCIManifestSchema1)}},
		{"digest without digest header", dig.String(), manifestServer{body: body, contentType: string(types.OCIManifestSchema1)}},
		{"no content type on HEAD", "v1", manifestServer{body: body, headDigest: dig.String(), getDigest: dig.String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, j := tc.srv.start(t)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			desc, m, err := c.Resolve(context.Background(), "app", tc.ref, nil)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if m == nil {
				t.Fatal("no manifest returned after GET fallback")
			}
			if desc.Digest != dig || m.Digest != dig || !bytes.Equal(m.Bytes, body) {
				t.Errorf("got %s / %s, want %s", desc.Digest, m.Digest, dig)
			}
			if desc.MediaType != types.OCIManifestSchema1 || m.MediaType != types.OCIManifestSchema1 {
				t.Errorf("media type %q / %q", desc.MediaType, m.MediaType)
			}
			if desc.Size != int64(len(body)) {
				t.Errorf("size %d, want %d", desc.Size, len(body))
			}
			if j.count(http.MethodGet, "/manifests/") != 1 {
				t.Errorf("expected exactly one GET")
			}
		})
	}
}

func TestDigestMismatchRefused(t *testing.T) {
	t.Parallel()
	body := []byte(ociManifest)
	other := sha256Hash([]byte("something else"))
	for _, tc := range []struct {
		name    string
		ref     string
		srv     manifestServer
		resolve bool
	}{
		{"get by digest, other bytes", other.String(), manifestServer{body: body, contentType: string(types.OCIManifestSchema1)}, false},
		{"get by digest, lying header", other.String(), manifestServer{body: body, contentType: string(types.OCIManifestSchema1), getDigest: other.String()}, false},
		{"get by tag, header disagrees with bytes", "v1", manifestServer{body: body, contentType: string(types.OCIManifestSchema1), getDigest: other.String()}, false},
		{"get by digest, header names another digest", sha256Hash(body).String(), manifestServer{body: body, contentType: string(types.OCIManifestSchema1), getDigest: other.String()}, false},
		{"resolve by digest, HEAD claims another", sha256Hash(body).String(), manifestServer{body: body, contentType: string(types.OCIManifestSchema1), headDigest: other.String()}, true},
		{"resolve by digest, GET fallback serves other bytes", other.String(), manifestServer{body: body, contentType: string(types.OCIManifestSchema1)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := tc.srv.start(t)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			var err error
			var got []byte
			if tc.resolve {
				var m *verify.Manifest
				_, m, err = c.Resolve(context.Background(), "app", tc.ref, nil)
				if m != nil {
					got = m.Bytes
				}
			} else {
				var m verify.Manifest
				m, err = c.GetManifest(context.Background(), "app", tc.ref, nil)
				got = m.Bytes
			}
			if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "digest mismatch") {
				t.Fatalf("err = %v, want digest mismatch", err)
			}
			if got != nil {
				t.Error("bytes returned with a mismatch")
			}
			if IsTransient(err) {
				t.Error("a mismatch is not transient")
			}
		})
	}
}

func TestOversizedManifestRefused(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte(" "), MaxManifestBytes+1)
	copy(big, ociManifest)
	for _, tc := range []struct {
		name    string
		srv     manifestServer
		resolve bool
	}{
		{"with content length", manifestServer{body: big, contentType: string(types.OCIManifestSchema1)}, false},
		{"chunked", manifestServer{body: big, contentType: string(types.OCIManifestSchema1), chunked: true}, false},
		{"HEAD announces too much", manifestServer{body: big, contentType: string(types.OCIManifestSchema1), headDigest: sha256Hash(big).String()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := tc.srv.start(t)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			var err error
			if tc.resolve {
				_, _, err = c.Resolve(context.Background(), "app", "v1", nil)
			} else {
				_, err = c.GetManifest(context.Background(), "app", "v1", nil)
			}
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrTooLarge", err)
			}
		})
	}

	t.Run("exactly at the limit", func(t *testing.T) {
		t.Parallel()
		body := big[:MaxManifestBytes]
		srv, _ := (&manifestServer{body: body, contentType: string(types.OCIManifestSchema1), chunked: true}).start(t)
		c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
		m, err := c.GetManifest(context.Background(), "app", sha256Hash(body).String(), nil)
		if err != nil || len(m.Bytes) != MaxManifestBytes {
			t.Fatalf("err = %v, len = %d", err, len(m.Bytes))
		}
	})
}

func TestDigestAlgorithms(t *testing.T) {
	t.Parallel()
	body := []byte(ociManifest)
	s := sha512.Sum512(body)
	d512 := v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(s[:])}
	other := sha512.Sum512([]byte("x"))
	other512 := v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(other[:])}

	srv, j := (&manifestServer{body: body, contentType: string(types.OCIManifestSchema1), getDigest: d512.String()}).start(t)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})

	t.Run("sha512 by digest", func(t *testing.T) {
		m, err := c.GetManifest(context.Background(), "app", d512.String(), nil)
		if err != nil || m.Digest != d512 {
			t.Fatalf("m.Digest = %v, err = %v", m.Digest, err)
		}
	})
	t.Run("sha512 announced for a tag", func(t *testing.T) {
		m, err := c.GetManifest(context.Background(), "app", "v1", nil)
		if err != nil || m.Digest != d512 {
			t.Fatalf("m.Digest = %v, err = %v", m.Digest, err)
		}
	})
	t.Run("sha512 mismatch", func(t *testing.T) {
		_, err := c.GetManifest(context.Background(), "app", other512.String(), nil)
		if !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("err = %v, want mismatch", err)
		}
	})
	t.Run("sha512 resolve with sha256 header falls back and hashes with sha512", func(t *testing.T) {
		srv, _ := (&manifestServer{body: body, contentType: string(types.OCIManifestSchema1), headDigest: sha256Hash(body).String()}).start(t)
		c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
		desc, m, err := c.Resolve(context.Background(), "app", d512.String(), nil)
		if err != nil || desc.Digest != d512 || m == nil {
			t.Fatalf("desc = %+v, err = %v", desc, err)
		}
	})

	for _, ref := range []string{
		"md5:" + strings.Repeat("a", 32),
		"sha384:" + strings.Repeat("a", 96),
		"sha256:XYZ",
		"sha256:" + strings.Repeat("a", 63),
		"../../etc",
		"",
	} {
		t.Run("refused "+ref, func(t *testing.T) {
			before := len(j.all())
			if _, err := c.GetManifest(context.Background(), "app", ref, nil); err == nil {
				t.Fatal("unsupported reference accepted")
			}
			if _, _, err := c.Resolve(context.Background(), "app", ref, nil); err == nil {
				t.Fatal("unsupported reference accepted by Resolve")
			}
			if len(j.all()) != before {
				t.Error("a request was sent for an invalid reference")
			}
		})
	}

	t.Run("unsupported algorithm announced", func(t *testing.T) {
		srv, _ := (&manifestServer{body: body, contentType: string(types.OCIManifestSchema1), getDigest: "md5:" + strings.Repeat("a", 32)}).start(t)
		c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
		if _, err := c.GetManifest(context.Background(), "app", "v1", nil); !errors.Is(err, ErrInvalidResponse) {
			t.Fatalf("err = %v, want ErrInvalidResponse", err)
		}
	})
}

func TestManifestMediaType(t *testing.T) {
	t.Parallel()
	index := `{"schemaVersion":2,"manifests":[]}`
	for _, tc := range []struct {
		name, ct, body string
		want           types.MediaType
		wantErr        bool
	}{
		{"header with parameters", "application/vnd.oci.image.manifest.v1+json; charset=utf-8", ociManifest, types.OCIManifestSchema1, false},
		{"sniffed from body", "", ociManifest, types.OCIManifestSchema1, false},
		{"generic header sniffed", "application/json", ociManifest, types.OCIManifestSchema1, false},
		{"index by shape", "", index, types.OCIImageIndex, false},
		{"header contradicts body", string(types.DockerManifestSchema2), ociManifest, "", true},
		{"not json", string(types.OCIManifestSchema1), "<html>", "", true},
		{"nothing to go on", "", `{"schemaVersion":2}`, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := (&manifestServer{body: []byte(tc.body), contentType: tc.ct}).start(t)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			m, err := c.GetManifest(context.Background(), "app", "v1", nil)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("accepted, media type %q", m.MediaType)
				}
				return
			}
			if err != nil || m.MediaType != tc.want {
				t.Fatalf("media type %q, err %v; want %q", m.MediaType, err, tc.want)
			}
		})
	}
}

func TestFetcherManifest(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authNone)
	_, dig, raw := push(t, up.host(), "app", "v1")
	c := newTestClient(t, Config{URL: up.URL, Insecure: true})

	m, err := c.Manifest(context.Background(), "app", dig.String())
	if err != nil || !bytes.Equal(m.Bytes, raw) || m.Digest != dig {
		t.Fatalf("Manifest: %v", err)
	}
	_, err = c.Manifest(context.Background(), "app", "missing")
	if !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("err = %v, want verify.ErrNotFound", err)
	}
	_, err = c.Manifest(context.Background(), "app", sha256Hash([]byte("nope")).String())
	if !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("err = %v, want verify.ErrNotFound", err)
	}
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	up := newFakeUpstream(t, authNone)
	img, dig, raw := push(t, up.host(), "app", "v1")
	mt, _ := img.MediaType()

	// An artifact whose subject is the image.
	art, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	withSubject := mutate.Subject(art, v1.Descriptor{MediaType: mt, Digest: dig, Size: int64(len(raw))}).(v1.Image)
	ref, err := name.ParseReference(up.host()+"/app:sig", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, withSubject, remote.WithTransport(seedTransport{})); err != nil {
		t.Fatal(err)
	}
	artDigest, _ := withSubject.Digest()

	c := newTestClient(t, Config{URL: up.URL, Insecure: true})
	idx, err := c.Referrers(context.Background(), "app", dig)
	if err != nil {
		t.Fatalf("Referrers: %v", err)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != artDigest {
		t.Fatalf("referrers = %+v, want one entry %s", idx.Manifests, artDigest)
	}

	none, err := c.Referrers(context.Background(), "app", artDigest)
	if err != nil || len(none.Manifests) != 0 {
		t.Fatalf("referrers of unreferenced digest: %+v, %v", none, err)
	}
}

func TestReferrersBadUpstreams(t *testing.T) {
	t.Parallel()
	d := sha256Hash([]byte("subject"))
	valid := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d.String() + `","size":10}]}`
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		wantErr error
	}{
		{"no referrers API", http.StatusNotFound, "404 page not found", verify.ErrNoReferrersAPI},
		{"not json", http.StatusOK, "nope", ErrInvalidResponse},
		{"trailing data", http.StatusOK, valid + `{}`, ErrInvalidResponse},
		{"wrong schema version", http.StatusOK, `{"schemaVersion":1,"manifests":[]}`, ErrInvalidResponse},
		{"wrong media type", http.StatusOK, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`, ErrInvalidResponse},
		{"entry without digest", http.StatusOK, `{"schemaVersion":2,"manifests":[{"mediaType":"a/b","size":1}]}`, ErrInvalidResponse},
		{"entry with bad digest", http.StatusOK, `{"schemaVersion":2,"manifests":[{"mediaType":"a/b","size":1,"digest":"sha256:zz"}]}`, ErrInvalidResponse},
		{"negative size", http.StatusOK, `{"schemaVersion":2,"manifests":[{"mediaType":"a/b","size":-1,"digest":"` + d.String() + `"}]}`, ErrInvalidResponse},
		{"too large", http.StatusOK, `{"schemaVersion":2,"manifests":[]}` + strings.Repeat(" ", MaxReferrersBytes), ErrTooLarge},
		{"server error", http.StatusBadGateway, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			idx, err := c.Referrers(context.Background(), "app", d)
			if err == nil {
				t.Fatalf("accepted: %+v", idx)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == verify.ErrNoReferrersAPI && errors.Is(err, verify.ErrNotFound) {
				t.Error("a missing referrers API must not read as missing content")
			}
			if tc.status == http.StatusBadGateway && !IsTransient(err) {
				t.Error("5xx must be transient")
			}
		})
	}
}

// TestReferrersAbsentRemembered: an upstream whose referrers route does
// not exist (a plain 404, as distribution 2.8 answers) is not asked again
// for ReferrersAbsentFor, and is asked once that has passed; a 404 that is
// a registry error (NAME_UNKNOWN for one repository) is not remembered,
// and neither is a 5xx.
func TestReferrersAbsentRemembered(t *testing.T) {
	t.Parallel()
	d := sha256Hash([]byte("subject"))
	for _, tc := range []struct {
		name     string
		status   int
		body     string
		remember bool
	}{
		{"route missing", http.StatusNotFound, "404 page not found\n", true},
		{"registry error", http.StatusNotFound, `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`, false},
		{"server error", http.StatusBadGateway, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var asked atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				asked.Add(1)
				if strings.HasPrefix(tc.body, "{") {
					w.Header().Set("Content-Type", "application/json")
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(srv.Close)
			c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
			now := time.Now()
			c.now = func() time.Time { return now }
			for i := range 3 {
				_, err := c.Referrers(context.Background(), "app", d)
				if err == nil {
					t.Fatalf("call %d accepted", i)
				}
				if tc.status == http.StatusNotFound && !errors.Is(err, verify.ErrNoReferrersAPI) {
					t.Fatalf("call %d: err = %v, want ErrNoReferrersAPI", i, err)
				}
			}
			want := int64(3)
			if tc.remember {
				want = 1
			}
			if n := asked.Load(); n != want {
				t.Fatalf("asked %d times in 3 calls, want %d", n, want)
			}
			now = now.Add(ReferrersAbsentFor + time.Second)
			_, _ = c.Referrers(context.Background(), "other/repo", d)
			if n := asked.Load(); n != want+1 {
				t.Errorf("asked %d times after the window, want %d", n, want+1)
			}
		})
	}
}

func FuzzParseReferrers(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"a/b","size":1,"digest":"sha256:` + strings.Repeat("a", 64) + `"}]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]} {}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, err := parseReferrers(b)
		if err != nil {
			return
		}
		if idx.SchemaVersion != 2 {
			t.Fatalf("accepted schemaVersion %d", idx.SchemaVersion)
		}
		for _, m := range idx.Manifests {
			if m.Digest.Algorithm == "" || m.Size < 0 {
				t.Fatalf("accepted incomplete entry %+v", m)
			}
		}
	})
}

func FuzzManifestMediaType(f *testing.F) {
	f.Add("", []byte(ociManifest))
	f.Add("application/json", []byte(`{"manifests":[]}`))
	f.Add("application/vnd.oci.image.index.v1+json", []byte(`{"mediaType":"x"}`))
	f.Fuzz(func(t *testing.T, ct string, b []byte) {
		mt, err := manifestMediaType(ct, b)
		if err == nil && mt == "" {
			t.Fatal("empty media type without error")
		}
	})
}
