package harness

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Cleanup runs registered undo steps once, newest first. It is shared by
// the normal exit path, the signal handler and panic recovery, so
// whichever comes first tears everything down; the others wait until it
// has finished before they may exit. A program has exactly one: there is
// one set of subprocesses and one temp dir to remove, whichever way the
// program ends.
type Cleanup struct {
	mu    sync.Mutex
	steps []func()
	done  bool
	once  sync.Once
}

// Add registers f to run at teardown.
func (c *Cleanup) Add(f func()) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		// Registered after teardown began (a racing start): undo at once.
		f()
		return
	}
	c.steps = append(c.steps, f)
	c.mu.Unlock()
}

// Run runs every registered step, newest first, the first time it is
// called; later calls wait for that run to finish.
func (c *Cleanup) Run() {
	c.once.Do(func() {
		c.mu.Lock()
		steps := c.steps
		c.steps, c.done = nil, true
		c.mu.Unlock()
		for i := len(steps) - 1; i >= 0; i-- {
			steps[i]()
		}
	})
}

// Guard is deferred at the top of main and of every goroutine the program
// starts: a panic anywhere must still kill the subprocesses and remove
// the temp dir before the process dies.
func (c *Cleanup) Guard() {
	if r := recover(); r != nil {
		c.Run()
		panic(r)
	}
}

// OnSignal returns a context that SIGINT or SIGTERM cancels. The signal
// also runs c and ends the program with status 130, after a line on
// stderr prefixed with prog, so an interrupted run leaves nothing behind.
func (c *Cleanup) OnSignal(prog string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "%s: %v: stopping\n", prog, s)
		cancel()
		c.Run()
		os.Exit(130)
	}()
	return ctx, cancel
}
