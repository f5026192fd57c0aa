package verify_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const dataSubject = "https://github.com/acme/datasets/.github/workflows/publish.yml@refs/heads/main"

// depVerifier is the proxy's role in a lineage walk, in miniature: it maps
// a dependency's registry host to a known upstream (never dialling an
// unknown one), reads the manifest by digest and verifies it with the same
// engine under the lineage context it was given.
type depVerifier struct {
	engine    *verify.Engine
	upstreams map[string]verify.Fetcher // registry host → fetcher
	calls     atomic.Int64
}

func (d *depVerifier) VerifyDependency(ctx context.Context, ref verify.DependencyRef, lc verify.LineageContext) (verify.Verdict, error) {
	d.calls.Add(1)
	f, ok := d.upstreams[ref.Registry]
	if !ok {
		return verify.Verdict{Digest: ref.Digest.String(), Reasons: []string{"no upstream for registry " + ref.Registry}}, nil
	}
	m, err := f.Manifest(ctx, ref.Repository, ref.Digest.String())
	if errors.Is(err, verify.ErrNotFound) {
		return verify.Verdict{Digest: ref.Digest.String(), Reasons: []string{"manifest not found"}}, nil
	}
	if err != nil {
		return verify.Verdict{}, err
	}
	return d.engine.Verify(ctx, verify.Subject{
		Upstream: "hub", Repository: ref.Repository, Reference: ref.Digest.String(),
		Digest: ref.Digest, MediaType: m.MediaType, Manifest: m.Bytes, Lineage: lc,
	}, f)
}

type errVerifier struct{}

func (errVerifier) VerifyDependency(context.Context, verify.DependencyRef, verify.LineageContext) (verify.Verdict, error) {
	return verify.Verdict{}, errors.New("upstream unreachable")
}

// lineageEnv is a registry holding models (ml/**, signed by a release key
// that also signs their provenance) and datasets (datasets/**, signed
// keyless by the data pipeline).
type lineageEnv struct {
	t     testing.TB
	reg   *fixtures.Registry
	key   *fixtures.KeySigner
	ss    *fixtures.Sigstore
	fetch verify.Fetcher
	n     atomic.Int64
	// rules are the models boundary's attestation rules; without one, the
	// lineage rule uses any provenance a boundary authority signed.
	rules []verify.AttestationRule
}

func newLineageEnv(t testing.TB) *lineageEnv {
	e := newEnv(t)
	return &lineageEnv{t: t, reg: e.reg, key: e.key, ss: e.ss, fetch: e.reg.Fetcher()}
}

func (l *lineageEnv) policy(lineage *verify.LineageRule) verify.Policy {
	return verify.Policy{Boundaries: []verify.Boundary{
		{
			Name: "models", Repositories: []string{"ml/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities:  []verify.Authority{keyAuthority("release", l.key)},
			Attestations: l.rules,
			Lineage:      lineage,
		},
		{
			Name: "data", Repositories: []string{"datasets/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keylessAuthority("data-ci", l.ss, testIssuer, dataSubject)},
		},
	}}
}

// push pushes a distinct small artifact to repo.
func (l *lineageEnv) push(repo string, dataset bool) name.Digest {
	l.t.Helper()
	ref, err := l.reg.Ref(repo + ":latest")
	if err != nil {
		l.t.Fatal(err)
	}
	files := map[string][]byte{"data/part-0.parquet": fmt.Appendf(nil, "content %d of %s", l.n.Add(1), repo)}
	var d name.Digest
	if dataset {
		d, err = fixtures.PushDataset(context.Background(), ref, files)
	} else {
		d, err = fixtures.PushModel(context.Background(), ref, files, "")
	}
	if err != nil {
		l.t.Fatal(err)
	}
	return d
}

func (l *lineageEnv) signData(d name.Digest, identity string) {
	l.t.Helper()
	if _, err := fixtures.AttachBundle(context.Background(), d, l.ss.Signer(testIssuer, identity), fixtures.BundleSpec{}); err != nil {
		l.t.Fatal(err)
	}
}

// provenance attaches a release-signed SLSA provenance (v1, or v0.2 with
// v02) listing deps; the bundle also counts as the model's signature.
func (l *lineageEnv) provenance(d name.Digest, v02 bool, deps ...fixtures.ResourceDescriptor) {
	l.t.Helper()
	now := time.Now()
	spec := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: fixtures.SLSAProvenanceV1(testBuilder, deps, now, now)}
	if v02 {
		spec = fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV02, Predicate: fixtures.SLSAProvenanceV02(testBuilder, deps, now, now), StatementType: verify.StatementV01}
	}
	if _, err := fixtures.AttachBundle(context.Background(), d, l.key, spec); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lineageEnv) subject(d name.Digest, deps verify.DependencyVerifier) verify.Subject {
	l.t.Helper()
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		l.t.Fatal(err)
	}
	m, err := l.fetch.Manifest(context.Background(), d.Context().RepositoryStr(), h.String())
	if err != nil {
		l.t.Fatal(err)
	}
	return verify.Subject{Upstream: "hub", Repository: d.Context().RepositoryStr(), Reference: "latest", Digest: h,
		MediaType: m.MediaType, Manifest: m.Bytes, Lineage: verify.LineageContext{Dependencies: deps}}
}

