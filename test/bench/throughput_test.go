package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

func TestBlobGoals(t *testing.T) {
	t.Parallel()
	rows := func(pcDiscard, relayDiscard, pcHashRatio float64) []blobRow {
		return []blobRow{
			{target: "direct", mode: clientDiscard, mbps: 2000, ratio: 1},
			{target: "go-relay (no checks)", mode: clientDiscard, mbps: relayDiscard},
			{target: "portcullis", note: "first pull, digest checked", mode: clientDiscard, mbps: pcDiscard},
			{target: "portcullis-baseline", mode: clientSHA256, ratio: 2},
			{target: "portcullis", note: "first pull, digest checked", mode: clientSHA256, ratio: pcHashRatio},
		}
	}
	for _, tc := range []struct {
		name        string
		r           results
		discard     string // measured, "" when the goal must be absent
		discardPass bool
		hashRatio   string
		hashPass    bool
		goalsCount  int
	}{
		// The relay is the slower reference: 900 of 1000.
		{name: "relay bound", r: results{blobs: rows(900, 1000, 0.96), shaFloor: []float64{1200, 1300, 1250}},
			discard: "0.90×", discardPass: true, hashRatio: "0.96×", hashPass: true, goalsCount: 2},
		// The floor (median 1000) is the slower: 850 of 1000 misses.
		{name: "floor bound", r: results{blobs: rows(850, 1400, 0.5), shaFloor: []float64{900, 1000, 1100}},
			discard: "0.85×", hashRatio: "0.50×", goalsCount: 2},
		{name: "no floor measured", r: results{blobs: rows(900, 1000, 0.96)},
			hashRatio: "0.96×", hashPass: true, goalsCount: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			gs := blobGoals(&tc.r)
			if len(gs) != tc.goalsCount {
				t.Fatalf("%d goals, want %d: %+v", len(gs), tc.goalsCount, gs)
			}
			i := 0
			if tc.discard != "" {
				if gs[0].measured != tc.discard || gs[0].pass != tc.discardPass {
					t.Errorf("discarding client goal = %+v, want %s pass=%v", gs[0], tc.discard, tc.discardPass)
				}
				i = 1
			}
			// The hashing client is compared with direct, never with the
			// baseline row that precedes it.
			if g := gs[i]; g.measured != tc.hashRatio || g.pass != tc.hashPass {
				t.Errorf("hashing client goal = %+v, want %s pass=%v", g, tc.hashRatio, tc.hashPass)
			}
		})
	}
}

// The warm-cache goals are given for each layer size measured, against
// direct and distribution's warm cache with the same client.
func TestWarmCacheGoals(t *testing.T) {
	t.Parallel()
	warm := func(cacheDiscard, cacheHash float64) []blobRow {
		return []blobRow{
			{target: "direct", mode: clientDiscard, mbps: 1000, ratio: 1},
			{target: "distribution-proxy", note: "warm", mode: clientDiscard, mbps: 800},
			{target: "portcullis-cache", mode: clientDiscard, mbps: cacheDiscard, ratio: cacheDiscard / 1000},
			{target: "portcullis-cache-sendfile", mode: clientDiscard, mbps: 5000, ratio: 5},
			{target: "direct", mode: clientSHA256, mbps: 900, ratio: 1},
			{target: "distribution-proxy", note: "warm", mode: clientSHA256, mbps: 850},
			{target: "portcullis-cache", mode: clientSHA256, mbps: cacheHash, ratio: cacheHash / 900},
		}
	}
	r := results{blobs: warm(1200, 880), blobMiB: 256, hugeBlobs: warm(900, 950), hugeMiB: 1024}
	got := map[string]string{}
	for _, g := range blobGoals(&r) {
		got[g.name] = fmt.Sprintf("%s %v", g.measured, g.pass)
	}
	want := map[string]string{
		"warm blob from the blob cache, discard client: vs direct (256 MiB)":                            "1.20× true",
		"warm blob from the blob cache, discard client: vs distribution's pull-through warm (256 MiB)":  "1.50× true",
		"warm blob from the blob cache, sha256 client: vs direct (256 MiB)":                             "0.98× false",
		"warm blob from the blob cache, sha256 client: vs distribution's pull-through warm (256 MiB)":   "1.04× true",
		"warm blob from the blob cache, discard client: vs direct (1024 MiB)":                           "0.90× false",
		"warm blob from the blob cache, discard client: vs distribution's pull-through warm (1024 MiB)": "1.12× true",
		"warm blob from the blob cache, sha256 client: vs direct (1024 MiB)":                            "1.06× true",
		"warm blob from the blob cache, sha256 client: vs distribution's pull-through warm (1024 MiB)":  "1.12× true",
	}
	if len(got) != len(want) {
		t.Errorf("%d goals, want %d: %v", len(got), len(want), got)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %q, want %q", name, got[name], w)
		}
	}
}

