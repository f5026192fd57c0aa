package main

import (
	"fmt"
	"slices"
	"strings"
)

// Phases of a bench run, selectable with -only.
const (
	phaseManifests = "manifests" // cold and warm GET by digest, HEAD by tag
	phaseBlobs     = "blobs"     // throughput and RSS while streaming
	phaseHerd      = "herd"
	phaseLineage   = "lineage"
	phaseInProcess = "inprocess" // engine CPU and verdict cache heap
	phaseBomb      = "bomb"      // evidence, predicate and key bombs
	phaseFlood     = "flood"     // abandoned requests against a tarpit upstream
	phaseStall     = "stall"     // clients that never read an allowed blob
	phaseShared    = "shared"    // replicas on one redis-server: L2 against L1, herds
	phaseBlobHerd  = "blobherd"  // many clients pulling one large blob through a cold proxy
)

var phaseNames = []string{phaseManifests, phaseBlobs, phaseHerd, phaseLineage, phaseInProcess, phaseBomb, phaseFlood, phaseStall, phaseShared, phaseBlobHerd}

// phaseSet is the phases to run; nil means all of them.
type phaseSet map[string]bool

func parsePhases(s string) (phaseSet, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	set := phaseSet{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(phaseNames, f) {
			return nil, fmt.Errorf("unknown phase %q (phases: %s)", f, strings.Join(phaseNames, ", "))
		}
		set[f] = true
	}
	return set, nil
}

func (s phaseSet) has(names ...string) bool {
	if s == nil {
		return true
	}
	for _, n := range names {
		if s[n] {
			return true
		}
	}
	return false
}

func (s phaseSet) String() string {
	if s == nil {
		return "all"
	}
	var out []string
	for _, n := range phaseNames {
		if s[n] {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}
