package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.opentelemetry.io/otel/attribute"
)

// DefaultMaxDependencies is the default number of dependencies one subject
// may ask to follow. Each followed dependency is a verification of its own
// (and may follow its own), so the bound keeps a provenance statement
// listing thousands of inputs from turning one pull into thousands of
// upstream reads; beyond it the subject is denied, not partially checked.
const DefaultMaxDependencies = 64

// MaxLineageDepth bounds LineageRule.Depth.
const MaxLineageDepth = 16

// maxProvenanceDependencies bounds how many dependencies are parsed from
// one statement at all.
const maxProvenanceDependencies = 10_000

// maxReasonsPerDependency bounds how many of a denied dependency's reasons
// are repeated in its parent's verdict.
const maxReasonsPerDependency = 8

// provenanceDependency is one input listed by a provenance statement.
type provenanceDependency struct {
	Name string
	URI  string
	// Ref is set when the dependency names an OCI artifact by digest.
	Ref *DependencyRef
	// NotOCI says why Ref is nil.
	NotOCI string
	// Unpinned is set for an "oci://" URI that names no verifiable
	// digest: an OCI input that cannot be verified, unlike a git or URL
	// input that is simply not OCI.
	Unpinned bool
}

// parseDependencies lists the inputs of a SLSA provenance predicate:
// buildDefinition.resolvedDependencies (v1) or materials (v0.2).
func parseDependencies(predicateType string, predicate []byte) ([]provenanceDependency, error) {
	type descriptor struct {
		Name   string            `json:"name"`
		URI    string            `json:"uri"`
		Digest map[string]string `json:"digest"`
	}
	var list []descriptor
	switch predicateType {
	case PredicateSLSAProvenanceV1:
		var p struct {
			BuildDefinition struct {
				ResolvedDependencies []descriptor `json:"resolvedDependencies"`
			} `json:"buildDefinition"`
		}
		if err := json.Unmarshal(predicate, &p); err != nil {
			return nil, fmt.Errorf("malformed provenance: %w", err)
		}
		list = p.BuildDefinition.ResolvedDependencies
	case PredicateSLSAProvenanceV02:
		var p struct {
			Materials []descriptor `json:"materials"`
		}
		if err := json.Unmarshal(predicate, &p); err != nil {
			return nil, fmt.Errorf("malformed provenance: %w", err)
		}
		// v0.2 materials have no name; any "name" key is ignored like
		// every other unknown field.
		for i := range p.Materials {
			p.Materials[i].Name = ""
		}
		list = p.Materials
	default:
		return nil, fmt.Errorf("predicate type %s is not SLSA provenance", predicateType)
	}
	if len(list) > maxProvenanceDependencies {
		return nil, fmt.Errorf("provenance lists %d dependencies, more than %d", len(list), maxProvenanceDependencies)
	}
	out := make([]provenanceDependency, 0, len(list))
	for _, d := range list {
		pd := provenanceDependency{Name: d.Name, URI: d.URI}
		pd.Ref, pd.NotOCI = parseOCIDependency(d.URI, d.Digest)
		pd.Unpinned = pd.Ref == nil && strings.HasPrefix(d.URI, "oci://")
		if pd.Ref != nil {
			pd.Ref.Name = d.Name
			if pd.Name == "" {
				pd.Name = path.Base(pd.Ref.Repository)
				pd.Ref.Name = pd.Name
			}
		} else if pd.Name == "" {
			pd.Name = lastSegment(d.URI)
		}
		out = append(out, pd)
	}
	return out, nil
}

func lastSegment(uri string) string {
	u := strings.TrimRight(uri, "/")
	if i := strings.IndexAny(u, "@?#"); i >= 0 {
		u = u[:i]
	}
	return path.Base(u)
}

