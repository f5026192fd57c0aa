package verify_test

import (
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// fallbackTag is the OCI referrers fallback tag of s.
func fallbackTag(s verify.Subject) string { return "sha256-" + s.Digest.Hex }

// A repository whose last verification was decided by its .sig tag alone
// has the next subject's .sig tag read first, and neither its referrers
// nor its fallback tag is asked for when the tag decides again. Where it
// does not (no .sig tag, an untrusted or revoked signer), the index is
// read after it, one round trip later, and the repository is read in
// order again until a .sig tag alone decides once more. The verdict is the
// one reading in order gives; a denial's reasons too, naming the places
// in the same order. An allow may name a rejected .sig signature that
// reading in order never reached. A signer the index
// contributed makes the index needed: with a threshold of two, a .sig
// signer and a bundle signer are both read every time.
func TestSigTagReadFirstWhereItDecided(t *testing.T) {
	t.Parallel()
	k, other := newKey(t), newKey(t)
	legacy := func(k *fixtures.KeySigner) func(*testing.T, *fixtures.MemoryFetcher, verify.Subject) {
		return func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) { legacySigned(t, f, s, k) }
	}
	bundle := func(k *fixtures.KeySigner) func(*testing.T, *fixtures.MemoryFetcher, verify.Subject) {
		return func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) {
			addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
		}
	}
	both := func(a, b *fixtures.KeySigner) func(*testing.T, *fixtures.MemoryFetcher, verify.Subject) {
		return func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) {
			legacySigned(t, f, s, a)
			addSignature(t, f, s, b, fixtures.PredicateCosignSign, nil)
		}
	}
	nothing := func(*testing.T, *fixtures.MemoryFetcher, verify.Subject) {}
	withProvenance := func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) {
		legacySigned(t, f, s, k)
		addSignature(t, f, s, k, verify.PredicateSLSAProvenanceV1, provenance(time.Now()))
	}
	type step struct {
		name     string
		evidence func(*testing.T, *fixtures.MemoryFetcher, verify.Subject)
		revoked  bool // k's signatures are revoked
		model    bool // the subject is a model
		denied   bool
		// names is a denial naming the places checked, or an allow naming
		// the .sig signature it rejected.
		names bool
		// index says whether the run asked for the fallback tag and the
		// referrers, sig how often for the .sig tag (-1: not known); saved
		// and missed are Verdict.Reads'.
		index         bool
		sig           int
		saved, missed int
	}
	tests := []struct {
		name  string
		p     verify.Policy
		steps []step
	}{
		{name: "threshold 1", p: policy(1, keyAuthority("release", k)), steps: []step{
			{name: ".sig-signed, nothing remembered", evidence: legacy(k), index: true, sig: 1},
			{name: ".sig-signed again: the index is not asked for", evidence: legacy(k), sig: 1, saved: 1},
			{name: "and again", evidence: legacy(k), sig: 1, saved: 1},
			{name: "unsigned: denied, naming the places in order", evidence: nothing, denied: true, names: true, index: true, sig: 1, missed: 1},
			{name: ".sig-signed: read in order after the denial", evidence: legacy(k), index: true, sig: 1},
			{name: "bundle-signed: the index is read after the tag", evidence: bundle(k), index: true, sig: 1, missed: 1},
			{name: ".sig-signed: in order after the bundle", evidence: legacy(k), index: true, sig: 1},
			{name: "bundle-signed: the tag first again", evidence: bundle(k), index: true, sig: 1, missed: 1},
			{name: "bundle-signed: in order now", evidence: bundle(k), index: true, sig: -1},
			{name: ".sig-signed after bundles: the tag left out ahead, read by the run", evidence: legacy(k), index: true, sig: 1, missed: 1},
			{name: ".sig-signed: the tag first", evidence: legacy(k), sig: 1, saved: 1},
			{name: "a .sig by an untrusted key, a bundle by the trusted one", evidence: both(other, k), names: true, index: true, sig: 1, missed: 1},
			{name: ".sig-signed: in order once more", evidence: legacy(k), index: true, sig: 1},
			{name: "a revoked .sig signer does not decide: denied as in order", evidence: legacy(k), revoked: true, denied: true, index: true, sig: 1, missed: 1},
		}},
		{name: "threshold 2", p: policy(2, keyAuthority("release", k), keyAuthority("other", other)), steps: []step{
			{name: "a .sig and a bundle signer, nothing remembered", evidence: both(k, other), index: true, sig: 1},
			{name: "the index counted a signer: read in order again", evidence: both(k, other), index: true, sig: 1},
		}},
		// A subject whose boundary asks for an attestation reads in order
		// wherever it is: its .sig tag cannot decide alone.
		{name: "a model in a repository its .sig tags decide", p: modelsAskForProvenance(k), steps: []step{
			{name: ".sig-signed, nothing remembered", evidence: legacy(k), index: true, sig: 1},
			{name: ".sig-signed: the tag first", evidence: legacy(k), sig: 1, saved: 1},
			{name: "a model with provenance: in order, its .att tag left out", evidence: withProvenance, model: true, index: true, sig: -1, saved: 1},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := engine(t, tc.p)
			inOrder := engine(t, tc.p, verify.WithEvidenceInOrder())
			for _, st := range tc.steps {
				s := memSubject(t)
				f := fixtures.NewMemoryFetcher()
				st.evidence(t, f, s)
				if st.model {
					s.ArtifactType = modelType
				}
				if st.revoked {
					s.Revoked = revokedSigners{keys: map[string]bool{derKeyID(t, k): true}}
				}
				want := mustVerify(t, inOrder, s, f)
				tag0, list0, sig0 := f.Reads(fallbackTag(s)), f.Listings(), f.Reads(sigTag(s))
				got := mustVerify(t, e, s, f)
				if got.Allowed == st.denied {
					t.Fatalf("%s: allowed %v, reasons %q", st.name, got.Allowed, got.Reasons)
				}
				reasons := strings.Join(got.Reasons, "\n")
				switch {
				case st.denied || !st.names:
					wantSameVerdict(t, got, want)
				case len(got.Signers) != len(want.Signers) || !strings.Contains(reasons, "cosign-legacy sig[0]: signature does not verify"):
					t.Errorf("%s: signers %+v, reasons %q; want the signers reading in order counts (%+v) and the rejected .sig signature named", st.name, got.Signers, got.Reasons, want.Signers)
				}
				if st.denied && st.names && !strings.Contains(reasons, "(checked referrers, "+fallbackTag(s)+", "+sigTag(s)+")") {
					t.Errorf("%s: the denial does not name the places in order: %q", st.name, got.Reasons)
				}
				if got.Reads.SavedTags != st.saved || got.Reads.MissedTags != st.missed {
					t.Errorf("%s: Reads saved %d, missed %d; want %d, %d", st.name, got.Reads.SavedTags, got.Reads.MissedTags, st.saved, st.missed)
				}
				tags, lists := f.Reads(fallbackTag(s))-tag0, f.Listings()-list0
				if want := map[bool]int{true: 1}[st.index]; tags != want || lists != want {
					t.Errorf("%s: fallback tag asked for %d times and referrers %d; want %d each", st.name, tags, lists, want)
				}
				// A .sig tag read ahead of a run that did not need it may or
				// may not have been asked for before the run ended (-1).
				if n := f.Reads(sigTag(s)) - sig0; st.sig >= 0 && n != st.sig {
					t.Errorf("%s: .sig tag asked for %d times, want %d", st.name, n, st.sig)
				}
			}
		})
	}
}

