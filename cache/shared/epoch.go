package shared

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// epochCheckEvery is how often Epoch looks at the marker key.
const epochCheckEvery = time.Second

// epoch notices that Redis may have lost what was written to it without
// any call failing: a restart without persistence, a flush, eviction
// under maxmemory. A marker key holds a random token; when it is gone or
// holds another token, everything written before is suspect.
type epoch struct {
	checking  chan struct{} // one check at a time
	lastCheck time.Time     // guarded by checking
	token     string        // the marker last seen; guarded by checking
	gen       chan uint64   // the latest changes count, for Epoch
}

func newEpoch() *epoch {
	e := &epoch{checking: make(chan struct{}, 1), gen: make(chan uint64, 1)}
	e.gen <- 0
	return e
}

// Epoch changes when what this replica wrote to Redis may be gone: Redis
// answered again after a failed call, or its marker key changed. The
// proxy then writes through again what it serves instead of trusting
// that it wrote it lately. It never blocks: the marker is read in the
// background at most once a second, so a change is seen on a later call.
func (g *Gating) Epoch() uint64 {
	e := g.epoch
	select {
	case e.checking <- struct{}{}:
		if g.now().Sub(e.lastCheck) < epochCheckEvery {
			<-e.checking
			break
		}
		e.lastCheck = g.now()
		go func() {
			defer func() { <-e.checking }()
			g.checkMarker()
		}()
	default:
	}
	n := <-e.gen
	e.gen <- n
	return g.g.Generation() + n
}

// checkMarker reads the marker, setting it when absent; called with the
// check slot held.
func (g *Gating) checkMarker() {
	e := g.epoch
	key := g.prefix + "v1:epoch"
	var seen string
	err := g.g.Do(context.Background(), "epoch", func(ctx context.Context) error {
		v, err := g.c.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			b := make([]byte, 16)
			_, _ = rand.Read(b)
			tok := hex.EncodeToString(b)
			if err := g.c.SetNX(ctx, key, tok, 0).Err(); err != nil {
				return err
			}
			// Another replica may have set it first: read what holds.
			v, err = g.c.Get(ctx, key).Result()
		}
		if err != nil {
			return err
		}
		if len(v) > 64 {
			v = v[:64]
		}
		seen = v
		return nil
	})
	if err != nil {
		return
	}
	if e.token != "" && seen != e.token {
		n := <-e.gen
		e.gen <- n + 1
	}
	e.token = seen
}
