package verify

import (
	"errors"
	"testing"
)

// Reads ahead reserve their bytes in what is neither used nor reserved,
// so that together they never hold more than the total, and a spent
// budget reserves nothing.
func TestBudgetReservations(t *testing.T) {
	t.Parallel()
	b := &budget{limits: EvidenceLimits{TotalBytes: 100}}
	if !b.reserve(60) {
		t.Fatal("60 of 100 refused")
	}
	if b.reserve(41) {
		t.Fatal("41 more reserved over 60 of 100")
	}
	if !b.reserve(40) {
		t.Fatal("the last 40 of 100 refused")
	}
	if b.reserve(1) {
		t.Fatal("a byte reserved past the total")
	}
	if b.reserve(-1) {
		t.Fatal("a negative reservation accepted")
	}
	b.release(60)
	if err := b.charge(30); err != nil {
		t.Fatal(err)
	}
	// 30 used and 40 reserved leave 30.
	if b.reserve(31) {
		t.Fatal("31 reserved with 30 left")
	}
	if !b.reserve(30) {
		t.Fatal("the 30 left refused")
	}
	b.release(70)
	if got := b.remaining(); got != 70 {
		t.Fatalf("remaining = %d, want 70 (reservations are not used)", got)
	}
	b.spend()
	if b.reserve(0) || b.reserve(1) {
		t.Fatal("a spent budget reserved")
	}
	if err := b.admit(0); !errors.Is(err, errBudget) {
		t.Fatalf("admit on a spent budget = %v", err)
	}
}

// The reason names the bytes read, the number of reads and the total.
func TestBudgetReason(t *testing.T) {
	t.Parallel()
	b := &budget{limits: EvidenceLimits{TotalBytes: 3 << 10}}
	for _, n := range []int64{1 << 10, 1 << 10} {
		if err := b.charge(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.charge(1<<10 + 1); !errors.Is(err, errBudget) {
		t.Fatalf("charge past the total = %v", err)
	}
	const want = "evidence budget exceeded: read 3.0 KiB of evidence in 3 items, limit 3 KiB"
	if got := b.reason(); got != want {
		t.Fatalf("reason = %q, want %q", got, want)
	}
}
