package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
)

// manifestAccept is what containerd sends.
const manifestAccept = "application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json"

// Request classes of the report.
const (
	classTag        = "allowed manifest by tag"
	classDigest     = "allowed manifest by digest"
	classHead       = "allowed HEAD by tag"
	classDenied     = "denied manifest"
	classUnknown    = "unknown manifest"
	classBlob       = "allowed blob"
	classDeniedBlob = "blob of a denied image"
	classBomb       = "evidence bomb"
	classPBomb      = "predicate bomb"
	classFlood      = "flood (abandoned)"
	classStall      = "stalled blob stream"
)

var classOrder = []string{classTag, classDigest, classHead, classDenied, classUnknown, classBlob, classDeniedBlob, classBomb, classPBomb, classFlood, classStall}

// refusedClasses may only ever be answered 403, 404, 429 or 5xx.
var refusedClasses = map[string]bool{classDenied: true, classUnknown: true, classDeniedBlob: true, classBomb: true, classPBomb: true, classFlood: true}

// tally counts outcomes per class and keeps the violations: answers that
// served what must not be served.
type tally struct {
	mu         sync.Mutex
	byClass    map[string]map[string]int
	verified   map[string]int // 200 answers whose bytes were checked
	slowest    map[string]time.Duration
	slowestAt  map[string]time.Time // when the slowest answer was asked for
	violations int
	examples   []string
	// outage counts the answers other than 200 that came while the
	// upstream was down (or had just come back), by outcome.
	outage map[string]int
}

func newTally() *tally {
	return &tally{byClass: map[string]map[string]int{}, verified: map[string]int{}, slowest: map[string]time.Duration{}, slowestAt: map[string]time.Time{}, outage: map[string]int{}}
}

// addOutage records an answer other than 200 given during an outage.
func (t *tally) addOutage(outcome string) {
	t.mu.Lock()
	t.outage[outcome]++
	t.mu.Unlock()
}

func (t *tally) add(class, outcome string, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.byClass[class]
	if m == nil {
		m = map[string]int{}
		t.byClass[class] = m
	}
	m[outcome] += n
}

func (t *tally) ok(class string, took time.Duration) {
	t.mu.Lock()
	t.verified[class]++
	t.mu.Unlock()
	t.took(class, took)
}

func (t *tally) took(class string, d time.Duration) {
	t.mu.Lock()
	if d > t.slowest[class] {
		t.slowest[class], t.slowestAt[class] = d, time.Now().Add(-d)
	}
	t.mu.Unlock()
}

func (t *tally) violation(format string, a ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.violations++
	if len(t.examples) < 20 {
		t.examples = append(t.examples, fmt.Sprintf(format, a...))
	}
}

// total is the number of requests counted so far.
func (t *tally) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, m := range t.byClass {
		for _, v := range m {
			n += v
		}
	}
	return n
}

// outcomes lists a class's outcomes, most frequent first.
func (t *tally) outcomes(class string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return harness.Counts(t.byClass[class])
}

// checker makes requests and judges their answers.
type checker struct {
	client  *http.Client
	base    string // http://proxy
	c       *content
	t       *tally
	timeout time.Duration
	// down is set while the upstream is killed, so failures then are
	// told apart from failures while it is up.
	down atomic.Bool
}

// record counts one answer of class, noting when it came during an
// outage.
func (k *checker) record(class, outcome string, startedDown bool) {
	k.t.add(class, outcome, 1)
	if outcome != "200" && (startedDown || k.down.Load()) {
		k.t.addOutage(outcome)
	}
}

