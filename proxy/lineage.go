package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
)

var _ verify.DependencyVerifier = (*Proxy)(nil)

// flightDepth is the context key under which a dependency flight records
// its remaining lineage depth, so that the dependencies it asks for are
// admitted by verify.AdmitDependency at a strictly smaller one.
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
// Dependency verifications are shared through singleflight, so their waits
// must not form a cycle; verify.AdmitDependency states the rules and why
// they suffice. The proxy keeps its side of them: a dependency's flight and
// cached verdict are keyed by verify.DependencyKey, never by a pull's key;
// the flight records its admitted depth in its context (flightDepth); and
// every call made with that context (the Verifier calls back with the
// context it was given) is admitted below that depth.
func (p *Proxy) VerifyDependency(ctx context.Context, dep verify.DependencyRef, lc verify.LineageContext) (verify.Verdict, error) {
	ctx, span := p.startDependency(ctx, dep)
	v, err := p.verifyDependency(ctx, dep, lc)
	result := "deny"
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopped: the parent's client left, or another dependency of
		// the same parent was denied first (verify.WithLineageConcurrency).
		result = "cancelled"
	case err != nil:
		result = "error"
	case v.Allowed:
		result = "allow"
	}
	endDependency(span, result, err)
	p.metrics.lineageDeps.WithLabelValues(result).Inc()
	return v, err
}

func (p *Proxy) verifyDependency(ctx context.Context, dep verify.DependencyRef, lc verify.LineageContext) (verify.Verdict, error) {
	within, nested := ctx.Value(flightDepth{}).(int)
	lc, ok, err := verify.AdmitDependency(lc, within, nested)
	if err != nil {
		return verify.Verdict{}, fmt.Errorf("dependency %s: %w", dependencyLabel(dep), err)
	}
	if !ok {
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
	// The parent's Verifier decides its dependencies, even when a reload
	// swapped in another since the parent's request started.
	pv := p.verifierFor(ctx)
	mr := manifestReq{u: u, repo: repo, ref: digest.String(), client: "lineage", lineage: lc, v: pv}
	key := verify.DependencyKey(verdictKey(pv.FingerprintFor(u.name, repo), u.name, repo, digest), lc)

	if vc := p.opts.verdicts; vc != nil {
		if v, ok := p.cachedDependency(vc, key); ok {
			p.metrics.verdictCache.WithLabelValues("hit").Inc()
			return p.revokeDependency(v, nil)
		}
		p.metrics.verdictCache.WithLabelValues("miss").Inc()
	}

	// The waiters of a dependency's flight are parent verifications: the
	// parent that started it giving up fails none of the others sharing
	// it, and when every parent has given up (their clients left, or they
	// timed out) the dependency's verification is cancelled too. It takes
	// no verification slot: it runs inside its parent's (see
	// verifyLimiter).
	v, err := p.depFlights.do(ctx, key, func(fctx context.Context) (v verify.Verdict, err error) {
		defer func() {
			if rec := recover(); rec != nil {
				p.log.Error("dependency verification panicked", zap.Any("panic", rec), zap.String("digest", digest.String()))
				v, err = verify.Verdict{}, errors.New("dependency verification panicked")
			}
		}()
		vctx, cancel := context.WithTimeout(fctx, p.opts.verifyTimeout)
		defer cancel()
		vctx = context.WithValue(vctx, flightDepth{}, lc.Depth)
		if vc := p.opts.verdicts; vc != nil {
			if v, ok := p.cachedDependency(vc, key); ok {
				return v, nil
			}
		}
		v, err = p.decideDependency(vctx, mr, digest)
		if err == nil {
			err = settled(vctx)
		}
		if err != nil {
			return verify.Verdict{}, err
		}
		if vc := p.opts.verdicts; vc != nil {
			vc.Add(key, v)
		}
		return v, nil
	})
	if err != nil && ctx.Err() != nil {
		return verify.Verdict{}, fmt.Errorf("dependency %s/%s@%s: %w", u.name, repo, digest, context.Cause(ctx))
	}
	return p.revokeDependency(v, err)
}

// decideDependency fetches a dependency's manifest by digest and has it
// verified like a pulled one.
func (p *Proxy) decideDependency(ctx context.Context, mr manifestReq, digest v1.Hash) (verify.Verdict, error) {
	ctx, stop := p.readEvidenceAhead(ctx, mr, digest, nil)
	defer stop()
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
