package verify

import (
	"fmt"
	"path"
	"strings"
)

// validateGlob reports a repository glob that path.Match would reject, so a
// typo fails at start instead of silently never matching.
func validateGlob(glob string) error {
	if glob == "" {
		return fmt.Errorf("empty repository glob")
	}
	for _, seg := range strings.Split(glob, "/") {
		if seg == "**" {
			continue
		}
		if strings.Contains(seg, "**") {
			return fmt.Errorf("repository glob %q: \"**\" must be a whole path segment", glob)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf("repository glob %q: %w", glob, err)
		}
	}
	return nil
}

// matchRepo matches a repository path against a glob in which "*" (and the
// other path.Match metacharacters) stay within one segment and a "**"
// segment matches zero or more whole segments.
func matchRepo(glob, repo string) bool {
	return matchSegments(strings.Split(glob, "/"), strings.Split(repo, "/"))
}

// MatchRepository reports whether repo matches glob with the semantics of
// boundaries' repository globs, for other places that take such globs
// (client grants).
func MatchRepository(glob, repo string) bool { return matchRepo(glob, repo) }

func matchSegments(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			rest := pat[1:]
			if len(rest) == 0 {
				return len(name) > 0
			}
			for i := 0; i <= len(name); i++ {
				if matchSegments(rest, name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		ok, err := path.Match(pat[0], name[0])
		if err != nil || !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

func (b *Boundary) matches(upstream, repo, artifactType string) bool {
	if b.Upstream != "" && b.Upstream != "*" && b.Upstream != upstream {
		return false
	}
	if len(b.Repositories) > 0 {
		found := false
		for _, g := range b.Repositories {
			if matchRepo(g, repo) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if len(b.ArtifactTypes) > 0 {
		found := false
		for _, t := range b.ArtifactTypes {
			if t == artifactType {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
