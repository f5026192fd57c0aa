package verify_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// mirrorEnv is an image mirrored into upstream "a" as mirror/app whose
// evidence is written in upstream "b" as src/app, or wherever a test
// puts it.
type mirrorEnv struct {
	a, b    *fixtures.Registry
	subject name.Digest // a/mirror/app@digest
	digest  v1.Hash
	key     *fixtures.KeySigner
}

func newMirrorEnv(t *testing.T) *mirrorEnv {
	t.Helper()
	e := &mirrorEnv{}
	for _, r := range []**fixtures.Registry{&e.a, &e.b} {
		reg, err := fixtures.StartRegistry()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Close() })
		*r = reg
	}
	ref, err := e.a.Ref("mirror/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if e.subject, err = fixtures.PushImage(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if e.digest, err = v1.NewHash(e.subject.DigestStr()); err != nil {
		t.Fatal(err)
	}
	// The source repository holds the image too, as a mirror's source
	// does; a referrer's subject must exist where it is pushed.
	img, err := remote.Image(e.subject)
	if err != nil {
		t.Fatal(err)
	}
	src, err := e.b.Ref("src/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(src, img); err != nil {
		t.Fatal(err)
	}
	if e.key, err = fixtures.NewKeySigner(""); err != nil {
		t.Fatal(err)
	}
	return e
}

// at names the subject's digest in repo of reg, where evidence about it
// is written: the manifest itself need not be there.
func (e *mirrorEnv) at(t *testing.T, reg *fixtures.Registry, repo string) name.Digest {
	t.Helper()
	ref, err := reg.Ref(repo + "@" + e.subject.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	return ref.(name.Digest)
}

func (e *mirrorEnv) subj(src verify.FetcherSource) verify.Subject {
	return verify.Subject{Upstream: "a", Repository: "mirror/app", Reference: "v1", Digest: e.digest, Fetchers: src}
}

// upstreams is a FetcherSource over named fetchers.
type upstreams map[string]verify.Fetcher

func (u upstreams) FetcherFor(name string) (verify.Fetcher, bool) {
	f, ok := u[name]
	return f, ok
}

// repoLog records which repository every read asked for.
type repoLog struct {
	verify.Fetcher
	mu    sync.Mutex
	repos map[string]int
}

func logRepos(f verify.Fetcher) *repoLog { return &repoLog{Fetcher: f, repos: map[string]int{}} }

func (l *repoLog) note(repo string) {
	l.mu.Lock()
	l.repos[repo]++
	l.mu.Unlock()
}

func (l *repoLog) Referrers(ctx context.Context, repo string, d v1.Hash) (*v1.IndexManifest, error) {
	l.note(repo)
	return l.Fetcher.Referrers(ctx, repo, d)
}

func (l *repoLog) Manifest(ctx context.Context, repo, ref string) (verify.Manifest, error) {
	l.note(repo)
	return l.Fetcher.Manifest(ctx, repo, ref)
}

func (l *repoLog) Blob(ctx context.Context, repo string, d v1.Hash, limit int64) ([]byte, error) {
	l.note(repo)
	return l.Fetcher.Blob(ctx, repo, d, limit)
}

func (l *repoLog) only(t *testing.T, repo string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.repos) != 1 || l.repos[repo] == 0 {
		t.Fatalf("reads went to %v, want only %q", l.repos, repo)
	}
}

func (l *repoLog) none(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.repos) != 0 {
		t.Fatalf("reads went to %v, want none", l.repos)
	}
}

func elsewhere(upstream, repo, strip string) *verify.EvidenceRepository {
	return &verify.EvidenceRepository{Upstream: upstream, Repository: repo, StripPrefix: strip}
}

