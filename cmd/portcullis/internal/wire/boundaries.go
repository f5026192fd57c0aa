package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/sigstore/sigstore-go/pkg/root"
)

// deployedBoundary translates one boundary with what describes it as a
// deploy unit: its file, owner, version, order and own fingerprint. A
// boundary file that could not be loaded becomes a stand-in that denies
// what it matches.
func (l *loader) deployedBoundary(b config.Boundary) (verify.Boundary, error) {
	var vb verify.Boundary
	if b.Refused != nil {
		vb = verify.Boundary{
			Name: b.Name, Upstream: b.Match.Upstream, Repositories: b.Match.Repositories, ArtifactTypes: b.Match.ArtifactTypes,
			Mode: verify.ModeEnforce,
			// Clients read this in the denial: it names the file, not
			// its problems, which are for the operator.
			Refused: fmt.Sprintf("boundary file %q could not be loaded; what it covers is denied until it loads", filepath.Base(b.Source)),
		}
		vb.Problems = problemStrings(b.Refused)
	} else {
		var err error
		if vb, err = l.boundary(b); err != nil {
			return verify.Boundary{}, err
		}
		vb.Problems = append(vb.Problems, problemStrings(b.Stale)...)
	}
	vb.Owner, vb.Version, vb.Source, vb.Order = b.Owner, b.Version, b.Source, b.Order
	fp, err := l.boundaryFingerprint(b)
	if err != nil {
		return verify.Boundary{}, err
	}
	vb.Fingerprint = fp
	return vb, nil
}

func problemStrings(ps []config.Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Error())
	}
	return out
}

// boundaryFingerprint hashes one boundary's configuration with the trust
// entries it names, the digests of their files and the upstreams its
// evidence repositories resolve to: everything of the configuration its
// verdicts depend on besides what every verdict depends on (limits,
// unmatched), which the engine adds.
func (l *loader) boundaryFingerprint(b config.Boundary) (string, error) {
	trustNames := map[string]bool{}
	for _, a := range b.Signatures.Authorities {
		if a.Key != "" {
			trustNames[a.Key] = true
		}
		if a.Keyless != nil {
			trustNames[a.Keyless.Trust] = true
		}
	}
	var trust []config.Trust
	files := map[string]string{}
	for _, t := range l.cfg.Trust {
		if !trustNames[t.Name] {
			continue
		}
		trust = append(trust, t)
		for _, f := range append(slices.Clone(t.Keys), t.TrustedRoot) {
			if f != "" {
				files[f] = l.files[f]
			}
		}
		if t.TUF != nil {
			files[t.TUF.Root], files[tufFileKey(t.Name)] = l.files[t.TUF.Root], l.files[tufFileKey(t.Name)]
		}
	}
	evidence := map[string]string{}
	repos := []string{b.Signatures.Repository}
	for _, at := range b.Attestations {
		repos = append(repos, at.Repository)
	}
	for _, r := range repos {
		key, _, _ := strings.Cut(r, "/")
		if u, ok := l.cfg.UpstreamFor(key); ok && r != "" {
			evidence[key] = u.Name
		}
	}
	doc := struct {
		Version   int               `json:"v"`
		Boundary  config.Boundary   `json:"boundary"`
		Trust     []config.Trust    `json:"trust"`
		Files     map[string]string `json:"files"`
		Evidence  map[string]string `json:"evidence_upstreams,omitempty"`
		Unmatched string            `json:"unmatched"`
	}{1, b, trust, files, evidence, l.cfg.Unmatched}
	raw, err := json.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("boundary fingerprint: %w", err)
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// RefuseUncompilableBoundaryFiles compiles each boundary file's boundary
// on its own and refuses (config.RefuseBoundaryFile) those the engine
// would reject, so that one file's bad condition or key costs that file,
// not the whole policy. Trust material that does not load is left for
// Policy to report: it belongs to the main file.
func RefuseUncompilableBoundaryFiles(cfg *config.Config) {
	l := &loader{cfg: cfg, files: map[string]string{}, keys: map[string][]verify.NamedKey{}, roots: map[string]root.TrustedMaterial{}}
	for _, t := range cfg.Trust {
		if err := l.loadTrust(t); err != nil {
			return
		}
	}
	for _, b := range cfg.Boundaries {
		if b.Source == "" || b.Refused != nil {
			continue
		}
		bad := false
		for j, a := range b.Attestations {
			if a.Condition == "" {
				continue
			}
			if err := verify.CheckCondition(a.Condition); err != nil {
				cfg.RefuseBoundaryFile(b.Source, fmt.Sprintf("attestations[%d].condition", j), "CEL: %s", strings.ReplaceAll(err.Error(), "\n", " "))
				bad = true
			}
		}
		if bad {
			continue
		}
		vb, err := l.boundary(b)
		if err == nil {
			_, err = verify.New(verify.Policy{Boundaries: []verify.Boundary{vb}}, EngineOptions(cfg)...)
		}
		if err != nil {
			cfg.RefuseBoundaryFile(b.Source, "", "%v", err)
		}
	}
}
