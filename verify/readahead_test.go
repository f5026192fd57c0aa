package verify_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// wantSameVerdict fails unless got says what want says: reading evidence
// ahead must not change a verdict, its reasons or its limit.
func wantSameVerdict(t *testing.T, got, want verify.Verdict) {
	t.Helper()
	if got.Allowed != want.Allowed || got.Limit != want.Limit || got.Boundary != want.Boundary || got.Mode != want.Mode {
		t.Errorf("verdict (allowed %v, limit %q) differs from reading in order (allowed %v, limit %q)", got.Allowed, got.Limit, want.Allowed, want.Limit)
	}
	if !slices.Equal(got.Reasons, want.Reasons) {
		t.Errorf("reasons differ from reading in order:\n got  %q\n want %q", got.Reasons, want.Reasons)
	}
	if len(got.Signers) != len(want.Signers) || len(got.Attestations) != len(want.Attestations) || len(got.Lineage) != len(want.Lineage) {
		t.Errorf("signers/attestations/lineage differ from reading in order: %+v / %+v", got, want)
	}
}

// Verdicts read ahead are those read in order, for allowed subjects and
// for each budget and limit case: the reads ahead are only ever taken in
// the order the run asks for them.
func TestReadAheadVerdictsMatchInOrder(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	small := verify.EvidenceLimits{TotalBytes: 1 << 20, SignatureBytes: 16 << 10, AttestationBytes: 64 << 10, PredicateDepth: 8}
	tests := []struct {
		name  string
		setup func(f *fixtures.MemoryFetcher, s verify.Subject)
		p     verify.Policy
		opts  []verify.Option
	}{
		{name: "bundle signature", setup: func(f *fixtures.MemoryFetcher, s verify.Subject) {
			addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
		}, p: policy(1, keyAuthority("release", k))},
		{name: "nothing", setup: func(*fixtures.MemoryFetcher, verify.Subject) {}, p: policy(1, keyAuthority("release", k))},
		{name: "signature then bombs", setup: func(f *fixtures.MemoryFetcher, s verify.Subject) {
			addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
			addBomb(t, f, s, 63, 256<<10)
		}, p: policy(1, keyAuthority("release", k))},
		{name: "bombs only", setup: func(f *fixtures.MemoryFetcher, s verify.Subject) {
			addBomb(t, f, s, 63, 512<<10)
		}, p: policy(1, keyAuthority("release", k))},
		{name: "bombs under a small budget", setup: func(f *fixtures.MemoryFetcher, s verify.Subject) {
			addBomb(t, f, s, 8, 256<<10)
		}, p: policy(1, keyAuthority("release", k)), opts: []verify.Option{verify.WithEvidenceLimits(small)}},
		{name: "provenance rule, newest, bombs", setup: func(f *fixtures.MemoryFetcher, s verify.Subject) {
			addSignature(t, f, s, k, verify.PredicateSLSAProvenanceV1, provenance(time.Now()))
			addBomb(t, f, s, 40, 512<<10)
		}, p: attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = verify.SelectNewest }), keyAuthority("release", k))},
		{name: "oversized .sig manifest", setup: func(f *fixtures.MemoryFetcher, s verify.Subject) {
			var layers []v1.Descriptor
			for i := range 64 {
				payload := fixtures.SimpleSigningPayload(fmt.Sprintf("registry.example/acme/app-%d", i), s.Digest)
				layers = append(layers, v1.Descriptor{MediaType: types.MediaType(fixtures.MediaTypeSimpleSigning), Digest: f.AddBlob(payload), Size: int64(len(payload)),
					Annotations: map[string]string{"dev.cosignproject.cosign/signature": "c2ln"}})
			}
			f.AddManifest("sha256-"+s.Digest.Hex+".sig", legacyManifest(t, layers...))
		}, p: policy(1, keyAuthority("release", k)), opts: []verify.Option{verify.WithEvidenceLimits(small)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := memSubject(t)
			f := fixtures.NewMemoryFetcher()
			tc.setup(f, s)
			ahead := mustVerify(t, engine(t, tc.p, tc.opts...), s, f)
			inOrder := mustVerify(t, engine(t, tc.p, append(tc.opts, verify.WithEvidenceInOrder())...), s, f)
			wantSameVerdict(t, ahead, inOrder)
		})
	}
}

// countingFetcher counts the bytes it hands out and the reads in flight
// at once, and can hold every read until released.
type countingFetcher struct {
	verify.Fetcher
	mu       sync.Mutex
	bytes    int64
	inFlight int
	peak     int
	delay    time.Duration
}