func TestEvidenceRepositoryOtherUpstream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}
	tests := []struct {
		name string
		// attach writes evidence; src is b/src/app, own a/mirror/app.
		attach  func(e *mirrorEnv, src, own name.Digest) error
		repo    *verify.EvidenceRepository
		noRefs  bool
		want    string // "" for an allow, else a reason of the denial
		ownRead bool   // the subject's own repository is read
	}{
		{
			name: "legacy signature", repo: elsewhere("b", "src/{repository}", "mirror"),
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, src, e.key, fixtures.Tamper{})
			},
		},
		{
			name: "bundle via referrers", repo: elsewhere("b", "src/{repository}", "mirror"),
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, src, e.key, fixtures.BundleSpec{})
				return err
			},
		},
		{
			name: "bundle via fallback tag", repo: elsewhere("b", "src/{repository}", "mirror"), noRefs: true,
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, src, e.key, fixtures.BundleSpec{Placement: fixtures.PlaceFallback})
				return err
			},
		},
		{
			name: "fixed repository without placeholder", repo: elsewhere("b", "src/app", ""),
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, src, e.key, fixtures.Tamper{})
			},
		},
		{
			name: "evidence repository not configured: the signature elsewhere is not found",
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, src, e.key, fixtures.Tamper{})
			},
			want: "no signatures found (checked referrers, sha256-", ownRead: true,
		},
		{
			name: "legacy signature over another digest", repo: elsewhere("b", "src/{repository}", "mirror"),
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, src, e.key, fixtures.Tamper{SignDigest: &other})
			},
			want: "cosign-legacy sig[0] in b/src/app:",
		},
		{
			name: "bundle statement over another digest", repo: elsewhere("b", "src/{repository}", "mirror"),
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, src, e.key, fixtures.BundleSpec{Tamper: fixtures.Tamper{SignDigest: &other}})
				return err
			},
			want: "statement subject is not the subject",
		},
		{
			name: "signature in the subject's own repository is not looked at", repo: elsewhere("b", "src/{repository}", "mirror"),
			attach: func(e *mirrorEnv, _, own name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, own, e.key, fixtures.Tamper{})
			},
			want: "no signatures found in b/src/app (checked referrers, sha256-",
		},
		{
			name: "wrong evidence repository", repo: elsewhere("b", "sigs/{repository}", "mirror"),
			attach: func(e *mirrorEnv, src, _ name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, src, e.key, fixtures.Tamper{})
			},
			want: "no signatures found in b/sigs/app (checked",
		},
		{
			name: "untrusted signer elsewhere", repo: elsewhere("b", "src/{repository}", "mirror"),
			attach: func(_ *mirrorEnv, src, _ name.Digest) error {
				k, err := fixtures.NewKeySigner("")
				if err != nil {
					return err
				}
				return fixtures.AttachLegacySignature(ctx, src, k, fixtures.Tamper{})
			},
			want: `cosign-legacy sig[0] in b/src/app: signature does not verify with any key of authority "release"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newMirrorEnv(t)
			if err := tc.attach(e, e.at(t, e.b, "src/app"), e.subject); err != nil {
				t.Fatal(err)
			}
			var bf verify.Fetcher = e.b.Fetcher()
			if tc.noRefs {
				bf = fixtures.NoReferrersAPI(bf)
			}
			af, bLog := logRepos(e.a.Fetcher()), logRepos(bf)
			p := policy(1, keyAuthority("release", e.key))
			p.Boundaries[0].SignatureRepository = tc.repo
			v := mustVerify(t, engine(t, p), e.subj(upstreams{"b": bLog}), af)
			if tc.want == "" {
				evidence := verify.FormatCosignLegacy
				if strings.HasPrefix(tc.name, "bundle") {
					evidence = verify.FormatSigstoreBundle
				}
				wantAllowed(t, v, "key", evidence)
			} else {
				wantDenied(t, v, tc.want)
			}
			if tc.ownRead {
				af.only(t, "mirror/app")
				return
			}
			af.none(t)
			if tc.repo != nil && tc.repo.Repository == "sigs/{repository}" {
				bLog.only(t, "sigs/app")
			} else {
				bLog.only(t, "src/app")
			}
		})
	}
}

func TestEvidenceRepositorySameUpstream(t *testing.T) {
	t.Parallel()
	e := newMirrorEnv(t)
	if err := fixtures.AttachLegacySignature(context.Background(), e.at(t, e.a, "src/app"), e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	p := policy(1, keyAuthority("release", e.key))
	p.Boundaries[0].SignatureRepository = elsewhere("a", "src/{repository}", "mirror")
	af := logRepos(e.a.Fetcher())
	// No FetcherSource: the subject's upstream needs none.
	v := mustVerify(t, engine(t, p), e.subj(nil), af)
	wantAllowed(t, v, "key", verify.FormatCosignLegacy)
	af.only(t, "src/app")
}

func TestEvidenceRepositoryUnreadable(t *testing.T) {
	t.Parallel()
	e := newMirrorEnv(t)
	if err := fixtures.AttachLegacySignature(context.Background(), e.at(t, e.b, "src/app"), e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		repo *verify.EvidenceRepository
		src  verify.FetcherSource
		subj string // subject repository, default mirror/app
		want string
	}{
		{
			name: "no fetcher source", repo: elsewhere("b", "src/{repository}", "mirror"),
			want: `evidence repository b/src/app: upstream "b" cannot be read`,
		},
		{
			name: "upstream unknown to the source", repo: elsewhere("c", "src/{repository}", "mirror"),
			src:  upstreams{"b": e.b.Fetcher()},
			want: `evidence repository c/src/app: upstream "c" cannot be read`,
		},
		{
			name: "subject outside the strip prefix", repo: elsewhere("b", "src/{repository}", "mirror"),
			src: upstreams{"b": e.b.Fetcher()}, subj: "other/app",
			want: `subject repository "other/app" does not start with "mirror/"`,
		},
		{
			name: "prefix is whole segments", repo: elsewhere("b", "src/{repository}", "mirror"),
			src: upstreams{"b": e.b.Fetcher()}, subj: "mirrorx/app",
			want: `subject repository "mirrorx/app" does not start with "mirror/"`,
		},
		{
			name: "subject is only the prefix", repo: elsewhere("b", "src/{repository}", "mirror"),
			src: upstreams{"b": e.b.Fetcher()}, subj: "mirror",
			want: `does not start with "mirror/"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := policy(1, keyAuthority("release", e.key))
			p.Boundaries[0].SignatureRepository = tc.repo
			s := e.subj(tc.src)
			if tc.subj != "" {
				s.Repository = tc.subj
			}
			af := logRepos(e.a.Fetcher())
			v := mustVerify(t, engine(t, p), s, af)
			wantDenied(t, v, tc.want)
			if v.Boundary != "all" {
				t.Errorf("boundary = %q", v.Boundary)
			}
			af.none(t)
		})
	}
}

