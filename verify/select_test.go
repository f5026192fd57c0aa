package verify_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const evilBuilder = "https://evil.example/builder"

// TestAttestationSelect attaches several attestations of one predicate,
// each really signed, whose times come from the statement
// (runDetails.metadata.finishedOn) for key signatures and from the signed
// timestamp for keyless ones. The rule's condition passes only for
// testBuilder, so a "failing" attestation is a valid one whose content the
// policy rejects.
func TestAttestationSelect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Now()
	other, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	type att struct {
		builder  string
		finished time.Time // zero: the statement claims no time
		keyless  bool      // signed by the CI identity, with a signed time
		legacy   bool      // a cosign .att layer instead of a bundle
		unknown  bool      // signed by a key no authority holds
	}
	pass := func(ago time.Duration) att { return att{builder: testBuilder, finished: now.Add(-ago)} }
	fail := func(ago time.Duration) att { return att{builder: evilBuilder, finished: now.Add(-ago)} }

	tests := []struct {
		name   string
		atts   []att
		sel    verify.Select
		maxAge time.Duration
		// want is "" for an allow, else reasons the denial must give.
		want []string
		// wantTime is the statement time of the attestation that must be
		// reported as satisfying the rule.
		wantTime time.Time
	}{
		{name: "a newer failing attestation is not hidden by an older passing one",
			atts: []att{pass(48 * time.Hour), fail(time.Hour)},
			want: []string{"condition false", `attestation rule "provenance": the newest valid attestation https://slsa.dev/provenance/v1 (` +
				now.Add(-time.Hour).UTC().Format(time.RFC3339) + ") fails; 1 older valid attestation is not considered (select newest)"}},
		{name: "order of discovery does not matter",
			atts: []att{fail(time.Hour), pass(48 * time.Hour)}, sel: verify.SelectNewest,
			want: []string{"condition false", "the newest valid attestation", "fails; 1 older valid attestation is not considered"}},
		{name: "every older one is counted, whenever it is read",
			atts: []att{pass(48 * time.Hour), fail(time.Hour), pass(72 * time.Hour)},
			want: []string{"fails; 2 older valid attestations are not considered"}},
		{name: "a newer failing legacy attestation is not hidden by a passing bundle",
			atts: []att{pass(48 * time.Hour), {builder: evilBuilder, finished: now.Add(-time.Hour), legacy: true}},
			want: []string{"cosign-legacy-attestation", "condition false"}},
		{name: "select any is satisfied by the older passing one",
			atts: []att{pass(48 * time.Hour), fail(time.Hour)}, sel: verify.SelectAny, wantTime: now.Add(-48 * time.Hour)},
		{name: "only an older passing attestation",
			atts: []att{pass(48 * time.Hour)}, wantTime: now.Add(-48 * time.Hour)},
		{name: "a newer passing attestation decides over an older failing one",
			atts: []att{fail(48 * time.Hour), pass(time.Hour)}, wantTime: now.Add(-time.Hour)},
		{name: "max_age: a stale newest fails",
			atts: []att{pass(72 * time.Hour)}, maxAge: 24 * time.Hour,
			want: []string{"stale: built", "the newest valid attestation"}},
		{name: "max_age: an older stale failing one is not considered",
			atts: []att{fail(72 * time.Hour), pass(time.Hour)}, maxAge: 24 * time.Hour, wantTime: now.Add(-time.Hour)},
		// Bundles are examined before legacy .att layers, so these two
		// cases put the failing one first and last.
		{name: "equal times: any failing one fails (failing first)",
			atts: []att{fail(time.Hour), {builder: testBuilder, finished: now.Add(-time.Hour), legacy: true}},
			want: []string{"condition false", "0 older valid attestations are not considered"}},
		{name: "equal times: any failing one fails (failing last)",
			atts: []att{pass(time.Hour), {builder: evilBuilder, finished: now.Add(-time.Hour), legacy: true}},
			want: []string{"condition false", "0 older valid attestations are not considered"}},
		{name: "equal times that all pass",
			atts: []att{pass(time.Hour), {builder: testBuilder, finished: now.Add(-time.Hour), legacy: true}}, wantTime: now.Add(-time.Hour)},
		{name: "no time counts as oldest",
			atts: []att{{builder: evilBuilder}, pass(time.Hour)}, wantTime: now.Add(-time.Hour)},
		{name: "without times every attestation must pass",
			atts: []att{{builder: testBuilder}, {builder: evilBuilder}},
			want: []string{"condition false", "the newest valid attestation https://slsa.dev/provenance/v1 (no time) fails"}},
		{name: "without times, select any",
			atts: []att{{builder: testBuilder}, {builder: evilBuilder}}, sel: verify.SelectAny},
		{name: "an attestation that does not verify is not a candidate",
			atts: []att{pass(48 * time.Hour), {builder: evilBuilder, finished: now.Add(-time.Hour), unknown: true}}, wantTime: now.Add(-48 * time.Hour)},
		{name: "an attestation that does not verify cannot satisfy the rule",
			atts: []att{{builder: testBuilder, finished: now.Add(-time.Hour), unknown: true}},
			want: []string{"does not verify with any key", `attestation rule "provenance": no valid attestation`}},
		{name: "a future time cannot pin the decision",
			atts: []att{pass(-48 * time.Hour), fail(time.Hour)},
			want: []string{"is in the future", "condition false", "the newest valid attestation"}},
		{name: "a future time is not valid on its own",
			atts: []att{pass(-48 * time.Hour)},
			want: []string{"is in the future", "no valid attestation"}},
		{name: "signed time orders before statement time",
			// The keyless attestation claims an old build but was signed
			// now; it is the newest and it fails.
			atts: []att{pass(time.Hour), {builder: evilBuilder, finished: now.Add(-48 * time.Hour), keyless: true}},
			want: []string{"sigstore-bundle", "condition false", "the newest valid attestation"}},
		{name: "signed time, passing",
			atts: []att{fail(time.Hour), {builder: testBuilder, finished: now.Add(-48 * time.Hour), keyless: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			// A plain signature, so the signature threshold never decides.
			if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
				t.Fatal(err)
			}
			for _, a := range tc.atts {
				var finished, started time.Time
				if !a.finished.IsZero() {
					finished, started = a.finished, a.finished.Add(-time.Minute)
				}
				spec := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1,
					Predicate: fixtures.SLSAProvenanceV1(a.builder, nil, started, finished)}
				var s fixtures.Signer = e.key
				switch {
				case a.keyless:
					s = e.ss.Signer(testIssuer, testSubject)
				case a.unknown:
					s = other
				}
				var err error
				if a.legacy {
					err = fixtures.AttachLegacyAttestation(ctx, e.subject, s, spec)
				} else {
					_, err = fixtures.AttachBundle(ctx, e.subject, s, spec)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			rules := provRule(func(r *verify.AttestationRule) {
				r.Authorities = []string{"release", "ci"}
				r.Condition = `predicate.runDetails.builder.id == "` + testBuilder + `"`
				r.Select = tc.sel
				r.MaxAge = tc.maxAge
			})
			eng := engine(t, attPolicy(rules, keyAuthority("release", e.key), keylessAuthority("ci", e.ss, testIssuer, testSubject)))
			v := mustVerify(t, eng, e.subj(t), e.reg.Fetcher())
			t.Logf("reasons: %q", v.Reasons)
			if tc.want != nil {
				for _, w := range tc.want {
					wantDenied(t, v, w)
				}
				if len(v.Attestations) != 0 {
					t.Errorf("denied verdict lists the rule as satisfied: %+v", v.Attestations)
				}
				return
			}
			if !v.Allowed {
				t.Fatalf("denied, want allowed: %q", v.Reasons)
			}
			if len(v.Attestations) != 1 {
				t.Fatalf("attestations = %+v, want one", v.Attestations)
			}
			if !tc.wantTime.IsZero() && !v.Attestations[0].Time.Equal(tc.wantTime.Truncate(time.Second)) {
				t.Errorf("rule satisfied by the attestation of %s, want %s", v.Attestations[0].Time, tc.wantTime.Truncate(time.Second))
			}
		})
	}
}