func (c *countingFetcher) enter() {
	c.mu.Lock()
	c.inFlight++
	c.peak = max(c.peak, c.inFlight)
	c.mu.Unlock()
	time.Sleep(c.delay)
}

func (c *countingFetcher) leave(n int) {
	c.mu.Lock()
	c.inFlight--
	c.bytes += int64(n)
	c.mu.Unlock()
}

func (c *countingFetcher) Referrers(ctx context.Context, repo string, d v1.Hash) (*v1.IndexManifest, error) {
	c.enter()
	defer c.leave(0)
	return c.Fetcher.Referrers(ctx, repo, d)
}

func (c *countingFetcher) Manifest(ctx context.Context, repo, ref string) (verify.Manifest, error) {
	c.enter()
	m, err := c.Fetcher.Manifest(ctx, repo, ref)
	c.leave(len(m.Bytes))
	return m, err
}

func (c *countingFetcher) Blob(ctx context.Context, repo string, d v1.Hash, limit int64) ([]byte, error) {
	c.enter()
	b, err := c.Fetcher.Blob(ctx, repo, d, limit)
	c.leave(len(b))
	return b, err
}

// The evidence budget is a total over everything read for one subject,
// read ahead or not: a subject whose .sig and .att tags and referrers are
// all bombs costs no more bytes than the budget plus one item, and reads
// ahead stay within the fan-out.
func TestReadAheadKeepsTheBudgetTotal(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	s := memSubject(t)
	mem := fixtures.NewMemoryFetcher()
	addBomb(t, mem, s, 40, 512<<10)
	// .sig and .att tags whose first layers are large too.
	big := func(i int) v1.Descriptor {
		b := make([]byte, 900<<10)
		b[0] = byte(i)
		return v1.Descriptor{MediaType: types.MediaType(fixtures.MediaTypeSimpleSigning), Digest: mem.AddBlob(b), Size: int64(len(b)),
			Annotations: map[string]string{"dev.cosignproject.cosign/signature": "c2ln"}}
	}
	mem.AddManifest("sha256-"+s.Digest.Hex+".sig", legacyManifest(t, big(1), big(2)))
	limits := verify.DefaultEvidenceLimits()
	limits.TotalBytes = 4 << 20
	p := attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = verify.SelectNewest }), keyAuthority("release", k))
	for _, opt := range []verify.Option{verify.WithEvidenceInOrder(), verify.WithMaxEvidence(64)} {
		f := &countingFetcher{Fetcher: mem, delay: 5 * time.Millisecond}
		v, err := engine(t, p, verify.WithEvidenceLimits(limits), opt).Verify(context.Background(), s, f)
		if err != nil {
			t.Fatal(err)
		}
		wantDenied(t, v, "evidence budget exceeded")
		// One read may pass the total: it is charged once read.
		if f.bytes > limits.TotalBytes+limits.AttestationBytes {
			t.Errorf("%d bytes read, budget %d", f.bytes, limits.TotalBytes)
		}
		if f.peak > verify.EvidenceFanout+1 {
			t.Errorf("%d reads in flight, fan-out %d", f.peak, verify.EvidenceFanout)
		}
		t.Logf("%d bytes in %d reads at most at once", f.bytes, f.peak)
	}
}

// A run that ends (its client left) stops the reads it made ahead and
// returns the context's error, never a verdict.
func TestReadAheadCancelled(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	s := memSubject(t)
	mem := fixtures.NewMemoryFetcher()
	addSignature(t, mem, s, k, fixtures.PredicateCosignSign, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	f := &countingFetcher{Fetcher: mem, delay: 50 * time.Millisecond}
	_, err := engine(t, policy(1, keyAuthority("release", k))).Verify(ctx, s, f)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Verify error = %v, want the context's", err)
	}
}

// Lineage verified concurrently says what lineage verified one at a
// time says: allowed through every level, and denied naming the same
// dependency with the same reasons.
func TestLineageConcurrentMatchesOneAtATime(t *testing.T) {
	t.Parallel()
	require := []string{"dataset*", "base-model*"}
	for _, extraSigned := range []bool{false, true} {
		t.Run(fmt.Sprintf("extra signed %v", extraSigned), func(t *testing.T) {
			t.Parallel()
			l := newLineageEnv(t)
			app, extra := lineageWithExtra(l)
			if extraSigned {
				l.signData(extra, dataSubject)
			}
			rule := &verify.LineageRule{Depth: 2, Require: require}
			one, _ := l.verify(rule, app, verify.WithLineageConcurrency(1), verify.WithEvidenceInOrder())
			many, _ := l.verify(rule, app, verify.WithLineageConcurrency(4))
			if one.Allowed != extraSigned {
				t.Fatalf("one at a time: allowed %v: %q", one.Allowed, one.Reasons)
			}
			wantSameVerdict(t, many, one)
			if extraSigned {
				for i, d := range many.Lineage {
					if (d.Verdict == nil) != (one.Lineage[i].Verdict == nil) {
						t.Errorf("dependency %s followed differently: %+v / %+v", d.Name, d, one.Lineage[i])
					}
				}
			}
		})
	}
}

