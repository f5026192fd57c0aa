package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// mapFetcher serves fixed content; it stands in for a registry in fuzz
// targets, where a network round trip per input would be too slow.
type mapFetcher struct {
	referrers *v1.IndexManifest
	manifests map[string][]byte
	blobs     map[v1.Hash][]byte
}

func (m *mapFetcher) Referrers(context.Context, string, v1.Hash) (*v1.IndexManifest, error) {
	if m.referrers == nil {
		return nil, ErrNoReferrersAPI
	}
	return m.referrers, nil
}

func (m *mapFetcher) Manifest(_ context.Context, _, ref string) (Manifest, error) {
	b, ok := m.manifests[ref]
	if !ok {
		return Manifest{}, ErrNotFound
	}
	return Manifest{Digest: hashOf(b), MediaType: types.OCIManifestSchema1, Bytes: b}, nil
}

func (m *mapFetcher) Blob(_ context.Context, _ string, h v1.Hash, limit int64) ([]byte, error) {
	b, ok := m.blobs[h]
	if !ok {
		return nil, ErrNotFound
	}
	if int64(len(b)) > limit {
		return nil, ErrTooLarge
	}
	return b, nil
}

func hashOf(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

func fuzzEngine(f *testing.F) *Engine {
	f.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	pemBytes, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		f.Fatal(err)
	}
	e, err := New(Policy{Boundaries: []Boundary{{
		Name: "all", Mode: ModeEnforce, Threshold: 1,
		Authorities: []Authority{{Name: "release", Key: &KeyAuthority{Keys: []NamedKey{{Name: "k", PEM: pemBytes}}}}},
	}}})
	if err != nil {
		f.Fatal(err)
	}
	return e
}

var fuzzSubject = Subject{Upstream: "u", Repository: "r", Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1", 64)}}

func manifestWithLayer(mt string, blob []byte, ann map[string]string, subject *v1.Descriptor) []byte {
	m := v1.Manifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config:  v1.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: hashOf([]byte("{}")), Size: 2},
		Layers:  []v1.Descriptor{{MediaType: types.MediaType(mt), Digest: hashOf(blob), Size: int64(len(blob)), Annotations: ann}},
		Subject: subject,
	}
	b, _ := json.Marshal(m)
	return b
}

func FuzzSimpleSigning(f *testing.F) {
	e := fuzzEngine(f)
	good := `{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"` + fuzzSubject.Digest.String() + `"},"type":"cosign container image signature"},"optional":null}`
	f.Add([]byte(good), "MEUCIQDx")
	f.Add([]byte(good+" {}"), "AAAA")
	f.Add([]byte(`{"critical":{"image":{"docker-manifest-digest":"sha256:zz"}}}`), "")
	f.Add([]byte(`[]`), "!!")
	f.Fuzz(func(t *testing.T, payload []byte, sig string) {
		_, _, _ = ParseSimpleSigning(payload)
		fe := &mapFetcher{
			manifests: map[string][]byte{"sha256-" + fuzzSubject.Digest.Hex + ".sig": manifestWithLayer(mediaTypeSimpleSigning, payload,
				map[string]string{annotationSignature: sig}, nil)},
			blobs: map[v1.Hash][]byte{hashOf(payload): payload},
		}
		v, err := e.Verify(context.Background(), fuzzSubject, fe)
		if err != nil {
			t.Fatalf("malformed evidence became an error: %v", err)
		}
		if v.Allowed || len(v.Reasons) == 0 {
			t.Fatalf("unsigned payload allowed: %+v", v)
		}
	})
}

func FuzzBundle(f *testing.F) {
	e := fuzzEngine(f)
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"k"}},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AAAA"}]}}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle+json;version=0.1","verificationMaterial":{"publicKey":{"hint":"k"}},"messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"EREREREREREREREREREREREREREREREREREREREREREREREREREREREREREREQ=="},"signature":"AAAA"}}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		subj := &v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: fuzzSubject.Digest, Size: 100}
		man := manifestWithLayer("application/vnd.dev.sigstore.bundle.v0.3+json", raw, nil, subj)
		mh := hashOf(man)
		fe := &mapFetcher{
			referrers: &v1.IndexManifest{SchemaVersion: 2, Manifests: []v1.Descriptor{{MediaType: types.OCIManifestSchema1, Digest: mh, Size: int64(len(man))}}},
			manifests: map[string][]byte{mh.String(): man},
			blobs:     map[v1.Hash][]byte{hashOf(raw): raw},
		}
		v, err := e.Verify(context.Background(), fuzzSubject, fe)
		if err != nil {
			t.Fatalf("malformed evidence became an error: %v", err)
		}
		if v.Allowed || len(v.Reasons) == 0 {
			t.Fatalf("unsigned bundle allowed: %+v", v)
		}
	})
}