// parseOCIDependency recognises an OCI dependency: "oci://host/repo@sha256:…"
// (optionally with ":tag" before the digest), or "host/repo" /
// "oci://host/repo" with a sha256 in the digest map. The registry host
// must be explicit (a dot, a port or "localhost"), because it is only
// ever a lookup key: a bare "library/alpine" names no registry. Anything
// else is reported as not an OCI artifact.
func parseOCIDependency(uri string, digest map[string]string) (*DependencyRef, string) {
	rest := uri
	if i := strings.Index(uri, "://"); i >= 0 {
		if uri[:i] != "oci" {
			return nil, "not an OCI artifact"
		}
		rest = uri[i+3:]
	} else if strings.HasPrefix(uri, "pkg:") {
		return nil, "not an OCI artifact"
	}
	var fromURI string
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		fromURI, rest = rest[at+1:], rest[:at]
	}
	fromMap, hasMap := digest["sha256"]
	if fromURI == "" {
		if !hasMap {
			return nil, "no sha256 digest"
		}
		fromURI = "sha256:" + strings.ToLower(fromMap)
	} else if hasMap && !strings.EqualFold(fromURI, "sha256:"+fromMap) {
		return nil, "digest in uri and digest field differ"
	}
	h, err := v1.NewHash(fromURI)
	if err != nil || h.Algorithm != "sha256" || !isHex64(h.Hex) || h.Hex != strings.ToLower(h.Hex) {
		return nil, "no valid sha256 digest"
	}
	host, repo, ok := strings.Cut(rest, "/")
	if !ok || host == "" || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return nil, "no registry host"
	}
	if c := strings.LastIndex(repo, ":"); c >= 0 {
		if _, err := name.NewTag("example.invalid/x:"+repo[c+1:], name.StrictValidation); err != nil {
			return nil, "invalid tag"
		}
		repo = repo[:c]
	}
	if _, err := name.NewRepository(host+"/"+repo, name.StrictValidation); err != nil {
		return nil, "invalid repository"
	}
	return &DependencyRef{URI: uri, Registry: host, Repository: repo, Digest: h}, ""
}

func validateLineageRule(r *LineageRule) error {
	// Every OCI input is followed, so depth 0 could only deny every subject
	// that has one; it is refused rather than read as "record only".
	if r.Depth == 0 {
		return fmt.Errorf("lineage depth is 0: every OCI input is followed, the depth must be 1..%d", MaxLineageDepth)
	}
	if r.Depth < 0 || r.Depth > MaxLineageDepth {
		return fmt.Errorf("lineage depth %d out of range 1..%d", r.Depth, MaxLineageDepth)
	}
	require := map[string]bool{}
	for _, g := range r.Require {
		if err := validateDependencyGlob(g); err != nil {
			return fmt.Errorf("lineage require %q: %w", g, err)
		}
		require[g] = true
	}
	for _, g := range r.Ignore {
		if err := validateDependencyGlob(g); err != nil {
			return fmt.Errorf("lineage ignore %q: %w", g, err)
		}
		// The same glob on both lists says two opposite things; a name
		// matched by two different globs is verified (require wins).
		if require[g] {
			return fmt.Errorf("lineage ignore %q is also required", g)
		}
	}
	return nil
}

func validateDependencyGlob(g string) error {
	if strings.TrimSpace(g) == "" {
		return errors.New("empty glob")
	}
	_, err := path.Match(g, "")
	return err
}

