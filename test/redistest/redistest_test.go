package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func client(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestDown(t *testing.T) {
	mr := miniredis.RunT(t)
	addr := mr.Addr()
	c := client(t, addr)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET on the running server: %v", err)
	}
	Down(t, mr)
	if err := c.Get(ctx, "k").Err(); err == nil {
		t.Fatal("GET after Down succeeded")
	}
	// The address stays taken: nothing else can answer there.
	if err := miniredis.NewMiniRedis().StartAddr(addr); err == nil {
		t.Fatal("another server bound the address after Down")
	}
}

func TestOutage(t *testing.T) {
	mr := miniredis.RunT(t)
	addr := mr.Addr()
	c := client(t, addr)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET on the running server: %v", err)
	}
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
