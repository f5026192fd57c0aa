package upstream

import (
	"fmt"
	"io"
	"time"
)

// idleBody aborts a response body whose upstream stops sending. The clock
// runs only while a Read is waiting for the upstream: time the caller
// spends elsewhere (writing to a slow client, hashing) is not the
// upstream's stall. When no byte arrives for idle, abort cancels the
// request, which unblocks the Read, and every later Read fails with
// ErrUpstreamStalled.
type idleBody struct {
	rc    io.ReadCloser
	idle  time.Duration
	timer *time.Timer
	name  string
	err   error
}

func newIdleBody(rc io.ReadCloser, idle time.Duration, name string, abort func()) *idleBody {
	b := &idleBody{rc: rc, idle: idle, name: name}
	b.timer = time.AfterFunc(idle, abort)
	b.timer.Stop()
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return b.rc.Read(p)
	}
	b.timer.Reset(b.idle)
	n, err := b.rc.Read(p)
	if !b.timer.Stop() {
		// The timer fired while this Read waited: the request is
		// cancelled, whatever the Read itself returned.
		b.err = fmt.Errorf("upstream %s: no data received for %s: %w", b.name, b.idle, ErrUpstreamStalled)
		return n, b.err
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	return b.rc.Close()
}
