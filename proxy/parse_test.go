package proxy

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestParseManifest(t *testing.T) {
	t.Parallel()
	d := func(s string) string { return sha([]byte(s)).String() }
	desc := func(mt, s string) string { return `{"mediaType":"` + mt + `","digest":"` + d(s) + `","size":1}` }
	cfg := desc("application/vnd.cncf.model.config.v1+json", "c")
	layer := desc("application/vnd.oci.image.layer.v1.tar", "l")
	tests := []struct {
		name   string
		ct     types.MediaType
		body   string
		ok     bool
		index  bool
		at     string
		blobs  int
		childs int
	}{
		{"oci image", types.OCIManifestSchema1, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + cfg + `,"layers":[` + layer + `]}`, true, false, "application/vnd.cncf.model.config.v1+json", 1, 0},
		{"artifactType wins", types.OCIManifestSchema1, `{"schemaVersion":2,"artifactType":"application/x","config":` + cfg + `,"layers":[]}`, true, false, "application/x", 0, 0},
		{"media type from body", "", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + cfg + `,"layers":[]}`, true, false, "application/vnd.cncf.model.config.v1+json", 0, 0},
		{"index", types.OCIImageIndex, `{"schemaVersion":2,"manifests":[` + desc("application/vnd.oci.image.manifest.v1+json", "m") + `],"annotations":{"Layers":"x","layers":"y"}}`, true, true, "", 0, 1},
		{"docker list", types.DockerManifestList, `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}`, true, true, "", 0, 0},
		{"schema 1", "application/vnd.docker.distribution.manifest.v1+prettyjws", `{"schemaVersion":1}`, false, false, "", 0, 0},
		{"no schema version", types.OCIManifestSchema1, `{"config":` + cfg + `,"layers":[]}`, false, false, "", 0, 0},
		{"media type contradicts header", types.OCIManifestSchema1, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, false, false, "", 0, 0},
		{"duplicate key", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"layers":[],"layers":[` + layer + `]}`, false, false, "", 0, 0},
		{"case variant key", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"Layers":[` + layer + `]}`, false, false, "", 0, 0},
		{"case variant in descriptor", types.OCIManifestSchema1, `{"schemaVersion":2,"config":{"mediaType":"a","Digest":"` + d("x") + `","size":1}}`, false, false, "", 0, 0},
		{"trailing data", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `} {}`, false, false, "", 0, 0},
		{"not an object", types.OCIManifestSchema1, `[1]`, false, false, "", 0, 0},
		{"no config", types.OCIManifestSchema1, `{"schemaVersion":2,"layers":[]}`, false, false, "", 0, 0},
		{"image with manifests", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"manifests":[]}`, false, false, "", 0, 0},
		{"index with layers", types.OCIImageIndex, `{"schemaVersion":2,"manifests":[],"layers":[]}`, false, false, "", 0, 0},
		{"bad layer digest", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"a","digest":"sha256:zz","size":1}]}`, false, false, "", 0, 0},
		{"unsupported layer digest", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"a","digest":"md5:` + strings.Repeat("a", 32) + `","size":1}]}`, false, false, "", 0, 0},
		{"zero size", types.OCIManifestSchema1, `{"schemaVersion":2,"config":{"mediaType":"a","digest":"` + d("") + `","size":0},"layers":[{"mediaType":"b","digest":"` + d("") + `","size":0}]}`, true, false, "a", 1, 0},
		{"negative size", types.OCIManifestSchema1, `{"schemaVersion":2,"config":{"mediaType":"a","digest":"` + d("x") + `","size":-1}}`, false, false, "", 0, 0},
		{"long s folds to size", types.OCIManifestSchema1, `{"schemaVersion":2,"config":{"mediaType":"a","digest":"` + d("x") + `","size":1,"ſize":999}}`, false, false, "", 0, 0},
		{"escaped key folds", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"l\u0061yers":[],"layers":[]}`, false, false, "", 0, 0},
		{"escaped long s", types.OCIManifestSchema1, `{"schemaVersion":2,"config":{"mediaType":"a","digest":"` + d("x") + `","\u017fize":1}}`, false, false, "", 0, 0},
		{"annotations keep their keys", types.OCIManifestSchema1, `{"schemaVersion":2,"config":` + cfg + `,"layers":[],"annotations":{"ſize":"1","Size":"2"}}`, true, false, "application/vnd.cncf.model.config.v1+json", 0, 0},
		{"deep nesting", types.OCIManifestSchema1, `{"schemaVersion":2,"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, false, false, "", 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pm, err := parseManifest(tc.ct, []byte(tc.body))
			if (err == nil) != tc.ok {
				t.Fatalf("parseManifest ok = %v, want %v (%v)", err == nil, tc.ok, err)
			}
			if !tc.ok {
				return
			}
			if pm.index != tc.index || pm.artifactType != tc.at || len(pm.layers) != tc.blobs || len(pm.children) != tc.childs {
				t.Errorf("parsed = %+v", pm)
			}
		})
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"a","digest":"sha256:` + strings.Repeat("a", 64) + `","size":1},"layers":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]}`))
	f.Add([]byte(`{"a":{"b":[1,2,{"c":null}]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pm, err := parseManifest(types.OCIImageIndex, b)
		if err != nil {
			return
		}
		refs := slices.Clone(pm.children)
		blobs := pm.layers
		if !pm.index {
			blobs = append(blobs, pm.config)
		}
		for _, ref := range blobs {
			if ref.size < 0 {
				t.Fatalf("accepted manifest with a negative size: %q", b)
			}
			refs = append(refs, ref.digest)
		}
		for _, h := range refs {
			if _, perr := parseDigest(h.String()); perr != nil {
				t.Fatalf("accepted manifest referencing %q: %q", h, b)
			}
		}
	})
}

func FuzzParseAPIPath(f *testing.F) {
	for _, s := range []string{
		"/v2/library/alpine/manifests/latest",
		"/v2/docker.io/library/alpine/blobs/sha256:" + strings.Repeat("a", 64),
		"/v2/a/referrers/sha512:" + strings.Repeat("b", 128),
		"/v2/a/b/tags/list",
		"/v2/a/%2e%2e/manifests/x",
		"/v2/localhost:5000/a/manifests/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		r, err := http.NewRequest(http.MethodGet, "http://proxy"+path, nil)
		if err != nil {
			return
		}
		req, perr := parseAPIPath(r)
		if perr != nil || req.kind == routeBase {
			return
		}
		if strings.Contains(req.name, "..") || strings.Contains(req.name, "//") || len(req.name) > maxNameLength {
			t.Fatalf("accepted name %q from %q", req.name, path)
		}
		if req.kind != routeTags && !req.isTag && req.digest.Hex == "" {
			t.Fatalf("accepted %q without a tag or digest", path)
		}
	})
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{{"abc", 3, "abc"}, {"abcd", 3, "abc…"}, {"", 0, ""}, {"a", 0, "…"}} {
		if got := truncate(tc.s, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
