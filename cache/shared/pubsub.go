package shared

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Kinds of message on the events channel.
const (
	KindRevocationAdd    = "revocation-add"
	KindRevocationRemove = "revocation-remove"
	KindReload           = "reload"
)

const (
	busVersion = 1
	// messagesPerValue sizes the bound of a message on the events channel
	// from the bound of a value: a message carries one revocation, of at
	// most a few KiB, with room to spare.
	messagesPerValue = 4
	// busMaxEntries bounds the entries of one message.
	busMaxEntries = 100
	// busMaxName bounds a replica id, a revocation id and a fingerprint.
	busMaxName = 2 << 10
	// busPing is how often a quiet subscription is checked: a connection
	// that died without a word, or that still listens to a master Sentinel
	// replaced, is noticed, and the list resynchronised, within about
	// twice this long.
	busPing = 5 * time.Second
	// busRetry is the wait before subscribing again after a failure.
	busRetry = time.Second
)

// BusOptions configures a Bus.
type BusOptions struct {
	// KeyPrefix starts the channel and the revocation hash names.
	KeyPrefix string
	// Replica names this process; messages carrying it are its own and
	// are not delivered back to it. Required.
	Replica string
	// MaxValueBytes bounds one revocation stored in the hash
	// (DefaultMaxValueBytes when zero), and four times it one message.
	MaxValueBytes int
	// MaxMessageBytes bounds a message read or written; four times
	// MaxValueBytes when zero.
	MaxMessageBytes int
	// MaxEntries bounds the revocations read back from the hash.
	MaxEntries int
	Logger     *zap.Logger
}

// Bus broadcasts revocation changes and reloads between the replicas of
// one deployment over the channel <prefix>v1:events, and keeps the
// revocations posted to any replica's admin API in the hash
// <prefix>v1:revocations, so that a replica that missed messages while
// Redis was out of reach catches up when it subscribes again.
//
// Everything read is untrusted: a message is read through a size bound
// and parsed strictly, anything else is dropped and counted
// (portcullis_shared_errors_total{op="events",kind="invalid"}); a stored
// revocation is bound to its hash field. What an entry says is the
// caller's to parse.
type Bus struct {
	c    redis.UniversalClient
	g    *Guard
	o    BusOptions
	log  *zap.Logger
	ch   string
	hash string
	// probe is this replica's own channel, through which it checks that
	// its subscription hears what is published.
	probe string
	ping  time.Duration // busPing; tests shorten it
	now   func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	done   sync.WaitGroup
	mu     sync.Mutex
	ps     *redis.PubSub // the subscription, closed by Close to end its read
}

// message is one message from another replica.
type message struct {
	Kind    string
	Replica string
	// Entries are the revocations added or lifted, each one JSON object
	// as the sender wrote it.
	Entries [][]byte
	// Fingerprint is the policy a reload put in force on the sender.
	Fingerprint string
	Time        time.Time
}

// busMessage is a message as it travels.
type busMessage struct {
	V           int               `json:"v"`
	Kind        string            `json:"kind"`
	Replica     string            `json:"replica"`
	Entries     []json.RawMessage `json:"entries,omitempty"`
	Fingerprint string            `json:"fingerprint,omitempty"`
	Time        time.Time         `json:"time"`
}

// storedRevocation is a hash value: bound to its field, the revocation id.
type storedRevocation struct {
	V int             `json:"v"`
	K string          `json:"k"`
	E json.RawMessage `json:"e"`
}

