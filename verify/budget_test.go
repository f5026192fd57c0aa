package verify_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// memSubject is a subject whose evidence a MemoryFetcher serves.
func memSubject(t testing.TB) verify.Subject {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return verify.Subject{Upstream: "hub", Repository: "acme/app", Reference: "v1",
		Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(b[:])}}
}

func newKey(t testing.TB) *fixtures.KeySigner {
	t.Helper()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signedBundle is a DSSE bundle by k over statement.
func signedBundle(t testing.TB, k *fixtures.KeySigner, statement []byte) []byte {
	t.Helper()
	b, err := fixtures.SignedBundle(k, statement)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// addSignature lists a valid cosign-style DSSE signature by k.
func addSignature(t testing.TB, f *fixtures.MemoryFetcher, s verify.Subject, k *fixtures.KeySigner, predicateType string, predicate any) v1.Hash {
	t.Helper()
	st, err := fixtures.Statement("", "acme/app", s.Digest, predicateType, predicate)
	if err != nil {
		t.Fatal(err)
	}
	return f.AddBundle(s.Digest, signedBundle(t, k, st), predicateType)
}

func addBomb(t testing.TB, f *fixtures.MemoryFetcher, s verify.Subject, n, size int) []v1.Hash {
	t.Helper()
	hs, err := fixtures.EvidenceBomb(f, s.Digest, n, size)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

func wantLimit(t *testing.T, v verify.Verdict, limit string) {
	t.Helper()
	if v.Limit != limit {
		t.Errorf("Limit = %q, want %q (reasons %q)", v.Limit, limit, v.Reasons)
	}
}

// 64 bundles of 1 MiB that parse but are not validly signed cost one
// budget of reads, not 64 MiB, and deny with a verdict naming the limit.
func TestEvidenceBudgetDeniesBomb(t *testing.T) {
	t.Parallel()
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	bombs := addBomb(t, f, s, 64, 1<<20)
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", newKey(t)))), s, f)
	wantDenied(t, v, "evidence budget exceeded: read ")
	wantDenied(t, v, "limit 16 MiB")
	wantDenied(t, v, "threshold 1 not met")
	wantLimit(t, v, verify.LimitEvidenceBytes)
	if got := f.Served(); got > verify.DefaultEvidenceBytes {
		t.Errorf("fetcher served %d bytes, budget %d", got, verify.DefaultEvidenceBytes)
	}
	read := 0
	for _, h := range bombs {
		read += f.BlobReads(h)
	}
	if read > 16 {
		t.Errorf("%d bombs read, want the budget's worth (about 16)", read)
	}
	// A bomb the budget cannot pay for is not asked for at all.
	if n := f.Refused(); n != 0 {
		t.Errorf("%d reads refused by the fetcher", n)
	}
	t.Logf("reasons[last 2]: %q", v.Reasons[len(v.Reasons)-2:])
}

// The budget is shared by everything one verification reads, and a
// smaller one stops it sooner.
func TestEvidenceBudgetConfigured(t *testing.T) {
	t.Parallel()
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	addBomb(t, f, s, 8, 256<<10)
	limits := verify.DefaultEvidenceLimits()
	limits.TotalBytes, limits.AttestationBytes = 1<<20, 512<<10
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", newKey(t))), verify.WithEvidenceLimits(limits)), s, f)
	wantDenied(t, v, "evidence budget exceeded")
	wantDenied(t, v, "limit 1 MiB")
	wantLimit(t, v, verify.LimitEvidenceBytes)
	if got := f.Served(); got > limits.TotalBytes {
		t.Errorf("fetcher served %d bytes, budget %d", got, limits.TotalBytes)
	}
}

// A signature that verifies ends the reading when nothing else needs
// evidence: the bombs listed after it are never fetched.
func TestValidSignatureFirstStopsReading(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
	bombs := addBomb(t, f, s, 63, 256<<10)
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", k))), s, f)
	if !v.Allowed || v.Limit != "" {
		t.Fatalf("verdict %+v, want allowed without a limit", v)
	}
	for _, h := range bombs {
		if n := f.BlobReads(h); n != 0 {
			t.Fatalf("bomb %s read %d times", h, n)
		}
	}
	if got := f.Served(); got > 64<<10 {
		t.Errorf("fetcher served %d bytes for one signature", got)
	}
}

// Attestation rules keep reading only while they can still change: a
// select-any rule is settled by the first passing attestation, while a
// select-newest rule needs every attestation, so a budget spent before
// the end leaves it undecided and denies.
func TestAttestationRulesAndTheBudget(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	for _, tc := range []struct {
		sel     verify.Select
		allowed bool
	}{{verify.SelectAny, true}, {verify.SelectNewest, false}} {
		t.Run(string(tc.sel), func(t *testing.T) {
			t.Parallel()
			s := memSubject(t)
			f := fixtures.NewMemoryFetcher()
			addSignature(t, f, s, k, verify.PredicateSLSAProvenanceV1, provenance(time.Now()))
			bombs := addBomb(t, f, s, 40, 512<<10)
			v := mustVerify(t, engine(t, attPolicy(provRule(func(r *verify.AttestationRule) { r.Select = tc.sel }), keyAuthority("release", k))), s, f)
			if v.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v: %q", v.Allowed, tc.allowed, v.Reasons)
			}
			read := 0
			for _, h := range bombs {
				read += f.BlobReads(h)
			}
			if tc.allowed {
				if read != 0 || v.Limit != "" {
					t.Errorf("%d bombs read, limit %q; want none", read, v.Limit)
				}
				return
			}
			wantDenied(t, v, `attestation rule "provenance" not decided: not all evidence was read`)
			wantDenied(t, v, "evidence budget exceeded")
			wantLimit(t, v, verify.LimitEvidenceBytes)
			if len(v.Signers) != 1 {
				t.Errorf("signers = %+v, want the one signature", v.Signers)
			}
		})
	}
}

// Lineage without a provenance rule follows the newest provenance, which
// evidence left unread could hide: it is not decided.
func TestLineageAndTheBudget(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	s := memSubject(t)
	s.Lineage.Dependencies = errVerifier{}
	f := fixtures.NewMemoryFetcher()
	addSignature(t, f, s, k, verify.PredicateSLSAProvenanceV1, provenance(time.Now()))
	addBomb(t, f, s, 40, 512<<10)
	p := policy(1, keyAuthority("release", k))
	p.Boundaries[0].Lineage = &verify.LineageRule{Depth: 1}
	v := mustVerify(t, engine(t, p), s, f)
	wantDenied(t, v, "lineage not decided: not all evidence was read")
	wantLimit(t, v, verify.LimitEvidenceBytes)
}

// A descriptor declaring more than its item limit is rejected without
// being fetched. That is rejected evidence, not a spent budget: a valid
// signature next to it still allows, and without one the denial is the
// threshold's.
func TestEvidenceItemLimits(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	simpleSigning := types.MediaType(fixtures.MediaTypeSimpleSigning)
	tests := []struct {
		name   string
		add    func(f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash
		reason string
	}{
		{
			name: "bundle over the attestation limit",
			add: func(f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
				f.AddReferrer(s.Digest, fixtures.MediaTypeBundleV03, []byte("{}"), verify.DefaultAttestationBytes+1,
					map[string]string{"dev.sigstore.bundle.content": "dsse-envelope"})
				return v1.Hash{Algorithm: "sha256", Hex: sha256Hex([]byte("{}"))}
			},
			reason: fmt.Sprintf("bundle of %d bytes exceeds the limit of %d bytes", verify.DefaultAttestationBytes+1, verify.DefaultAttestationBytes),
		},
		{
			name: "message-signature bundle over the signature limit",
			add: func(f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
				blob := []byte(`{"message":1}`)
				f.AddReferrer(s.Digest, fixtures.MediaTypeBundleV03, blob, verify.DefaultSignatureBytes+1,
					map[string]string{"dev.sigstore.bundle.content": "message-signature"})
				return v1.Hash{Algorithm: "sha256", Hex: sha256Hex(blob)}
			},
			reason: fmt.Sprintf("message-signature bundle of %d bytes exceeds the limit of %d bytes", verify.DefaultSignatureBytes+1, verify.DefaultSignatureBytes),
		},
		{
			name: "simplesigning layer over the signature limit",
			add: func(f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
				payload := fixtures.SimpleSigningPayload("registry.example/acme/app", s.Digest)
				h := f.AddBlob(payload)
				f.AddManifest("sha256-"+s.Digest.Hex+".sig", legacyManifest(t, v1.Descriptor{
					MediaType: simpleSigning, Digest: h, Size: verify.DefaultSignatureBytes + 1,
					Annotations: map[string]string{"dev.cosignproject.cosign/signature": "c2ln"},
				}))
				return h
			},
			reason: fmt.Sprintf("signature layer of %d bytes exceeds the limit of %d bytes", verify.DefaultSignatureBytes+1, verify.DefaultSignatureBytes),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := memSubject(t)
			f := fixtures.NewMemoryFetcher()
			h := tc.add(f, s)
			eng := engine(t, policy(1, keyAuthority("release", k)))
			v := mustVerify(t, eng, s, f)
			wantDenied(t, v, tc.reason)
			wantDenied(t, v, "threshold 1 not met")
			wantLimit(t, v, "")
			if n := f.BlobReads(h); n != 0 {
				t.Errorf("oversized blob read %d times", n)
			}

			addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
			v = mustVerify(t, eng, s, f)
			if !v.Allowed {
				t.Errorf("denied next to a valid signature: %q", v.Reasons)
			}
		})
	}
}

// Manifests read by tag have no declared size: they are charged once
// read, and one that overdraws the budget stops the reading there.
func TestBudgetChargesManifests(t *testing.T) {
	t.Parallel()
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	var layers []v1.Descriptor
	for i := range 64 {
		payload := fixtures.SimpleSigningPayload(fmt.Sprintf("registry.example/acme/app-%d", i), s.Digest)
		layers = append(layers, v1.Descriptor{MediaType: types.MediaType(fixtures.MediaTypeSimpleSigning), Digest: f.AddBlob(payload), Size: int64(len(payload)),
			Annotations: map[string]string{"dev.cosignproject.cosign/signature": "c2ln"}})
	}
	sig := legacyManifest(t, layers...)
	f.AddManifest("sha256-"+s.Digest.Hex+".sig", sig)
	limits := verify.EvidenceLimits{TotalBytes: int64(len(sig)) - 1, SignatureBytes: 1 << 10, AttestationBytes: 1 << 10, PredicateDepth: 8}
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", newKey(t))), verify.WithEvidenceLimits(limits)), s, f)
	wantDenied(t, v, "evidence budget exceeded")
	wantLimit(t, v, verify.LimitEvidenceBytes)
	for _, l := range layers {
		if n := f.BlobReads(l.Digest); n != 0 {
			t.Fatalf("layer %s read after the budget was spent", l.Digest)
		}
	}
}

// Manifests read by tag are held to the manifest limit too: an oversized
// fallback index or .sig manifest is rejected evidence, its entries never
// opened.
func TestTagManifestLimit(t *testing.T) {
	t.Parallel()
	limits := verify.EvidenceLimits{TotalBytes: 1 << 20, SignatureBytes: 1 << 10, AttestationBytes: 1 << 10, PredicateDepth: 8}
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	var layers []v1.Descriptor
	var index v1.IndexManifest
	index.SchemaVersion, index.MediaType = 2, types.OCIImageIndex
	for i := range 16 {
		payload := fixtures.SimpleSigningPayload(fmt.Sprintf("registry.example/acme/app-%d", i), s.Digest)
		h := f.AddBlob(payload)
		layers = append(layers, v1.Descriptor{MediaType: types.MediaType(fixtures.MediaTypeSimpleSigning), Digest: h, Size: int64(len(payload)),
			Annotations: map[string]string{"dev.cosignproject.cosign/signature": "c2ln"}})
		index.Manifests = append(index.Manifests, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: 100})
	}
	sig := legacyManifest(t, layers...)
	f.AddManifest("sha256-"+s.Digest.Hex+".sig", sig)
	idx, err := json.Marshal(index)
	if err != nil {
		t.Fatal(err)
	}
	f.AddManifest("sha256-"+s.Digest.Hex, idx)
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", newKey(t))), verify.WithEvidenceLimits(limits)), s, f)
	wantDenied(t, v, fmt.Sprintf("malformed fallback index: %d bytes exceed the limit of 1024 bytes", len(idx)))
	wantDenied(t, v, fmt.Sprintf("malformed signature manifest: %d bytes exceed the limit of 1024 bytes", len(sig)))
	wantLimit(t, v, "")
	for _, l := range layers {
		if n := f.Reads(l.Digest.String()); n != 0 {
			t.Fatalf("%s read from an oversized manifest", l.Digest)
		}
	}
}

// A referrer manifest declared over the manifest limit is not fetched;
// one that turns out larger than it said is rejected.
func TestReferrerManifestLimit(t *testing.T) {
	t.Parallel()
	limits := verify.EvidenceLimits{TotalBytes: 1 << 20, SignatureBytes: 16 << 10, AttestationBytes: 64 << 10, PredicateDepth: 8}
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	raw := []byte(`{"schemaVersion":2,"layers":[]}` + strings.Repeat(" ", 100<<10))
	h := f.AddManifest("", raw)
	f.List(v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: limits.AttestationBytes + 1})
	eng := engine(t, policy(1, keyAuthority("release", newKey(t))), verify.WithEvidenceLimits(limits))
	v := mustVerify(t, eng, s, f)
	wantDenied(t, v, fmt.Sprintf("referrer manifest of %d bytes exceeds the limit of %d bytes", limits.AttestationBytes+1, limits.AttestationBytes))
	if n := f.Reads(h.String()); n != 0 {
		t.Errorf("oversized manifest read %d times", n)
	}

	f = fixtures.NewMemoryFetcher()
	f.AddManifest("", raw)
	f.List(v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: 100})
	v = mustVerify(t, eng, s, f)
	wantDenied(t, v, fmt.Sprintf("referrer manifest of %d bytes exceeds the limit of %d bytes", len(raw), limits.AttestationBytes))
	wantLimit(t, v, "")
}

