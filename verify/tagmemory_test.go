package verify_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// sigTag and attTag are cosign's tags of s.
func sigTag(s verify.Subject) string { return "sha256-" + s.Digest.Hex + ".sig" }
func attTag(s verify.Subject) string { return "sha256-" + s.Digest.Hex + ".att" }

// legacySigned adds a `cosign sign` .sig tag for s by k.
func legacySigned(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject, k *fixtures.KeySigner) {
	t.Helper()
	p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
	legacySig(t, f, s, k, p, int64(len(p)), true)
}

// A repository whose last verification decided from its referrers is
// not asked for the .sig (and .att) tags ahead of the next one: the
// requests are saved, and the verdict is the one reading in order gives.
// A subject there that does need its .sig tag still gets it, read by the
// run one round trip later, and the repository is then read ahead as
// before. What one repository needed says nothing of another, or of the
// same repository name on another upstream.
func TestTagMemoryLeavesOutTagsTheRepositoryDidNotNeed(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	bundle := func(f *fixtures.MemoryFetcher, s verify.Subject) {
		addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
	}
	bundles := func(f *fixtures.MemoryFetcher, s verify.Subject) {
		addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
		addSignature(t, f, s, k, verify.PredicateSLSAProvenanceV1, provenance(time.Now()))
	}
	legacy := func(f *fixtures.MemoryFetcher, s verify.Subject) {
		legacySigned(t, f, s, k)
	}
	type step struct {
		name     string
		upstream string
		repo     string
		evidence func(*fixtures.MemoryFetcher, verify.Subject)
		// saved and missed are Verdict.Reads'; sigReads and attReads,
		// when not -1, how often this run asked for the tag.
		saved, missed, sigReads, attReads int
		denied                            bool
	}
	tests := []struct {
		name  string
		p     verify.Policy
		steps []step
	}{
		{name: "signatures", p: policy(1, keyAuthority("release", k)), steps: []step{
			{name: "first bundle-signed subject: nothing remembered", evidence: bundle, sigReads: -1, attReads: 0},
			{name: "second one: .sig left out", evidence: bundle, saved: 1, sigReads: 0, attReads: 0},
			{name: "an unsigned subject there: denied naming its .sig tag", evidence: func(*fixtures.MemoryFetcher, verify.Subject) {}, denied: true, missed: 1, sigReads: 1, attReads: 0},
			{name: "the repository needs .sig now", evidence: bundle, sigReads: -1, attReads: 0},
			{name: "bundle-signed again: .sig left out", evidence: bundle, saved: 1, sigReads: 0, attReads: 0},
			{name: "a .sig-signed subject there: read by the run", evidence: legacy, missed: 1, sigReads: 1, attReads: 0},
			// Decided by its .sig tag alone, that subject has the next
			// one's .sig read first and its index left out of reading
			// ahead: a bundle-signed subject needs the index after all.
			{name: "the repository needs .sig again, first", evidence: bundle, missed: 1, sigReads: 1, attReads: 0},
			{name: "a bundle-signed subject in another repository", repo: "acme/other", evidence: bundle, sigReads: -1, attReads: 0},
			{name: "and again: .sig left out there now", repo: "acme/other", evidence: bundle, saved: 1, sigReads: 0, attReads: 0},
			{name: "the same name on another upstream", upstream: "mirror", repo: "acme/other", evidence: bundle, sigReads: -1, attReads: 0},
		}},
		{name: "signatures and provenance", p: attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = verify.SelectAny }), keyAuthority("release", k)), steps: []step{
			{name: "first subject: nothing remembered", evidence: bundles, sigReads: -1, attReads: -1},
			{name: "second one: .sig and .att left out", evidence: bundles, saved: 2, sigReads: 0, attReads: 0},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := engine(t, tc.p)
			inOrder := engine(t, tc.p, verify.WithEvidenceInOrder())
			for _, st := range tc.steps {
				s := memSubject(t)
				if st.upstream != "" {
					s.Upstream = st.upstream
				}
				if st.repo != "" {
					s.Repository = st.repo
				}
				f := fixtures.NewMemoryFetcher()
				st.evidence(f, s)
				want := mustVerify(t, inOrder, s, f)
				sig0, att0 := f.Reads(sigTag(s)), f.Reads(attTag(s))
				got := mustVerify(t, e, s, f)
				if got.Allowed == st.denied {
					t.Fatalf("%s: allowed %v, reasons %q", st.name, got.Allowed, got.Reasons)
				}
				if st.denied && !strings.Contains(strings.Join(got.Reasons, "\n"), sigTag(s)) {
					t.Errorf("%s: denial does not name the .sig tag it read: %q", st.name, got.Reasons)
				}
				wantSameVerdict(t, got, want)
				if got.Reads.SavedTags != st.saved || got.Reads.MissedTags != st.missed {
					t.Errorf("%s: Reads saved %d, missed %d; want %d, %d", st.name, got.Reads.SavedTags, got.Reads.MissedTags, st.saved, st.missed)
				}
				// Counted past what reading in order asked for. A tag read
				// ahead may or may not have been asked for before the run
				// ended, so only known counts are checked.
				if n := f.Reads(sigTag(s)) - sig0; st.sigReads >= 0 && n != st.sigReads {
					t.Errorf("%s: .sig tag asked for %d times, want %d", st.name, n, st.sigReads)
				}
				if n := f.Reads(attTag(s)) - att0; st.attReads >= 0 && n != st.attReads {
					t.Errorf("%s: .att tag asked for %d times, want %d", st.name, n, st.attReads)
				}
			}
		})
	}
}

