package verify

// BoundaryName names the first boundary matching the subject coordinates,
// the one Verify would decide under; false when none matches. It lets a
// caller that already holds a verdict for one subject tell whether another
// subject would be decided under the same rules.
func (e *Engine) BoundaryName(upstream, repo, artifactType string) (string, bool) {
	if cb := e.match(upstream, repo, artifactType); cb != nil {
		return cb.Name, true
	}
	return "", false
}

// BlobMode says how a blob of upstream/repo that no allowed manifest
// references is decided. A blob has no artifact type, so every boundary a
// manifest of that repository could fall in counts, in order: the first
// that is not warn makes it enforce (and is named); the first warn
// boundary that matches every artifact type ends the search as warn (the
// first matching boundary is named). ok is false when a manifest there
// could fall past every boundary to unmatched, which blob gating always
// treats as enforce, whether unmatched denies or insecurely allows.
func (e *Engine) BlobMode(upstream, repo string) (boundary string, mode Mode, ok bool) {
	for _, cb := range e.boundaries {
		if !cb.coversRepo(upstream, repo) {
			continue
		}
		if cb.Mode != ModeWarn || cb.Refused != "" {
			return cb.Name, ModeEnforce, true
		}
		if boundary == "" {
			boundary = cb.Name
		}
		if len(cb.ArtifactTypes) == 0 {
			return boundary, ModeWarn, true
		}
	}
	return "", ModeEnforce, false
}

// coversRepo reports whether the boundary matches upstream/repo for at
// least one artifact type.
func (b *Boundary) coversRepo(upstream, repo string) bool {
	if len(b.ArtifactTypes) == 0 {
		return b.matches(upstream, repo, "")
	}
	return b.matches(upstream, repo, b.ArtifactTypes[0])
}