// The optional part of a simplesigning payload is never read, but it
// must still be what cosign writes: an object, or null.
func TestSimpleSigningOptional(t *testing.T) {
	t.Parallel()
	const head = `{"critical":{"identity":{"docker-reference":"r.example/a"},"image":{"docker-manifest-digest":"sha256:` +
		"0000000000000000000000000000000000000000000000000000000000000000" + `"},"type":"cosign container image signature"}`
	for tail, ok := range map[string]bool{
		`}`: true, `,"optional":null}`: true, `,"optional":{"a":[{},{}]}}`: true,
		`,"optional":5}`: false, `,"optional":"x"}`: false, `,"optional":[{}]}`: false,
	} {
		if _, _, err := verify.ParseSimpleSigning([]byte(head + tail)); (err == nil) != ok {
			t.Errorf("optional %s: err = %v, want ok %v", tail, err, ok)
		}
	}
}

// A message-signature bundle is held to the signature limit even when its
// referrer labels it otherwise.
func TestMessageSignatureBundleLimit(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	s := memSubject(t)
	s.Digest = v1.Hash{Algorithm: "sha256", Hex: sha256Hex(manifest)}
	b, err := fixtures.SignedMessageBundle(k, manifest)
	if err != nil {
		t.Fatal(err)
	}
	label := map[string]string{"dev.sigstore.bundle.content": "dsse-envelope"}
	eng := engine(t, policy(1, keyAuthority("release", k)))

	f := fixtures.NewMemoryFetcher()
	f.AddReferrer(s.Digest, fixtures.MediaTypeBundleV03, b, int64(len(b)), label)
	if v := mustVerify(t, eng, s, f); !v.Allowed {
		t.Fatalf("message signature denied: %q", v.Reasons)
	}
	// JSON whitespace keeps the bundle valid and makes it large. The
	// limit is inclusive: exactly the limit is read, one byte more is not.
	pad := func(size int) []byte { return append([]byte(strings.Repeat(" ", size-len(b))), b...) }
	f = fixtures.NewMemoryFetcher()
	f.AddReferrer(s.Digest, fixtures.MediaTypeBundleV03, pad(verify.DefaultSignatureBytes), int64(verify.DefaultSignatureBytes), label)
	if v := mustVerify(t, eng, s, f); !v.Allowed {
		t.Fatalf("message signature of exactly the limit denied: %q", v.Reasons)
	}
	for _, size := range []int{verify.DefaultSignatureBytes + 1, verify.DefaultSignatureBytes + len(b)} {
		padded := pad(size)
		f = fixtures.NewMemoryFetcher()
		f.AddReferrer(s.Digest, fixtures.MediaTypeBundleV03, padded, int64(len(padded)), label)
		v := mustVerify(t, eng, s, f)
		wantDenied(t, v, fmt.Sprintf("message-signature bundle of %d bytes exceeds the limit of %d bytes", len(padded), verify.DefaultSignatureBytes))
		wantLimit(t, v, "")
	}
}