func TestPullBlobAsChecksDigest(t *testing.T) {
	t.Parallel()
	blob := []byte(strings.Repeat("layer", 100_000))
	sum := sha256.Sum256(blob)
	want := hex.EncodeToString(sum[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := blob
		if r.URL.Path == "/tampered" {
			body = append([]byte("L"), blob[1:]...)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	for _, mode := range clientModes {
		if _, err := pullBlobAs(ctx, srv.Client(), srv.URL+"/blob", int64(len(blob)), want, mode); err != nil {
			t.Errorf("%s client: %v", mode, err)
		}
	}
	if _, err := pullBlobAs(ctx, srv.Client(), srv.URL+"/tampered", int64(len(blob)), want, clientSHA256); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("hashing client took a tampered blob: err = %v", err)
	}
	if _, err := pullBlobAs(ctx, srv.Client(), srv.URL+"/blob", int64(len(blob))+1, want, clientSHA256); err == nil {
		t.Error("hashing client took a blob of the wrong length")
	}
}

func TestHashFloor(t *testing.T) {
	t.Parallel()
	if wall, perCPU := hashFloor(8 << 20); wall <= 0 || perCPU < 0 {
		t.Fatalf("hashFloor = %v, %v MiB/s", wall, perCPU)
	}
}

// The bare hashing relay is a floor only if it really checks: a blob whose
// bytes are not its digest's must not reach the client whole.
func TestHashRelayCutsWrongBytes(t *testing.T) {
	t.Parallel()
	blob := []byte(strings.Repeat("weights", 200_000))
	sum := sha256.Sum256(blob)
	dg := "sha256:" + hex.EncodeToString(sum[:])
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := blob
		if strings.HasPrefix(r.URL.Path, "/v2/tampered/") {
			body = append([]byte("W"), blob[1:]...)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	t.Cleanup(up.Close)
	u, err := url.Parse(up.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, hashBlobs := range []bool{false, true} {
		relay := httptest.NewServer(relayHandler(u, hashBlobs))
		t.Cleanup(relay.Close)
		ctx := context.Background()
		if _, err := pullBlobAs(ctx, relay.Client(), relay.URL+"/v2/good/blobs/"+dg, int64(len(blob)), dg[len("sha256:"):], clientDiscard); err != nil {
			t.Errorf("hash=%v: the right blob: %v", hashBlobs, err)
		}
		_, err := pullBlobAs(ctx, relay.Client(), relay.URL+"/v2/tampered/blobs/"+dg, int64(len(blob)), dg[len("sha256:"):], clientDiscard)
		if hashBlobs && err == nil {
			t.Error("the hashing relay served a blob that is not its digest's whole")
		}
		if !hashBlobs && err != nil {
			t.Errorf("the plain relay checks nothing, yet: %v", err)
		}
	}
}

// The first-pull goals say what the bare hashing relay reached against
// the same reference, so that a miss it shares reads as the machine's.
func TestBlobGoalsShowTheHashingRelay(t *testing.T) {
	t.Parallel()
	r := results{blobMiB: 256, shaFloor: []float64{1000}, blobs: []blobRow{
		{target: "direct", mode: clientDiscard, mbps: 2000, ratio: 1},
		{target: "go-relay (no checks)", mode: clientDiscard, mbps: 1200},
		{target: hashRelayName, mode: clientDiscard, mbps: 820},
		{target: "portcullis", mode: clientDiscard, mbps: 800},
		{target: "direct", mode: clientSHA256, mbps: 1000, ratio: 1},
		{target: hashRelayName, mode: clientSHA256, mbps: 700, ratio: 0.7},
		{target: "portcullis", mode: clientSHA256, mbps: 650, ratio: 0.65},
	}}
	gs := blobGoals(&r)
	if len(gs) < 2 {
		t.Fatalf("goals: %+v", gs)
	}
	if g := gs[0]; g.measured != "0.80× (bare sha256-relay 0.82×)" || g.pass {
		t.Errorf("discarding client goal = %+v", g)
	}
	if g := gs[1]; g.measured != "0.65× (bare sha256-relay 0.70×)" || g.pass {
		t.Errorf("hashing client goal = %+v", g)
	}
}

func TestBytesHandler(t *testing.T) {
	t.Parallel()
	body := []byte(strings.Repeat("x", 1<<16))
	srv := httptest.NewServer(bytesHandler(body))
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(body)
	if _, err := pullBlobAs(context.Background(), srv.Client(), srv.URL+"/blob", int64(len(body)), hex.EncodeToString(sum[:]), clientSHA256); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != 0 {
		t.Errorf("readiness answered %d with %d bytes", resp.StatusCode, resp.ContentLength)
	}
}