// Reading ahead of the manifest (Engine.ReadAhead) leaves out the tags
// the repository's last verification did not need, too.
func TestTagMemoryAppliesBeforeTheManifest(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	e := engine(t, attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = verify.SelectAny }), keyAuthority("release", k)))
	v, f, s := readAheadTwice(t, e, func(f *fixtures.MemoryFetcher, s verify.Subject) {
		addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
		addSignature(t, f, s, k, verify.PredicateSLSAProvenanceV1, provenance(time.Now()))
	}, func(f *fixtures.MemoryFetcher, s verify.Subject) bool {
		return f.Reads(sigTag(s))+f.Reads(attTag(s)) > 0
	})
	if !v.Allowed {
		t.Fatalf("denied: %q", v.Reasons)
	}
	if n, m := f.Reads(sigTag(s)), f.Reads(attTag(s)); n+m != 0 {
		t.Errorf(".sig asked for %d times and .att %d times ahead of a repository that needed neither last time", n, m)
	}
}

// readAheadTwice verifies two subjects of one repository through
// Engine.ReadAhead, each with the evidence add gives it, and returns the
// second's verdict, fetcher and subject once its reads ahead are stopped.
// A read begun ahead finishes soon on an in-memory fetcher: the second's
// are given up to 200ms to show (shown) before they are cancelled.
func readAheadTwice(t *testing.T, e *verify.Engine, add func(*fixtures.MemoryFetcher, verify.Subject), shown func(*fixtures.MemoryFetcher, verify.Subject) bool) (verify.Verdict, *fixtures.MemoryFetcher, verify.Subject) {
	t.Helper()
	var (
		v verify.Verdict
		f *fixtures.MemoryFetcher
		s verify.Subject
	)
	for i := range 2 {
		s = memSubject(t)
		f = fixtures.NewMemoryFetcher()
		add(f, s)
		af, stop := e.ReadAhead(context.Background(), s.Upstream, s.Repository, s.Digest, f)
		v = mustVerify(t, e, s, af)
		if i == 1 {
			for deadline := time.Now().Add(200 * time.Millisecond); time.Now().Before(deadline) && !shown(f, s); {
				time.Sleep(5 * time.Millisecond)
			}
		}
		stop()
	}
	return v, f, s
}
