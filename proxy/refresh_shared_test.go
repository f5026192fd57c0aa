package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/cache/shared"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// refreshReplica is one of several proxies sharing verdicts (and, with
// lease, leases) through one Redis, with refresh-ahead on.
type refreshReplica struct {
	p     *Proxy
	eng   *engineSpy
	up    *spy
	clock *stepClock
}

func newRefreshReplica(t *testing.T, mr *miniredis.Miniredis, upstreamURL string, pol verify.Policy, lease bool) refreshReplica {
	t.Helper()
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	g := shared.NewGuard(zap.NewNop(), nil, 5*time.Second)
	l1, err := cache.NewVerdicts(100, refreshTTL, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	vc, err := shared.NewVerdicts(l1, c, g, shared.VerdictsOptions{KeyPrefix: sharedPrefix, AllowTTL: refreshTTL, DenyTTL: time.Minute, Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	opts := []Option{WithVerdictCache(vc), WithRefreshAhead(RefreshAhead{AllowTTL: refreshTTL})}
	if lease {
		leases, err := shared.NewLeases(c, g, shared.LeasesOptions{KeyPrefix: sharedPrefix, Replica: t.Name(), TTL: flightLeaseTTL})
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, WithSharedFlight(leases))
	}
	eng := newEngineSpy(t, pol)
	p, up := newTestProxy(t, upstreamURL, eng, opts...)
	return refreshReplica{p: p, eng: eng, up: up, clock: withRefreshClock(p)}
}

func (r refreshReplica) upstream() int {
	r.up.mu.Lock()
	defer r.up.mu.Unlock()
	return len(r.up.reqs)
}

func (r refreshReplica) refreshed(result string) float64 {
	return testutil.ToFloat64(r.p.metrics.refreshes.WithLabelValues(result))
}

// TestRefreshAheadSharedAcrossReplicas: three replicas whose clients all
// pull one digest each track it, so each would re-verify it when it comes
// due. With the lease, one replica re-verifies it and the others adopt
// its newer allow; without, each re-verifies (three times the upstream
// requests). A denial is never adopted: every replica finds the drift
// itself.
func TestRefreshAheadSharedAcrossReplicas(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		lease bool
		want  int64 // re-verifications in a round
	}{{"without lease", false, 3}, {"with lease", true, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mr := miniredis.RunT(t)
			reg := newRegistry(t)
			k := newKey(t)
			pol := verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}}
			img := reg.pushImage(t, "acme/app", "v1")
			sig, err := fixtures.AttachBundle(context.Background(), reg.ref(t, "acme/app", img.digest), k, fixtures.BundleSpec{})
			if err != nil {
				t.Fatal(err)
			}
			rs := make([]refreshReplica, 3)
			for i := range rs {
				rs[i] = newRefreshReplica(t, mr, reg.srv.URL, pol, tc.lease)
			}
			pull := func(r refreshReplica) int {
				return do(r.p, http.MethodGet, manifestPath("acme/app", img.digest.String())).Code
			}
			for _, r := range rs {
				if c := pull(r); c != http.StatusOK {
					t.Fatalf("pull: %d", c)
				}
			}
			calls := func() (n int64, up int) {
				for _, r := range rs {
					n += r.eng.calls.Load()
					up += r.upstream()
				}
				return n, up
			}
			// A round: every replica's verdict comes due; they look in
			// turn, as their tickers would, each a few seconds apart.
			round := func() (int64, int) {
				// Still pulled through every replica: still tracked.
				for _, r := range rs {
					if c := pull(r); c != http.StatusOK {
						t.Fatalf("pull: %d", c)
					}
				}
				n0, up0 := calls()
				for _, r := range rs {
					r.clock.advance(refreshTTL * 85 / 100)
				}
				for _, r := range rs {
					r.p.refreshDue(context.Background())
					r.p.refresh.wg.Wait()
					time.Sleep(5 * time.Millisecond) // a later CheckedAt for the next decision
				}
				n1, up1 := calls()
				return n1 - n0, up1 - up0
			}
			for i := range 2 {
				n, up := round()
				t.Logf("%s, round %d: %d re-verifications, %d upstream requests over 3 replicas", tc.name, i+1, n, up)
				if n != tc.want {
					t.Errorf("round %d: %d re-verifications over 3 replicas, want %d", i+1, n, tc.want)
				}
			}
			// The signature goes: every replica re-verifies, whatever the
			// lease, and each reports the drift and closes what the allow
			// opened on it.
			if err := remote.Delete(reg.ref(t, "acme/app", sig)); err != nil {
				t.Fatal(err)
			}
			if n, _ := round(); n != 3 {
				t.Errorf("after the signature was removed: %d re-verifications, want 3 (a denial is not adopted)", n)
			}
			for i, r := range rs {
				if d := r.refreshed("deny"); d != 1 {
					t.Errorf("replica %d: %v denials by refresh-ahead, want 1", i, d)
				}
				if c := pull(r); c != http.StatusForbidden {
					t.Errorf("replica %d: pull after the drift: %d, want 403", i, c)
				}
			}
		})
	}
}

// TestRefreshAheadLeaseHeld: a replica that finds the lease held by
// another (re-verifying it now, or a pull verifying it) leaves the digest
// to it, and takes it again at a later round.
func TestRefreshAheadLeaseHeld(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	reg := newRegistry(t)
	pol, sign := acmePolicy(verify.ModeEnforce, t)
	img := reg.pushImage(t, "acme/app", "v1")
	sign(reg, "acme/app", img.digest)
	r := newRefreshReplica(t, mr, reg.srv.URL, pol, true)
	if c := do(r.p, http.MethodGet, manifestPath("acme/app", img.digest.String())).Code; c != http.StatusOK {
		t.Fatalf("pull: %d", c)
	}
	var key string
	for _, k := range r.p.refresh.entries.Keys() {
		key = k
	}
	// Another replica holds the lease.
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := shared.NewLeases(c, shared.NewGuard(nil, nil, time.Second), shared.LeasesOptions{KeyPrefix: sharedPrefix, Replica: "other", TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	release, won, err := other.Acquire(context.Background(), key)
	if err != nil || !won {
		t.Fatalf("other replica: Acquire = %v, %v", won, err)
	}
	calls := r.eng.calls.Load()
	r.clock.advance(refreshTTL * 85 / 100)
	r.p.refreshDue(context.Background())
	r.p.refresh.wg.Wait()
	if r.eng.calls.Load() != calls || r.refreshed("shared") != 1 {
		t.Fatalf("lease held elsewhere: %d re-verifications, shared %v; want 0 and 1", r.eng.calls.Load()-calls, r.refreshed("shared"))
	}
	release()
	// The holder left no newer verdict: this replica re-verifies.
	r.p.refreshDue(context.Background())
	r.p.refresh.wg.Wait()
	if r.eng.calls.Load() != calls+1 || r.refreshed("allow") != 1 {
		t.Fatalf("lease free: %d re-verifications, allow %v; want 1 and 1", r.eng.calls.Load()-calls, r.refreshed("allow"))
	}
}