func (k *checker) manifest(ctx context.Context, class, method, repo, ref, want string) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	url := k.base + "/v2/" + repo + "/manifests/" + ref
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		k.t.add(class, "bad request", 1)
		return
	}
	req.Header.Set("Accept", manifestAccept)
	t0, down := time.Now(), k.down.Load()
	resp, err := k.client.Do(req)
	if err != nil {
		if parent.Err() == nil {
			k.record(class, "conn "+hostile.ConnErrorKind(err), down)
		}
		return
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	took := time.Since(t0)
	k.record(class, strconv.Itoa(resp.StatusCode), down)
	if resp.StatusCode != http.StatusOK {
		k.t.took(class, took)
		return
	}
	header := resp.Header.Get("Docker-Content-Digest")
	if refusedClasses[class] {
		k.t.violation("%s %s: 200 for a subject that must be refused (Docker-Content-Digest %s)", method, url, header)
		return
	}
	if method == http.MethodHead {
		if header != want {
			k.t.violation("HEAD %s: Docker-Content-Digest %q, want %s", url, header, want)
			return
		}
		k.t.ok(class, took)
		return
	}
	if rerr != nil {
		if parent.Err() == nil {
			k.record(class, "aborted body", down)
		}
		return
	}
	sum := sha256.Sum256(body)
	got := "sha256:" + hex.EncodeToString(sum[:])
	switch {
	case !k.c.allowedSet[got]:
		k.t.violation("GET %s: 200 body hashes to %s, not an allowed manifest", url, got)
	case got != want:
		k.t.violation("GET %s: 200 body hashes to %s, want %s", url, got, want)
	case header != "" && header != got:
		k.t.violation("GET %s: Docker-Content-Digest %s for a body hashing to %s", url, header, got)
	default:
		k.t.ok(class, took)
	}
}

func (k *checker) blob(ctx context.Context, class string, b blobRef) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	url := k.base + "/v2/" + b.repo + "/blobs/" + b.digest
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		k.t.add(class, "bad request", 1)
		return
	}
	t0, down := time.Now(), k.down.Load()
	resp, err := k.client.Do(req)
	if err != nil {
		// A request cut short by the end of the run is nobody's failure.
		if parent.Err() == nil {
			k.record(class, "conn "+hostile.ConnErrorKind(err), down)
		}
		return
	}
	defer resp.Body.Close()
	k.record(class, strconv.Itoa(resp.StatusCode), down)
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		k.t.took(class, time.Since(t0))
		return
	}
	if refusedClasses[class] {
		k.t.violation("GET %s: 200 for a blob that must be refused", url)
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		// A stream cut short is not a served blob: the client never gets
		// a complete body to trust.
		if parent.Err() == nil {
			k.record(class, "aborted stream", down)
		}
		return
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got != b.digest || n != b.size {
		k.t.violation("GET %s: 200 with %d bytes hashing to %s, want %d bytes of %s", url, n, got, b.size, b.digest)
		return
	}
	k.t.ok(class, time.Since(t0))
}

// loadClient runs mixed requests until ctx is done.
func (k *checker) loadClient(ctx context.Context, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed*7919+1))
	c := k.c
	for ctx.Err() == nil {
		switch x := r.IntN(100); {
		case x < 22:
			it := c.allowed[r.IntN(len(c.allowed))]
			k.manifest(ctx, classTag, http.MethodGet, it.repo, it.tag, it.digest)
		case x < 40:
			it := c.allowed[r.IntN(len(c.allowed))]
			k.manifest(ctx, classDigest, http.MethodGet, it.repo, it.digest, it.digest)
		case x < 50:
			it := c.allowed[r.IntN(len(c.allowed))]
			k.manifest(ctx, classHead, http.MethodHead, it.repo, it.tag, it.digest)
		case x < 60:
			it := c.denied[r.IntN(len(c.denied))]
			ref := it.tag
			if r.IntN(2) == 0 {
				ref = it.digest
			}
			k.manifest(ctx, classDenied, http.MethodGet, it.repo, ref, "")
		case x < 68:
			ref := hostile.RandomDigest()
			if r.IntN(2) == 0 {
				ref = fmt.Sprintf("missing-%d", r.IntN(1<<20))
			}
			k.manifest(ctx, classUnknown, http.MethodGet, "soak/allowed", ref, "")
		case x < 94:
			k.blob(ctx, classBlob, c.allowedBlobs[r.IntN(len(c.allowedBlobs))])
		default:
			k.blob(ctx, classDeniedBlob, c.deniedBlobs[r.IntN(len(c.deniedBlobs))])
		}
	}
}
