package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gateRT holds the first request whose path contains match until release
// is closed, and says so on entered.
type gateRT struct {
	rt      http.RoundTripper
	match   string
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newGateRT(match string) *gateRT {
	return &gateRT{rt: newSpy(), match: match, entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gateRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, g.match) {
		hold := false
		g.once.Do(func() { hold = true })
		if hold {
			close(g.entered)
			<-g.release
		}
	}
	return g.rt.RoundTrip(r)
}

func renamed(v *fakeVerifier, fp string) *fakeVerifier {
	v.setFingerprint(fp)
	return v
}

func TestSetVerifierDecidesNewRequests(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	old := renamed(allowAll(), "old-policy")
	p, _ := newTestProxy(t, reg.srv.URL, old, WithVerdictCache(newMapVerdicts()))
	target := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"

	if w := do(p, http.MethodGet, target); w.Code != http.StatusOK {
		t.Fatalf("before the swap: status %d: %s", w.Code, w.Body)
	}
	if err := p.SetVerifier(nil); err == nil {
		t.Fatal("SetVerifier(nil) accepted")
	}
	next := renamed(denyAll(verify.ModeEnforce), "new-policy")
	if err := p.SetVerifier(next); err != nil {
		t.Fatal(err)
	}
	// The allow cached under the old policy is not the new policy's.
	if w := do(p, http.MethodGet, target); w.Code != http.StatusForbidden {
		t.Fatalf("after the swap: status %d, want 403: %s", w.Code, w.Body)
	}
	if next.calls.Load() != 1 {
		t.Errorf("new verifier called %d times, want 1", next.calls.Load())
	}
}

// A request blocked inside the old Verifier when the swap happens is
// answered with the old Verifier's verdict; the next one gets the new.
func TestSwapWhileVerifyingKeepsTheOldVerifier(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	entered, release := make(chan struct{}), make(chan struct{})
	old := renamed(allowAll(), "old-policy")
	allow := old.fn
	old.fn = func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		close(entered)
		<-release
		return allow(ctx, s)
	}
	p, _ := newTestProxy(t, reg.srv.URL, old, WithVerdictCache(newMapVerdicts()))
	target := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"

	done := make(chan int)
	go func() { done <- do(p, http.MethodGet, target).Code }()
	select {
	case <-entered:
	case code := <-done:
		t.Fatalf("request answered %d without verifying", code)
	}
	next := renamed(denyAll(verify.ModeEnforce), "new-policy")
	if err := p.SetVerifier(next); err != nil {
		t.Fatal(err)
	}
	close(release)
	if code := <-done; code != http.StatusOK {
		t.Fatalf("in-flight request: status %d, want 200 under the policy it started with", code)
	}
	if w := do(p, http.MethodGet, target); w.Code != http.StatusForbidden {
		t.Fatalf("request after the swap: status %d, want 403", w.Code)
	}
}

// The request has fixed its verdict key under the old policy and is
// waiting for the manifest bytes when the swap happens: the verification
// that follows is still the old Verifier's, so the verdict cached under
// the old policy's key is the old policy's.
func TestSwapBeforeVerifyingKeepsTheRequestsVerifier(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	gate := newGateRT("/manifests/sha256:")
	old := renamed(allowAll(), "old-policy")
	p, _ := newTestProxy(t, reg.srv.URL, old, WithTransport(gate))
	target := "/v2/acme/app/manifests/" + img.digest.String() + "?ns=docker.io"

	done := make(chan int)
	go func() { done <- do(p, http.MethodGet, target).Code }()
	select {
	case <-gate.entered:
	case code := <-done:
		t.Fatalf("request answered %d without fetching the manifest", code)
	}
	next := renamed(denyAll(verify.ModeEnforce), "new-policy")
	if err := p.SetVerifier(next); err != nil {
		t.Fatal(err)
	}
	close(gate.release)
	if code := <-done; code != http.StatusOK {
		t.Fatalf("in-flight request: status %d, want 200", code)
	}
	if old.calls.Load() != 1 || next.calls.Load() != 0 {
		t.Errorf("old verifier called %d times, new %d; want 1 and 0", old.calls.Load(), next.calls.Load())
	}
}

// A lineage dependency asked for by a verification under the old policy
// is decided by the old Verifier, even after the swap.
func TestSwapDuringLineageKeepsTheParentsVerifier(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	root := reg.pushImage(t, "acme/app", "v1")
	dep := reg.pushImage(t, "acme/base", "v1")
	next := renamed(denyAll(verify.ModeEnforce), "new-policy")
	var p *Proxy
	old := renamed(allowAll(), "old-policy")
	allow := old.fn
	old.fn = func(ctx context.Context, s verify.Subject) (verify.Verdict, error) {
		if s.Digest != root.digest {
			return allow(ctx, s)
		}
		if err := p.SetVerifier(next); err != nil {
			return verify.Verdict{}, err
		}
		dv, err := s.Lineage.Dependencies.VerifyDependency(ctx,
			verify.DependencyRef{Registry: "docker.io", Repository: "acme/base", Digest: dep.digest},
			verify.LineageContext{Depth: 1, Chain: []string{"docker.io/acme/app@" + root.digest.String()}})
		if err != nil {
			return verify.Verdict{}, err
		}
		v, _ := allow(ctx, s)
		v.Allowed = dv.Allowed
		v.Reasons = dv.Reasons
		return v, nil
	}
	p, _ = newTestProxy(t, reg.srv.URL, old)
	if w := do(p, http.MethodGet, "/v2/acme/app/manifests/"+root.digest.String()+"?ns=docker.io"); w.Code != http.StatusOK {
		t.Fatalf("status %d, want 200 (the dependency decided by the old policy): %s", w.Code, w.Body)
	}
	if next.calls.Load() != 0 {
		t.Errorf("new verifier decided %d subjects of a request that started before the swap", next.calls.Load())
	}
}

func TestRecordReload(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	m := p.reloadMetrics
	p.RecordReload(ReloadFailure, true)
	p.RecordReload(ReloadRestartRequired, true)
	if got := testutil.ToFloat64(m.restartRequired); got != 1 {
		t.Errorf("restart_required gauge = %v after a reload needing a restart, want 1", got)
	}
	p.RecordReload(ReloadSuccess, false)
	p.RecordReload("bogus", false)
	for result, want := range map[string]float64{ReloadSuccess: 1, ReloadFailure: 2, ReloadRestartRequired: 1} {
		if got := testutil.ToFloat64(m.reloads.WithLabelValues(result)); got != want {
			t.Errorf("reloads{result=%q} = %v, want %v", result, got, want)
		}
	}
	if got := testutil.ToFloat64(m.restartRequired); got != 0 {
		t.Errorf("restart_required gauge = %v after a clean reload, want 0", got)
	}
	if n := testutil.CollectAndCount(m.reloads); n != 3 {
		t.Errorf("%d result series, want 3", n)
	}
}