// A descriptor may understate its blob: reading stops at the item limit
// and the evidence is rejected, rather than the verification failing.
func TestUnderstatedBlobIsCutAtItsLimit(t *testing.T) {
	t.Parallel()
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	blob := []byte(strings.Repeat(" ", verify.DefaultSignatureBytes+1) + "{}")
	f.AddReferrer(s.Digest, fixtures.MediaTypeBundleV03, blob, 2, map[string]string{"dev.sigstore.bundle.content": "message-signature"})
	v := mustVerify(t, engine(t, policy(1, keyAuthority("release", newKey(t)))), s, f)
	wantDenied(t, v, fmt.Sprintf("exceeds the limit of %d bytes", verify.DefaultSignatureBytes))
	wantLimit(t, v, "")
	if got := f.Served(); got > 4<<10 {
		t.Errorf("fetcher served %d bytes", got)
	}
}

func legacyManifest(t testing.TB, layers ...v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.Manifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: fixtures.MediaTypeEmpty, Digest: v1.Hash{Algorithm: "sha256", Hex: sha256Hex([]byte("{}"))}, Size: 2},
		Layers: layers,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nestedStatement is a statement about s whose predicate nests depth
// objects. It is written by hand: encoding/json refuses to write values
// nested more than 10 000 deep.
func nestedStatement(s verify.Subject, depth int) []byte {
	pred := strings.Repeat(`{"a":`, depth-1) + `{}` + strings.Repeat(`}`, depth-1)
	return fmt.Appendf(nil, `{"_type":%q,"subject":[{"name":"x","digest":{"sha256":%q}}],"predicateType":%q,"predicate":%s}`,
		verify.StatementV1, s.Digest.Hex, fixtures.PredicateCosignSign, pred)
}

