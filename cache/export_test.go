package cache

import "time"

// NewVerdictsWithClock lets tests drive expiry with a fake clock instead of
// sleeping.
func NewVerdictsWithClock(size int, allowTTL, denyTTL time.Duration, now func() time.Time) (*Verdicts, error) {
	return newVerdicts(size, allowTTL, denyTTL, now)
}