// NewBus returns a Bus on client; guard bounds and counts every call.
// Start subscribes.
func NewBus(client redis.UniversalClient, guard *Guard, o BusOptions) (*Bus, error) {
	if client == nil || guard == nil {
		return nil, errors.New("nil redis client or guard")
	}
	if err := checkName("replica", o.Replica); err != nil {
		return nil, err
	}
	if o.MaxValueBytes <= 0 {
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = messagesPerValue * o.MaxValueBytes
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10_000
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Bus{c: client, g: guard, o: o, log: o.Logger, ch: o.KeyPrefix + "v1:events", hash: o.KeyPrefix + "v1:revocations",
		probe: o.KeyPrefix + "v1:probe:" + o.Replica, ping: busPing, now: time.Now, ctx: ctx, cancel: cancel}, nil
}

// Replica is this process's id on the bus.
func (b *Bus) Replica() string { return b.o.Replica }

// Close stops the subscription started by Start and waits for it.
func (b *Bus) Close() {
	b.cancel()
	b.mu.Lock()
	if b.ps != nil {
		_ = b.ps.Close()
	}
	b.mu.Unlock()
	b.done.Wait()
}

// ReplicaID names this process on the bus: its host name, which an
// operator recognises (the pod name), and a random part, since two
// processes may share a host name.
func ReplicaID() string {
	host, _ := os.Hostname()
	if len(host) > 200 || checkName("host", host) != nil {
		host = "replica"
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	return host + "-" + hex.EncodeToString(r[:])
}

// AddRevocations stores entries (revocation id → JSON) as in force and
// tells the other replicas, in one transaction: a replica that misses the
// message finds them when it resynchronises.
func (b *Bus) AddRevocations(ctx context.Context, entries map[string][]byte) error {
	return b.revocations(ctx, KindRevocationAdd, entries)
}

// RemoveRevocations deletes entries (id → JSON of the lifted revocation)
// and tells the other replicas.
func (b *Bus) RemoveRevocations(ctx context.Context, entries map[string][]byte) error {
	return b.revocations(ctx, KindRevocationRemove, entries)
}

func (b *Bus) revocations(ctx context.Context, kind string, entries map[string][]byte) error {
	if len(entries) == 0 {
		return nil
	}
	if len(entries) > busMaxEntries {
		return fmt.Errorf("%d revocations in one message, more than %d", len(entries), busMaxEntries)
	}
	fields := map[string]any{}
	msg := busMessage{V: busVersion, Kind: kind, Replica: b.o.Replica, Time: b.now().UTC()}
	for id, e := range entries {
		if err := checkName("revocation id", id); err != nil {
			return err
		}
		if !json.Valid(e) {
			return fmt.Errorf("revocation %s: not JSON", id)
		}
		msg.Entries = append(msg.Entries, json.RawMessage(e))
		if kind == KindRevocationAdd {
			v, err := json.Marshal(storedRevocation{V: busVersion, K: bound(id), E: e})
			if err != nil {
				return err
			}
			if len(v) > b.o.MaxValueBytes {
				return fmt.Errorf("revocation %s: %d bytes, more than %d", id, len(v), b.o.MaxValueBytes)
			}
			fields[id] = v
		}
	}
	body, err := b.encode(msg)
	if err != nil {
		return err
	}
	return b.g.Do(ctx, "revocations_publish", func(ctx context.Context) error {
		_, err := b.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			if kind == KindRevocationAdd {
				p.HSet(ctx, b.hash, fields)
			} else {
				ids := make([]string, 0, len(entries))
				for id := range entries {
					ids = append(ids, id)
				}
				p.HDel(ctx, b.hash, ids...)
			}
			p.Publish(ctx, b.ch, body)
			return nil
		})
		return err
	})
}

// PublishReload tells the other replicas that this one reloaded its
// configuration, now enforcing the policy fingerprint.
func (b *Bus) PublishReload(ctx context.Context, fingerprint string) error {
	if err := checkName("fingerprint", fingerprint); err != nil {
		return err
	}
	body, err := b.encode(busMessage{V: busVersion, Kind: KindReload, Replica: b.o.Replica, Fingerprint: fingerprint, Time: b.now().UTC()})
	if err != nil {
		return err
	}
	return b.g.Do(ctx, "reload_publish", func(ctx context.Context) error {
		return b.c.Publish(ctx, b.ch, body).Err()
	})
}