// A predicate nesting deeper than the limit is rejected evidence with a
// reason naming the limit, however deep it goes; up to the limit it is
// accepted.
func TestPredicateDepth(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	small := verify.DefaultEvidenceLimits()
	small.PredicateDepth = 8
	tiny := verify.DefaultEvidenceLimits()
	tiny.PredicateDepth = 1
	for _, tc := range []struct {
		depth  int
		limits verify.EvidenceLimits
		ok     bool
	}{
		{depth: 64, limits: verify.DefaultEvidenceLimits(), ok: true},
		{depth: 65, limits: verify.DefaultEvidenceLimits()},
		{depth: 10_000, limits: verify.DefaultEvidenceLimits()},
		{depth: 8, limits: small, ok: true},
		{depth: 9, limits: small},
		// Below the statement's own nesting (subject → digest), only the
		// predicate counts.
		{depth: 1, limits: tiny, ok: true},
		{depth: 2, limits: tiny},
	} {
		t.Run(fmt.Sprintf("%d of %d", tc.depth, tc.limits.PredicateDepth), func(t *testing.T) {
			t.Parallel()
			s := memSubject(t)
			f := fixtures.NewMemoryFetcher()
			f.AddBundle(s.Digest, signedBundle(t, k, nestedStatement(s, tc.depth)), fixtures.PredicateCosignSign)
			v := mustVerify(t, engine(t, policy(1, keyAuthority("release", k)), verify.WithEvidenceLimits(tc.limits)), s, f)
			if tc.ok {
				if !v.Allowed {
					t.Fatalf("denied: %q", v.Reasons)
				}
				return
			}
			wantDenied(t, v, fmt.Sprintf("bundle statement cannot name the subject: in-toto predicate nests deeper than the limit of %d levels", tc.limits.PredicateDepth))
			wantLimit(t, v, "")
		})
	}
}

