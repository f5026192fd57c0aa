package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/portcullis-oci/portcullis/verify"
)

// A flood of random repository names costs one token exchange each (the
// registry is pinged once for all of them) and does not evict the state
// of a repository that is actually pulled.
func TestHotRepositorySurvivesRandomNames(t *testing.T) {
	t.Parallel()
	const size = 16
	up := newFakeUpstream(t, authBearer)
	_, dig, _ := push(t, up.host(), "team/hot", "v1")
	c := newTestClient(t, Config{URL: up.URL, Insecure: true, Auth: testCreds, repositories: size})
	ctx := context.Background()

	hotTokens := func() int {
		n := 0
		for _, s := range up.scopes() {
			if s == "repository:team/hot:pull" {
				n++
			}
		}
		return n
	}
	// A pull resolves the tag, then fetches by digest.
	if _, _, err := c.Resolve(ctx, "team/hot", "v1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetManifest(ctx, "team/hot", dig.String(), nil); err != nil {
		t.Fatal(err)
	}
	if hotTokens() != 1 {
		t.Fatalf("hot repository: %d token exchanges", hotTokens())
	}

	tokensBefore := up.count(http.MethodGet, "/token")
	const random = 10 * size
	for i := range random {
		_, err := c.GetManifest(ctx, fmt.Sprintf("random/r%04d", i), "v1", nil)
		if !errors.Is(err, verify.ErrNotFound) {
			t.Fatalf("random repository: err = %v, want not found", err)
		}
	}
	if n := up.count(http.MethodGet, "/token") - tokensBefore; n != random {
		t.Errorf("%d random repositories cost %d token exchanges, want one each", random, n)
	}
	pings := 0
	for _, r := range up.all() {
		if r.Path == "/v2/" {
			pings++
		}
	}
	if pings != 1 {
		t.Errorf("registry pinged %d times, want once for all repositories", pings)
	}

	if _, err := c.GetManifest(ctx, "team/hot", dig.String(), nil); err != nil {
		t.Fatal(err)
	}
	if hotTokens() != 1 {
		t.Errorf("hot repository needed a new token exchange after the flood (%d in all)", hotTokens())
	}
}

// Only an upstream's 200 or 401 to the ping is shared; a failing ping is
// asked again on the next handshake.
func TestPingFailureIsNotShared(t *testing.T) {
	t.Parallel()
	var pings atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			if pings.Add(1) == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true})
	_, err := c.GetManifest(context.Background(), "app", "v1", nil)
	if !IsTransient(err) {
		t.Fatalf("err = %v, want the ping's 503", err)
	}
	for _, repo := range []string{"app", "other"} {
		if _, err := c.GetManifest(context.Background(), repo, "v1", nil); !errors.Is(err, verify.ErrNotFound) {
			t.Fatalf("%s: err = %v, want not found", repo, err)
		}
	}
	if n := pings.Load(); n != 2 {
		t.Errorf("pings = %d, want 2 (the failure retried, the success shared)", n)
	}
}
