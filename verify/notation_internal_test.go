package verify

import (
	"encoding/json"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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