func matchAny(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// evalLineage verifies the inputs listed by the subject's provenance.
// Every OCI input is followed under its own boundary, whatever its name;
// an input the rule's Ignore globs name (and no Require glob does) is
// listed as Ignored and not followed; Require globs name inputs that must
// also be present. Inputs that are not OCI artifacts (git, URLs) are
// listed, never fetched, and deny only when required. It returns every
// listed dependency (followed ones with their verdicts) and the reasons
// for a denial. An error means a dependency could not be decided and the
// subject must fail closed.
func (e *Engine) evalLineage(ctx context.Context, r *LineageRule, s Subject, prov *verifiedAttestation) ([]Dependency, []string, error) {
	if s.Lineage.Dependencies == nil {
		return nil, []string{"lineage cannot be followed here"}, nil
	}
	if prov == nil {
		return nil, []string{"lineage: no verified SLSA provenance attestation"}, nil
	}
	deps, err := parseDependencies(prov.st.PredicateType, prov.st.Predicate)
	if err != nil {
		return nil, []string{"lineage: " + err.Error()}, nil
	}
	ctx, span := startSpan(ctx, spanLineage)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("portcullis.dependencies", len(deps)))
	}
	out := make([]Dependency, len(deps))
	for i, d := range deps {
		out[i] = Dependency{Name: d.Name, URI: d.URI}
	}
	var reasons []string
	for _, g := range r.Require {
		if !slices.ContainsFunc(deps, func(d provenanceDependency) bool { ok, _ := path.Match(g, d.Name); return ok }) {
			reasons = append(reasons, fmt.Sprintf("required dependency %s not in provenance", g))
		}
	}
	var oci []int
	for i, d := range deps {
		required := matchAny(r.Require, d.Name)
		if !required && matchAny(r.Ignore, d.Name) {
			// Ignored only when there is something to verify; a git or URL
			// input is never verified anyway.
			out[i].Ignored = d.Ref != nil || d.Unpinned
			continue
		}
		switch {
		case d.Ref != nil:
			oci = append(oci, i)
		case required, d.Unpinned:
			msg := fmt.Sprintf("dependency %s is not an OCI artifact (uri %q)", d.Name, d.URI)
			if d.Unpinned {
				msg = fmt.Sprintf("dependency %s is an OCI input that cannot be verified (uri %q: %s)", d.Name, d.URI, d.NotOCI)
			} else if d.NotOCI != "not an OCI artifact" {
				msg = fmt.Sprintf("dependency %s is not an OCI artifact (uri %q: %s)", d.Name, d.URI, d.NotOCI)
			}
			reasons = append(reasons, msg)
		}
	}
	if len(oci) == 0 {
		return out, reasons, nil
	}
	lc, ok := dependencyLineage(s, r.Depth)
	if !ok {
		return out, append(reasons, fmt.Sprintf("lineage deeper than depth %d", len(s.Lineage.Chain))), nil
	}
	if len(oci) > e.maxDeps {
		return out, append(reasons, fmt.Sprintf("too many dependencies: %d to follow, at most %d are followed", len(oci), e.maxDeps)), nil
	}
	selfLabel := s.Repository + "@" + shortDigest(s.Digest)
	// Cycles are found from the chain alone, before anything is
	// fetched; the other dependencies are verified concurrently and
	// their reasons listed in the provenance's order, whatever order
	// their verdicts came in.
	cycles := make(map[int]string)
	var refs []DependencyRef
	var at []int
	for _, i := range oci {
		ref := *deps[i].Ref
		if reason, ok := cycleReason(lc.Chain, ref); ok {
			cycles[i] = reason
			continue
		}
		refs = append(refs, ref)
		at = append(at, i)
	}
	results, err := follow(ctx, s.Lineage.Dependencies, refs, lc, e.lineageConcurrency)
	if err != nil {
		return nil, nil, err
	}
	byDep := make(map[int]followed, len(at))
	for j, i := range at {
		byDep[i] = results[j]
	}
	for _, i := range oci {
		if reason, ok := cycles[i]; ok {
			reasons = append(reasons, reason)
			continue
		}
		ref, res := *deps[i].Ref, byDep[i]
		if !res.decided {
			// Stopped once another was denied: listed without a
			// verdict, the denial names the one that was denied.
			continue
		}
		dv := res.verdict
		out[i].Verdict = &dv
		if dv.Allowed {
			continue
		}
		depLabel := ref.Repository + "@" + shortDigest(ref.Digest)
		rs := dv.Reasons
		if len(rs) == 0 {
			rs = []string{"denied"}
		}
		if len(rs) > maxReasonsPerDependency {
			rs = append(slices.Clone(rs[:maxReasonsPerDependency]), fmt.Sprintf("(%d more reasons)", len(rs)-maxReasonsPerDependency))
		}
		for _, dr := range rs {
			reasons = append(reasons, nested(selfLabel, depLabel, dr, ref.Digest))
		}
	}
	return out, reasons, nil
}

// nested formats a dependency's reason for its parent. A reason the
// dependency already phrased as a chain starting at itself is extended,
// so a deep denial reads "a ← b ← c: why" instead of repeating b; a cycle
// already names every node on it.
func nested(selfLabel, depLabel, reason string, dep v1.Hash) string {
	if strings.HasPrefix(reason, "cycle: ") {
		return reason
	}
	if head, _, ok := strings.Cut(reason, " ← "); ok && !strings.Contains(head, ": ") && strings.HasSuffix(head, "@"+shortDigest(dep)) {
		return selfLabel + " ← " + reason
	}
	return selfLabel + " ← " + depLabel + ": " + reason
}
