package verify_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/sigstore/sigstore/pkg/signature/payload"
)

// legacySig adds a .sig tag for s with one layer: raw signed by k. The
// layer's bytes are added to f only when stored is true, so a verdict
// that needs them and did not predict them cannot be an allow.
func legacySig(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject, k *fixtures.KeySigner, raw []byte, size int64, stored bool) v1.Hash {
	t.Helper()
	sig, err := k.SignMessage(raw)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if stored {
		f.AddBlob(raw)
	}
	f.AddManifest("sha256-"+s.Digest.Hex+".sig", legacyManifest(t, v1.Descriptor{
		MediaType: types.MediaType(fixtures.MediaTypeSimpleSigning), Digest: h, Size: size,
		Annotations: map[string]string{"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)},
	}))
	return h
}

// The payload `cosign sign` writes is predicted byte for byte: the same
// bytes sigstore's payload package (which cosign marshals with) gives.
func TestPredictedPayloadIsCosigns(t *testing.T) {
	t.Parallel()
	for _, ref := range []string{"registry.example/acme/app", "127.0.0.1:5000/a/b/c", "index.docker.io/library/alpine"} {
		s := memSubject(t)
		d, err := name.NewDigest(ref + "@" + s.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		want, err := payload.Cosign{Image: d}.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if got := fixtures.SimpleSigningPayload(ref, s.Digest); string(got) != string(want) {
			t.Fatalf("fixture payload differs from cosign's:\n got  %s\n want %s", got, want)
		}
		// Predicted and not stored: only a prediction can allow it.
		host, repo, _ := strings.Cut(ref, "/")
		s.Repository, s.RegistryNames = repo, []string{"other.example", host}
		f := fixtures.NewMemoryFetcher()
		k := newKey(t)
		h := legacySig(t, f, s, k, want, int64(len(want)), false)
		v := mustVerify(t, engine(t, policy(1, keyAuthority("release", k))), s, f)
		if !v.Allowed {
			t.Fatalf("%s: cosign's payload was not predicted: %v", ref, v.Reasons)
		}
		if n := f.BlobReads(h); n != 0 {
			t.Errorf("%s: predicted layer read %d times", ref, n)
		}
	}
}

// A prediction saves a read and nothing else: whatever a read of the
// layer would have decided, the prediction decides the same, and what is
// not predicted is read.
func TestPredictedPayloadDecidesAsARead(t *testing.T) {
	t.Parallel()
	k, other := newKey(t), newKey(t)
	small := verify.EvidenceLimits{TotalBytes: 100, SignatureBytes: 64, AttestationBytes: 64, PredicateDepth: 8}
	// A predicted layer is held to the signature item limit as a read one
	// is: used at exactly the limit, refused one byte under it.
	payloadSize := int64(len(fixtures.SimpleSigningPayload("registry.example/acme/app", v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)})))
	layerLimit := func(n int64) []verify.Option {
		return []verify.Option{verify.WithEvidenceLimits(verify.EvidenceLimits{TotalBytes: 1 << 20, SignatureBytes: n, AttestationBytes: 64 << 10, PredicateDepth: 8})}
	}
	tests := []struct {
		name string
		// setup returns the signature layer's digest.
		setup     func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash
		opts      []verify.Option
		allowed   bool
		reads     int
		reasonHas string
		limit     bool
		// predicted: the layer matched a prediction (whether or not
		// anything then let it count).
		predicted int
	}{
		{name: "predicted", allowed: true, reads: 0, predicted: 1, setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "signed under a name the proxy does not know", allowed: true, reads: 1, setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("mirror.internal/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "another name of the same length", allowed: true, reads: 1, setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.elpmaxe/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "unknown name and the layer missing upstream", allowed: false, reads: 1, reasonHas: "not found", setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("mirror.internal/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), false)
		}},
		{name: "annotations in optional", allowed: true, reads: 1, setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := []byte(strings.Replace(string(fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)), `"optional":null`, `"optional":{"build":"42"}`, 1))
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "predicted bytes signed by an untrusted key", allowed: false, reads: 0, predicted: 1, reasonHas: "does not verify with any key", setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
			return legacySig(t, f, s, other, p, int64(len(p)), true)
		}},
		{name: "declared size differs from the prediction", allowed: false, reads: 1, reasonHas: "not found", setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p))+1, false)
		}},
		{name: "a neighbour's signature under this subject's tag", allowed: false, reads: 1, reasonHas: "is not the subject", setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			n := memSubject(t)
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, n.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "predicted at exactly the layer limit", allowed: true, reads: 0, predicted: 1, opts: layerLimit(payloadSize), setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "predicted one byte over the layer limit", allowed: false, reads: 0, predicted: 1, reasonHas: "exceeds the limit", opts: layerLimit(payloadSize - 1), setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
		{name: "over the evidence budget", allowed: false, reads: 0, limit: true, opts: []verify.Option{verify.WithEvidenceLimits(small)}, setup: func(t *testing.T, f *fixtures.MemoryFetcher, s verify.Subject) v1.Hash {
			p := fixtures.SimpleSigningPayload("registry.example/"+s.Repository, s.Digest)
			return legacySig(t, f, s, k, p, int64(len(p)), true)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := memSubject(t)
			s.RegistryNames = []string{"registry.example", "hub"}
			f := fixtures.NewMemoryFetcher()
			h := tc.setup(t, f, s)
			e := engine(t, policy(1, keyAuthority("release", k)), tc.opts...)
			v := mustVerify(t, e, s, f)
			if v.Allowed != tc.allowed {
				t.Fatalf("allowed = %v, want %v: %v", v.Allowed, tc.allowed, v.Reasons)
			}
			if n := f.BlobReads(h); n != tc.reads {
				t.Errorf("signature layer read %d times, want %d", n, tc.reads)
			}
			if hit := v.Reads.PredictedLayers; hit != tc.predicted {
				t.Errorf("%d layers predicted, want %d", hit, tc.predicted)
			}
			if hit, miss := v.Reads.PredictedLayers, v.Reads.UnpredictedLayers; !tc.limit && hit+miss != 1 {
				t.Errorf("%d layers predicted and %d not, for one layer opened", hit, miss)
			}
			if tc.limit && v.Limit == "" {
				t.Errorf("no limit named: %v", v.Reasons)
			}
			if tc.reasonHas != "" && !strings.Contains(strings.Join(v.Reasons, "; "), tc.reasonHas) {
				t.Errorf("reasons %q do not say %q", v.Reasons, tc.reasonHas)
			}
			// Without names nothing is predicted: the verdict is the
			// one reading the layer gives.
			s.RegistryNames = nil
			wantSameVerdict(t, v, mustVerify(t, e, s, f))
		})
	}
}