// A statement is parsed only once its envelope signature verified: one
// that would not parse, signed by no authority, is refused for its
// signature. The same statement signed by an authority is refused for
// what it says.
func TestStatementParsedOnlyAfterSignature(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const unknownType = "https://in-toto.io/Statement/v9"
	stranger := newKey(t)
	t.Run("bundle", func(t *testing.T) {
		t.Parallel()
		k := newKey(t)
		for _, tc := range []struct {
			signer      *fixtures.KeySigner
			want, never string
		}{
			{stranger, `does not verify with any key of authority "release"`, "cannot name the subject"},
			{k, "bundle statement cannot name the subject: unsupported in-toto statement type", "does not verify"},
		} {
			s := memSubject(t)
			f := fixtures.NewMemoryFetcher()
			st, err := fixtures.Statement(unknownType, "acme/app", s.Digest, fixtures.PredicateCosignSign, nil)
			if err != nil {
				t.Fatal(err)
			}
			f.AddBundle(s.Digest, signedBundle(t, tc.signer, st), fixtures.PredicateCosignSign)
			v := mustVerify(t, engine(t, policy(1, keyAuthority("release", k))), s, f)
			wantDenied(t, v, tc.want)
			if r := strings.Join(v.Reasons, "\n"); strings.Contains(r, tc.never) {
				t.Errorf("reasons mention %q: %q", tc.never, v.Reasons)
			}
		}
	})
	t.Run("legacy attestation", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
			t.Fatal(err)
		}
		spec := fixtures.BundleSpec{PredicateType: verify.PredicateSLSAProvenanceV1, Predicate: provenance(time.Now()), StatementType: unknownType}
		if err := fixtures.AttachLegacyAttestation(ctx, e.subject, stranger, spec); err != nil {
			t.Fatal(err)
		}
		v := mustVerify(t, engine(t, attPolicy(provRule(nil), keyAuthority("release", e.key))), e.subj(t), e.reg.Fetcher())
		wantDenied(t, v, `envelope does not verify with any key of authority "release"`)
		if r := strings.Join(v.Reasons, "\n"); strings.Contains(r, "unsupported in-toto statement type") {
			t.Errorf("statement of an unsigned envelope parsed: %q", v.Reasons)
		}
	})
}

// wideStatement is a statement about s whose predicate holds an array of
// n empty objects: about 3n bytes that parse into n maps.
func wideStatement(t testing.TB, s verify.Subject, n int) []byte {
	t.Helper()
	st, err := fixtures.Statement("", "acme/app", s.Digest, fixtures.PredicateCosignSign,
		map[string]json.RawMessage{"w": json.RawMessage("[" + strings.TrimSuffix(strings.Repeat("{},", n), ",") + "]")})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// allocated is the heap allocated by one Verify. Tests using it are not
// parallel, so little else allocates meanwhile.
func allocated(t *testing.T, eng *verify.Engine, s verify.Subject, f verify.Fetcher) (uint64, verify.Verdict) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	v := mustVerify(t, eng, s, f)
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, v
}

