package proxy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const maxJSONDepth = 64

// parsedManifest is what the proxy needs from a manifest: its kind, what
// it references and what it claims to be.
type parsedManifest struct {
	mediaType    types.MediaType
	index        bool
	artifactType string
	config       blobRef
	// configType is the config's media type, which evidence's bytes are
	// checked against (see checkEvidenceShape).
	configType string
	layers     []blobRef
	children   []v1.Hash
	// layerTypes are the layers' media types, in order; evidence is told
	// apart from content by them (see evidence.go).
	layerTypes []string
	// subject is the manifest this one is about (OCI 1.1 referrers).
	subject *v1.Hash
}

// blobRef is a blob a manifest references, with the size its descriptor
// declares: the served body is cut at that size.
type blobRef struct {
	digest v1.Hash
	size   int64
}

type descriptorJSON struct {
	MediaType    string `json:"mediaType"`
	Digest       string `json:"digest"`
	Size         int64  `json:"size"`
	ArtifactType string `json:"artifactType"`
}

type manifestJSON struct {
	SchemaVersion *int              `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *descriptorJSON   `json:"config"`
	Layers        *[]descriptorJSON `json:"layers"`
	Manifests     *[]descriptorJSON `json:"manifests"`
	Subject       *descriptorJSON   `json:"subject"`
}

// knownFields are the keys whose spelling must be exact: encoding/json
// matches keys case-insensitively and keeps the last duplicate, while
// other clients do neither, so a manifest with "Layers" next to "layers"
// could mean one thing to the verifier and another to the runtime.
var knownFields = map[string]string{}

func init() {
	for _, f := range []string{"schemaVersion", "mediaType", "artifactType", "config", "layers", "manifests",
		"subject", "digest", "size", "annotations", "platform", "urls", "data"} {
		knownFields[strings.ToLower(f)] = f
	}
}

func isManifestType(mt types.MediaType) bool {
	return isIndexType(mt) || mt == types.OCIManifestSchema1 || mt == types.DockerManifestSchema2
}

func isIndexType(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

// parseManifest parses an OCI or Docker v2 manifest or index strictly.
// contentType is what the upstream declared; it must agree with the body.
func parseManifest(contentType types.MediaType, b []byte) (*parsedManifest, error) {
	if err := checkJSONShape(b); err != nil {
		return nil, err
	}
	var mj manifestJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&mj); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if mj.SchemaVersion == nil || *mj.SchemaVersion != 2 {
		return nil, errors.New("schemaVersion must be 2")
	}
	mt := types.MediaType(mj.MediaType)
	ct := types.MediaType(strings.TrimSpace(strings.Split(string(contentType), ";")[0]))
	switch {
	case mt != "" && isManifestType(ct) && mt != ct:
		return nil, fmt.Errorf("mediaType %q does not match content type %q", mt, ct)
	case mt == "":
		mt = ct
	}
	if !isManifestType(mt) {
		return nil, fmt.Errorf("unsupported manifest media type %q", truncate(string(mt), 100))
	}
	pm := &parsedManifest{mediaType: mt, index: isIndexType(mt), artifactType: mj.ArtifactType}
	if pm.index {
		if mj.Config != nil || mj.Layers != nil {
			return nil, errors.New("index with config or layers")
		}
		if mj.Manifests == nil {
			return nil, errors.New("index without manifests")
		}
		for i, d := range *mj.Manifests {
			h, err := checkDescriptor(d)
			if err != nil {
				return nil, fmt.Errorf("manifests[%d]: %w", i, err)
			}
			pm.children = append(pm.children, h)
		}
	} else {
		if mj.Manifests != nil {
			return nil, errors.New("image manifest with manifests")
		}
		if mj.Config == nil {
			return nil, errors.New("image manifest without config")
		}
		h, err := checkDescriptor(*mj.Config)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		pm.config = blobRef{h, mj.Config.Size}
		pm.configType = mj.Config.MediaType
		if pm.artifactType == "" {
			pm.artifactType = mj.Config.MediaType
		}
		if mj.Layers != nil {
			for i, d := range *mj.Layers {
				h, err := checkDescriptor(d)
				if err != nil {
					return nil, fmt.Errorf("layers[%d]: %w", i, err)
				}
				pm.layers = append(pm.layers, blobRef{h, d.Size})
				pm.layerTypes = append(pm.layerTypes, d.MediaType)
			}
		}
	}
	if mj.Subject != nil {
		h, err := checkDescriptor(*mj.Subject)
		if err != nil {
			return nil, fmt.Errorf("subject: %w", err)
		}
		pm.subject = &h
	}
	return pm, nil
}

func checkDescriptor(d descriptorJSON) (v1.Hash, error) {
	if d.MediaType == "" {
		return v1.Hash{}, errors.New("descriptor without mediaType")
	}
	if d.Size < 0 {
		return v1.Hash{}, errors.New("negative size")
	}
	h, perr := parseDigest(d.Digest)
	if perr != nil {
		return v1.Hash{}, errors.New(perr.Message)
	}
	return h, nil
}

// digestMatches recomputes the digest of b.
func digestMatches(d v1.Hash, b []byte) bool {
	h, err := v1.Hasher(d.Algorithm)
	if err != nil {
		return false
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)) == d.Hex
}
