package verify

import (
	"errors"
	"fmt"
	"sync"
)

// Default evidence limits (WithEvidenceLimits). Real evidence is small: a
// bundle is a few kilobytes, an attestation rarely more than a few hundred.
// The total bounds the memory one verification can be made to use by
// whoever can push referrers next to a subject.
const (
	DefaultEvidenceBytes    = 16 << 20
	DefaultSignatureBytes   = 1 << 20
	DefaultAttestationBytes = 4 << 20
	DefaultPredicateDepth   = 64
)

// Limits named in Verdict.Limit when one left evidence unread and the
// subject was denied for it.
const (
	// LimitEvidenceBytes is the per-verification byte budget
	// (EvidenceLimits.TotalBytes).
	LimitEvidenceBytes = "evidence_bytes"
	// LimitEvidenceItems is the number of referrers, fallback index
	// entries and legacy layers examined (WithMaxEvidence).
	LimitEvidenceItems = "evidence_items"
)

// EvidenceLimits bound the evidence one Verify call reads. Lineage
// dependencies are verified by calls of their own, each with its own
// budget.
type EvidenceLimits struct {
	// TotalBytes bounds all evidence read for one subject: referrer
	// manifests, the fallback tag index, the legacy .sig and .att
	// manifests and every blob. When it runs out before the decision is
	// made, the subject is denied ("evidence budget exceeded").
	TotalBytes int64
	// SignatureBytes bounds one signature: a message-signature bundle or
	// a simplesigning payload.
	SignatureBytes int64
	// AttestationBytes bounds one DSSE bundle or legacy attestation
	// envelope, and one evidence manifest.
	AttestationBytes int64
	// PredicateDepth bounds how deeply an in-toto predicate may nest
	// objects and arrays.
	PredicateDepth int
}

// DefaultEvidenceLimits returns the limits an Engine uses unless
// WithEvidenceLimits says otherwise.
func DefaultEvidenceLimits() EvidenceLimits {
	return EvidenceLimits{
		TotalBytes:       DefaultEvidenceBytes,
		SignatureBytes:   DefaultSignatureBytes,
		AttestationBytes: DefaultAttestationBytes,
		PredicateDepth:   DefaultPredicateDepth,
	}
}

func (l EvidenceLimits) validate() error {
	if l.TotalBytes <= 0 {
		return fmt.Errorf("evidence total bytes must be positive, got %d", l.TotalBytes)
	}
	if l.SignatureBytes <= 0 || l.SignatureBytes > l.TotalBytes {
		return fmt.Errorf("signature bytes must be in 1..%d (the total), got %d", l.TotalBytes, l.SignatureBytes)
	}
	if l.AttestationBytes <= 0 || l.AttestationBytes > l.TotalBytes {
		return fmt.Errorf("attestation bytes must be in 1..%d (the total), got %d", l.TotalBytes, l.AttestationBytes)
	}
	if l.PredicateDepth <= 0 {
		return fmt.Errorf("predicate depth must be positive, got %d", l.PredicateDepth)
	}
	return nil
}

// WithEvidenceLimits sets the evidence byte budget per verification, the
// per-item limits and the predicate depth limit. Every field must be
// positive and each item limit at most the total. Default
// DefaultEvidenceLimits().
func WithEvidenceLimits(l EvidenceLimits) Option {
	return func(o *options) error {
		if err := l.validate(); err != nil {
			return err
		}
		o.limits = l
		return nil
	}
}

// errBudget stops reading evidence: the next read would pass the total.
var errBudget = errors.New("evidence budget exceeded")

// budget is what one verification may still read. What the run reads
// in order is charged (used); what it reads ahead, concurrently, is
// reserved until the run reaches it. Only used decides: a run with reads
// ahead charges exactly what the same run in order would, in the same
// order, so its verdict is the same. Reservations only bound the reads
// ahead, so that reading ahead never holds more than the total.
type budget struct {
	limits EvidenceLimits
	mu     sync.Mutex
	used   int64
	items  int // manifests and blobs read
	// reserved is what reads ahead may hold until they are taken.
	reserved int64
	// exceeded is set once a read was refused or went past the total.
	exceeded bool
}

func (b *budget) remaining() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(b.limits.TotalBytes-b.used, 0)
}

// admit reports whether an item declaring size bytes may be read at all;
// when it does not fit in what is left, the budget is spent.
func (b *budget) admit(size int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exceeded {
		return errBudget
	}
	if size > max(b.limits.TotalBytes-b.used, 0) {
		b.exceeded = true
		return errBudget
	}
	return nil
}

// charge counts n bytes read. Reads without a declared size are charged
// after the fact, so used may pass the total by one such read; the budget
// is then spent.
func (b *budget) charge(n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used += n
	b.items++
	if b.used > b.limits.TotalBytes {
		b.exceeded = true
		return errBudget
	}
	return nil
}

// spend marks the budget spent.
func (b *budget) spend() {
	b.mu.Lock()
	b.exceeded = true
	b.mu.Unlock()
}

// reserve sets n bytes aside for a read ahead, when they fit in what is
// neither used nor reserved. A read that does not fit is not made ahead:
// the run makes it in order, if it gets there.
func (b *budget) reserve(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.exceeded || n < 0 || b.used+b.reserved+n > b.limits.TotalBytes {
		return false
	}
	b.reserved += n
	return true
}

// release returns a reservation: its read was taken (and is charged in
// order like any other) or dropped.
func (b *budget) release(n int64) {
	b.mu.Lock()
	b.reserved -= n
	b.mu.Unlock()
}

func (b *budget) reason() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return fmt.Sprintf("%v: read %s of evidence in %d %s, limit %s",
		errBudget, fmtSize(b.used), b.items, plural(b.items, "item", "items"), fmtSize(b.limits.TotalBytes))
}

// fmtSize prints a byte count the way limits are configured: whole MiB
// and KiB exactly, otherwise to one decimal.
func fmtSize(n int64) string {
	const kib, mib = 1 << 10, 1 << 20
	switch {
	case n >= mib && n%mib == 0:
		return fmt.Sprintf("%d MiB", n/mib)
	case n >= mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	case n >= kib && n%kib == 0:
		return fmt.Sprintf("%d KiB", n/kib)
	case n >= kib:
		return fmt.Sprintf("%.1f KiB", float64(n)/kib)
	}
	return fmt.Sprintf("%d bytes", n)
}

// jsonDepth returns how deeply b nests objects and arrays, stopping as
// soon as it passes limit. It does not validate b; it only counts
// brackets outside strings, so checking depth costs no allocation
// whatever b holds.
func jsonDepth(b []byte, limit int) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > deepest {
				deepest = depth
				if deepest > limit {
					return deepest
				}
			}
		case '}', ']':
			depth--
		}
	}
	return deepest
}
