package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache/blobs"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// TestServeBlobCache: with a blob_cache section, serve keeps a pulled
// blob under the configured directory (relative to the config file) and
// answers the next pull of it from there.
func TestServeBlobCache(t *testing.T) {
	s := newSignedSetup(t, "blob_cache: {dir: blobcache, max_gib: 1, min_free_gib: 0}\n")
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type addrs struct{ reg, admin string }
	ready := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, admin string) { ready <- addrs{a, admin} })
	}()
	var a addrs
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	get := func(url string, hdr ...string) []byte {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
		}
		return b
	}
	raw := get("http://"+a.reg+"/v2/app/signed/manifests/"+s.signed.DigestStr(), "Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	var m struct{ Layers []struct{ Digest string } }
	if err := json.Unmarshal(raw, &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest: %v", err)
	}
	blob := "http://" + a.reg + "/v2/app/signed/blobs/" + m.Layers[0].Digest
	first := get(blob)
	second := get(blob)
	if string(first) != string(second) {
		t.Fatal("the cached blob differs")
	}
	metrics := string(get("http://" + a.admin + "/metrics"))
	for _, want := range []string{"portcullis_blob_cache_hits_total 1", "portcullis_blob_cache_files 1", `portcullis_blob_shared_fetches_total{mode="cache"} 1`,
		`portcullis_blob_cache_errors_total{op="commit"} 0`, `portcullis_blob_cache_errors_total{op="write"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	hex := strings.TrimPrefix(m.Layers[0].Digest, "sha256:")
	var found bool
	_ = filepath.WalkDir(filepath.Join(filepath.Dir(s.cfgPath), "blobcache"), func(p string, e os.DirEntry, _ error) error {
		found = found || (e != nil && e.Name() == hex)
		return nil
	})
	if !found {
		t.Error("no file for the blob under the configured directory")
	}
	cancel()
	<-done
}

// TestServeConfigSendfile: blob_cache.sendfile reaches the listener.
func TestServeConfigSendfile(t *testing.T) {
	for _, tc := range []struct {
		section string
		want    proxy.SendfileMode
	}{
		{"", proxy.SendfileAuto},
		{"blob_cache: {dir: c, max_gib: 1}\n", proxy.SendfileAuto},
		{"blob_cache: {dir: c, max_gib: 1, sendfile: always}\n", proxy.SendfileAlways},
		{"blob_cache: {dir: c, max_gib: 1, sendfile: never}\n", proxy.SendfileNever},
	} {
		cfg, err := config.Parse([]byte(string(config.Example)+"\n"+tc.section), filepath.Join(t.TempDir(), "c.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		sc, err := serveConfig(cfg)
		if err != nil || sc.Sendfile != tc.want {
			t.Errorf("%q: sendfile %v, %v; want %v", tc.section, sc.Sendfile, err, tc.want)
		}
	}
}

// The cache's want of room, at Create or met by a Write mid-blob, reaches
// the proxy as ErrBlobCacheFull: the blob is served uncached and no cache
// error is counted.
func TestBlobCacheFullReadsAsProxyError(t *testing.T) {
	free := int64(1 << 30)
	s, err := blobs.Open(t.TempDir(), blobs.Options{MaxBytes: 100, MinFreeBytes: 1000, ClaimStep: 10,
		FreeSpace: func(string) (int64, error) { return free, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.Scanned()
	c := blobCache{s}
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}
	if _, err := c.Create("u", d, 101); !errors.Is(err, proxy.ErrBlobCacheFull) {
		t.Errorf("Create beyond the cache = %v, want ErrBlobCacheFull", err)
	}
	w, err := c.Create("u", d, 50)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer w.Abort()
	if _, err := w.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	free = 1005
	if _, err := w.Write(make([]byte, 10)); !errors.Is(err, proxy.ErrBlobCacheFull) {
		t.Errorf("Write with no room left = %v, want ErrBlobCacheFull", err)
	}
	if _, ok := w.(interface{ OpenReader() (*os.File, error) }); !ok {
		t.Error("the writer lost OpenReader, which lets readers of a growing file use sendfile")
	}
}