// TestLineageFollowsTheNewestProvenance: without a provenance rule, the
// lineage rule reads the newest provenance the boundary's authorities
// signed, so an older statement cannot stand in for the current inputs.
func TestLineageFollowsTheNewestProvenance(t *testing.T) {
	t.Parallel()
	l := newLineageEnv(t)
	signed := l.push("datasets/corpus", true)
	l.signData(signed, dataSubject)
	unsigned := l.push("datasets/scraped", true)
	app := l.push("ml/app", false)
	spec := func(finished time.Time, deps ...fixtures.ResourceDescriptor) fixtures.BundleSpec {
		return fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1,
			Predicate: fixtures.SLSAProvenanceV1(testBuilder, deps, finished.Add(-time.Minute), finished)}
	}
	// The older one is a bundle, examined before the newer .att layer.
	if _, err := fixtures.AttachBundle(context.Background(), app, l.key, spec(time.Now().Add(-48*time.Hour), fixtures.OCIDependency("corpus", signed))); err != nil {
		t.Fatal(err)
	}
	if err := fixtures.AttachLegacyAttestation(context.Background(), app, l.key, spec(time.Now().Add(-time.Hour), fixtures.OCIDependency("corpus", unsigned))); err != nil {
		t.Fatal(err)
	}
	v, _ := l.verify(&verify.LineageRule{Depth: 1, Require: []string{"corpus"}}, app)
	wantDenied(t, v, label(app)+" ← "+label(unsigned)+": threshold 1 not met")
	if strings.Contains(strings.Join(v.Reasons, "\n"), label(signed)) {
		t.Errorf("the older provenance was followed: %q", v.Reasons)
	}
}

func TestAttestationSelectRefusesUnknown(t *testing.T) {
	t.Parallel()
	key, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	for sel, ok := range map[verify.Select]bool{"": true, verify.SelectNewest: true, verify.SelectAny: true, "oldest": false, "Newest": false} {
		_, err := verify.New(attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = sel }), keyAuthority("release", key)))
		if (err == nil) != ok {
			t.Errorf("select %q: New error = %v", sel, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), `select "`+string(sel)+`"`)) {
			t.Errorf("select %q: error %v does not name it", sel, err)
		}
	}
}

// The verdict cache is keyed by the policy fingerprint, so a verdict made
// under select any or with an input ignored is never reused under a
// policy without them.
func TestFingerprintCoversSelectAndIgnore(t *testing.T) {
	t.Parallel()
	key, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	fp := func(sel verify.Select, ignore ...string) string {
		p := attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = sel }), keyAuthority("release", key))
		p.Boundaries[0].Lineage = &verify.LineageRule{Depth: 1, Ignore: ignore}
		return engine(t, p).Fingerprint()
	}
	base := fp(verify.SelectNewest)
	if fp(verify.SelectAny) == base {
		t.Error("select any kept the fingerprint")
	}
	if fp(verify.SelectNewest, "tokenizer") == base {
		t.Error("lineage ignore kept the fingerprint")
	}
}
