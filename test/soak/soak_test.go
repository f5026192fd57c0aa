package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
)

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestCheckerFindsServedBytes: the soak's proof that nothing was served
// that must not be rests on the checker; a proxy that serves a denied
// subject, the wrong manifest or a corrupted blob must be caught.
func TestCheckerFindsServedBytes(t *testing.T) {
	t.Parallel()
	good, other, evil := []byte(`{"good":1}`), []byte(`{"other":2}`), []byte(`{"evil":3}`)
	blob := []byte("layer bytes")
	c := &content{allowedSet: map[string]bool{digestOf(good): true, digestOf(other): true}}
	// A proxy that misbehaves in every way the checker must notice.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/ok/manifests/" + digestOf(good):
			w.Header().Set("Docker-Content-Digest", digestOf(good))
			w.Write(good)
		case "/v2/swap/manifests/" + digestOf(good):
			w.Write(other) // allowed bytes, but not the ones asked for
		case "/v2/evil/manifests/t":
			w.Write(evil) // bytes of no allowed manifest
		case "/v2/denied/manifests/t":
			w.Write(good) // any 200 for a denied subject
		case "/v2/refused/manifests/t":
			w.WriteHeader(http.StatusForbidden)
		case "/v2/ok/blobs/" + digestOf(blob):
			w.Write(blob)
		case "/v2/bad/blobs/" + digestOf(blob):
			w.Write([]byte("layer bytez"))
		case "/v2/denied/blobs/" + digestOf(blob):
			w.Write(blob)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	check := func(f func(k *checker)) *tally {
		k := &checker{client: srv.Client(), base: srv.URL, c: c, t: newTally(), timeout: 5 * time.Second}
		f(k)
		return k.t
	}
	g := digestOf(good)
	tests := []struct {
		name      string
		run       func(k *checker)
		violation bool
	}{
		{"allowed, right bytes", func(k *checker) { k.manifest(ctx, classDigest, http.MethodGet, "ok", g, g) }, false},
		{"allowed, other allowed bytes", func(k *checker) { k.manifest(ctx, classDigest, http.MethodGet, "swap", g, g) }, true},
		{"bytes of no allowed manifest", func(k *checker) { k.manifest(ctx, classTag, http.MethodGet, "evil", "t", g) }, true},
		{"asked-for bytes of no allowed manifest", func(k *checker) { k.manifest(ctx, classTag, http.MethodGet, "evil", "t", digestOf(evil)) }, true},
		{"denied subject served", func(k *checker) { k.manifest(ctx, classDenied, http.MethodGet, "denied", "t", "") }, true},
		{"denied subject, HEAD answered 200", func(k *checker) { k.manifest(ctx, classDenied, http.MethodHead, "denied", "t", "") }, true},
		{"bomb subject served", func(k *checker) { k.manifest(ctx, classBomb, http.MethodGet, "denied", "t", "") }, true},
		{"denied subject refused", func(k *checker) { k.manifest(ctx, classDenied, http.MethodGet, "refused", "t", "") }, false},
		{"blob, right bytes", func(k *checker) {
			k.blob(ctx, classBlob, blobRef{repo: "ok", digest: digestOf(blob), size: int64(len(blob))})
		}, false},
		{"blob, wrong bytes", func(k *checker) {
			k.blob(ctx, classBlob, blobRef{repo: "bad", digest: digestOf(blob), size: int64(len(blob))})
		}, true},
		{"blob of a denied image served", func(k *checker) {
			k.blob(ctx, classDeniedBlob, blobRef{repo: "denied", digest: digestOf(blob), size: int64(len(blob))})
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tl := check(tt.run)
			if got := tl.violations > 0; got != tt.violation {
				t.Errorf("violation = %v (%v), want %v", got, tl.examples, tt.violation)
			}
			if tl.total() != 1 || len(tl.outcomes("")) != 0 {
				t.Errorf("requests counted: %d", tl.total())
			}
			for class, m := range tl.byClass {
				for outcome := range m {
					if strings.HasPrefix(outcome, "conn ") {
						t.Errorf("%s: %s", class, outcome)
					}
				}
			}
		})
	}
}

func TestAcceptable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		class, outcome string
		want           bool
	}{
		{classDenied, "403", true},
		{classDenied, "503", true},
		{classDenied, "429", true},
		{classDenied, "conn reset", true},
		{classDenied, "404", false},
		{classDenied, "200", false},
		{classBomb, "403", true},
		{classBomb, "200", false},
		{classUnknown, "404", true},
		{classUnknown, "403", true},
		{classUnknown, "200", false},
		{classFlood, "abandoned", true},
		{classDeniedBlob, "206", false},
	}
	for _, tt := range tests {
		if got := acceptable(tt.class, tt.outcome); got != tt.want {
			t.Errorf("acceptable(%s, %s) = %v", tt.class, tt.outcome, got)
		}
	}
}

// TestSettled: goroutines and descriptors are judged against the idle
// process, RSS against the peak under ordinary load.
func TestSettled(t *testing.T) {
	t.Parallel()
	idle := statsOf(30<<20, 14, 12)
	const warm = 80 << 20
	if !settled(idle, warm, statsOf(85<<20, 15, 20)) {
		t.Error("within bounds refused")
	}
	for name, s := range map[string]struct{ rss, fds, g int }{
		"rss":        {90 << 20, 15, 20},
		"fds":        {40 << 20, 30, 20},
		"goroutines": {40 << 20, 15, 40},
	} {
		if settled(idle, warm, statsOf(int64(s.rss), s.fds, float64(s.g))) {
			t.Errorf("%s above bounds accepted", name)
		}
	}
}

func TestJournalReplay(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	j1 := &journal{path: dir + "/j", next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})}
	for _, p := range []string{"/v2/a/manifests/t1", "/v2/a/blobs/uploads/x", "/v2/a/manifests/t2"} {
		req := httptest.NewRequest(http.MethodPut, p, strings.NewReader("{}"))
		j1.ServeHTTP(httptest.NewRecorder(), req)
	}
	var replayed []string
	j2 := &journal{path: dir + "/j", next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		replayed = append(replayed, r.URL.Path)
		w.WriteHeader(http.StatusCreated)
	})}
	if err := j2.replay(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(replayed, " ") != "/v2/a/manifests/t1 /v2/a/manifests/t2" {
		t.Errorf("replayed %v", replayed)
	}
}

func statsOf(rss int64, fds int, g float64) hostile.Stats {
	return hostile.Stats{RSS: rss, HWM: rss, FDs: fds, Goroutines: g}
}
