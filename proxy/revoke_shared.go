package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Broadcast carries revocation changes and configuration reloads between
// the replicas of one deployment and keeps the revocations posted to any
// replica's admin API where every replica finds them (cache/shared.Bus
// implements it through Redis). Whatever it delivers is untrusted: the
// proxy parses every entry strictly and refuses the rest.
type Broadcast interface {
	// Replica is this process's id; messages carrying it are not
	// delivered back.
	Replica() string
	// AddRevocations records entries (id → JSON) as in force and tells
	// the other replicas; RemoveRevocations lifts them.
	AddRevocations(ctx context.Context, entries map[string][]byte) error
	RemoveRevocations(ctx context.Context, entries map[string][]byte) error
	// Revocations is every entry recorded (id → JSON).
	Revocations(ctx context.Context) (map[string][]byte, error)
	// PublishReload tells the other replicas this one reloaded.
	PublishReload(ctx context.Context, fingerprint string) error
	// Start delivers the messages of other replicas to on until the
	// broadcast is closed, and calls connected on each (re)subscription.
	Start(on func(kind, replica string, entries [][]byte, fingerprint string), connected func())
	// Invalid counts an entry refused.
	Invalid(key string, err error)
}

// Message kinds of a Broadcast.
const (
	broadcastAdd    = "revocation-add"
	broadcastRemove = "revocation-remove"
	broadcastReload = "reload"
	// peerReloadDebounce gathers the reloads of several replicas (one
	// ConfigMap update seen by each) into one reload here.
	peerReloadDebounce = time.Second
)

// WithBroadcast shares the admin API's revocations with the other
// replicas through b and has them reload when this one does (see
// Proxy.BroadcastReload, Proxy.OnPeerReload). Default: none, every
// replica keeps its own API revocations.
func WithBroadcast(b Broadcast) Option {
	return func(o *options) error {
		if b == nil {
			return errors.New("nil broadcast")
		}
		o.broadcast = b
		return nil
	}
}

// revShare is a Revocations' side of a Broadcast. Its maps are guarded by
// the list's mutex.
type revShare struct {
	b   Broadcast
	log *zap.Logger
	// confirmed holds the ids known to be recorded in the broadcast: one
	// of them missing there when resynchronising was lifted elsewhere.
	// An entry not confirmed (added here while Redis was out of reach,
	// or restored from the state file) is recorded then instead: a
	// revocation is never dropped because Redis does not know it.
	confirmed map[string]bool
	// lifted holds what was lifted here while Redis was out of reach, to
	// be lifted there too.
	lifted map[string]Revocation

	rmu     sync.Mutex
	reload  func()
	pending bool
}

// startBroadcast connects the revocation list to the broadcast, once the
// proxy is complete: a message applied purges the proxy's state.
func (p *Proxy) startBroadcast() {
	if b := p.opts.broadcast; b != nil {
		p.revs.share(b, p.log)
	}
}

// share connects r to b, once; later calls are ignored.
func (r *Revocations) share(b Broadcast, log *zap.Logger) {
	r.mu.Lock()
	if r.sh != nil {
		r.mu.Unlock()
		return
	}
	r.sh = &revShare{b: b, log: log, confirmed: map[string]bool{}, lifted: map[string]Revocation{}}
	r.mu.Unlock()
	// Before serving: a replica starting must not serve, even for the
	// moment its subscription takes, what another replica revoked.
	r.resync()
	b.Start(r.received, r.resync)
}

// wireRevocation is e as sent: the receiver computes id and source again.
func wireRevocation(e Revocation) []byte {
	e.ID, e.Source = "", ""
	b, _ := json.Marshal(e)
	return b
}

// parseShared reads one entry from another replica as strictly as the
// admin API reads a request.
func parseShared(raw []byte, now time.Time) (Revocation, error) {
	var e Revocation
	if len(raw) > maxRevocationBody {
		return e, fmt.Errorf("entry over %d bytes", maxRevocationBody)
	}
	if err := decodeStrict(raw, &e); err != nil {
		return e, err
	}
	if e.ID != "" || e.Source != "" {
		return e, errors.New("id and source are set by the receiver")
	}
	if e.Time.IsZero() {
		return e, errors.New("missing time")
	}
	if err := e.Normalize(now); err != nil {
		return e, err
	}
	e.Source = RevocationFromAPI
	return e, nil
}

