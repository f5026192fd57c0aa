package verify

import (
	"encoding/json"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// FuzzNotationEvidence feeds untrusted signature manifests and envelopes
// to what reads them before any authority does: neither may panic, and a
// manifest is a notation signature only with exactly one envelope layer
// under the notation artifactType.
func FuzzNotationEvidence(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"artifactType":"application/vnd.cncf.notary.signature","config":{"mediaType":"application/vnd.oci.empty.v1+json"},"layers":[{"mediaType":"application/jose+json"}]}`),
		"application/jose+json", []byte(`{"payload":"e30","protected":"e30","header":{"x5c":["AA=="]},"signature":"AA"}`))
	f.Add([]byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.cncf.notary.signature"},"layers":[{"mediaType":"application/cose"},{"mediaType":"application/cose"}]}`),
		"application/cose", []byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40})
	f.Add([]byte(`{"schemaVersion":2,"artifactType":"application/vnd.example","layers":[{"mediaType":"application/jose+json"}]}`), "application/jose+json", []byte(`{}`))
	f.Fuzz(func(t *testing.T, manifest []byte, mediaType string, envelope []byte) {
		var m v1.Manifest
		if json.Unmarshal(manifest, &m) == nil {
			layer, ok, err := notationManifest(&m)
			if ok && err == nil {
				if layer == nil || len(m.Layers) != 1 || (m.ArtifactType != ArtifactTypeNotation && (m.ArtifactType != "" || string(m.Config.MediaType) != ArtifactTypeNotation)) {
					t.Fatalf("accepted %s", manifest)
				}
			}
		}
		ns := &notationSignature{mediaType: mediaType, envelope: envelope}
		_ = ns.precheck(Subject{Digest: v1.Hash{Algorithm: "sha256", Hex: "00"}, Manifest: []byte("{}")})
	})
}

// A notation signature is recognised by its artifactType, or, in the
// image-manifest form notation writes for registries without
// artifactType, by its config media type when no artifactType is set.
// An envelope layer in anything else is reported, never counted.
func TestNotationManifest(t *testing.T) {
	t.Parallel()
	jws := v1.Descriptor{MediaType: types.MediaType(MediaTypeNotationJWS)}
	other := v1.Descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar"}
	man := func(artifactType, config string, layers ...v1.Descriptor) *v1.Manifest {
		return &v1.Manifest{ArtifactType: artifactType, Config: v1.Descriptor{MediaType: types.MediaType(config)}, Layers: layers}
	}
	const empty = "application/vnd.oci.empty.v1+json"
	for _, tc := range []struct {
		name    string
		m       *v1.Manifest
		ok      bool
		wantErr string
	}{
		{"artifactType", man(ArtifactTypeNotation, empty, jws), true, ""},
		{"config media type, no artifactType", man("", ArtifactTypeNotation, jws), true, ""},
		{"config media type under another artifactType", man("application/x-other", ArtifactTypeNotation, jws), true, `artifactType "application/x-other"`},
		{"envelope under another config", man("", empty, jws), true, `artifactType "` + empty + `"`},
		{"two layers", man(ArtifactTypeNotation, empty, jws, other), true, "exactly one"},
		{"no envelope", man("", empty, other), false, ""},
	} {
		layer, ok, err := notationManifest(tc.m)
		switch {
		case ok != tc.ok:
			t.Errorf("%s: ok = %v", tc.name, ok)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: err = %v, want one mentioning %q", tc.name, err, tc.wantErr)
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.ok && tc.wantErr == "" && (layer == nil || layer.MediaType != jws.MediaType):
			t.Errorf("%s: layer = %v", tc.name, layer)
		}
	}
}
