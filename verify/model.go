package verify

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Artifact kinds reported in Verdict.Artifact.
const (
	KindModel   = "model"
	KindDataset = "dataset"
)

// Model and dataset media types (DESIGN.md §5).
const (
	MediaTypeModelPackManifest = "application/vnd.cncf.model.manifest.v1+json"
	MediaTypeModelPackConfig   = "application/vnd.cncf.model.config.v1+json"
	MediaTypeKitOpsManifest    = "application/vnd.kitops.modelkit.manifest.v1+json"
	MediaTypeKitOpsConfig      = "application/vnd.kitops.modelkit.config.v1+json"
	MediaTypeDockerModelConfig = "application/vnd.docker.ai.model.config.v0.1+json"

	// AnnotationModelFilePath names the file a ModelPack layer holds.
	AnnotationModelFilePath = "org.cncf.model.filepath"

	layerPrefixModelPack     = "application/vnd.cncf.model."
	layerPrefixKitOps        = "application/vnd.kitops.modelkit."
	layerPrefixOllamaModel   = "application/vnd.ollama.image.model"
	layerPrefixModelDataset  = "application/vnd.cncf.model.dataset.v1."
	layerPrefixKitOpsDataset = "application/vnd.kitops.modelkit.dataset.v1."
)

// ArtifactKind classifies an artifact type (a manifest's artifactType or
// config media type) as KindModel, or "" when it is not a known model
// format. Whether a model-format artifact is really a dataset depends on
// its layers; see ClassifyManifest.
func ArtifactKind(artifactType string) string {
	switch artifactType {
	case MediaTypeModelPackManifest, MediaTypeModelPackConfig,
		MediaTypeKitOpsManifest, MediaTypeKitOpsConfig,
		MediaTypeDockerModelConfig:
		return KindModel
	}
	return ""
}

// ClassifyManifest classifies a manifest by its artifactType, then its
// config media type, then its layer media types (Ollama marks models only
// in layers). A model-format manifest whose content layers are all
// dataset layers is KindDataset. Unparsable input is "": the kind is
// informational and never decides trust.
func ClassifyManifest(b []byte) string {
	var m struct {
		ArtifactType string `json:"artifactType"`
		Config       struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
		} `json:"layers"`
	}
	if len(b) == 0 || json.Unmarshal(b, &m) != nil {
		return ""
	}
	kind := ArtifactKind(m.ArtifactType)
	if kind == "" {
		kind = ArtifactKind(m.Config.MediaType)
	}
	datasets, content := 0, 0
	for _, l := range m.Layers {
		switch {
		case strings.HasPrefix(l.MediaType, layerPrefixOllamaModel):
			kind = KindModel
		case strings.HasPrefix(l.MediaType, layerPrefixModelDataset), strings.HasPrefix(l.MediaType, layerPrefixKitOpsDataset):
			datasets++
			content++
		case strings.HasPrefix(l.MediaType, layerPrefixModelPack), strings.HasPrefix(l.MediaType, layerPrefixKitOps):
			content++
		}
	}
	if content > 0 && kind == "" {
		kind = KindModel
	}
	if kind == KindModel && datasets > 0 && datasets == content {
		return KindDataset
	}
	return kind
}

// modelResource is one file an OpenSSF model signature covers.
type modelResource struct {
	Name      string `json:"name"`
	Algorithm string `json:"algorithm"`
	Digest    string `json:"digest"`
}

// checkModelSigning compares the files an OpenSSF model signature covers
// with the subject's layers. The statement's own subject is a hash over
// the files, not the manifest digest, so this comparison is what ties the
// signature to the manifest: every layer must be a raw file layer naming
// a signed file by its org.cncf.model.filepath annotation, with that
// file's sha256, and every signed file must have a layer. A layer without
// the annotation is content the signature does not cover and denies.
//
// The config blob is not a layer and is not required to be signed: it
// describes the model (format, architecture, the layers' diffIds) and
// holds no file the signer hashed. It is still bound by the manifest
// digest, which the proxy's own signature threshold covers.
func checkModelSigning(st *statement, manifest []byte) error {
	var resources []modelResource
	raw, _ := st.field("resources")
	if err := json.Unmarshal(raw, &resources); err != nil || len(resources) == 0 {
		return fmt.Errorf("model-signing: predicate has no resources list")
	}
	signed := make(map[string]string, len(resources))
	for _, r := range resources {
		if r.Name == "" {
			return fmt.Errorf("model-signing: resource without a name")
		}
		if _, dup := signed[r.Name]; dup {
			return fmt.Errorf("model-signing: file %s signed twice", r.Name)
		}
		if r.Algorithm != "sha256" || !isHex64(r.Digest) {
			return fmt.Errorf("model-signing: file %s: unsupported digest %s:%s", r.Name, r.Algorithm, r.Digest)
		}
		signed[r.Name] = strings.ToLower(r.Digest)
	}
	if len(manifest) == 0 {
		return fmt.Errorf("model-signing: subject manifest not available")
	}
	man, err := parseManifest(manifest)
	if err != nil {
		return fmt.Errorf("model-signing: manifest: %w", err)
	}
	seen := map[string]bool{}
	for _, l := range man.Layers {
		file := l.Annotations[AnnotationModelFilePath]
		if file == "" {
			return fmt.Errorf("model-signing: layer %s (%s) has no %s annotation, so no signed file covers it", l.Digest, l.MediaType, AnnotationModelFilePath)
		}
		if !strings.HasSuffix(string(l.MediaType), ".raw") {
			// A packed layer's digest is over the archive, not the file,
			// so it cannot be compared with a signed file digest.
			return fmt.Errorf("model-signing: file %s is in a packed layer %s (%s); only raw file layers can be checked", file, l.Digest, l.MediaType)
		}
		if seen[file] {
			return fmt.Errorf("model-signing: file %s appears in two layers", file)
		}
		seen[file] = true
		want, ok := signed[file]
		if !ok {
			return fmt.Errorf("model-signing: file %s is not signed (layer %s, %s)", file, l.Digest, l.MediaType)
		}
		if l.Digest.Algorithm != "sha256" || l.Digest.Hex != want {
			return fmt.Errorf("model-signing: file %s: signed sha256:%s but layer is %s", file, want, l.Digest)
		}
	}
	var missing []string
	for name := range signed {
		if !seen[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("model-signing: signed file %s has no layer", strings.Join(missing, ", "))
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}