// What is read before the manifest is in follows the boundaries that may
// match the subject: nothing where none does, where one refuses, or where
// one keeps its signatures in another repository (reads in the subject's
// own one would never be taken); the .att tag only where one of them may
// ask for attestations. A boundary without artifact types decides for
// every subject it covers, so boundaries after it do not count.
func TestReadAheadPlan(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	auth := keyAuthority("release", k)
	b := func(name string, mut func(*verify.Boundary)) verify.Boundary {
		bd := verify.Boundary{Name: name, Upstream: "*", Repositories: []string{"acme/**"}, Mode: verify.ModeEnforce,
			Threshold: 1, Authorities: []verify.Authority{auth}}
		if mut != nil {
			mut(&bd)
		}
		return bd
	}
	withRules := func(bd *verify.Boundary) { bd.Attestations = provRule(nil) }
	withLineage := func(bd *verify.Boundary) { bd.Lineage = &verify.LineageRule{Depth: 1} }
	models := func(bd *verify.Boundary) {
		bd.ArtifactTypes = []string{"application/vnd.cncf.model.manifest.v1+json"}
	}
	tests := []struct {
		name       string
		boundaries []verify.Boundary
		ahead, att bool
	}{
		{name: "signatures only", boundaries: []verify.Boundary{b("all", nil)}, ahead: true},
		{name: "attestation rules", boundaries: []verify.Boundary{b("all", withRules)}, ahead: true, att: true},
		{name: "lineage", boundaries: []verify.Boundary{b("all", withLineage)}, ahead: true, att: true},
		{name: "no boundary covers it", boundaries: []verify.Boundary{b("other", func(bd *verify.Boundary) { bd.Repositories = []string{"other/**"} })}},
		{name: "refused", boundaries: []verify.Boundary{b("all", func(bd *verify.Boundary) { bd.Refused = "could not be loaded" })}},
		{name: "signatures kept elsewhere", boundaries: []verify.Boundary{b("all", func(bd *verify.Boundary) {
			bd.SignatureRepository = elsewhere("src", "src/{repository}", "")
		})}},
		{name: "models boundary with rules before a plain one", boundaries: []verify.Boundary{b("models", func(bd *verify.Boundary) { models(bd); withRules(bd) }), b("all", nil)}, ahead: true, att: true},
		{name: "a plain one before one with rules", boundaries: []verify.Boundary{b("all", nil), b("later", withRules)}, ahead: true},
		{name: "models boundary kept elsewhere before a plain one", boundaries: []verify.Boundary{b("models", func(bd *verify.Boundary) {
			models(bd)
			bd.SignatureRepository = elsewhere("src", "src/{repository}", "")
		}), b("all", nil)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := engine(t, verify.Policy{Boundaries: tc.boundaries, InsecureAllowUnmatched: true})
			s := memSubject(t)
			f := fixtures.NewMemoryFetcher()
			af, stop := e.ReadAhead(context.Background(), s.Upstream, s.Repository, s.Digest, f)
			defer stop()
			if got := af != verify.Fetcher(f); got != tc.ahead {
				t.Fatalf("read ahead: %v, want %v", got, tc.ahead)
			}
			if !tc.ahead {
				return
			}
			// The tags are begun together; once .sig and the fallback tag
			// were asked for, .att was too if it was going to be.
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) && (f.Reads(sigTag(s)) == 0 || f.Reads("sha256-"+s.Digest.Hex) == 0 || (tc.att && f.Reads(attTag(s)) == 0)) {
				time.Sleep(2 * time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
			if n := f.Reads(sigTag(s)); n != 1 {
				t.Errorf(".sig tag read ahead %d times, want 1", n)
			}
			if got := f.Reads(attTag(s)) == 1; got != tc.att {
				t.Errorf(".att tag read ahead: %v, want %v", got, tc.att)
			}
		})
	}
}
