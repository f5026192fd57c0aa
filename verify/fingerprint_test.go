package verify_test

import (
	"context"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/sigstore-go/pkg/root"

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

// A boundary for any upstream ("" or "*") can match every repository, so
// an edit of it changes every repository's fingerprint: verdicts cached
// under the old one are not served under the new one.
func TestFingerprintForAnyUpstream(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	for _, upstream := range []string{"", "*"} {
		p := func(mode verify.Mode) verify.Policy {
			return verify.Policy{Boundaries: []verify.Boundary{
				{Name: "pinned", Upstream: "other", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1, Authorities: []verify.Authority{keyAuthority("a", k)}},
				{Name: "any", Upstream: upstream, Repositories: []string{"**"}, Mode: mode, Threshold: 1, Authorities: []verify.Authority{keyAuthority("a", k)}},
			}}
		}
		before, after := engine(t, p(verify.ModeEnforce)), engine(t, p(verify.ModeWarn))
		if before.FingerprintFor("hub", "acme/app") == after.FingerprintFor("hub", "acme/app") {
			t.Errorf("upstream %q: a repository kept its fingerprint across an edit of the boundary that decides it", upstream)
		}
	}
}

// rotatedCA is a trusted root whose certificate and timestamping
// authorities are another root's, its transparency logs its own.
type rotatedCA struct {
	*fixtures.Sigstore
	other *fixtures.Sigstore
}

func (r rotatedCA) FulcioCertificateAuthorities() []root.CertificateAuthority {
	return r.other.FulcioCertificateAuthorities()
}

type rotatedTSA struct {
	*fixtures.Sigstore
	other *fixtures.Sigstore
}

func (r rotatedTSA) TimestampingAuthorities() []root.TimestampingAuthority {
	return r.other.TimestampingAuthorities()
}

// A trusted root that changes only its certificate authority, or only
// its timestamping authority, changes the fingerprint: a verdict reached
// under the old authorities is not served under the new ones.
func TestFingerprintCoversTrustedRootAuthorities(t *testing.T) {
	t.Parallel()
	ss1, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	ss2, err := fixtures.NewSigstore()
	if err != nil {
		t.Fatal(err)
	}
	fp := func(tm root.TrustedMaterial) string {
		a := keylessAuthority("ci", ss1, testIssuer, testSubject)
		a.Keyless.TrustedRoot = tm
		return engine(t, policy(1, a)).Fingerprint()
	}
	base := fp(ss1)
	if base != fp(ss1) {
		t.Fatal("fingerprint not stable")
	}
	if fp(rotatedCA{ss1, ss2}) == base {
		t.Error("a new certificate authority kept the fingerprint")
	}
	if fp(rotatedTSA{ss1, ss2}) == base {
		t.Error("a new timestamping authority kept the fingerprint")
	}
}

// A boundary's own fingerprint, when its loader set one, is the one
// reported; a stand-in for a refused boundary reports another, which
// also follows the reason it was refused for.
func TestBoundaryFingerprintReported(t *testing.T) {
	t.Parallel()
	p, _ := teamPolicy(t)
	p.Boundaries[1].Fingerprint = "sha256:from-the-loader"
	p.Boundaries[2].Fingerprint = "sha256:from-the-loader"
	p.Boundaries[2].Refused = "does not parse"
	infos := engine(t, p).Boundaries()
	if got := infos[1].Fingerprint; got != "sha256:from-the-loader" {
		t.Errorf("loaded boundary reports fingerprint %q", got)
	}
	refused := infos[2].Fingerprint
	if refused == "sha256:from-the-loader" || !strings.HasPrefix(refused, "sha256:") {
		t.Errorf("refused boundary reports fingerprint %q", refused)
	}
	p.Boundaries[2].Refused = "unknown key"
	if engine(t, p).Boundaries()[2].Fingerprint == refused {
		t.Error("a refused boundary's fingerprint ignores why it was refused")
	}
}
