package verify

import (
	"context"
	"fmt"
	"sync"
)

// DefaultLineageConcurrency is how many dependencies of one subject are
// verified at once unless WithLineageConcurrency says otherwise.
const DefaultLineageConcurrency = 4

// WithLineageConcurrency bounds how many of one subject's provenance
// dependencies are verified at once. Each dependency verified may follow
// its own with the same bound, so a walk of depth d verifies at most n^d
// subjects at once, and never more than the dependencies it follows
// (WithMaxDependencies). 1 verifies them one after the other. Default
// DefaultLineageConcurrency.
func WithLineageConcurrency(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("lineage concurrency must be at least 1, got %d", n)
		}
		o.lineageConcurrency = n
		return nil
	}
}

// followed is one dependency's outcome: its verdict, or that it was not
// decided (not started, or stopped once a sibling was denied).
type followed struct {
	verdict Verdict
	decided bool
}

// follow verifies refs through dv, at most n at once, in their order.
// The first denial stops the rest: those not yet decided are cancelled
// and come back undecided, so a walk with one denied dependency is
// denied as soon as that one is, however long the others would take.
// A dependency that cannot be decided fails the whole subject and stops
// the rest the same way. Whichever comes first decides between the two,
// and both fail closed: the subject is allowed only when every
// dependency was decided allowed, and never because one of them was
// still running or was stopped.
func follow(ctx context.Context, dv DependencyVerifier, refs []DependencyRef, lc LineageContext, n int) ([]followed, error) {
	out := make([]followed, len(refs))
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu sync.Mutex
		// stop is the index of the dependency whose denial or failure
		// stopped the others, -1 while none has; failed says it failed.
		stop   = -1
		failed error
	)
	end := func(i int, err error) {
		mu.Lock()
		if stop < 0 {
			stop, failed = i, err
			cancel()
		}
		mu.Unlock()
	}
	sem := make(chan struct{}, max(n, 1))
	var wg sync.WaitGroup
	for i, ref := range refs {
		select {
		case sem <- struct{}{}:
		case <-gctx.Done():
		}
		if gctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			v, err := dv.VerifyDependency(gctx, ref, lc)
			if err != nil {
				// After another's denial or failure, this one's error is
				// most likely its cancellation: only the first counts.
				end(i, err)
				return
			}
			out[i] = followed{verdict: v, decided: true}
			if !v.Allowed {
				end(i, nil)
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if failed != nil {
		return nil, fmt.Errorf("verifying dependency %s (%s): %w", refs[stop].Name, refs[stop].URI, failed)
	}
	return out, nil
}
