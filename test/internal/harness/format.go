package harness

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Counts lists m as "key ×n", most frequent first, ties by key.
func Counts(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return out
}

// CountsText is Counts on one line, "none" when m is empty.
func CountsText(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	return strings.Join(Counts(m), ", ")
}

// Duration formats a latency or CPU time with about three significant
// digits; zero or less is "–" (not measured).
func Duration(d time.Duration) string {
	switch {
	case d <= 0:
		return "–"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}
