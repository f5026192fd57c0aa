package config

import (
	"strings"
	"testing"
)

func TestBlobCacheConfig(t *testing.T) {
	t.Parallel()
	base := string(Example) + "\n"
	c, err := Parse(Example, "example.yaml")
	if err != nil || c.BlobCache != nil {
		t.Fatalf("without the section: %+v, %v", c.BlobCache, err)
	}
	if s := c.BlobShare; s.Disabled || s.BufferBytes != 8<<20 || s.MaxBytes != 64<<20 {
		t.Fatalf("blob_share defaults = %+v", s)
	}
	c, err = Parse([]byte(base+"blob_cache: {dir: /var/cache/portcullis, max_gib: 50}\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b := c.BlobCache; b.Dir != "/var/cache/portcullis" || b.MaxBytes() != 50<<30 || b.MinFreeBytes() != 1<<30 || b.Sendfile != "auto" {
		t.Fatalf("parsed = %+v", b)
	}
	c, err = Parse([]byte(base+"blob_cache: {dir: c, max_gib: 0.5, min_free_gib: 0, sendfile: never}\nblob_share: {buffer_bytes: 4MiB, max_bytes: 16MiB}\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b := c.BlobCache; b.MaxBytes() != 512<<20 || b.MinFreeBytes() != 0 || b.Sendfile != "never" || c.BlobShare.BufferBytes != 4<<20 || c.BlobShare.MaxBytes != 16<<20 {
		t.Fatalf("parsed = %+v %+v", b, c.BlobShare)
	}

	for _, tc := range []struct{ yaml, want string }{
		{"blob_cache: {max_gib: 1}", "blob_cache.dir"},
		{"blob_cache: {dir: c}", "blob_cache.max_gib"},
		{"blob_cache: {dir: c, max_gib: -1}", "blob_cache.max_gib"},
		{"blob_cache: {dir: c, max_gib: .nan}", "blob_cache.max_gib"},
		{"blob_cache: {dir: c, max_gib: 1, min_free_gib: -1}", "blob_cache.min_free_gib"},
		{"blob_cache: {dir: c, max_gib: 1, size: 3}", "size"},
		{"blob_cache: {dir: c, max_gib: 1, sendfile: on}", "blob_cache.sendfile"},
		{"blob_cache: {dir: c, max_gib: 1, sendfile: true}", "blob_cache.sendfile"},
		{"blob_share: {buffer_bytes: 4KiB}", "blob_share.buffer_bytes"},
		{"blob_share: {buffer_bytes: 16MiB, max_bytes: 8MiB}", "blob_share.max_bytes"},
	} {
		_, err := Parse([]byte(base+tc.yaml+"\n"), "c.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.yaml, err, tc.want)
		}
	}
}
