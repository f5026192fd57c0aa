package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache/blobs"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// blobCacheTrimEvery is how often the cache checks free space between
// writes, for a disk that fills up from elsewhere.
const blobCacheTrimEvery = 30 * time.Second

// blobCache is a blobs.Store as the proxy's BlobCache.
type blobCache struct{ *blobs.Store }

var _ proxy.BlobCache = blobCache{}

func (c blobCache) Create(upstream string, d v1.Hash, size int64) (proxy.BlobCacheWriter, error) {
	w, err := c.Store.Create(upstream, d, size)
	if errors.Is(err, blobs.ErrTooLarge) || errors.Is(err, blobs.ErrNoSpace) {
		return nil, fmt.Errorf("%w: %w", proxy.ErrBlobCacheFull, err)
	}
	if err != nil {
		return nil, err
	}
	return blobCacheWriter{w}, nil
}

// blobCacheWriter is a blobs.Writer whose want of room, met as bytes
// arrive, reads as the proxy's ErrBlobCacheFull.
type blobCacheWriter struct{ *blobs.Writer }

func (w blobCacheWriter) Write(b []byte) (int, error) {
	n, err := w.Writer.Write(b)
	if errors.Is(err, blobs.ErrNoSpace) {
		err = fmt.Errorf("%w: %w", proxy.ErrBlobCacheFull, err)
	}
	return n, err
}

// withBlobCache adds shared blob fetches and, when configured, the blob
// cache to the proxy's options. The cache's background work ends with
// ctx.
func withBlobCache(ctx context.Context, cfg *config.Config, logger *zap.Logger, extra []proxy.Option) ([]proxy.Option, error) {
	if !cfg.BlobShare.Disabled {
		extra = append(extra, proxy.WithBlobShare(cfg.BlobShare.BufferBytes.Int64(), cfg.BlobShare.MaxBytes.Int64()))
	}
	bc := cfg.BlobCache
	if bc == nil {
		return extra, nil
	}
	dir := cfg.Resolve(bc.Dir)
	s, err := blobs.Open(dir, blobs.Options{MaxBytes: bc.MaxBytes(), MinFreeBytes: bc.MinFreeBytes()})
	if err != nil {
		return nil, err
	}
	logger.Info("blob cache", zap.String("dir", dir), zap.Int64("max_bytes", bc.MaxBytes()), zap.Int64("min_free_bytes", bc.MinFreeBytes()))
	go func() {
		defer s.Close()
		done := ctx.Done()
		select {
		case <-s.Scanned():
			st := s.Stats()
			logger.Info("blob cache: files from the last run checked", zap.Int("files", st.Files), zap.Int64("bytes", st.Bytes),
				zap.Int64("removed", st.Rejected))
		case <-done:
			return
		}
		t := time.NewTicker(blobCacheTrimEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				s.Trim()
			case <-done:
				return
			}
		}
	}()
	return append(extra, proxy.WithBlobCache(blobCache{s}), proxy.WithCollectors(blobCacheCollectors(s)...)), nil
}

func blobCacheCollectors(s *blobs.Store) []prometheus.Collector {
	gauge := func(name, help string, f func(blobs.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(s.Stats()) })
	}
	counter := func(name, help string, labels prometheus.Labels, f func(blobs.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 { return f(s.Stats()) })
	}
	const evictHelp = "Files evicted from the blob cache, by reason (size: max_gib; free_space: min_free_gib)."
	return []prometheus.Collector{
		gauge("portcullis_blob_cache_bytes", "Bytes of verified files in the blob cache.", func(st blobs.Stats) float64 { return float64(st.Bytes) }),
		gauge("portcullis_blob_cache_files", "Verified files in the blob cache.", func(st blobs.Stats) float64 { return float64(st.Files) }),
		gauge("portcullis_blob_cache_reserved_bytes", "Bytes of the blob cache claimed by fetches being written (a step at a time as their bytes arrive).",
			func(st blobs.Stats) float64 { return float64(st.Reserved) }),
		counter("portcullis_blob_cache_evictions_total", evictHelp, prometheus.Labels{"reason": "size"},
			func(st blobs.Stats) float64 { return float64(st.EvictedSize) }),
		counter("portcullis_blob_cache_evictions_total", evictHelp, prometheus.Labels{"reason": "free_space"},
			func(st blobs.Stats) float64 { return float64(st.EvictedFree) }),
		counter("portcullis_blob_cache_removed_total", "Files removed from the blob cache directory at start: partial files and files whose content is not their name's digest.",
			nil, func(st blobs.Stats) float64 { return float64(st.Rejected) }),
		counter("portcullis_blob_cache_refused_total", "Blobs not cached for want of room (larger than max_gib, or min_free_gib reached).",
			nil, func(st blobs.Stats) float64 { return float64(st.Refused) }),
	}
}
