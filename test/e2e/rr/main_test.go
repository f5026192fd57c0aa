package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// named answers with its own name, so a test sees which backend served.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) })
}

func threeBackends() []http.Handler { return []http.Handler{named("a"), named("b"), named("c")} }

// getFrom GETs url over a connection from the loopback address ip.
func getFrom(t *testing.T, ip, url string) string {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRoundRobinSpreadsOneClient(t *testing.T) {
	f, err := newFront(threeBackends(), "none", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	seen := map[string]int{}
	for range 6 {
		seen[getFrom(t, "127.0.0.1", srv.URL+"/v2/")]++
	}
	if len(seen) != 3 || seen["a"] != 2 || seen["b"] != 2 || seen["c"] != 2 {
		t.Errorf("one client over three backends: %v; want two requests each", seen)
	}
}

// The affinity the suite's outage check relies on: a client address stays
// on one backend, and different addresses are spread.
func TestClientIPAffinityKeepsAClientOnOneBackend(t *testing.T) {
	if ln, err := net.Listen("tcp", "127.0.0.4:0"); err != nil {
		t.Skipf("no loopback addresses besides 127.0.0.1 here: %v", err)
	} else {
		ln.Close()
	}
	f, err := newFront(threeBackends(), "clientip", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	first := map[string]string{}
	for round := range 3 {
		for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			got := getFrom(t, ip, srv.URL+"/v2/")
			if round == 0 {
				first[ip] = got
			} else if got != first[ip] {
				t.Errorf("client %s moved from backend %s to %s", ip, first[ip], got)
			}
		}
	}
	if first["127.0.0.2"] == first["127.0.0.3"] || first["127.0.0.3"] == first["127.0.0.4"] || first["127.0.0.2"] == first["127.0.0.4"] {
		t.Errorf("three clients share backends: %v", first)
	}
}

func TestCountsAndDelayOnce(t *testing.T) {
	var ds delays
	if err := ds.Set(`sha256-abc|referrers/sha256:abc=300ms`); err != nil {
		t.Fatal(err)
	}
	f, err := newFront([]http.Handler{named("registry")}, "none", true, ds)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	timed := func(path string) time.Duration {
		t0 := time.Now()
		getFrom(t, "127.0.0.1", srv.URL+path)
		return time.Since(t0)
	}
	if d := timed("/v2/r/manifests/sha256:abc"); d > 200*time.Millisecond {
		t.Errorf("the subject manifest was held %v: the rule is for evidence only", d)
	}
	if d := timed("/v2/r/referrers/sha256:abc"); d < 300*time.Millisecond {
		t.Errorf("the first matching request took %v; want it held 300ms", d)
	}
	if d := timed("/v2/r/manifests/sha256-abc.sig"); d > 200*time.Millisecond {
		t.Errorf("a second matching request was held %v; the rule fires once", d)
	}
	resp, err := http.Get(srv.URL + "/_rr/counts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var counts map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&counts); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"GET /v2/r/manifests/sha256:abc": 1, "GET /v2/r/referrers/sha256:abc": 1, "GET /v2/r/manifests/sha256-abc.sig": 1}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("counts %v, want %v", counts, want)
	}
}

func TestDelayFlagRefusesMalformedRules(t *testing.T) {
	for _, s := range []string{"no-duration", "x=", "x=-1s", "(=1s", "x=soon"} {
		var ds delays
		if err := ds.Set(s); err == nil {
			t.Errorf("-delay %q accepted", s)
		}
	}
}
