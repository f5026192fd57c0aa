package hostile

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Stats is one observation of a process. Goroutines is -1 when the process
// did not say (no /metrics, or it did not answer).
type Stats struct {
	RSS, HWM   int64 // bytes, VmRSS and VmHWM
	FDs        int
	Threads    int
	Goroutines float64
}

// ReadStats reads the memory, descriptor and thread counts of pid from
// /proc. Goroutines is left at -1; see ScrapeGoroutines.
func ReadStats(pid int) (Stats, error) {
	s := Stats{Goroutines: -1}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("failed to read process status: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "VmRSS", "VmHWM":
			if len(f) != 2 || f[1] != "kB" {
				return s, fmt.Errorf("unexpected %s line %q", k, sc.Text())
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return s, fmt.Errorf("failed to parse %s: %w", k, err)
			}
			if k == "VmRSS" {
				s.RSS = n << 10
			} else {
				s.HWM = n << 10
			}
		case "Threads":
			if len(f) == 1 {
				s.Threads, _ = strconv.Atoi(f[0])
			}
		}
	}
	if s.RSS == 0 || s.HWM == 0 {
		return s, errors.New("VmRSS/VmHWM missing from /proc status")
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, fmt.Errorf("failed to list open descriptors: %w", err)
	}
	s.FDs = len(ents)
	return s, nil
}

// ResetPeak makes VmHWM restart from the current RSS (Linux ≥ 4.0), so a
// peak read afterwards belongs to what followed.
func ResetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// ScrapeMetric reads one unlabelled sample from a Prometheus text
// endpoint.
func ScrapeMetric(ctx context.Context, client *http.Client, metricsURL, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("failed to scrape %s: %w", metricsURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("failed to scrape %s: %s", metricsURL, resp.Status)
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return 0, fmt.Errorf("failed to parse metric %s: %w", name, err)
			}
			return v, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("metric %s not exported", name)
}

// Observe is ReadStats plus go_goroutines from the process's /metrics
// (metricsURL "" skips it).
func Observe(ctx context.Context, client *http.Client, pid int, metricsURL string) (Stats, error) {
	s, err := ReadStats(pid)
	if err != nil {
		return s, err
	}
	if metricsURL != "" {
		if g, err := ScrapeMetric(ctx, client, metricsURL, "go_goroutines"); err == nil {
			s.Goroutines = g
		}
	}
	return s, nil
}

// Watchdog polls a process's RSS, keeps the largest value seen and kills
// the process (through the kill function, which must signal only it) once
// the RSS passes limit: a bomb that works must not take the machine, and
// everything else running on it, down with it.
type Watchdog struct {
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	peak   int64
	killed bool
}

// Watch starts polling pid every interval. limit ≤ 0 never kills.
func Watch(pid int, interval time.Duration, limit int64, kill func()) *Watchdog {
	w := &Watchdog{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if s, err := ReadStats(pid); err == nil {
				w.mu.Lock()
				w.peak = max(w.peak, s.RSS)
				over := limit > 0 && s.RSS > limit && !w.killed
				if over {
					w.killed = true
				}
				w.mu.Unlock()
				if over {
					kill()
				}
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends the polling and returns the largest RSS seen and whether the
// process was killed for passing the limit.
func (w *Watchdog) Stop() (peak int64, killed bool) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak, w.killed
}

// Peak is the largest RSS seen so far.
func (w *Watchdog) Peak() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

// Killed says whether the watchdog has killed the process so far.
func (w *Watchdog) Killed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.killed
}

// MiB formats a byte count.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// WaitQuiet polls pid's RSS every 100 ms until it has grown by no more
// than slack over the last window, or until deadline. It reports whether
// the process went quiet: a slow writer blocked on stalled clients
// reaches its final footprint only after the socket buffers fill.
func WaitQuiet(ctx context.Context, pid int, window time.Duration, slack int64, deadline time.Duration) bool {
	type sample struct {
		at  time.Time
		rss int64
	}
	var hist []sample
	end := time.Now().Add(deadline)
	for time.Now().Before(end) && ctx.Err() == nil {
		s, err := ReadStats(pid)
		if err != nil {
			return false
		}
		now := time.Now()
		hist = append(hist, sample{now, s.RSS})
		for len(hist) > 1 && now.Sub(hist[1].at) >= window {
			hist = hist[1:]
		}
		if now.Sub(hist[0].at) >= window && s.RSS-hist[0].rss <= slack {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// Settle calls observe every interval until ok accepts what it returns or
// deadline passes, and returns the last observation, how long it took and
// whether ok accepted it.
func Settle(ctx context.Context, interval, deadline time.Duration, observe func() (Stats, error), ok func(Stats) bool) (Stats, time.Duration, bool) {
	start := time.Now()
	var last Stats
	for {
		s, err := observe()
		if err == nil {
			last = s
			if ok(s) {
				return s, time.Since(start), true
			}
		}
		if time.Since(start) >= deadline || ctx.Err() != nil {
			return last, time.Since(start), false
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}