func TestEvidenceRepositoryAttestations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	prov := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now())}
	tests := []struct {
		name string
		// rule is the provenance rule's own repository.
		rule, sigs *verify.EvidenceRepository
		// attAt is where the attestation is written: upstream and
		// repository, b/att/app when empty.
		attAt [2]string
		want  string
	}{
		{name: "rule repository", rule: elsewhere("b", "att/{repository}", "mirror")},
		// Places are told apart by upstream and repository together:
		// neither alone makes two places one.
		{
			name: "rule repository: the signatures' repository name on another upstream",
			sigs: elsewhere("b", "src/{repository}", "mirror"), rule: elsewhere("a", "src/{repository}", "mirror"),
			attAt: [2]string{"a", "src/app"},
		},
		{
			name: "rule repository: another repository on the signatures' upstream",
			sigs: elsewhere("b", "src/{repository}", "mirror"), rule: elsewhere("b", "att/{repository}", "mirror"),
		},
		{
			name: "inherited from signatures: attestation not where signatures are",
			sigs: elsewhere("b", "src/{repository}", "mirror"),
			want: `attestation rule "provenance": missing attestation`,
		},
		{name: "rule absent: looked for in the subject's repository", want: "missing attestation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newMirrorEnv(t)
			// The signature is where the boundary's signatures are.
			sigAt := e.subject
			if tc.sigs != nil {
				sigAt = e.at(t, e.b, "src/app")
			}
			if err := fixtures.AttachLegacySignature(ctx, sigAt, e.key, fixtures.Tamper{}); err != nil {
				t.Fatal(err)
			}
			attAt := e.at(t, e.b, "att/app")
			if tc.attAt[0] == "a" {
				attAt = e.at(t, e.a, tc.attAt[1])
			}
			if err := fixtures.AttachLegacyAttestation(ctx, attAt, e.key, prov); err != nil {
				t.Fatal(err)
			}
			p := attPolicy(provRule(func(r *verify.AttestationRule) { r.Repository = tc.rule }), keyAuthority("release", e.key))
			p.Boundaries[0].SignatureRepository = tc.sigs
			v := mustVerify(t, engine(t, p), e.subj(upstreams{"b": e.b.Fetcher()}), e.a.Fetcher())
			if tc.want == "" {
				wantAllowed(t, v, "key", verify.FormatCosignLegacy)
				if len(v.Attestations) != 1 || v.Attestations[0].Rule != "provenance" {
					t.Fatalf("attestations = %+v", v.Attestations)
				}
				return
			}
			wantDenied(t, v, tc.want)
			if tc.sigs != nil {
				wantDenied(t, v, "evidence looked up in b/src/app")
			}
		})
	}
}