func (l *lineageEnv) verify(lineage *verify.LineageRule, root name.Digest) (verify.Verdict, *depVerifier) {
	l.t.Helper()
	eng, err := verify.New(l.policy(lineage))
	if err != nil {
		l.t.Fatal(err)
	}
	dv := &depVerifier{engine: eng, upstreams: map[string]verify.Fetcher{l.reg.Host: l.fetch}}
	v, err := eng.Verify(context.Background(), l.subject(root, dv), l.fetch)
	if err != nil {
		l.t.Fatalf("Verify: %v", err)
	}
	return v, dv
}

func label(d name.Digest) string {
	h, _ := v1.NewHash(d.DigestStr())
	return d.Context().RepositoryStr() + "@sha256:" + h.Hex[:12]
}

var gitDep = fixtures.ResourceDescriptor{Name: "source", URI: "git+https://github.com/acme/train@refs/heads/main", Digest: map[string]string{"gitCommit": strings.Repeat("a", 40)}}

func TestLineageAllowedThroughTwoLevels(t *testing.T) {
	t.Parallel()
	for _, v02 := range []bool{false, true} {
		t.Run(map[bool]string{false: "SLSA v1", true: "SLSA v0.2"}[v02], func(t *testing.T) {
			t.Parallel()
			l := newLineageEnv(t)
			if !v02 {
				l.rules = provRule(nil)
			}
			corpus := l.push("datasets/corpus", true)
			l.signData(corpus, dataSubject)
			base := l.push("ml/base", false)
			l.provenance(base, v02, fixtures.OCIDependency("in-corpus", corpus))
			app := l.push("ml/app", false)
			l.provenance(app, v02, fixtures.OCIDependency("in-base", base), gitDep)

			// v0.2 materials have no names: the repository's last segment
			// names them ("base", "corpus"; the git source is "train").
			require := []string{"in-*"}
			if v02 {
				require = []string{"[bc]*"}
			}
			v, dv := l.verify(&verify.LineageRule{Depth: 2, Require: require}, app)
			if !v.Allowed {
				t.Fatalf("denied: %q", v.Reasons)
			}
			if v.Artifact != verify.KindModel {
				t.Errorf("artifact = %q, want model", v.Artifact)
			}
			if got := dv.calls.Load(); got != 2 {
				t.Errorf("dependency verifications = %d, want 2", got)
			}
			if len(v.Lineage) != 2 {
				t.Fatalf("lineage = %+v, want base and the git source", v.Lineage)
			}
			b := v.Lineage[0]
			wantName := map[bool]string{false: "in-base", true: "base"}[v02]
			if b.Name != wantName || b.Verdict == nil || !b.Verdict.Allowed || b.Verdict.Boundary != "models" {
				t.Fatalf("base = %+v", b)
			}
			if !strings.HasSuffix(b.URI, base.DigestStr()) || b.Verdict.Digest != base.DigestStr() {
				t.Errorf("base keeps full digests: uri %q digest %q", b.URI, b.Verdict.Digest)
			}
			if src := v.Lineage[1]; src.URI != gitDep.URI || src.Verdict != nil {
				t.Errorf("non-OCI dependency must be recorded, never followed: %+v", src)
			}
			if len(b.Verdict.Lineage) != 1 || !strings.HasSuffix(b.Verdict.Lineage[0].Name, "corpus") || b.Verdict.Lineage[0].Verdict == nil ||
				!b.Verdict.Lineage[0].Verdict.Allowed || b.Verdict.Lineage[0].Verdict.Boundary != "data" || b.Verdict.Lineage[0].Verdict.Artifact != verify.KindDataset {
				t.Errorf("corpus = %+v", b.Verdict.Lineage)
			}
		})
	}
}

