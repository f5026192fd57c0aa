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
