package verify

import (
	"errors"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The rules of a lineage walk: how a dependency's LineageContext follows
// from its parent's (dependencyLineage, cycleReason), what a
// DependencyVerifier accepts (AdmitDependency) and what a dependency's
// verdict is keyed by (DependencyKey). The engine walks, the
// DependencyVerifier fetches and shares; both go by these rules.

// dependencyLineage derives the lineage context s's dependencies are
// verified with: the remaining depth one lower (a root starts from the
// boundary's depth) and the chain extended by s. It reports false when no
// depth remains, so s's dependencies cannot be followed.
func dependencyLineage(s Subject, rootDepth int) (LineageContext, bool) {
	remaining := s.Lineage.Depth
	if len(s.Lineage.Chain) == 0 && remaining == 0 {
		remaining = rootDepth
	}
	if remaining <= 0 {
		return LineageContext{}, false
	}
	self := s.Upstream + "/" + s.Repository + "@" + s.Digest.String()
	return LineageContext{
		Dependencies: s.Lineage.Dependencies,
		Depth:        remaining - 1,
		Chain:        append(slices.Clone(s.Lineage.Chain), self),
	}, true
}

// cycleReason reports whether following dep from the subject whose
// dependencies have chain closes a cycle, and names the cycle. Digests are
// compared, not names: the same content reached through another registry
// or repository is the same node.
func cycleReason(chain []string, dep DependencyRef) (string, bool) {
	for i, c := range chain {
		if h, ok := chainDigest(c); ok && h == dep.Digest {
			labels := make([]string, 0, len(chain)-i+1)
			for _, c := range chain[i:] {
				labels = append(labels, chainLabel(c))
			}
			labels = append(labels, dep.Repository+"@"+shortDigest(dep.Digest))
			return "cycle: " + strings.Join(labels, " ← "), true
		}
	}
	return "", false
}

// AdmitDependency checks the lineage context lc a DependencyVerifier was
// handed and returns the one to verify the dependency with (its chain a
// copy). within is the remaining depth of the dependency verification the
// call comes from, and nested whether it comes from one at all (false for
// a pull's). A depth at or above within is lowered to within-1. It reports
// false when no depth remains: the dependency is then denied, not
// verified. An empty chain is an error, since it would make the dependency
// a root with a fresh depth budget and let lineage recurse unbounded.
//
// These rules keep a DependencyVerifier that shares verifications between
// concurrent callers (the proxy's singleflight) free of deadlock. A shared
// verification that waits for another deadlocks if the waits form a cycle.
// Within one walk the engine breaks cycles through the chain, but two
// concurrent walks can still meet crosswise: the pull of A verifies its
// dependency B while the pull of B verifies its dependency A. Were
// dependencies shared under the keys of pulls, A's verification would wait
// on B's and B's on A's forever. Provided the verifier keys shared
// dependency verifications by DependencyKey and passes here the depth of
// the shared verification the call comes from:
//
//   - A dependency's key is a key space that pulls never use, so a pull's
//     verification only ever waits on dependency verifications, and none
//     waits on a pull's.
//   - A dependency verification at remaining depth d only waits on
//     dependency verifications of depth < d: a request for depth >= d from
//     within it is lowered to d-1, and a negative depth is a denial, not a
//     verification.
//
// Every wait thus goes from a pull to a dependency, or from a dependency
// to one of strictly smaller depth; such waits cannot form a cycle, and
// each chain of them ends within the depth budget. This holds whatever the
// Verifier between the two does with the depth and the chain, provided it
// calls back with the context it was given (which is how the verifier
// learns the depth a call comes from).
func AdmitDependency(lc LineageContext, within int, nested bool) (LineageContext, bool, error) {
	if len(lc.Chain) == 0 {
		return LineageContext{}, false, errors.New("no lineage chain given")
	}
	if nested && lc.Depth >= within {
		lc.Depth = within - 1
	}
	lc.Chain = slices.Clone(lc.Chain)
	return lc, lc.Depth >= 0, nil
}

// DependencyKey qualifies key, the verdict key of a subject, for its
// verdict as a dependency verified with lc. The remaining depth is the
// qualifier: it keeps a verdict computed with a reduced budget from being
// served as the verdict of a pull of the same digest, and the other way
// round, and keeps pulls from ever waiting on each other (see
// AdmitDependency). The chain is not part of the key: a verdict depends on
// the chain only through cycle detection, and a subject that reaches a
// member of its chain lies on a cycle itself, so it is denied whichever
// chain it was first reached through; only the wording of the reason can
// differ.
func DependencyKey(key string, lc LineageContext) string {
	return key + "\x00depth=" + strconv.Itoa(lc.Depth)
}

// shortDigest keeps messages readable; verdicts keep full digests.
func shortDigest(h v1.Hash) string {
	hx := h.Hex
	if len(hx) > 12 {
		hx = hx[:12]
	}
	return h.Algorithm + ":" + hx
}

// chainLabel shortens a Chain entry "upstream/repository@digest" to
// "repository@sha256:<12 hex>".
func chainLabel(entry string) string {
	at := strings.LastIndex(entry, "@")
	if at < 0 {
		return entry
	}
	repo := entry[:at]
	if _, r, ok := strings.Cut(repo, "/"); ok {
		repo = r
	}
	if h, err := v1.NewHash(entry[at+1:]); err == nil {
		return repo + "@" + shortDigest(h)
	}
	return repo + "@" + entry[at+1:]
}

func chainDigest(entry string) (v1.Hash, bool) {
	at := strings.LastIndex(entry, "@")
	if at < 0 {
		return v1.Hash{}, false
	}
	h, err := v1.NewHash(entry[at+1:])
	return h, err == nil
}
