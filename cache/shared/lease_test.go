package shared

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/redistest"
)

var _ proxy.SharedFlight = (*Leases)(nil)

const testLeaseTTL = time.Second

func newTestLeases(t *testing.T, mr *miniredis.Miniredis, replica string) (*Leases, *Guard) {
	t.Helper()
	rdb, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	g := NewGuard(zap.NewNop(), nil, time.Second)
	l, err := NewLeases(rdb, g, LeasesOptions{KeyPrefix: "t:", Replica: replica, TTL: testLeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	return l, g
}

func leaseKey(key string) string { return "t:v1:lease:" + leaseBinding(key) }

func acquire(t *testing.T, l *Leases, key string) (func(), bool, error) {
	t.Helper()
	return l.Acquire(context.Background(), key)
}

// TestLeaseOneHolder: one replica at a time holds a key's lease; its
// release lets the next take it, and leases of other keys are independent.
func TestLeaseOneHolder(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, _ := newTestLeases(t, mr, "a")
	b, _ := newTestLeases(t, mr, "b")

	releaseA, won, err := acquire(t, a, "k1")
	if err != nil || !won {
		t.Fatalf("first Acquire = %v, %v; want won", won, err)
	}
	if _, won, err := acquire(t, b, "k1"); err != nil || won {
		t.Fatalf("Acquire of a held lease = %v, %v; want not won, nil", won, err)
	}
	if ttl := mr.TTL(leaseKey("k1")); ttl <= 0 || ttl > testLeaseTTL {
		t.Errorf("lease TTL = %v, want (0, %v]", ttl, testLeaseTTL)
	}
	releaseOther, won, err := acquire(t, b, "k2")
	if err != nil || !won {
		t.Fatalf("Acquire of another key = %v, %v; want won", won, err)
	}
	releaseOther()
	releaseA()
	releaseA() // twice is harmless
	releaseB, won, err := acquire(t, b, "k1")
	if err != nil || !won {
		t.Fatalf("Acquire after release = %v, %v; want won", won, err)
	}
	releaseB()
}

// TestLeaseExpiresWhenHolderStops: a holder whose context ends stops
// renewing, so its lease expires and another replica takes it; the late
// release of the first holder does not drop the second's lease.
func TestLeaseExpiresWhenHolderStops(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, _ := newTestLeases(t, mr, "a")
	b, _ := newTestLeases(t, mr, "b")
	c, _ := newTestLeases(t, mr, "c")

	ctx, cancel := context.WithCancel(context.Background())
	releaseA, won, err := a.Acquire(ctx, "k")
	if err != nil || !won {
		t.Fatalf("Acquire = %v, %v", won, err)
	}
	cancel()
	var releaseB func()
	for won = false; !won; {
		// A renewal already under way when ctx ended may push the expiry
		// once more: step past it until the lease is gone.
		mr.FastForward(testLeaseTTL)
		if releaseB, won, err = acquire(t, b, "k"); err != nil {
			t.Fatal(err)
		}
	}
	releaseA()
	if _, won, err := acquire(t, c, "k"); err != nil || won {
		t.Fatalf("after the expired holder's release, Acquire = %v, %v; want the second holder's lease kept", won, err)
	}
	releaseB()
}

// TestLeaseRenewed: while the holder works its lease does not expire.
func TestLeaseRenewed(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, _ := newTestLeases(t, mr, "a")
	release, won, err := acquire(t, a, "k")
	if err != nil || !won {
		t.Fatalf("Acquire = %v, %v", won, err)
	}
	defer release()
	mr.FastForward(testLeaseTTL * 9 / 10)
	// The holder renews every third of the TTL (real time): wait for it.
	for mr.TTL(leaseKey("k")) < testLeaseTTL/2 {
		if !mr.Exists(leaseKey("k")) {
			t.Fatal("lease expired while held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLeaseRefusesForeignValues: a value under a lease key that no proxy
// wrote is refused (the caller then verifies alone rather than wait on
// it), counted as invalid; a well-formed one is a lock like any other.
func TestLeaseRefusesForeignValues(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, _ := newTestLeases(t, mr, "a")
	b, g := newTestLeases(t, mr, "b")

	release, won, err := acquire(t, a, "other")
	if err != nil || !won {
		t.Fatal(won, err)
	}
	valid, err := mr.Get(leaseKey("other"))
	if err != nil {
		t.Fatal(err)
	}
	release()

	for name, plant := range map[string]func(k string){
		"another key's lease": func(k string) { _ = mr.Set(k, valid); mr.SetTTL(k, time.Second) },
		"not json":            func(k string) { _ = mr.Set(k, "1"); mr.SetTTL(k, time.Second) },
		"unknown field":       func(k string) { _ = mr.Set(k, `{"v":1,"k":"","r":"","t":"","x":1}`); mr.SetTTL(k, time.Second) },
		"too large":           func(k string) { _ = mr.Set(k, string(make([]byte, leaseMaxValue+1))); mr.SetTTL(k, time.Second) },
		"no expiry": func(k string) {
			_ = mr.Set(k, `{"v":1,"k":"`+leaseBinding("no expiry")+`","r":"x","t":"00000000000000000000000000000000"}`)
		},
	} {
		plant(leaseKey(name))
		_, won, err := acquire(t, b, name)
		if won || !errors.Is(err, ErrLeaseRefused) {
			t.Errorf("%s: Acquire = %v, %v; want refused", name, won, err)
		}
	}
	if n := testutil.ToFloat64(g.errs.WithLabelValues("lease_get", "invalid")); n != 5 {
		t.Errorf("invalid leases counted %v, want 5", n)
	}

	// Bound to its key, with an expiry: a lease (see Leases).
	_ = mr.Set(leaseKey("planted"), `{"v":1,"k":"`+leaseBinding("planted")+`","r":"x","t":"00000000000000000000000000000000"}`)
	mr.SetTTL(leaseKey("planted"), time.Hour)
	if _, won, err := acquire(t, b, "planted"); won || err != nil {
		t.Errorf("well-formed planted lease: Acquire = %v, %v; want held", won, err)
	}
}

// TestLeaseRedisDown: Acquire fails rather than report a lease held, so
// the caller verifies alone instead of waiting.
func TestLeaseRedisDown(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	a, _ := newTestLeases(t, mr, "a")
	redistest.Down(t, mr)
	if _, won, err := acquire(t, a, "k"); err == nil || won {
		t.Fatalf("Acquire with redis down = %v, %v; want an error", won, err)
	}
}
