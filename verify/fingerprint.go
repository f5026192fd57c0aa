package verify

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"sync"
)

// maxScopedMemo bounds the remembered per-repository fingerprints: one per
// distinct set of boundaries a repository can fall in, which clients
// choose by the repositories they ask for.
const maxScopedMemo = 4096

// maxScopedRepos bounds the repositories whose fingerprint is remembered;
// beyond it a fingerprint is derived again on each call.
const maxScopedRepos = 16384

// scopedFingerprints derives, for a repository, a fingerprint of only the
// policy that can decide its verdicts, so that editing one boundary keeps
// the cached verdicts of repositories it cannot match.
type scopedFingerprints struct {
	boundaries []*Boundary
	// base hashes what decides every verdict: the evidence limits and
	// what happens to unmatched subjects.
	base string
	// perBoundary[i] identifies boundaries[i]'s rules and trust material.
	perBoundary []string
	// all covers every boundary: the fingerprint of a repository a
	// boundary with a lineage rule can match, whose verdicts rest on
	// dependencies that any boundary may decide.
	all string

	// memo maps a set of candidate boundaries (a bit mask) to its
	// fingerprint, repos an upstream and repository to theirs, so that a
	// warm lookup neither matches globs nor allocates.
	mu     sync.RWMutex
	memo   map[uint64]string
	repos  map[string]map[string]string
	nRepos int
}

func newScopedFingerprints(p Policy, o options) *scopedFingerprints {
	s := &scopedFingerprints{memo: map[uint64]string{}, repos: map[string]map[string]string{}}
	base, _ := json.Marshal(struct {
		V                 int
		U                 bool
		Limits            EvidenceLimits
		MaxEvidence, Deps int
	}{1, p.InsecureAllowUnmatched, o.limits, o.maxEvidence, o.maxDeps})
	s.base = digestOf(base)
	for i := range p.Boundaries {
		b := &p.Boundaries[i]
		s.boundaries = append(s.boundaries, b)
		s.perBoundary = append(s.perBoundary, boundaryFingerprint(b))
	}
	all := make([]int, len(s.boundaries))
	for i := range all {
		all[i] = i
	}
	s.all = s.combine(all)
	return s
}

// boundaryFingerprint is b.Fingerprint, else a hash of b's rules, keys and
// trusted roots as the engine sees them.
func boundaryFingerprint(b *Boundary) string {
	fp := b.Fingerprint
	if fp == "" {
		fp = policyHash(Policy{Boundaries: []Boundary{*b}}, options{})
	}
	if b.Refused == "" {
		return fp
	}
	return digestOf([]byte(fp + "\x00refused\x00" + b.Refused))
}

// combine hashes the base with the listed boundaries, in decision order:
// a boundary added in front of, removed from or moved among them changes
// which one decides.
func (s *scopedFingerprints) combine(idx []int) string {
	h := sha256.New()
	write := func(v string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(v)))
		h.Write(n[:])
		h.Write([]byte(v))
	}
	write(s.base)
	for _, i := range idx {
		write(s.boundaries[i].Name)
		write(s.perBoundary[i])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// FingerprintFor identifies the part of the policy that decides verdicts
// of upstream/repo: the engine's limits, what happens to unmatched
// subjects and every boundary that can match the repository for some
// artifact type (first match wins, so each of them can decide), in order.
// A change to a boundary that cannot match the repository leaves it
// unchanged. Where a boundary with a lineage rule can match, the verdict
// rests on dependencies any boundary may decide, and every boundary
// counts.
func (e *Engine) FingerprintFor(upstream, repo string) string {
	s := e.scoped
	s.mu.RLock()
	fp, ok := s.repos[upstream][repo]
	s.mu.RUnlock()
	if ok {
		return fp
	}
	fp = s.forRepo(upstream, repo)
	s.mu.Lock()
	if s.nRepos < maxScopedRepos {
		m := s.repos[upstream]
		if m == nil {
			m = map[string]string{}
			s.repos[strings.Clone(upstream)] = m
		}
		if _, dup := m[repo]; !dup {
			// Cloned: the caller's string may share a request's memory.
			m[strings.Clone(repo)] = fp
			s.nRepos++
		}
	}
	s.mu.Unlock()
	return fp
}

func (s *scopedFingerprints) forRepo(upstream, repo string) string {
	var mask uint64
	var idx []int
	small := len(s.boundaries) <= 64
	for i, b := range s.boundaries {
		if !b.matchesRepo(upstream, repo) {
			continue
		}
		if b.Lineage != nil {
			return s.all
		}
		if small {
			mask |= 1 << i
		} else {
			idx = append(idx, i)
		}
	}
	if !small {
		return s.combine(idx)
	}
	s.mu.RLock()
	fp, ok := s.memo[mask]
	s.mu.RUnlock()
	if ok {
		return fp
	}
	for i := range s.boundaries {
		if mask&(1<<i) != 0 {
			idx = append(idx, i)
		}
	}
	fp = s.combine(idx)
	s.mu.Lock()
	if len(s.memo) < maxScopedMemo {
		s.memo[mask] = fp
	}
	s.mu.Unlock()
	return fp
}

// matchesRepo is matches for any artifact type.
func (b *Boundary) matchesRepo(upstream, repo string) bool {
	if b.Upstream != "" && b.Upstream != "*" && b.Upstream != upstream {
		return false
	}
	if len(b.Repositories) == 0 {
		return true
	}
	for _, g := range b.Repositories {
		if matchRepo(g, repo) {
			return true
		}
	}
	return false
}

// BoundaryInfo describes one boundary of the engine's policy.
type BoundaryInfo struct {
	Name    string `json:"name"`
	Mode    Mode   `json:"mode"`
	Owner   string `json:"owner,omitempty"`
	Version string `json:"version,omitempty"`
	Source  string `json:"source,omitempty"`
	// Order is the boundary file's order; nil inline.
	Order *int `json:"order,omitempty"`
	// Position is the boundary's place in decision order, from 0.
	Position    int    `json:"position"`
	Fingerprint string `json:"fingerprint"`
	// Refused is why a stand-in denies everything it matches.
	Refused string `json:"refused,omitempty"`
	// Problems are those of a newer version that was refused while this
	// one was kept, or the stand-in's.
	Problems []string `json:"problems,omitempty"`
}

// Boundaries lists the policy's boundaries in decision order.
func (e *Engine) Boundaries() []BoundaryInfo {
	s := e.scoped
	out := make([]BoundaryInfo, len(s.boundaries))
	for i, b := range s.boundaries {
		mode := b.Mode
		if b.Refused != "" {
			mode = ModeEnforce
		}
		out[i] = BoundaryInfo{Name: b.Name, Mode: mode, Owner: b.Owner, Version: b.Version, Source: b.Source, Order: b.Order,
			Position: i, Fingerprint: s.perBoundary[i], Refused: b.Refused, Problems: slices.Clone(b.Problems)}
	}
	return out
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
