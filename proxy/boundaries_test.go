package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

func (s *engineSpy) Boundaries() []verify.BoundaryInfo { return s.eng.Load().Boundaries() }

var _ BoundaryLister = (*engineSpy)(nil)

// teamBoundaries are two teams' boundaries as boundary files would give
// them; mode is team-b's.
func teamBoundaries(ka, kb *fixtures.KeySigner, modeB verify.Mode) verify.Policy {
	order := func(n int) *int { return &n }
	return verify.Policy{Boundaries: []verify.Boundary{
		{Name: "team-a", Repositories: []string{"team-a/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("a", ka)}, Owner: "a@example.com", Version: "1", Source: "a.yaml", Order: order(10)},
		{Name: "team-b", Repositories: []string{"team-b/**"}, Mode: modeB, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("b", kb)}, Owner: "b@example.com", Version: "1", Source: "b.yaml", Order: order(20)},
	}}
}

func getBoundaries(t *testing.T, p *Proxy) BoundariesReport {
	t.Helper()
	w := do(p.AdminHandler(), http.MethodGet, "/v1/boundaries")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/v1/boundaries = %d %s", w.Code, w.Body)
	}
	var rep BoundariesReport
	if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// Rolling team-b from warn to enforce re-verifies team-b's repositories
// only: team-a's verdicts keep their cache keys.
func TestBoundaryRolloutKeepsOtherVerdicts(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	ka, kb := newKey(t), newKey(t)
	a := reg.pushImage(t, "team-a/app", "v1")
	reg.sign(t, "team-a/app", a.digest, ka)
	b := reg.pushImage(t, "team-b/app", "v1") // unsigned: a would-deny under warn
	eng := newEngineSpy(t, teamBoundaries(ka, kb, verify.ModeWarn))
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithVerdictCache(newMapVerdicts()))

	pull := func(repo string) int { return do(p, http.MethodGet, manifestPath(repo, "v1")).Code }
	if got := pull("team-a/app"); got != http.StatusOK {
		t.Fatalf("team-a = %d", got)
	}
	if got := pull("team-b/app"); got != http.StatusOK {
		t.Fatalf("team-b under warn = %d", got)
	}
	if eng.callsFor(a.digest) != 1 || eng.callsFor(b.digest) != 1 {
		t.Fatalf("calls = %d, %d", eng.callsFor(a.digest), eng.callsFor(b.digest))
	}

	eng.swap(t, teamBoundaries(ka, kb, verify.ModeEnforce))
	if got := pull("team-a/app"); got != http.StatusOK {
		t.Fatalf("team-a after team-b's rollout = %d", got)
	}
	if got := pull("team-b/app"); got != http.StatusForbidden {
		t.Fatalf("team-b after its rollout to enforce = %d, want 403", got)
	}
	if n := eng.callsFor(a.digest); n != 1 {
		t.Errorf("team-a verified %d times, want once: another team's rollout re-verified it", n)
	}
	if n := eng.callsFor(b.digest); n != 2 {
		t.Errorf("team-b verified %d times, want twice: its rollout kept the warn verdict", n)
	}

	rep := getBoundaries(t, p)
	if len(rep.Boundaries) != 2 || rep.Fingerprint != eng.Fingerprint() || rep.Refused != 0 {
		t.Fatalf("report = %+v", rep)
	}
	ra, rb := rep.Boundaries[0], rep.Boundaries[1]
	if ra.Name != "team-a" || ra.Owner != "a@example.com" || ra.Version != "1" || ra.Source != "a.yaml" || *ra.Order != 10 || ra.Position != 0 ||
		ra.Mode != verify.ModeEnforce || !strings.HasPrefix(ra.Fingerprint, "sha256:") {
		t.Errorf("team-a = %+v", ra)
	}
	if ra.Decisions != (DecisionCounts{Allow: 2}) {
		t.Errorf("team-a decisions = %+v", ra.Decisions)
	}
	if rb.Name != "team-b" || rb.Mode != verify.ModeEnforce || rb.Decisions != (DecisionCounts{Warn: 1, Deny: 1}) {
		t.Errorf("team-b = %+v", rb)
	}
}

// A boundary file that could not be loaded denies its repositories, even
// with unmatched: insecure-allow, and /v1/boundaries says so.
func TestRefusedBoundaryNeverFallsThrough(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	ka, kb := newKey(t), newKey(t)
	b := reg.pushImage(t, "team-b/app", "v1")
	reg.sign(t, "team-b/app", b.digest, kb)
	pol := teamBoundaries(ka, kb, verify.ModeWarn)
	pol.InsecureAllowUnmatched = true
	pol.Boundaries[1] = verify.Boundary{Name: "team-b", Repositories: []string{"team-b/**"}, Mode: verify.ModeEnforce,
		Refused: `boundary file "b.yaml" could not be loaded; what it covers is denied until it loads`, Source: "b.yaml",
		Problems: []string{"b.yaml:4: signatures.authorities[0].colour: unknown key"}}
	eng := newEngineSpy(t, pol)
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithVerdictCache(newMapVerdicts()))

	w := do(p, http.MethodGet, manifestPath("team-b/app", "v1"))
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "b.yaml") {
		t.Fatalf("team-b with its file refused = %d %s", w.Code, w.Body)
	}
	// Nothing of the refused file's problems reaches the client.
	if strings.Contains(w.Body.String(), "colour") {
		t.Errorf("client sees the file's problems: %s", w.Body)
	}
	if w := do(p, http.MethodGet, blobPath("team-b/app", b.layers[0])); w.Code != http.StatusForbidden {
		t.Errorf("blob under the refused boundary = %d", w.Code)
	}
	rep := getBoundaries(t, p)
	if rep.Refused != 1 || rep.Boundaries[1].Refused == "" || len(rep.Boundaries[1].Problems) != 1 || rep.Boundaries[1].Decisions.Deny < 1 {
		t.Errorf("report = %+v", rep)
	}
	if w := do(p.AdminHandler(), http.MethodGet, "/readyz"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "1 refused") {
		t.Errorf("/readyz = %d %q", w.Code, w.Body)
	}
	if got := gatherValue(t, p, "portcullis_boundaries_refused"); got != 1 {
		t.Errorf("portcullis_boundaries_refused = %v", got)
	}
}

func gatherValue(t *testing.T, p *Proxy, name string) float64 {
	t.Helper()
	mfs, err := p.gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
