// Package redistest takes a miniredis server down in tests, keeping its
// address so that nothing else can answer there meanwhile.
package redistest

import (
	"net"
	"testing"

	"github.com/alicebob/miniredis/v2"
)

// Down stops mr for good and keeps its address bound, accepting and at
// once closing every connection: the clients of mr see Redis gone (each
// call fails), never another test's server that the kernel gave the freed
// port to, which would answer them as if Redis were up.
func Down(t testing.TB, mr *miniredis.Miniredis) {
	t.Helper()
	release := hold(t, mr)
	t.Cleanup(release)
}

// Outage stops mr as Down does; the returned function starts it again on
// the same address, with the data it held (miniredis keeps it).
func Outage(t testing.TB, mr *miniredis.Miniredis) (restart func()) {
	t.Helper()
	release := hold(t, mr)
	return func() {
		t.Helper()
		release()
		if err := mr.Restart(); err != nil {
			t.Fatalf("restarting redis: %v", err)
		}
	}
}

// hold closes mr and binds its address; release unbinds it, once.
func hold(t testing.TB, mr *miniredis.Miniredis) (release func()) {
	t.Helper()
	addr := mr.Addr()
	mr.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		// Taken in the instant between the two: what answers there now
		// is not this test's.
		t.Fatalf("keeping the address of the stopped redis %s: %v", addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	released := false
	return func() {
		if released {
			return
		}
		released = true
		_ = ln.Close()
		<-done
	}
}
