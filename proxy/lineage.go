package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
)

var _ verify.DependencyVerifier = (*Proxy)(nil)

// flightDepth is the context key under which a dependency flight records
// its remaining lineage depth, so that the dependencies it asks for can be
// held to a strictly smaller one (see VerifyDependency).
type flightDepth struct{}

// VerifyDependency decides on one lineage dependency named by a subject's
// provenance. It is called by the Verifier while it decides on the parent.
//
// dep.Registry is a lookup key into the configured upstreams (names and
// aliases, case-insensitive), exactly like ?ns=: a registry that is not
// configured is a denied verdict and nothing is dialled, so a provenance
// statement cannot make the proxy connect anywhere. The dependency's
// manifest is fetched by digest from its upstream and decided on under the
// boundary that matches its own upstream and repository, through the same
// verdict cache and shared verification as a pull.
//
// A denial (including a dependency the upstream does not have) is a
// verdict; an error means the dependency could not be decided, and the
// parent fails closed.
//
// # Deadlock freedom
//
// A verification shared through singleflight that waits for another shared
// verification deadlocks if the waits form a cycle. Within one lineage walk
// the Verifier breaks cycles through the chain, but two concurrent pulls
// can still meet crosswise: the pull of A verifies its dependency B while
// the pull of B verifies its dependency A. Were dependencies shared under
// the keys of pulls, A's flight would wait on B's and B's on A's forever.
// Two rules rule that out:
//
//   - A dependency's key is its verdict key qualified with its remaining
//     depth, a key space that pulls never use. A pull's flight therefore
//     only ever waits on dependency flights, and no flight waits on a
//     pull's flight.
//   - A dependency flight at remaining depth d records d in its context and
//     only waits on dependency flights of depth < d: a request for depth
//     >= d from within it is lowered to d-1, and a negative depth is a
//     denial, not a flight.
//
// Every wait thus goes from a pull to a dependency, or from a dependency to
// one of strictly smaller depth; such waits cannot form a cycle, and each
// chain of them ends within the depth budget. This holds whatever the
// Verifier does with the depth and the chain, provided it calls back with
// the context it was given.
//
// The depth in the key also keeps a dependency's verdict, computed with a
// reduced budget, from being served as the verdict of a pull of the same
// digest, and the other way round. The chain is not part of the key: a
// verdict depends on the chain only through cycle detection, and a subject
// that reaches a member of its chain lies on a cycle itself, so it is
// denied whichever chain it was first reached through; only the wording of
// the reason can differ.
func (p *Proxy) VerifyDependency(ctx context.Context, dep verify.DependencyRef, lc verify.LineageContext) (verify.Verdict, error) {
	v, err := p.verifyDependency(ctx, dep, lc)
	result := "deny"
	switch {
	case err != nil:
		result = "error"
	case v.Allowed:
		result = "allow"
	}
	p.metrics.lineageDeps.WithLabelValues(result).Inc()
	return v, err
}