// A predicate no rule reads is never parsed: a 2 MiB predicate of empty
// objects, which inflates many times when parsed, costs a verification
// about its size when only the signature counts, and is parsed only by a
// condition that reads it.
func TestWidePredicateParsedOnlyWhenRead(t *testing.T) {
	k := newKey(t)
	s := memSubject(t)
	f := fixtures.NewMemoryFetcher()
	const n = 700_000 // 2 MiB
	f.AddBundle(s.Digest, signedBundle(t, k, wideStatement(t, s, n)), fixtures.PredicateCosignSign)

	unread, v := allocated(t, engine(t, policy(1, keyAuthority("release", k))), s, f)
	if !v.Allowed {
		t.Fatalf("denied: %q", v.Reasons)
	}
	rule := []verify.AttestationRule{{Name: "wide", PredicateType: fixtures.PredicateCosignSign, Select: verify.SelectAny,
		Condition: "size(predicate.w) == " + fmt.Sprint(n)}}
	read, v := allocated(t, engine(t, attPolicy(rule, keyAuthority("release", k))), s, f)
	if !v.Allowed {
		t.Fatalf("denied with the condition: %q", v.Reasons)
	}
	t.Logf("allocated: %d MiB unread, %d MiB read by a condition", unread>>20, read>>20)
	if unread*2 > read {
		t.Errorf("a predicate no rule reads cost %d bytes, one a condition parses %d: it was parsed anyway", unread, read)
	}
}

func TestEvidenceLimitsValidated(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	d := verify.DefaultEvidenceLimits()
	if d.TotalBytes != 16<<20 || d.SignatureBytes != 1<<20 || d.AttestationBytes != 4<<20 || d.PredicateDepth != 64 {
		t.Errorf("defaults = %+v", d)
	}
	with := func(mut func(*verify.EvidenceLimits)) verify.EvidenceLimits {
		l := verify.DefaultEvidenceLimits()
		mut(&l)
		return l
	}
	for name, l := range map[string]verify.EvidenceLimits{
		"zero total":               with(func(l *verify.EvidenceLimits) { l.TotalBytes = 0 }),
		"negative total":           with(func(l *verify.EvidenceLimits) { l.TotalBytes = -1 }),
		"zero signature":           with(func(l *verify.EvidenceLimits) { l.SignatureBytes = 0 }),
		"signature over total":     with(func(l *verify.EvidenceLimits) { l.SignatureBytes = l.TotalBytes + 1 }),
		"zero attestation":         with(func(l *verify.EvidenceLimits) { l.AttestationBytes = 0 }),
		"attestation over total":   with(func(l *verify.EvidenceLimits) { l.AttestationBytes = l.TotalBytes + 1 }),
		"zero predicate depth":     with(func(l *verify.EvidenceLimits) { l.PredicateDepth = 0 }),
		"negative predicate depth": with(func(l *verify.EvidenceLimits) { l.PredicateDepth = -1 }),
		"zero value":               {},
	} {
		if _, err := verify.New(policy(1, keyAuthority("release", k)), verify.WithEvidenceLimits(l)); err == nil {
			t.Errorf("%s: accepted %+v", name, l)
		}
	}
	for name, l := range map[string]verify.EvidenceLimits{
		"defaults":           d,
		"items equal total":  {TotalBytes: 1 << 20, SignatureBytes: 1 << 20, AttestationBytes: 1 << 20, PredicateDepth: 1},
		"attestation larger": with(func(l *verify.EvidenceLimits) { l.AttestationBytes = l.TotalBytes }),
	} {
		if _, err := verify.New(policy(1, keyAuthority("release", k)), verify.WithEvidenceLimits(l)); err != nil {
			t.Errorf("%s: refused %+v: %v", name, l, err)
		}
	}
}

// Limits decide verdicts, so an engine computing its own fingerprint
// includes them; a fingerprint the caller set is the caller's.
func TestFingerprintCoversEvidenceLimits(t *testing.T) {
	t.Parallel()
	p := policy(1, keyAuthority("release", newKey(t)))
	l := verify.DefaultEvidenceLimits()
	l.TotalBytes *= 2
	if engine(t, p).Fingerprint() == engine(t, p, verify.WithEvidenceLimits(l)).Fingerprint() {
		t.Error("fingerprint ignores the evidence limits")
	}
	if engine(t, p).Fingerprint() == engine(t, p, verify.WithMaxEvidence(3)).Fingerprint() {
		t.Error("fingerprint ignores the evidence count limit")
	}
	p.Fingerprint = "sha256:configured"
	if got := engine(t, p, verify.WithEvidenceLimits(l)).Fingerprint(); got != "sha256:configured" {
		t.Errorf("Fingerprint() = %q, want the policy's", got)
	}
}