func TestLineageDenied(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// build returns the root and the reason the denial must give.
		build   func(l *lineageEnv) (name.Digest, string)
		rule    verify.LineageRule
		maxCall int64
	}{
		{
			name: "dependency unsigned",
			build: func(l *lineageEnv) (name.Digest, string) {
				corpus := l.push("datasets/corpus", true)
				app := l.push("ml/app", false)
				l.provenance(app, false, fixtures.OCIDependency("corpus", corpus))
				return app, label(app) + " ← " + label(corpus) + ": threshold 1 not met"
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"corpus"}}, maxCall: 1,
		},
		{
			name: "dependency signed by the wrong identity",
			build: func(l *lineageEnv) (name.Digest, string) {
				corpus := l.push("datasets/corpus", true)
				l.signData(corpus, "https://github.com/evil/fork/.github/workflows/publish.yml@refs/heads/main")
				app := l.push("ml/app", false)
				l.provenance(app, false, fixtures.OCIDependency("corpus", corpus))
				return app, label(app) + " ← " + label(corpus) + ": sigstore-bundle"
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"corpus"}}, maxCall: 1,
		},
		{
			name: "chain deeper than depth",
			build: func(l *lineageEnv) (name.Digest, string) {
				corpus := l.push("datasets/corpus", true)
				l.signData(corpus, dataSubject)
				base := l.push("ml/base", false)
				l.provenance(base, false, fixtures.OCIDependency("corpus", corpus))
				app := l.push("ml/app", false)
				l.provenance(app, false, fixtures.OCIDependency("base", base))
				return app, label(app) + " ← " + label(base) + ": lineage deeper than depth 1"
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"*"}}, maxCall: 1,
		},
		{
			name: "deep denial names the whole chain",
			build: func(l *lineageEnv) (name.Digest, string) {
				corpus := l.push("datasets/corpus", true)
				base := l.push("ml/base", false)
				l.provenance(base, false, fixtures.OCIDependency("corpus", corpus))
				app := l.push("ml/app", false)
				l.provenance(app, false, fixtures.OCIDependency("base", base))
				return app, label(app) + " ← " + label(base) + " ← " + label(corpus) + ": threshold 1 not met"
			},
			rule: verify.LineageRule{Depth: 3, Require: []string{"*"}}, maxCall: 2,
		},
		{
			name: "cycle",
			build: func(l *lineageEnv) (name.Digest, string) {
				a := l.push("ml/a", false)
				b := l.push("ml/b", false)
				l.provenance(a, false, fixtures.OCIDependency("b", b))
				l.provenance(b, false, fixtures.OCIDependency("a", a))
				return a, "cycle: " + label(a) + " ← " + label(b) + " ← " + label(a)
			},
			rule: verify.LineageRule{Depth: 5, Require: []string{"*"}}, maxCall: 1,
		},
		{
			name: "a thousand dependencies",
			build: func(l *lineageEnv) (name.Digest, string) {
				var deps []fixtures.ResourceDescriptor
				for i := range 1000 {
					deps = append(deps, fixtures.ResourceDescriptor{Name: fmt.Sprintf("shard-%d", i),
						URI: fmt.Sprintf("oci://%s/datasets/shard%d@sha256:%064x", l.reg.Host, i, i)})
				}
				app := l.push("ml/app", false)
				l.provenance(app, false, deps...)
				return app, fmt.Sprintf("too many dependencies: 1000 to follow, at most %d", verify.DefaultMaxDependencies)
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"shard-*"}}, maxCall: 0,
		},
		{
			name: "required dependency absent",
			build: func(l *lineageEnv) (name.Digest, string) {
				app := l.push("ml/app", false)
				l.provenance(app, false, gitDep)
				return app, "required dependency dataset* not in provenance"
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"dataset*"}},
		},
		{
			name: "required dependency is not an OCI artifact",
			build: func(l *lineageEnv) (name.Digest, string) {
				app := l.push("ml/app", false)
				l.provenance(app, false, gitDep)
				return app, `dependency source is not an OCI artifact (uri "git+https://github.com/acme/train@refs/heads/main"`
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"source"}},
		},
		{
			name: "no provenance",
			build: func(l *lineageEnv) (name.Digest, string) {
				app := l.push("ml/app", false)
				if _, err := fixtures.AttachBundle(context.Background(), app, l.key, fixtures.BundleSpec{PredicateType: verify.PredicateSPDX}); err != nil {
					l.t.Fatal(err)
				}
				return app, "lineage: no verified SLSA provenance attestation"
			},
			rule: verify.LineageRule{Depth: 1, Require: []string{"*"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLineageEnv(t)
			root, want := tc.build(l)
			eng, err := verify.New(l.policy(&tc.rule))
			if err != nil {
				t.Fatal(err)
			}
			dv := &depVerifier{engine: eng, upstreams: map[string]verify.Fetcher{l.reg.Host: l.fetch}}
			v, err := eng.Verify(context.Background(), l.subject(root, dv), l.fetch)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			t.Logf("reasons: %q", v.Reasons)
			wantDenied(t, v, want)
			if got := dv.calls.Load(); got > tc.maxCall {
				t.Errorf("dependency verifications = %d, want at most %d", got, tc.maxCall)
			}
		})
	}
}

