package shared

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sort"
	"strconv"
	"strings"
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

// checkMarker reads the markers, setting those absent; called with the
// check slot held. A cluster has one marker on each master, since a master
// can lose its share of the keys (a restart, a flush, eviction) while the
// others keep theirs; what each master holds is read in one token.
func (g *Gating) checkMarker() {
	e := g.epoch
	var seen string
	err := g.g.Do(context.Background(), "epoch", func(ctx context.Context) error {
		keys, err := g.markerKeys(ctx)
		if err != nil {
			return err
		}
		toks := make([]string, 0, len(keys))
		for _, key := range keys {
			tok, err := g.marker(ctx, key)
			if err != nil {
				return err
			}
			toks = append(toks, key+"="+tok)
		}
		seen = strings.Join(toks, ",")
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

// marker reads the marker under key, setting it when absent.
func (g *Gating) marker(ctx context.Context, key string) (string, error) {
	v, err := g.c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		if err := g.c.SetNX(ctx, key, hex.EncodeToString(b), 0).Err(); err != nil {
			return "", err
		}
		// Another replica may have set it first: read what holds.
		v, err = g.c.Get(ctx, key).Result()
	}
	if err != nil {
		return "", err
	}
	if len(v) > 64 {
		v = v[:64]
	}
	return v, nil
}

// markerKeys names the marker keys: one, or on a cluster one per master,
// each with a hash tag that puts it in a slot that master serves. A
// change of the cluster's layout changes the keys, hence the epoch: a
// resharding is a fair moment to write through again.
func (g *Gating) markerKeys(ctx context.Context) ([]string, error) {
	base := g.prefix + "v1:epoch"
	cc, ok := g.c.(*redis.ClusterClient)
	if !ok || hasHashTag(g.prefix) {
		// With a hash tag in the prefix every key, the marker included,
		// lives on one master.
		return []string{base}, nil
	}
	// CLUSTER SLOTS rather than CLUSTER SHARDS: managed Redis 6 clusters
	// have only the former.
	//lint:ignore SA1019 CLUSTER SHARDS needs Redis 7
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, err
	}
	byMaster := map[string]redis.ClusterSlot{}
	for _, s := range slots {
		if len(s.Nodes) == 0 {
			continue
		}
		addr := s.Nodes[0].Addr
		if cur, ok := byMaster[addr]; !ok || s.Start < cur.Start {
			byMaster[addr] = s
		}
	}
	keys := make([]string, 0, len(byMaster))
	for _, s := range byMaster {
		if tag, ok := slotTag(s.Start, s.End); ok {
			keys = append(keys, base+":{"+tag+"}")
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// slotTag finds a short hash tag whose slot lies in [start, end]. The
// first tags cover every slot, so the search ends quickly for any range.
func slotTag(start, end int) (string, bool) {
	for i := range 1 << 17 {
		tag := strconv.Itoa(i)
		if s := int(crc16(tag) % clusterSlots); s >= start && s <= end {
			return tag, true
		}
	}
	return "", false
}

const clusterSlots = 16384

// hasHashTag reports whether key has a Redis Cluster hash tag: a "{"
// followed later by a "}" with something between them.
func hasHashTag(key string) bool {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return false
	}
	j := strings.IndexByte(key[i+1:], '}')
	return j > 0
}

// crc16 is CRC-16/XMODEM, the hash of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