// The manifest limit is inclusive: a signature manifest of exactly the
// limit is read and verified, one byte over it is refused unread.
func TestSignatureManifestAtTheLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if err := fixtures.AttachLegacySignature(ctx, e.subject, e.key, fixtures.Tamper{}); err != nil {
		t.Fatal(err)
	}
	f := e.reg.Fetcher()
	size := tagSize(t, f, e, ".sig")
	for _, tc := range []struct {
		limit int64
		allow bool
	}{{size, true}, {size - 1, false}} {
		v := verifyUnderManifestLimit(t, e, f, tc.limit)
		if tc.allow {
			wantAllowed(t, v, "key", verify.FormatCosignLegacy)
			continue
		}
		wantDenied(t, v, fmt.Sprintf("malformed signature manifest: %d bytes exceed the limit of %d bytes", size, tc.limit))
	}
}

// The same inclusive limit holds for the fallback index read by tag.
func TestFallbackIndexAtTheLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if _, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{Placement: fixtures.PlaceFallback}); err != nil {
		t.Fatal(err)
	}
	f := fixtures.NoReferrersAPI(e.reg.Fetcher())
	size := tagSize(t, f, e, "")
	over := fmt.Sprintf("malformed fallback index: %d bytes exceed the limit", size)
	for _, tc := range []struct {
		limit   int64
		refused bool
	}{{size, false}, {size - 1, true}} {
		v := verifyUnderManifestLimit(t, e, f, tc.limit)
		refused := strings.Contains(strings.Join(v.Reasons, "\n"), over)
		if refused != tc.refused {
			t.Errorf("limit %d for an index of %d bytes: refused = %v, want %v (reasons %q)", tc.limit, size, refused, tc.refused, v.Reasons)
		}
	}
}

// The same inclusive limits hold for a referrer: its manifest (as listed
// and as read, for a listing that understates it) and its bundle layer
// are read at exactly the limit and refused one byte over it.
func TestReferrerAtTheLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	if _, err := fixtures.AttachBundle(ctx, e.subject, e.key, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
	f := e.reg.Fetcher()
	s := e.subj(t)
	idx, err := f.Referrers(ctx, "acme/app", s.Digest)
	if err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("referrers: %v, %v", idx, err)
	}
	desc := idx.Manifests[0]
	m, err := f.Manifest(ctx, "acme/app", desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	man, err := v1.ParseManifest(bytes.NewReader(m.Bytes))
	if err != nil || len(man.Layers) != 1 {
		t.Fatalf("referrer manifest: %v, %v", man, err)
	}
	manifestSize, bundleSize := desc.Size, man.Layers[0].Size
	if bundleSize >= manifestSize {
		t.Fatalf("bundle of %d bytes is not smaller than its manifest of %d: the limits below test nothing", bundleSize, manifestSize)
	}
	understated := understatedReferrers{Fetcher: f}
	// The manifest limit is the larger item limit; a DSSE bundle's is the
	// attestation limit.
	manifestOver := fmt.Sprintf("referrer manifest of %d bytes exceeds the limit of %d bytes", manifestSize, manifestSize-1)
	for _, tc := range []struct {
		name     string
		f        verify.Fetcher
		sig, att int64
		reason   string // empty: allowed
	}{
		{name: "manifest at the limit", f: f, sig: manifestSize, att: bundleSize},
		{name: "manifest over the limit", f: f, sig: manifestSize - 1, att: bundleSize, reason: manifestOver},
		{name: "understated manifest at the limit", f: understated, sig: manifestSize, att: bundleSize},
		{name: "understated manifest over the limit", f: understated, sig: manifestSize - 1, att: bundleSize, reason: manifestOver},
		{name: "bundle over the limit", f: f, sig: manifestSize, att: bundleSize - 1, reason: fmt.Sprintf("bundle of %d bytes exceeds the limit of %d bytes", bundleSize, bundleSize-1)},
	} {
		limits := verify.EvidenceLimits{TotalBytes: 1 << 20, SignatureBytes: tc.sig, AttestationBytes: tc.att, PredicateDepth: 8}
		v := mustVerify(t, engine(t, policy(1, keyAuthority("release", e.key)), verify.WithEvidenceLimits(limits)), s, tc.f)
		if tc.reason == "" {
			if !v.Allowed {
				t.Errorf("%s: denied: %q", tc.name, v.Reasons)
			}
			continue
		}
		if v.Allowed || !strings.Contains(strings.Join(v.Reasons, "\n"), tc.reason) {
			t.Errorf("%s: allowed %v, reasons %q; want denied for %q", tc.name, v.Allowed, v.Reasons, tc.reason)
		}
	}
}