func TestEvidenceRepositoryValidated(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		repo verify.EvidenceRepository
		rule bool
		want string
	}{
		{name: "no upstream", repo: verify.EvidenceRepository{Repository: "src/app"}, want: "has no upstream"},
		{name: "no repository", repo: verify.EvidenceRepository{Upstream: "b"}, want: "has no repository"},
		{name: "strip prefix without placeholder", repo: verify.EvidenceRepository{Upstream: "b", Repository: "src/app", StripPrefix: "mirror"}, want: "needs {repository}"},
		{name: "unknown placeholder", repo: verify.EvidenceRepository{Upstream: "b", Repository: "src/{repo}"}, want: "not a repository name"},
		{name: "uppercase", repo: verify.EvidenceRepository{Upstream: "b", Repository: "Src/{repository}"}, want: "not a repository name"},
		{name: "bad strip prefix", repo: verify.EvidenceRepository{Upstream: "b", Repository: "src/{repository}", StripPrefix: "mirror/"}, want: "not a repository path"},
		{name: "rule", repo: verify.EvidenceRepository{Upstream: "b", Repository: "a//b"}, rule: true, want: `boundary "all" attestation "provenance": repository`},
		{name: "longer than a repository name may be", repo: verify.EvidenceRepository{Upstream: "b", Repository: strings.Repeat("a", 256)}, want: "not a repository name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := attPolicy(provRule(nil), keyAuthority("release", k))
			if tc.rule {
				p.Boundaries[0].Attestations[0].Repository = &tc.repo
			} else {
				p.Boundaries[0].SignatureRepository = &tc.repo
			}
			_, err := verify.New(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// The distribution specification's longest repository name is one.
	p := attPolicy(provRule(nil), keyAuthority("release", k))
	p.Boundaries[0].SignatureRepository = &verify.EvidenceRepository{Upstream: "b", Repository: strings.Repeat("a", 255)}
	if _, err := verify.New(p); err != nil {
		t.Errorf("a repository name of 255 characters: %v", err)
	}
}

func TestFingerprintCoversEvidenceRepository(t *testing.T) {
	t.Parallel()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	fp := func(sigs, rule *verify.EvidenceRepository) string {
		p := attPolicy(provRule(func(r *verify.AttestationRule) { r.Repository = rule }), keyAuthority("release", k))
		p.Boundaries[0].SignatureRepository = sigs
		return engine(t, p).Fingerprint()
	}
	seen := map[string]string{}
	for name, f := range map[string]string{
		"none":         fp(nil, nil),
		"signatures":   fp(elsewhere("b", "src/{repository}", ""), nil),
		"strip prefix": fp(elsewhere("b", "src/{repository}", "mirror"), nil),
		"other repo":   fp(elsewhere("b", "sigs/{repository}", ""), nil),
		"rule":         fp(nil, elsewhere("b", "src/{repository}", "")),
	} {
		if prev, dup := seen[f]; dup {
			t.Errorf("%s and %s share the fingerprint %s", prev, name, f)
		}
		seen[f] = name
	}
}
