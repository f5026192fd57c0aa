package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// manifestAccept is what containerd sends: every manifest and index type.
const manifestAccept = "application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json"

// newClient is the one HTTP client of the bench, with enough idle
// connections that the highest concurrency never redials.
func newClient() *http.Client {
	tr := harness.NewTransport(2048)
	// Blob reads go straight into io.Discard; larger buffers keep the
	// client from being the bottleneck of a throughput cell.
	tr.ReadBufferSize, tr.WriteBufferSize = 256<<10, 16<<10
	return &http.Client{Transport: tr}
}

// probe is one kind of request sent repeatedly.
type probe struct {
	method string
	urls   []string // request i goes to urls[i%len(urls)]
	want   int      // expected status
}

// cell is the outcome of one load run.
type cell struct {
	requests    int
	concurrency int
	errors      int
	firstErr    string
	p50, p99    time.Duration
	rps         float64
	// cpu is the server process's own CPU per request (its upstream's not
	// included); 0 when the server runs in process.
	cpu time.Duration
}

func (c cell) ok() bool { return c.requests > 0 && c.errors == 0 }

// runLoad sends n requests from conc workers and records each latency.
// The body is read to the end, so a latency covers the whole response.
func runLoad(ctx context.Context, client *http.Client, p probe, n, conc int) cell {
	lat := make([]time.Duration, n)
	var (
		next     atomic.Int64
		errs     atomic.Int64
		errOnce  sync.Once
		firstErr string
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer teardown.Guard()
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				err := do(ctx, client, p.method, p.urls[i%len(p.urls)], p.want)
				lat[i] = time.Since(t0)
				if err != nil {
					errs.Add(1)
					errOnce.Do(func() { firstErr = err.Error() })
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	c := cell{requests: n, concurrency: conc, errors: int(errs.Load()), firstErr: firstErr}
	if err := ctx.Err(); err != nil && c.firstErr == "" {
		c.errors, c.firstErr = n, err.Error()
	}
	c.p50, c.p99 = percentiles(lat)
	c.rps = float64(n) / wall.Seconds()
	return c
}

// percentiles returns the nearest-rank p50 and p99.
func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	rank := func(p int) time.Duration {
		i := (len(s)*p + 99) / 100 // ceil(len*p/100)
		return s[max(i-1, 0)]
	}
	return rank(50), rank(99)
}

// do sends one request and drains the body; a status other than want is an
// error.
func do(ctx context.Context, client *http.Client, method, url string, want int) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// pullBlob streams one blob to io.Discard and returns the throughput. The
// length must match; a short read is an error, not a fast pull.
func pullBlob(ctx context.Context, client *http.Client, url string, size int64) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	n, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
	if err != nil {
		return 0, fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if n != size {
		return 0, fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
	}
	return float64(n) / (1 << 20) / time.Since(t0).Seconds(), nil
}