// understatedReferrers lists every referrer one byte smaller than it is.
type understatedReferrers struct{ verify.Fetcher }

func (u understatedReferrers) Referrers(ctx context.Context, repo string, d v1.Hash) (*v1.IndexManifest, error) {
	idx, err := u.Fetcher.Referrers(ctx, repo, d)
	if err != nil || idx == nil {
		return idx, err
	}
	out := *idx
	out.Manifests = append([]v1.Descriptor(nil), idx.Manifests...)
	for i := range out.Manifests {
		out.Manifests[i].Size--
	}
	return &out, nil
}

// tagSize is the size of the manifest tagged sha256-<subject hex><suffix>.
func tagSize(t *testing.T, f verify.Fetcher, e *env, suffix string) int64 {
	t.Helper()
	m, err := f.Manifest(context.Background(), "acme/app", "sha256-"+e.subject.DigestStr()[len("sha256:"):]+suffix)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(m.Bytes))
}

// verifyUnderManifestLimit verifies e's subject with every evidence item,
// manifests included, limited to limit bytes.
func verifyUnderManifestLimit(t *testing.T, e *env, f verify.Fetcher, limit int64) verify.Verdict {
	t.Helper()
	limits := verify.EvidenceLimits{TotalBytes: 1 << 20, SignatureBytes: limit, AttestationBytes: limit, PredicateDepth: 8}
	return mustVerify(t, engine(t, policy(1, keyAuthority("release", e.key)), verify.WithEvidenceLimits(limits)), e.subj(t), f)
}

// The byte budget is spent at exactly its total: a run whose evidence
// adds up to the total is decided by it, one whose total is a byte short
// is denied before the last blob is asked for. A blob is refused on what
// is left of the budget, not on the total alone.
func TestEvidenceBudgetAtTheTotal(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	s := memSubject(t)
	setup := func() (*fixtures.MemoryFetcher, v1.Hash) {
		f := fixtures.NewMemoryFetcher()
		addBomb(t, f, s, 1, 4<<10) // read first, signed by no authority
		return f, addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
	}
	verifyWith := func(f *fixtures.MemoryFetcher, total int64) verify.Verdict {
		limits := verify.EvidenceLimits{TotalBytes: total, SignatureBytes: 5 << 10, AttestationBytes: 5 << 10, PredicateDepth: 16}
		return mustVerify(t, engine(t, policy(1, keyAuthority("release", k)), verify.WithEvidenceLimits(limits)), s, f)
	}

	f, _ := setup()
	v := verifyWith(f, 1<<20)
	if !v.Allowed {
		t.Fatalf("denied with room to spare: %q", v.Reasons)
	}
	total := f.Served() // every byte read is charged, the two manifests and two blobs

	f, _ = setup()
	if v := verifyWith(f, total); !v.Allowed || v.Limit != "" {
		t.Fatalf("evidence of exactly the total (%d bytes): %+v", total, v)
	}
	if got := f.Served(); got != total {
		t.Fatalf("served %d bytes, then %d", total, got)
	}

	f, sig := setup()
	v = verifyWith(f, total-1)
	wantDenied(t, v, "evidence budget exceeded")
	wantDenied(t, v, fmt.Sprintf("limit %s", fmtBytes(total-1)))
	wantLimit(t, v, verify.LimitEvidenceBytes)
	if n := f.BlobReads(sig); n != 0 {
		t.Errorf("signature blob asked for %d times with a byte too few left for it", n)
	}
	if got := f.Served(); got >= total {
		t.Errorf("served %d bytes under a total of %d", got, total-1)
	}
}

// fmtBytes prints n as the budget's reasons do below a kibibyte, and in
// KiB above it.
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// An evidence item limit of one examines exactly one referrer: enough
// when it is the signature, a denial naming the limit when it is not.
func TestEvidenceItemLimitOfOne(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	s := memSubject(t)
	e := engine(t, policy(1, keyAuthority("release", k)), verify.WithMaxEvidence(1))

	f := fixtures.NewMemoryFetcher()
	addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
	if v := mustVerify(t, e, s, f); !v.Allowed {
		t.Fatalf("one signature under a limit of one: denied: %q", v.Reasons)
	}

	f = fixtures.NewMemoryFetcher()
	addBomb(t, f, s, 1, 1<<10)
	sig := addSignature(t, f, s, k, fixtures.PredicateCosignSign, nil)
	v := mustVerify(t, e, s, f)
	wantDenied(t, v, "evidence limit reached: examined 1 of 2 referrers")
	wantLimit(t, v, verify.LimitEvidenceItems)
	if n := f.BlobReads(sig); n != 0 {
		t.Errorf("the second referrer's bundle was read %d times", n)
	}
}