func TestLineageUnfollowedAndUnavailable(t *testing.T) {
	t.Parallel()
	l := newLineageEnv(t)
	corpus := l.push("datasets/corpus", true)
	app := l.push("ml/app", false)
	l.provenance(app, false, fixtures.OCIDependency("corpus", corpus))
	eng, err := verify.New(l.policy(&verify.LineageRule{Depth: 1, Require: []string{"corpus"}}))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("no dependency verifier", func(t *testing.T) {
		t.Parallel()
		v := mustVerify(t, eng, l.subject(app, nil), l.fetch)
		wantDenied(t, v, "lineage cannot be followed here")
	})
	t.Run("dependency undecidable fails closed", func(t *testing.T) {
		t.Parallel()
		_, err := eng.Verify(context.Background(), l.subject(app, errVerifier{}), l.fetch)
		if err == nil || !strings.Contains(err.Error(), "upstream unreachable") {
			t.Fatalf("Verify error = %v, want the dependency failure", err)
		}
	})
	t.Run("dependencies not required are recorded, not followed", func(t *testing.T) {
		t.Parallel()
		eng, err := verify.New(l.policy(&verify.LineageRule{Depth: 1}))
		if err != nil {
			t.Fatal(err)
		}
		dv := &depVerifier{engine: eng}
		v := mustVerify(t, eng, l.subject(app, dv), l.fetch)
		if !v.Allowed {
			t.Fatalf("denied: %q", v.Reasons)
		}
		if dv.calls.Load() != 0 || len(v.Lineage) != 1 || v.Lineage[0].Name != "corpus" || v.Lineage[0].Verdict != nil {
			t.Fatalf("lineage = %+v after %d calls", v.Lineage, dv.calls.Load())
		}
	})
}

func BenchmarkLineageDepth3(b *testing.B) {
	l := newLineageEnv(b)
	corpus := l.push("datasets/corpus", true)
	l.signData(corpus, dataSubject)
	prev, prevName := corpus, "corpus"
	for _, repo := range []string{"ml/c", "ml/b", "ml/a"} {
		d := l.push(repo, false)
		l.provenance(d, false, fixtures.OCIDependency(prevName, prev))
		prev, prevName = d, repo[len("ml/"):]
	}
	l.fetch = fixtures.Memoize(l.fetch)
	eng, err := verify.New(l.policy(&verify.LineageRule{Depth: 3, Require: []string{"*"}}))
	if err != nil {
		b.Fatal(err)
	}
	dv := &depVerifier{engine: eng, upstreams: map[string]verify.Fetcher{l.reg.Host: l.fetch}}
	s := l.subject(prev, dv)
	// The first walk fills the in-memory fetcher; every measured walk then
	// verifies all four subjects again, with no verdict cache.
	if v, err := eng.Verify(context.Background(), s, l.fetch); err != nil || !v.Allowed {
		b.Fatalf("warm-up: %v %q", err, v.Reasons)
	}
	for b.Loop() {
		if _, err := eng.Verify(context.Background(), s, l.fetch); err != nil {
			b.Fatal(err)
		}
	}
}