func (p *Proxy) verifyDependency(ctx context.Context, dep verify.DependencyRef, lc verify.LineageContext) (verify.Verdict, error) {
	if len(lc.Chain) == 0 {
		// An empty chain would make the dependency a root, with a fresh
		// depth budget: refuse rather than let lineage recurse unbounded.
		return verify.Verdict{}, fmt.Errorf("dependency %s: no lineage chain given", dependencyLabel(dep))
	}
	if parent, ok := ctx.Value(flightDepth{}).(int); ok && lc.Depth >= parent {
		lc.Depth = parent - 1
	}
	if lc.Depth < 0 {
		return deniedDependency(dep.Digest, "dependency %s: lineage depth exhausted", dependencyLabel(dep)), nil
	}

	u := p.router.byKey[strings.ToLower(dep.Registry)]
	if u == nil {
		return deniedDependency(dep.Digest, "dependency registry %q is not a configured upstream (configured: %s)",
			truncate(dep.Registry, maxNsLength), p.router.listing), nil
	}
	repo := dep.Repository
	if validateName(repo) != nil || validateRepo(repo) != nil {
		return deniedDependency(dep.Digest, "dependency %s: invalid repository name %q",
			dependencyLabel(dep), truncate(repo, maxNameLength)), nil
	}
	if u.dockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	if _, derr := parseDigest(dep.Digest.String()); derr != nil {
		return deniedDependency(dep.Digest, "dependency %s: unusable digest: %s",
			dependencyLabel(dep), derr.Message), nil
	}
	digest := dep.Digest
	lc.Chain = slices.Clone(lc.Chain)
	mr := manifestReq{u: u, repo: repo, ref: digest.String(), client: "lineage", lineage: lc}
	key := dependencyKey(verdictKey(p.verifier.Fingerprint(), u.name, repo, digest), lc.Depth)

	if vc := p.opts.verdicts; vc != nil {
		if v, ok := vc.Get(key); ok {
			p.metrics.verdictCache.WithLabelValues("hit").Inc()
			return v, nil
		}
		p.metrics.verdictCache.WithLabelValues("miss").Inc()
	}

	ch := p.flights.DoChan(key, func() (res any, err error) {
		defer func() {
			if rec := recover(); rec != nil {
				p.log.Error("dependency verification panicked", zap.Any("panic", rec), zap.String("digest", digest.String()))
				res, err = nil, errors.New("dependency verification panicked")
			}
		}()
		// Detached like a pull's verification, so that the parent that
		// started it giving up fails none of the others sharing it.
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.verifyTimeout)
		defer cancel()
		vctx = context.WithValue(vctx, flightDepth{}, lc.Depth)
		if vc := p.opts.verdicts; vc != nil {
			if v, ok := vc.Get(key); ok {
				return v, nil
			}
		}
		v, err := p.decideDependency(vctx, mr, digest)
		if err != nil {
			return nil, err
		}
		if vc := p.opts.verdicts; vc != nil {
			vc.Add(key, v)
		}
		return v, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return verify.Verdict{}, r.Err
		}
		return r.Val.(verify.Verdict), nil
	case <-ctx.Done():
		return verify.Verdict{}, fmt.Errorf("dependency %s/%s@%s: %w", u.name, repo, digest, context.Cause(ctx))
	}
}

// decideDependency fetches a dependency's manifest by digest and has it
// verified like a pulled one.
func (p *Proxy) decideDependency(ctx context.Context, mr manifestReq, digest v1.Hash) (verify.Verdict, error) {
	m, _, err := p.manifestBytes(ctx, mr.u, mr.repo, digest, nil)
	if err != nil {
		if errors.Is(err, verify.ErrNotFound) {
			// The upstream's answer about content, not a failure to reach
			// it: a dependency that does not exist cannot be verified.
			return deniedDependency(digest, "dependency %s@%s not found at upstream %s", mr.repo, digest, mr.u.name), nil
		}
		return verify.Verdict{}, fmt.Errorf("failed to fetch dependency %s/%s@%s: %w", mr.u.name, mr.repo, digest, err)
	}
	v, err := p.evaluate(ctx, mr, m)
	if err != nil {
		return verify.Verdict{}, fmt.Errorf("failed to verify dependency %s/%s@%s: %w", mr.u.name, mr.repo, digest, err)
	}
	return v, nil
}

// dependencyKey qualifies a verdict key with the remaining lineage depth.
// No pull uses such a key, which both keeps reduced-budget verdicts apart
// from full ones and keeps pulls from ever waiting on each other.
func dependencyKey(key string, depth int) string {
	return key + "\x00depth=" + strconv.Itoa(depth)
}

// dependencyLabel names dep in messages: as the statement wrote it when it
// did, bounded, since it comes from evidence.
func dependencyLabel(dep verify.DependencyRef) string {
	if dep.URI != "" {
		return truncate(dep.URI, maxReasonLength)
	}
	return truncate(fmt.Sprintf("%s/%s@%s", dep.Registry, dep.Repository, dep.Digest), maxReasonLength)
}

func deniedDependency(d v1.Hash, format string, args ...any) verify.Verdict {
	return verify.Verdict{
		Allowed:   false,
		Mode:      verify.ModeEnforce,
		Digest:    d.String(),
		Reasons:   []string{fmt.Sprintf(format, args...)},
		CheckedAt: time.Now(),
	}
}
