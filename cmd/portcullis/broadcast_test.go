package main

import (
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// TestReloadBroadcast: a replica that reloads on its signal has the other
// replica reload its own file; the reload a peer triggers is not broadcast
// again, so the two do not trigger each other without end.
func TestReloadBroadcast(t *testing.T) {
	mr := miniredis.RunT(t)
	s := newSignedSetup(t, "shared: {redis: {addr: '"+mr.Addr()+"', key_prefix: 'test:'}}\n")
	hupA := make(chan os.Signal, 1)
	a := startReloading(t, s.cfgPath, reloadHooks{hup: hupA})
	b := startReloading(t, s.cfgPath, reloadHooks{hup: make(chan os.Signal)})
	deadline := time.Now().Add(10 * time.Second)
	for mr.PubSubNumSub("test:v1:events")["test:v1:events"] != 2 {
		if time.Now().After(deadline) {
			t.Fatal("replicas not subscribed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	hupA <- os.Interrupt
	if o := a.next(t); o.trigger != "signal" || o.result != "success" {
		t.Fatalf("A's reload = %+v", o)
	}
	if o := b.next(t); o.trigger != "peer" || o.result != "success" {
		t.Fatalf("B's reload = %+v, want one triggered by its peer", o)
	}
	select {
	case o := <-a.outcomes:
		t.Fatalf("A reloaded again (%+v) after B's peer-triggered reload", o)
	case <-time.After(3 * time.Second):
	}
}
