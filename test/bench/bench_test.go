package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	const h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		path string
		want string
	}{
		{"/v2/", kindPing},
		{"/v2/bench/herd/manifests/img-0", kindTag},
		{"/v2/bench/herd/manifests/sha256:" + h, kindDigest},
		{"/v2/bench/herd/manifests/sha256-" + h + ".sig", kindSig},
		{"/v2/bench/herd/manifests/sha256-" + h + ".att", kindAtt},
		{"/v2/bench/herd/manifests/sha256-" + h, kindFallback},
		// A tag that only looks like a fallback tag is an ordinary tag.
		{"/v2/bench/herd/manifests/sha256-" + h[:10], kindTag},
		{"/v2/bench/herd/referrers/sha256:" + h, kindReferrers},
		{"/v2/bench/herd/blobs/sha256:" + h, kindBlob},
		{"/v2/bench/herd/tags/list", kindOther},
		{"/metrics", kindOther},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			if got := classify(tt.path); got != tt.want {
				t.Errorf("classify(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

func TestPercentiles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       []time.Duration
		p50, p99 time.Duration
	}{
		{"empty", nil, 0, 0},
		{"one", []time.Duration{7}, 7, 7},
		{"two", []time.Duration{9, 1}, 1, 9},
		// Nearest rank: of 100 values 1..100, p50 is the 50th and p99 the
		// 99th, whatever the input order.
		{"hundred", func() []time.Duration {
			v := make([]time.Duration, 100)
			for i := range v {
				v[i] = time.Duration(100 - i)
			}
			return v
		}(), 50, 99},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p50, p99 := percentiles(tt.in)
			if p50 != tt.p50 || p99 != tt.p99 {
				t.Errorf("percentiles = %v, %v; want %v, %v", p50, p99, tt.p50, tt.p99)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	t.Parallel()
	in := []float64{3, 1, 2}
	if got := median(in); got != 2 {
		t.Errorf("median = %v, want 2", got)
	}
	if in[0] != 3 {
		t.Error("median reordered its input")
	}
}

func TestProcCPU(t *testing.T) {
	t.Parallel()
	cpu, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if cpu < 0 {
		t.Errorf("negative CPU time %v", cpu)
	}
}

func TestWriteRandomFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, err := writeRandomFile(filepath.Join(dir, "a"), 3<<20+5, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := writeRandomFile(filepath.Join(dir, "b"), 3<<20+5, 1)
	if err != nil {
		t.Fatal(err)
	}
	c, err := writeRandomFile(filepath.Join(dir, "c"), 3<<20+5, 2)
	if err != nil {
		t.Fatal(err)
	}
	if a.digest != b.digest {
		t.Error("the same seed gave different content")
	}
	if a.digest == c.digest {
		t.Error("different seeds gave the same content")
	}
	content, err := os.ReadFile(a.path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(content); hex.EncodeToString(sum[:]) != a.digest.Hex {
		t.Error("digest does not match the file")
	}
	fi, err := os.Stat(a.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 3<<20+5 || a.size != fi.Size() {
		t.Errorf("size %d (file %d), want %d", a.size, fi.Size(), 3<<20+5)
	}
}