func (b *Bus) encode(m busMessage) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(body) > b.o.MaxMessageBytes {
		return nil, fmt.Errorf("message of %d bytes, more than %d", len(body), b.o.MaxMessageBytes)
	}
	return body, nil
}

// Revocations returns the revocations stored as in force (id → JSON). A
// value refused (over the size bound, not parsed, bound to another field)
// is counted and left out; more than MaxEntries entries is an error, so
// the caller keeps what it has.
func (b *Bus) Revocations(ctx context.Context) (map[string][]byte, error) {
	var all map[string]string
	err := b.g.Do(ctx, "revocations_sync", func(ctx context.Context) error {
		// HLEN first: a planted hash of a million fields is refused
		// without being read.
		n, err := b.c.HLen(ctx, b.hash).Result()
		if err != nil {
			return err
		}
		if n > int64(b.o.MaxEntries) {
			return errTooMany{n}
		}
		all, err = b.c.HGetAll(ctx, b.hash).Result()
		return err
	})
	var tm errTooMany
	if errors.As(err, &tm) {
		b.g.Invalid("revocations_sync", b.hash, err)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if len(all) > b.o.MaxEntries {
		err := errTooMany{int64(len(all))}
		b.g.Invalid("revocations_sync", b.hash, err)
		return nil, err
	}
	out := make(map[string][]byte, len(all))
	for id, raw := range all {
		var v storedRevocation
		switch {
		case len(raw) > b.o.MaxValueBytes:
			b.g.Invalid("revocations_sync", id, fmt.Errorf("value over %d bytes", b.o.MaxValueBytes))
			continue
		case checkName("revocation id", id) != nil:
			b.g.Invalid("revocations_sync", "", errors.New("invalid field name"))
			continue
		}
		if err := strictDecode([]byte(raw), &v); err != nil {
			b.g.Invalid("revocations_sync", id, err)
			continue
		}
		switch {
		case v.V != busVersion:
			b.g.Invalid("revocations_sync", id, fmt.Errorf("unknown version %d", v.V))
		case v.K != bound(id):
			b.g.Invalid("revocations_sync", id, errors.New("value bound to another field"))
		case len(v.E) == 0 || v.E[0] != '{':
			b.g.Invalid("revocations_sync", id, errors.New("entry is not an object"))
		default:
			out[id] = v.E
		}
	}
	return out, nil
}

type errTooMany struct{ n int64 }

func (e errTooMany) Error() string {
	return fmt.Sprintf("%d stored revocations, more than allowed", e.n)
}

// Invalid counts and logs an entry of a message or of the stored list
// that the caller refused.
func (b *Bus) Invalid(key string, err error) { b.g.Invalid("events", key, err) }

// Start subscribes to the events channel until Close, delivering every
// valid message from another replica to on, in order: its kind, sender,
// entries (KindRevocationAdd, KindRevocationRemove: each one JSON object
// as the sender wrote it) and policy fingerprint (KindReload). connected runs
// each time the subscription is (re)established, before the messages
// that follow it: the caller resynchronises there what it may have
// missed. Redis being unreachable is retried, never an error.
func (b *Bus) Start(on func(kind, replica string, entries [][]byte, fingerprint string), connected func()) {
	b.done.Add(1)
	go func() {
		defer b.done.Done()
		for b.ctx.Err() == nil {
			b.subscribe(on, connected)
			select {
			case <-b.ctx.Done():
			case <-time.After(busRetry):
			}
		}
	}()
}

// subscribe runs one subscription until it fails or the bus closes.
func (b *Bus) subscribe(on func(kind, replica string, entries [][]byte, fingerprint string), connected func()) {
	ps := b.c.Subscribe(b.ctx)
	b.mu.Lock()
	if b.ctx.Err() != nil {
		b.mu.Unlock()
		_ = ps.Close()
		return
	}
	b.ps = ps
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.ps = nil
		b.mu.Unlock()
		_ = ps.Close()
	}()
	if err := b.g.Do(b.ctx, "events_subscribe", func(ctx context.Context) error {
		if err := ps.Subscribe(ctx, b.ch, b.probe); err != nil {
			return err
		}
		// The confirmations prove the subscription is in place: only then
		// is the resynchronisation complete.
		for range 2 {
			if _, err := ps.ReceiveTimeout(ctx, b.g.timeout); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return
	}
	connected()
	pinged := false
	for {
		m, err := ps.ReceiveTimeout(b.ctx, b.ping)
		if b.ctx.Err() != nil {
			return
		}
		if err != nil {
			if isTimeout(err) && !pinged {
				// Quiet: check that the subscription hears what is
				// published now. A PING would only prove the connection
				// alive; after a Sentinel failover it may be alive on the
				// old master, which no longer hears the others'
				// messages (go-redis moves commands to the new master, not
				// subscriptions). The probe is published through the
				// client, hence to the current master.
				pinged = true
				if b.g.Do(b.ctx, "events_ping", func(ctx context.Context) error {
					return b.c.Publish(ctx, b.probe, "probe").Err()
				}) == nil {
					continue
				}
				return
			}
			_ = b.g.Do(b.ctx, "events_receive", func(context.Context) error { return err })
			return
		}
		pinged = false
		switch m := m.(type) {
		case *redis.Message:
			if m.Channel != b.ch {
				// The probe came back.
				continue
			}
			if msg, ok := b.parse(m.Payload); ok && msg.Replica != b.o.Replica {
				on(msg.Kind, msg.Replica, msg.Entries, msg.Fingerprint)
			}
		case *redis.Subscription:
			// go-redis subscribed again on a new connection.
			if m.Channel == b.ch {
				connected()
			}
		}
	}
}

// parse checks a message strictly; a refused one is counted and dropped.
func (b *Bus) parse(payload string) (message, bool) {
	fail := func(err error) (message, bool) {
		b.g.Invalid("events", b.ch, err)
		return message{}, false
	}
	if len(payload) > b.o.MaxMessageBytes {
		return fail(fmt.Errorf("message over %d bytes", b.o.MaxMessageBytes))
	}
	var m busMessage
	if err := strictDecode([]byte(payload), &m); err != nil {
		return fail(err)
	}
	if m.V != busVersion {
		return fail(fmt.Errorf("unknown version %d", m.V))
	}
	if err := checkName("replica", m.Replica); err != nil {
		return fail(err)
	}
	if m.Time.IsZero() {
		return fail(errors.New("missing time"))
	}
	out := message{Kind: m.Kind, Replica: m.Replica, Fingerprint: m.Fingerprint, Time: m.Time}
	switch m.Kind {
	case KindReload:
		if len(m.Entries) != 0 {
			return fail(errors.New("entries in a reload message"))
		}
		if err := checkName("fingerprint", m.Fingerprint); err != nil {
			return fail(err)
		}
	case KindRevocationAdd, KindRevocationRemove:
		if m.Fingerprint != "" {
			return fail(errors.New("fingerprint in a revocation message"))
		}
		if len(m.Entries) == 0 || len(m.Entries) > busMaxEntries {
			return fail(fmt.Errorf("%d entries, want 1 to %d", len(m.Entries), busMaxEntries))
		}
		for _, e := range m.Entries {
			if len(e) == 0 || e[0] != '{' {
				return fail(errors.New("entry is not an object"))
			}
			out.Entries = append(out.Entries, []byte(e))
		}
	default:
		return fail(fmt.Errorf("unknown kind %.40q", m.Kind))
	}
	return out, true
}

// checkName accepts a non-empty printable string of bounded length.
func checkName(what, s string) error {
	if s == "" || len(s) > busMaxName {
		return fmt.Errorf("%s must be 1 to %d bytes", what, busMaxName)
	}
	for _, c := range s {
		if unicode.IsControl(c) || c == unicode.ReplacementChar {
			return fmt.Errorf("%s contains a control character or invalid UTF-8", what)
		}
	}
	return nil
}
