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
		{
			// Foundation models are signed releases with no lineage rule.
			Name: "foundation", Repositories: []string{"foundation/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{keyAuthority("release", l.key)},
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

func (l *lineageEnv) verify(lineage *verify.LineageRule, root name.Digest, opts ...verify.Option) (verify.Verdict, *depVerifier) {
	l.t.Helper()
	eng, err := verify.New(l.policy(lineage), opts...)
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
	t.Run("dependencies not required are followed all the same", func(t *testing.T) {
		t.Parallel()
		eng, err := verify.New(l.policy(&verify.LineageRule{Depth: 1}))
		if err != nil {
			t.Fatal(err)
		}
		dv := &depVerifier{engine: eng, upstreams: map[string]verify.Fetcher{l.reg.Host: l.fetch}}
		v := mustVerify(t, eng, l.subject(app, dv), l.fetch)
		wantDenied(t, v, label(app)+" ← "+label(corpus)+": threshold 1 not met")
		if dv.calls.Load() != 1 || len(v.Lineage) != 1 || v.Lineage[0].Verdict == nil || v.Lineage[0].Ignored {
			t.Fatalf("lineage = %+v after %d calls", v.Lineage, dv.calls.Load())
		}
	})
}

// lineageWithExtra pushes a model whose provenance lists a signed dataset
// and a signed base model, which the policy requires, and a third OCI
// input named "extra" pointing at a dataset nobody signed.
func lineageWithExtra(l *lineageEnv) (app, extra name.Digest) {
	corpus := l.push("datasets/corpus", true)
	l.signData(corpus, dataSubject)
	base := l.push("foundation/base", false)
	l.provenance(base, false)
	extra = l.push("datasets/extra", true)
	app = l.push("ml/app", false)
	l.provenance(app, false, fixtures.OCIDependency("dataset-corpus", corpus), fixtures.OCIDependency("base-model", base),
		fixtures.OCIDependency("extra", extra), gitDep)
	return app, extra
}

func TestLineageFollowsEveryOCIInput(t *testing.T) {
	t.Parallel()
	require := []string{"dataset*", "base-model*"}

	t.Run("an input no require glob names is verified", func(t *testing.T) {
		t.Parallel()
		l := newLineageEnv(t)
		app, extra := lineageWithExtra(l)
		v, dv := l.verify(&verify.LineageRule{Depth: 2, Require: require}, app)
		t.Logf("reasons: %q", v.Reasons)
		wantDenied(t, v, label(app)+" ← "+label(extra)+": threshold 1 not met")
		if got := dv.calls.Load(); got != 3 {
			t.Errorf("dependency verifications = %d, want 3", got)
		}
		for _, r := range v.Reasons {
			if !strings.HasPrefix(r, label(app)+" ← "+label(extra)+": ") {
				t.Errorf("reason %q is not about the extra input", r)
			}
		}
	})
	t.Run("an ignored input is named in the verdict, not followed", func(t *testing.T) {
		t.Parallel()
		l := newLineageEnv(t)
		app, extra := lineageWithExtra(l)
		v, dv := l.verify(&verify.LineageRule{Depth: 2, Require: require, Ignore: []string{"ext*"}}, app)
		if !v.Allowed {
			t.Fatalf("denied: %q", v.Reasons)
		}
		if got := dv.calls.Load(); got != 2 {
			t.Errorf("dependency verifications = %d, want 2 (the ignored input is not followed)", got)
		}
		if len(v.Lineage) != 4 {
			t.Fatalf("lineage = %+v, want all four inputs", v.Lineage)
		}
		for i, want := range []struct {
			name             string
			followed, ignore bool
		}{{"dataset-corpus", true, false}, {"base-model", true, false}, {"extra", false, true}, {"source", false, false}} {
			d := v.Lineage[i]
			if d.Name != want.name || (d.Verdict != nil) != want.followed || d.Ignored != want.ignore {
				t.Errorf("lineage[%d] = %+v, want %+v", i, d, want)
			}
			if want.followed && !d.Verdict.Allowed {
				t.Errorf("%s denied: %q", d.Name, d.Verdict.Reasons)
			}
		}
		if !strings.HasSuffix(v.Lineage[2].URI, extra.DigestStr()) {
			t.Errorf("ignored input uri = %q, want the extra dataset", v.Lineage[2].URI)
		}
	})
	t.Run("require wins over ignore", func(t *testing.T) {
		t.Parallel()
		l := newLineageEnv(t)
		app, extra := lineageWithExtra(l)
		v, dv := l.verify(&verify.LineageRule{Depth: 2, Require: append(require, "extra"), Ignore: []string{"ex*"}}, app)
		wantDenied(t, v, label(app)+" ← "+label(extra)+": threshold 1 not met")
		if got := dv.calls.Load(); got != 3 || v.Lineage[2].Ignored {
			t.Errorf("dependency verifications = %d, extra = %+v; want the required input followed", got, v.Lineage[2])
		}
	})
	t.Run("the dependency bound counts every input followed", func(t *testing.T) {
		t.Parallel()
		l := newLineageEnv(t)
		app, _ := lineageWithExtra(l)
		v, dv := l.verify(&verify.LineageRule{Depth: 2}, app, verify.WithMaxDependencies(2))
		wantDenied(t, v, "too many dependencies: 3 to follow, at most 2 are followed")
		if got := dv.calls.Load(); got != 0 {
			t.Errorf("dependency verifications = %d, want none", got)
		}
		v, _ = l.verify(&verify.LineageRule{Depth: 2, Ignore: []string{"extra"}}, app, verify.WithMaxDependencies(2))
		if !v.Allowed {
			t.Errorf("ignored inputs count against the bound: %q", v.Reasons)
		}
	})
}

func TestLineageUnnamedMaterialIsFollowed(t *testing.T) {
	t.Parallel()
	l := newLineageEnv(t)
	corpus := l.push("datasets/corpus", true)
	l.signData(corpus, dataSubject)
	unsigned := l.push("datasets/scraped", true)
	app := l.push("ml/app", false)
	// SLSA v0.2 materials carry no names; neither input is named by a glob
	// the rule has.
	l.provenance(app, true, fixtures.OCIDependency("", corpus), fixtures.OCIDependency("", unsigned), gitDep)
	v, dv := l.verify(&verify.LineageRule{Depth: 1, Require: []string{"corpus"}}, app)
	wantDenied(t, v, label(app)+" ← "+label(unsigned)+": threshold 1 not met")
	if got := dv.calls.Load(); got != 2 {
		t.Errorf("dependency verifications = %d, want 2", got)
	}
	if len(v.Lineage) != 3 || v.Lineage[1].Name != "scraped" || v.Lineage[1].Verdict == nil || v.Lineage[1].Verdict.Allowed {
		t.Errorf("lineage = %+v", v.Lineage)
	}

	l.signData(unsigned, dataSubject)
	v, _ = l.verify(&verify.LineageRule{Depth: 1, Require: []string{"corpus"}}, app)
	if !v.Allowed {
		t.Fatalf("denied once every material is signed: %q", v.Reasons)
	}
}

func TestLineageNonOCIInputs(t *testing.T) {
	t.Parallel()
	setup := func(t *testing.T) (*lineageEnv, name.Digest) {
		l := newLineageEnv(t)
		corpus := l.push("datasets/corpus", true)
		l.signData(corpus, dataSubject)
		return l, corpus
	}
	url := fixtures.ResourceDescriptor{Name: "tokenizer", URI: "https://huggingface.co/acme/tok/resolve/main/tokenizer.json",
		Digest: map[string]string{"sha256": strings.Repeat("c", 64)}}

	t.Run("recorded, never fetched", func(t *testing.T) {
		t.Parallel()
		l, corpus := setup(t)
		app := l.push("ml/app", false)
		l.provenance(app, false, gitDep, fixtures.OCIDependency("corpus", corpus), url)
		v, dv := l.verify(&verify.LineageRule{Depth: 1}, app)
		if !v.Allowed {
			t.Fatalf("denied: %q", v.Reasons)
		}
		if got := dv.calls.Load(); got != 1 {
			t.Errorf("dependency verifications = %d, want only the OCI input", got)
		}
		if len(v.Lineage) != 3 || v.Lineage[0].URI != gitDep.URI || v.Lineage[0].Verdict != nil || v.Lineage[0].Ignored ||
			v.Lineage[2].URI != url.URI || v.Lineage[2].Verdict != nil || v.Lineage[1].Verdict == nil {
			t.Errorf("lineage = %+v", v.Lineage)
		}
	})
	t.Run("an oci input without a digest cannot be verified", func(t *testing.T) {
		t.Parallel()
		l, corpus := setup(t)
		unpinned := fixtures.ResourceDescriptor{Name: "base", URI: "oci://" + l.reg.Host + "/ml/base:latest"}
		app := l.push("ml/app", false)
		l.provenance(app, false, fixtures.OCIDependency("corpus", corpus), unpinned)
		v, dv := l.verify(&verify.LineageRule{Depth: 1}, app)
		wantDenied(t, v, `dependency base is an OCI input that cannot be verified (uri "`+unpinned.URI+`": no sha256 digest)`)
		if got := dv.calls.Load(); got != 1 {
			t.Errorf("dependency verifications = %d, want 1", got)
		}
		v, _ = l.verify(&verify.LineageRule{Depth: 1, Ignore: []string{"base"}}, app)
		if !v.Allowed || len(v.Lineage) != 2 || !v.Lineage[1].Ignored {
			t.Errorf("ignored unpinned input: allowed %v, lineage %+v, reasons %q", v.Allowed, v.Lineage, v.Reasons)
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
