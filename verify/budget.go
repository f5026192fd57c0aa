package verify

import (
	"errors"
	"fmt"
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

// budget is what one verification may still read.
type budget struct {
	limits EvidenceLimits
	used   int64
	items  int // manifests and blobs read
	// exceeded is set once a read was refused or went past the total.
	exceeded bool
}

func (b *budget) remaining() int64 { return max(b.limits.TotalBytes-b.used, 0) }

// admit reports whether an item declaring size bytes may be read at all;
// when it does not fit in what is left, the budget is spent.
func (b *budget) admit(size int64) error {
	if b.exceeded {
		return errBudget
	}
	if size > b.remaining() {
		b.exceeded = true
		return errBudget
	}
	return nil
}

// charge counts n bytes read. Reads without a declared size are charged
// after the fact, so used may pass the total by one such read; the budget
// is then spent.
func (b *budget) charge(n int64) error {
	b.used += n
	b.items++
	if b.used > b.limits.TotalBytes {
		b.exceeded = true
		return errBudget
	}
	return nil
}

func (b *budget) reason() string {
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