// sharedAdded records e for the other replicas. Callers hold mu.
func (r *Revocations) sharedAdded(e Revocation) {
	sh := r.sh
	if sh == nil {
		return
	}
	delete(sh.lifted, e.ID)
	if err := sh.b.AddRevocations(context.Background(), map[string][]byte{e.ID: wireRevocation(e)}); err != nil {
		delete(sh.confirmed, e.ID)
		sh.log.Warn("revocation in force here, shared with the other replicas once redis is reachable", zap.String("id", e.ID), zap.Error(err))
		return
	}
	sh.confirmed[e.ID] = true
}

// sharedLifted lifts e for the other replicas. Callers hold mu.
func (r *Revocations) sharedLifted(e Revocation) {
	sh := r.sh
	if sh == nil {
		return
	}
	delete(sh.confirmed, e.ID)
	if err := sh.b.RemoveRevocations(context.Background(), map[string][]byte{e.ID: wireRevocation(e)}); err != nil {
		sh.lifted[e.ID] = e
		sh.log.Warn("revocation lifted here, lifted on the other replicas once redis is reachable", zap.String("id", e.ID), zap.Error(err))
	}
}

// received applies a message of another replica: revocations change the
// API entries here and purge exactly as a local change does.
func (r *Revocations) received(kind, replica string, entries [][]byte, fingerprint string) {
	sh := r.sh
	if kind == broadcastReload {
		sh.peerReload(replica, fingerprint)
		return
	}
	var list []Revocation
	for _, raw := range entries {
		e, err := parseShared(raw, r.now())
		if err != nil {
			sh.b.Invalid("revocation from "+truncate(replica, 128), err)
			continue
		}
		list = append(list, e)
	}
	if len(list) == 0 {
		return
	}
	stored := sh.storedNow()
	r.mu.Lock()
	defer r.mu.Unlock()
	api := slices.Clone(r.api)
	for _, e := range list {
		if stored != nil {
			// Messages can arrive out of order (a cluster publishes each
			// from whichever node it reaches), so the record decides: the
			// sender wrote it before it sent. A revocation lifted and
			// added again must not end lifted here because the lift
			// arrived last, nor one added and lifted end in force.
			if _, ok := stored[e.ID]; ok != (kind == broadcastAdd) {
				sh.log.Info("revocation message out of date: the recorded list has changed since",
					zap.String("replica", replica), zap.String("kind", kind), zap.String("id", e.ID))
				continue
			}
		}
		api = slices.DeleteFunc(api, func(x Revocation) bool { return x.ID == e.ID })
		switch kind {
		case broadcastAdd:
			if len(api) >= r.max {
				sh.log.Error("revocation from another replica not applied: list full", zap.String("id", e.ID), zap.Int("max", r.max))
				continue
			}
			api = append(api, e)
			sh.confirmed[e.ID] = true
			delete(sh.lifted, e.ID)
		case broadcastRemove:
			delete(sh.confirmed, e.ID)
		}
	}
	sh.log.Info("revocations changed by another replica", zap.String("replica", replica), zap.String("kind", kind), zap.Int("entries", len(list)))
	r.setAPI(api)
}

// storedNow is the recorded list's ids, to check a message against; nil
// when it cannot be read, and the message then applies as it says (the
// next resynchronisation corrects what it got wrong).
func (sh *revShare) storedNow() map[string][]byte {
	ctx, cancel := context.WithTimeout(context.Background(), storedReadTimeout)
	defer cancel()
	raw, err := sh.b.Revocations(ctx)
	if err != nil {
		sh.log.Warn("revocation message applied as sent: the recorded list could not be read", zap.Error(err))
		return nil
	}
	return raw
}

// storedReadTimeout bounds the read of the recorded list that each
// revocation message from another replica is checked against.
const storedReadTimeout = 2 * time.Second

// setAPI puts api in force and persists it. Callers hold mu.
func (r *Revocations) setAPI(api []Revocation) {
	r.api = api
	r.publish()
	if r.persist != nil {
		if err := r.persist(r.api); err != nil {
			r.sh.log.Error("revocations from other replicas in force but not persisted", zap.Error(err))
		}
	}
}

