package verify_test

import (
	"context"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

func teamPolicy(t *testing.T) (verify.Policy, *fixtures.KeySigner) {
	t.Helper()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	b := func(name string, repos ...string) verify.Boundary {
		return verify.Boundary{Name: name, Upstream: "hub", Repositories: repos, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority(name, k)}}
	}
	models := b("models", "a/**")
	models.ArtifactTypes = []string{"application/vnd.cncf.model.manifest.v1+json"}
	return verify.Policy{Boundaries: []verify.Boundary{models, b("team-a", "a/**"), b("team-b", "b/**"), b("rest", "**")}}, k
}

// Editing one boundary keeps the fingerprint of every repository it
// cannot match, and changes those of the repositories it can.
func TestFingerprintForScopesToMatchingBoundaries(t *testing.T) {
	t.Parallel()
	p, k := teamPolicy(t)
	before := engine(t, p)

	edits := map[string]func(p *verify.Policy){
		"mode": func(p *verify.Policy) { p.Boundaries[2].Mode = verify.ModeWarn },
		"key":  func(p *verify.Policy) { p.Boundaries[2].Authorities[0].Key.Keys[0].Name = "other.pub" },
		// A caller-supplied fingerprint stands for what the engine
		// cannot see (the bytes of trust files).
		"fingerprint": func(p *verify.Policy) { p.Boundaries[2].Fingerprint = "sha256:new" },
		"placement":   func(p *verify.Policy) { p.Boundaries[2].Repositories = []string{"b/**", "c/**"} },
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, _ := teamPolicy(t)
			// Same key everywhere as in p, so only the edit differs.
			for i := range q.Boundaries {
				q.Boundaries[i].Authorities = []verify.Authority{keyAuthority(q.Boundaries[i].Name, k)}
			}
			edit(&q)
			after := engine(t, q)
			if before.FingerprintFor("hub", "a/x") != after.FingerprintFor("hub", "a/x") {
				t.Error("team-a's repository changed fingerprint on an edit of team-b")
			}
			if before.FingerprintFor("hub", "b/x") == after.FingerprintFor("hub", "b/x") {
				t.Error("team-b's repository kept its fingerprint across an edit of team-b")
			}
			if name != "fingerprint" && before.Fingerprint() == after.Fingerprint() {
				t.Error("the whole policy's fingerprint did not change")
			}
		})
	}
}

func TestFingerprintForWhatEveryVerdictDependsOn(t *testing.T) {
	t.Parallel()
	p, k := teamPolicy(t)
	base := engine(t, p)
	a := base.FingerprintFor("hub", "a/x")
	if a == base.FingerprintFor("hub", "b/x") || a != base.FingerprintFor("hub", "a/y") {
		t.Fatal("fingerprints do not follow the boundaries that match")
	}
	// A boundary restricted to an artifact type counts: a model in a/
	// is decided by it.
	q, _ := teamPolicy(t)
	q.Boundaries[0].Authorities = []verify.Authority{keyAuthority("other", k)}
	q.Boundaries[0].Threshold = 1
	q.Boundaries[0].Mode = verify.ModeWarn
	if engine(t, q).FingerprintFor("hub", "a/x") == a {
		t.Error("an artifact-type boundary matching the repository is not part of its fingerprint")
	}
	// Limits and unmatched decide every verdict.
	if engine(t, p, verify.WithMaxEvidence(3)).FingerprintFor("hub", "a/x") == a {
		t.Error("evidence limits are not part of the fingerprint")
	}
	u := p
	u.InsecureAllowUnmatched = true
	if engine(t, u).FingerprintFor("hub", "a/x") == a {
		t.Error("unmatched is not part of the fingerprint")
	}
	// A new boundary in front of team-a takes its repositories.
	n, _ := teamPolicy(t)
	n.Boundaries = append([]verify.Boundary{{Name: "new", Upstream: "hub", Repositories: []string{"a/special/**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("new", k)}}}, p.Boundaries...)
	if engine(t, n).FingerprintFor("hub", "a/special/x") == base.FingerprintFor("hub", "a/special/x") {
		t.Error("a boundary added in front did not change the fingerprint")
	}
	if engine(t, n).FingerprintFor("hub", "b/x") != base.FingerprintFor("hub", "b/x") {
		t.Error("a boundary that cannot match b/x changed its fingerprint")
	}
}

// A verdict under a lineage rule rests on dependencies any boundary may
// decide: every boundary counts for the repositories it covers.
func TestFingerprintForLineage(t *testing.T) {
	t.Parallel()
	p, k := teamPolicy(t)
	p.Boundaries[1].Lineage = &verify.LineageRule{Depth: 1}
	before := engine(t, p)
	q, _ := teamPolicy(t)
	for i := range q.Boundaries {
		q.Boundaries[i].Authorities = []verify.Authority{keyAuthority(q.Boundaries[i].Name, k)}
	}
	q.Boundaries[1].Lineage = &verify.LineageRule{Depth: 1}
	q.Boundaries[2].Mode = verify.ModeWarn
	after := engine(t, q)
	if before.FingerprintFor("hub", "a/x") == after.FingerprintFor("hub", "a/x") {
		t.Error("a lineage boundary's repository kept its fingerprint when the boundary of its possible dependencies changed")
	}
}

// A stand-in for a boundary that could not be loaded denies what it
// matches: nothing falls through to a later boundary or to unmatched.
func TestRefusedBoundaryDenies(t *testing.T) {
	t.Parallel()
	p, _ := teamPolicy(t)
	p.InsecureAllowUnmatched = true
	order := 10
	p.Boundaries[2] = verify.Boundary{Name: "team-b", Upstream: "hub", Repositories: []string{"b/**"}, Mode: verify.ModeWarn,
		Refused: `boundary file "b.yaml" could not be loaded`, Source: "/etc/b.yaml", Order: &order, Owner: "b@x", Version: "7",
		Problems: []string{"b.yaml:3: signatures: unknown key"}}
	e := engine(t, p)
	h, _ := v1.NewHash("sha256:" + strings.Repeat("a", 64))
	v, err := e.Verify(context.Background(), verify.Subject{Upstream: "hub", Repository: "b/app", Digest: h}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.Allowed || v.Served() || v.Boundary != "team-b" || len(v.Reasons) != 1 || !strings.Contains(v.Reasons[0], "b.yaml") {
		t.Fatalf("verdict = %+v", v)
	}
	if _, mode, ok := e.BlobMode("hub", "b/app"); !ok || mode != verify.ModeEnforce {
		t.Errorf("blob mode = %v %v", mode, ok)
	}
	infos := e.Boundaries()
	if len(infos) != 4 {
		t.Fatalf("boundaries = %+v", infos)
	}
	b := infos[2]
	if b.Name != "team-b" || b.Mode != verify.ModeEnforce || b.Position != 2 || b.Source != "/etc/b.yaml" || *b.Order != 10 || b.Owner != "b@x" || b.Version != "7" ||
		b.Refused == "" || len(b.Problems) != 1 || !strings.HasPrefix(b.Fingerprint, "sha256:") {
		t.Errorf("info = %+v", b)
	}
}

// FingerprintFor is on every pull's path: a warm lookup allocates nothing.
func TestFingerprintForWarmAllocations(t *testing.T) {
	p, _ := teamPolicy(t)
	e := engine(t, p)
	e.FingerprintFor("hub", "a/x")
	if n := testing.AllocsPerRun(100, func() { e.FingerprintFor("hub", "a/x") }); n != 0 {
		t.Errorf("allocations per warm FingerprintFor = %v, want 0", n)
	}
}
