package shared

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// DefaultLeaseTTL is how long a lease outlives its holder. The holder
	// renews it every third of it while verifying, so a replica that dies
	// mid-verification delays the others by at most this much.
	DefaultLeaseTTL = 5 * time.Second
	// leaseMaxValue bounds a lease value read back; the proxies write
	// about 200 bytes.
	leaseMaxValue = 1 << 10
	leaseVersion  = 1
	// minLeaseTTL leaves room for renewals at a third of the TTL.
	minLeaseTTL = 30 * time.Millisecond
	// maxReplicaID bounds the replica name a lease carries.
	maxReplicaID = 256
)

// ErrLeaseRefused is returned by Acquire when the key holds a value no
// proxy wrote (malformed, bound to another key, or without an expiry).
// The caller verifies alone rather than wait on it.
var ErrLeaseRefused = errors.New("lease value refused")

// Compare-and-act scripts: a holder renews or releases only the lease it
// took, never the one another replica took after its own expired.
var (
	leaseRenew = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	leaseDrop  = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
)

// Leases gives one replica at a time the right to verify a digest
// (cross-replica single flight; it implements proxy.SharedFlight). A lease
// is a lock, nothing more: it grants nothing and its value is never used
// to decide. Whoever can write to Redis can plant one, which only makes
// the other replicas wait for a verdict that never comes, up to the
// proxy's verify timeout, after which they verify alone.
type Leases struct {
	c       redis.UniversalClient
	g       *Guard
	prefix  string // <key_prefix>v1:lease:
	replica string
	ttl     time.Duration
}

// LeasesOptions configures NewLeases.
type LeasesOptions struct {
	// KeyPrefix starts every key (DefaultKeyPrefix when empty).
	KeyPrefix string
	// Replica names this replica in the leases it takes (the host name),
	// for whoever inspects Redis.
	Replica string
	// TTL is the lease lifetime (DefaultLeaseTTL when zero).
	TTL time.Duration
}

// NewLeases returns the leases on client; guard bounds and counts every
// call.
func NewLeases(client redis.UniversalClient, guard *Guard, o LeasesOptions) (*Leases, error) {
	if client == nil || guard == nil {
		return nil, errors.New("leases need a redis client and a guard")
	}
	if o.TTL == 0 {
		o.TTL = DefaultLeaseTTL
	}
	if o.TTL < minLeaseTTL {
		return nil, fmt.Errorf("lease TTL %v is below %v", o.TTL, minLeaseTTL)
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if len(o.Replica) > maxReplicaID {
		o.Replica = o.Replica[:maxReplicaID]
	}
	guard.Seed("lease_acquire", "lease_get", "lease_renew", "lease_release")
	return &Leases{c: client, g: guard, prefix: o.KeyPrefix + "v1:lease:", replica: o.Replica, ttl: o.TTL}, nil
}

// leaseValue is a lease. K binds it to its key, T makes it this
// acquisition's alone.
type leaseValue struct {
	V int    `json:"v"`
	K string `json:"k"`
	R string `json:"r"`
	T string `json:"t"`
}

func leaseBinding(key string) string {
	sum := sha256.Sum256([]byte("portcullis/v1/lease\x00" + key))
	return hex.EncodeToString(sum[:])
}

// Acquire takes the lease on key (a verdict key) when nobody holds it.
// won: the caller verifies and calls release once its verdict is stored;
// the lease is renewed until then, or until ctx ends (a holder whose work
// was abandoned stops renewing and the lease expires). Not won, nil error:
// another replica holds it. An error (Redis unavailable, a value refused)
// says nothing about who verifies: the caller verifies alone.
func (l *Leases) Acquire(ctx context.Context, key string) (release func(), won bool, err error) {
	h := leaseBinding(key)
	rkey := l.prefix + h
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, false, err
	}
	val, err := json.Marshal(leaseValue{V: leaseVersion, K: h, R: l.replica, T: hex.EncodeToString(tok[:])})
	if err != nil {
		return nil, false, err
	}
	err = l.g.Do(ctx, "lease_acquire", func(ctx context.Context) error {
		var err error
		won, err = l.c.SetNX(ctx, rkey, val, l.ttl).Result()
		return err
	})
	if err != nil {
		return nil, false, err
	}
	if !won {
		return nil, false, l.checkHeld(ctx, key, rkey, h)
	}
	return l.hold(ctx, rkey, string(val)), true, nil
}

// checkHeld reads the lease another replica holds and refuses one no
// proxy wrote. A lease gone in the meantime is not an error: the caller
// asks again.
func (l *Leases) checkHeld(ctx context.Context, key, rkey, h string) error {
	var raw []byte
	var pttl time.Duration
	err := l.g.Do(ctx, "lease_get", func(ctx context.Context) error {
		// GETRANGE bounds what Redis sends whatever was planted (a waiting
		// replica asks every 50 ms); it reads a missing key as empty,
		// which PTTL tells apart (-2).
		var get *redis.StringCmd
		var ttl *redis.DurationCmd
		_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			get = p.GetRange(ctx, rkey, 0, leaseMaxValue)
			ttl = p.PTTL(ctx, rkey)
			return nil
		})
		if err != nil {
			return err
		}
		if ttl.Val() == -2 {
			return redis.Nil
		}
		raw, pttl = []byte(get.Val()), ttl.Val()
		return nil
	})
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := parseLease(raw, h, pttl); err != nil {
		l.g.Invalid("lease_get", key, err)
		return fmt.Errorf("%w: %v", ErrLeaseRefused, err)
	}
	return nil
}

func parseLease(raw []byte, binding string, pttl time.Duration) error {
	if len(raw) > leaseMaxValue {
		return fmt.Errorf("lease of %d bytes exceeds the limit of %d", len(raw), leaseMaxValue)
	}
	var v leaseValue
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("failed to parse lease: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the lease")
	}
	switch {
	case v.V != leaseVersion:
		return fmt.Errorf("lease format %d, want %d", v.V, leaseVersion)
	case v.K != binding:
		return errors.New("lease was taken for another key")
	case len(v.T) != 32 || len(v.R) > maxReplicaID:
		return errors.New("malformed lease token or replica")
	case pttl < 0:
		// -1: no expiry. A proxy's lease always expires; one that never
		// does would hold every replica at its verify timeout forever.
		return errors.New("lease without expiry")
	}
	return nil
}

// hold renews the lease every third of its TTL until release is called
// or ctx ends; release drops it if it is still this acquisition's.
func (l *Leases) hold(ctx context.Context, rkey, val string) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			var kept int64
			err := l.g.Do(context.WithoutCancel(ctx), "lease_renew", func(c context.Context) error {
				var err error
				kept, err = leaseRenew.Run(c, l.c, []string{rkey}, val, l.ttl.Milliseconds()).Int64()
				return err
			})
			if err == nil && kept == 0 {
				// Expired and perhaps taken by another replica (a long
				// pause here): both verify, which is merely wasteful.
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			<-done
			_ = l.g.Do(context.WithoutCancel(ctx), "lease_release", func(c context.Context) error {
				return leaseDrop.Run(c, l.c, []string{rkey}, val).Err()
			})
		})
	}
}