// resync runs on each (re)subscription: messages may have been missed
// while Redis was out of reach, so the recorded list is read again. What
// is recorded and unknown here is added; what was confirmed here and is
// no longer recorded was lifted elsewhere; what is here and was never
// recorded, or lifted here, is written there now.
func (r *Revocations) resync() {
	sh := r.sh
	ctx := context.Background()
	raw, err := sh.b.Revocations(ctx)
	if err != nil {
		sh.log.Warn("revocations not resynchronised with the other replicas; keeping the list here", zap.Error(err))
		return
	}
	now := r.now()
	stored := map[string]Revocation{}
	for id, b := range raw {
		e, err := parseShared(b, now)
		if err == nil && e.ID != id {
			err = errors.New("entry recorded under another id")
		}
		if err != nil {
			sh.b.Invalid("revocation "+truncate(id, 128), err)
			continue
		}
		stored[id] = e
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var api []Revocation
	push := map[string][]byte{}
	changed := false
	for _, e := range r.api {
		switch _, ok := stored[e.ID]; {
		case ok:
			sh.confirmed[e.ID] = true
			api = append(api, e)
		case sh.confirmed[e.ID]:
			delete(sh.confirmed, e.ID)
			changed = true
		default:
			push[e.ID] = wireRevocation(e)
			api = append(api, e)
		}
	}
	lift := map[string][]byte{}
	ids := make([]string, 0, len(stored))
	for id := range stored {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e := stored[id]
		if l, ok := sh.lifted[id]; ok {
			lift[id] = wireRevocation(l)
			continue
		}
		if slices.ContainsFunc(api, func(x Revocation) bool { return x.ID == id }) {
			continue
		}
		if len(api) >= r.max {
			sh.log.Error("recorded revocation not applied: list full", zap.String("id", id), zap.Int("max", r.max))
			continue
		}
		api = append(api, e)
		sh.confirmed[id] = true
		changed = true
	}
	if changed {
		sh.log.Info("revocations resynchronised with the other replicas", zap.Int("api_entries", len(api)))
		r.setAPI(api)
	}
	// One entry a message: each fits the message bound whatever the
	// entries' sizes.
	for id, raw := range push {
		if sh.b.AddRevocations(ctx, map[string][]byte{id: raw}) == nil {
			sh.confirmed[id] = true
		}
	}
	for id, raw := range lift {
		if sh.b.RemoveRevocations(ctx, map[string][]byte{id: raw}) == nil {
			delete(sh.lifted, id)
		}
	}
	// A lift no longer recorded there is done.
	for id := range sh.lifted {
		if _, ok := stored[id]; !ok {
			delete(sh.lifted, id)
		}
	}
}

// peerReload runs the reload hook once the reloads of other replicas have
// been quiet for peerReloadDebounce.
func (sh *revShare) peerReload(replica, fingerprint string) {
	sh.rmu.Lock()
	defer sh.rmu.Unlock()
	if sh.reload == nil || sh.pending {
		return
	}
	sh.pending = true
	sh.log.Info("another replica reloaded its configuration; reloading this one", zap.String("replica", replica), zap.String("fingerprint", fingerprint))
	time.AfterFunc(peerReloadDebounce, func() {
		sh.rmu.Lock()
		fn := sh.reload
		sh.pending = false
		sh.rmu.Unlock()
		fn()
	})
}

// OnPeerReload has fn run, debounced, when another replica reloads its
// configuration. Each replica still reads its own file: fn reloads it.
// A reload fn does must not be broadcast again, or replicas would
// trigger each other without end.
func (p *Proxy) OnPeerReload(fn func()) {
	sh := p.revs.sh
	if sh == nil || fn == nil {
		return
	}
	sh.rmu.Lock()
	sh.reload = fn
	sh.rmu.Unlock()
}

// BroadcastReload tells the other replicas that this one reloaded its
// configuration, now enforcing the policy fingerprint. It does not wait:
// a reload never waits on Redis.
func (p *Proxy) BroadcastReload(fingerprint string) {
	b := p.opts.broadcast
	if b == nil {
		return
	}
	go func() {
		if err := b.PublishReload(context.Background(), fingerprint); err != nil {
			p.log.Warn("reload not broadcast to the other replicas", zap.Error(err))
		}
	}()
}
