package shared

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/zap"
)

// TestEpochChanges: the epoch moves when Redis answers again after a
// failure and when its marker is lost (a restart without persistence, a
// flush), and stays put otherwise.
func TestEpochChanges(t *testing.T) {
	mr := miniredis.RunT(t)
	c, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	guard := NewGuard(zap.NewNop(), nil, time.Second)
	g, err := NewGating(c, "t:", guard)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	g.now = func() time.Time { return now }
	// settle starts a marker check, waits for it to end (it holds the
	// check slot while it runs) and returns the epoch it left.
	settle := func() uint64 {
		g.Epoch()
		g.epoch.checking <- struct{}{}
		<-g.epoch.checking
		return g.Epoch()
	}
	first := settle()
	now = now.Add(2 * epochCheckEvery)
	if e := settle(); e != first {
		t.Errorf("epoch moved from %d to %d with nothing lost", first, e)
	}
	mr.FlushAll()
	now = now.Add(2 * epochCheckEvery)
	if e := settle(); e == first {
		t.Error("epoch did not move after the marker was lost")
	}
	before := guard.Generation()
	_ = guard.Do(context.Background(), "op", func(context.Context) error { return errors.New("down") })
	_ = guard.Do(context.Background(), "op", func(context.Context) error { return nil })
	if guard.Generation() == before {
		t.Error("generation did not move after a failure then a success")
	}
}
