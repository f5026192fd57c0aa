package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// running starts a server holding k=v and a client of it.
func running(t *testing.T) (*miniredis.Miniredis, string, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	addr := mr.Addr()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET on the running server: %v", err)
	}
	return mr, addr, c
}

func TestDown(t *testing.T) {
	mr, addr, c := running(t)
	Down(t, mr)
	if err := c.Get(context.Background(), "k").Err(); err == nil {
		t.Fatal("GET after Down succeeded")
	}
	// The address stays taken: nothing else can answer there.
	if err := miniredis.NewMiniRedis().StartAddr(addr); err == nil {
		t.Fatal("another server bound the address after Down")
	}
}

func TestOutage(t *testing.T) {
	mr, addr, c := running(t)
	ctx := context.Background()
	restart := Outage(t, mr)
	if err := c.Get(ctx, "k").Err(); err == nil {
		t.Fatal("GET during the outage succeeded")
	}
	if err := miniredis.NewMiniRedis().StartAddr(addr); err == nil {
		t.Fatal("another server bound the address during the outage")
	}
	restart()
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after the restart = %q, %v; want the value kept", got, err)
	}
}