// Reading ahead of the manifest (Engine.ReadAhead) asks a repository whose
// last verification its .sig tag decided for that tag alone; where a
// boundary may ask for attestations, the index is read ahead as before.
func TestSigTagFirstBeforeTheManifest(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	for _, tc := range []struct {
		name  string
		p     verify.Policy
		index bool
	}{
		{name: "signatures only", p: policy(1, keyAuthority("release", k))},
		{name: "a boundary for models asks for provenance", p: modelsAskForProvenance(k), index: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v, f, s := readAheadTwice(t, engine(t, tc.p), func(f *fixtures.MemoryFetcher, s verify.Subject) { legacySigned(t, f, s, k) },
				func(f *fixtures.MemoryFetcher, s verify.Subject) bool {
					return f.Reads(fallbackTag(s))+f.Listings() >= 2
				})
			if !v.Allowed {
				t.Fatalf("denied: %q", v.Reasons)
			}
			tags, lists := f.Reads(fallbackTag(s)), f.Listings()
			if want := map[bool]int{true: 1}[tc.index]; tags != want || lists != want {
				t.Errorf("fallback tag asked for %d times and referrers %d; want %d each", tags, lists, want)
			}
		})
	}
}

const modelType = "application/vnd.cncf.model.manifest.v1+json"

// modelsAskForProvenance is a policy whose boundary for models asks for
// provenance and whose boundary for everything else asks for a signature.
func modelsAskForProvenance(k *fixtures.KeySigner) verify.Policy {
	anyProvenance := provRule(func(r *verify.AttestationRule) { r.Select = verify.SelectAny })
	models := attPolicy(anyProvenance, keyAuthority("release", k)).Boundaries[0]
	models.Name, models.ArtifactTypes = "models", []string{modelType}
	return verify.Policy{Boundaries: []verify.Boundary{models, policy(1, keyAuthority("release", k)).Boundaries[0]}}
}
