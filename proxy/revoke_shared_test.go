package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/portcullis-oci/portcullis/cache/shared"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

var _ Broadcast = (*shared.Bus)(nil)

const busChannel = sharedPrefix + "v1:events"

// busEnv is two replicas, A and B, enforcing one policy on acme/app:v1
// (signed) and sharing revocations through mr.
type busEnv struct {
	mr   *miniredis.Miniredis
	img  pushed
	a, b sharedReplica
	url  string
	pol  verify.Policy
}

func newBusEnv(t *testing.T) *busEnv {
	t.Helper()
	e := &busEnv{mr: miniredis.RunT(t)}
	reg := newRegistry(t)
	e.img = reg.pushImage(t, "acme/app", "v1")
	k := newKey(t)
	reg.sign(t, "acme/app", e.img.digest, k)
	pol := verify.Policy{Boundaries: []verify.Boundary{{
		Name: "prod", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", k)},
	}}}
	e.url, e.pol = reg.srv.URL, pol
	e.a = newBusReplica(t, e.mr, reg.srv.URL, pol, "A")
	e.b = newBusReplica(t, e.mr, reg.srv.URL, pol, "B")
	e.waitSubscribed(t)
	return e
}

func newBusReplica(t *testing.T, mr *miniredis.Miniredis, upstreamURL string, pol verify.Policy, id string) sharedReplica {
	t.Helper()
	c, err := shared.NewClient(shared.ClientOptions{Addr: mr.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	reg := prometheus.NewRegistry()
	bus, err := shared.NewBus(c, shared.NewGuard(zap.NewNop(), reg, time.Second), shared.BusOptions{KeyPrefix: sharedPrefix, Replica: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	eng := newEngineSpy(t, pol)
	p, _ := newTestProxy(t, upstreamURL, eng, WithVerdictCache(newMapVerdicts()), WithBroadcast(bus))
	return sharedReplica{p: p, eng: eng, reg: reg}
}

// waitSubscribed waits until both replicas listen, so that what follows
// is delivered as a message rather than found when resynchronising.
func (e *busEnv) waitSubscribed(t *testing.T) {
	t.Helper()
	eventually(t, 10*time.Second, "both replicas subscribed", func() bool {
		return e.mr.PubSubNumSub(busChannel)[busChannel] == 2
	})
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *busEnv) pull(r sharedReplica) int {
	return do(r.p, http.MethodGet, manifestPath("acme/app", e.img.digest.String())).Code
}

func hasRevocation(p *Proxy, id string) bool {
	return slices.ContainsFunc(p.Revocations().List(), func(r Revocation) bool { return r.ID == id })
}

func revokeBody(digest string) string {
	return `{"digest":"` + digest + `","reason":"leaked build","by":"alice"}`
}

// TestBroadcastRevocation: a revocation posted to A denies on B within the
// second the issue allows (polled for two), and lifting it on A lifts it
// on B.
func TestBroadcastRevocation(t *testing.T) {
	t.Parallel()
	e := newBusEnv(t)
	if code := e.pull(e.b); code != http.StatusOK {
		t.Fatalf("pull on B before the revocation = %d", code)
	}
	if w := admin(e.a.p, http.MethodPost, "/v1/revocations", revokeBody(e.img.digest.String())); w.Code != http.StatusCreated {
		t.Fatalf("POST on A: %d %s", w.Code, w.Body)
	}
	eventually(t, 2*time.Second, "B denies the digest revoked on A", func() bool { return e.pull(e.b) == http.StatusForbidden })
	id := "digest:" + e.img.digest.String()
	list := e.b.p.Revocations().List()
	if len(list) != 1 || list[0].ID != id || list[0].Source != RevocationFromAPI || list[0].By != "alice" {
		t.Fatalf("B's list = %+v", list)
	}
	// A replica started now loads the list before it serves anything.
	c := newBusReplica(t, e.mr, e.url, e.pol, "C")
	if code := e.pull(c); code != http.StatusForbidden {
		t.Errorf("first pull on a replica started after the revocation = %d, want 403", code)
	}

	if w := admin(e.a.p, http.MethodDelete, "/v1/revocations?id="+url.QueryEscape(id), ""); w.Code != http.StatusNoContent {
		t.Fatalf("DELETE on A: %d %s", w.Code, w.Body)
	}
	eventually(t, 2*time.Second, "B serves the digest lifted on A", func() bool { return e.pull(e.b) == http.StatusOK })
	if hasRevocation(e.b.p, id) {
		t.Error("B still lists the lifted revocation")
	}
}

// TestBroadcastResyncAfterOutage: a revocation posted to A while Redis is
// down applies on A at once and reaches B when Redis returns; one added
// and one lifted in Redis while the replicas could not hear it (another
// replica's messages they missed) are applied by both when they
// subscribe again.
func TestBroadcastResyncAfterOutage(t *testing.T) {
	t.Parallel()
	e := newBusEnv(t)
	restart := redistest.Outage(t, e.mr)
	if w := admin(e.a.p, http.MethodPost, "/v1/revocations", revokeBody(e.img.digest.String())); w.Code != http.StatusCreated {
		t.Fatalf("POST on A with redis down: %d %s", w.Code, w.Body)
	}
	if code := e.pull(e.a); code != http.StatusForbidden {
		t.Fatalf("pull on A of the digest it revoked with redis down = %d", code)
	}
	restart()
	eventually(t, 15*time.Second, "B denies the digest A revoked during the outage", func() bool { return e.pull(e.b) == http.StatusForbidden })
	e.waitSubscribed(t)

	// Another replica lifted it and revoked another digest; neither
	// message reached A or B.
	id := "digest:" + e.img.digest.String()
	hash := sharedPrefix + "v1:revocations"
	other := "sha256:" + strings.Repeat("ab", 32)
	otherID := "digest:" + other
	restart = redistest.Outage(t, e.mr)
	e.mr.HDel(hash, id)
	sum := sha256.Sum256([]byte(otherID))
	e.mr.HSet(hash, otherID, `{"v":1,"k":"`+hex.EncodeToString(sum[:])+`","e":{"digest":"`+other+`","reason":"r","by":"bob","time":"2026-01-02T03:04:05Z"}}`)
	restart()
	for name, r := range map[string]sharedReplica{"A": e.a, "B": e.b} {
		eventually(t, 15*time.Second, name+" resynchronised", func() bool {
			return !hasRevocation(r.p, id) && hasRevocation(r.p, otherID)
		})
		if code := e.pull(r); code != http.StatusOK {
			t.Errorf("pull on %s after the lift = %d", name, code)
		}
	}
}

// publish sends a message as another replica would.
func (e *busEnv) publish(t *testing.T, replica, kind, entries string) {
	t.Helper()
	e.mr.Publish(busChannel, `{"v":1,"kind":"`+kind+`","replica":"`+replica+`","entries":[`+entries+`],"time":"2026-01-02T03:04:05Z"}`)
}

// store records digest's revocation the way a replica does before it
// publishes the message: replicas check messages against the record.
func (e *busEnv) store(t *testing.T, digest, entryJSON string) {
	t.Helper()
	id := "digest:" + digest
	sum := sha256.Sum256([]byte(id))
	e.mr.HSet(sharedPrefix+"v1:revocations", id, `{"v":1,"k":"`+hex.EncodeToString(sum[:])+`","e":`+entryJSON+`}`)
}

func entry(digest string) string {
	return `{"digest":"` + digest + `","reason":"r","by":"mallory","time":"2026-01-02T03:04:05Z"}`
}

// TestBroadcastOutOfOrder: messages of one change that arrive in another
// order than they were sent (a cluster delivers each from the node it was
// published on) leave every replica with the recorded list. A revocation
// lifted and added again stays in force however its messages arrive, and
// one added and lifted stays lifted.
func TestBroadcastOutOfOrder(t *testing.T) {
	t.Parallel()
	e := newBusEnv(t)
	d := e.img.digest.String()
	id := "digest:" + d

	// Lifted, then added again: recorded in force; the lift arrives last.
	e.store(t, d, entry(d))
	e.publish(t, "C", "revocation-add", entry(d))
	e.publish(t, "C", "revocation-remove", entry(d))
	marker := "sha256:" + strings.Repeat("12", 32)
	e.store(t, marker, entry(marker))
	e.publish(t, "C", "revocation-add", entry(marker))
	eventually(t, 2*time.Second, "B applied the messages", func() bool { return hasRevocation(e.b.p, "digest:"+marker) })
	if !hasRevocation(e.b.p, id) {
		t.Fatal("a lift that arrived after the revocation added again lifted it")
	}
	if code := e.pull(e.b); code != http.StatusForbidden {
		t.Fatalf("pull on B of the digest revoked again = %d, want 403", code)
	}

	// Added, then lifted: recorded lifted; the addition arrives last.
	e.mr.HDel(sharedPrefix+"v1:revocations", id)
	e.publish(t, "C", "revocation-remove", entry(d))
	e.publish(t, "C", "revocation-add", entry(d))
	e.mr.HDel(sharedPrefix+"v1:revocations", "digest:"+marker)
	e.publish(t, "C", "revocation-remove", entry(marker))
	eventually(t, 2*time.Second, "B applied the messages", func() bool { return !hasRevocation(e.b.p, "digest:"+marker) })
	if hasRevocation(e.b.p, id) {
		t.Fatal("an addition that arrived after its lift put it in force")
	}
	if code := e.pull(e.b); code != http.StatusOK {
		t.Fatalf("pull on B of the lifted digest = %d, want 200", code)
	}
}

// TestBroadcastMalformedDropped: messages that do not parse, or carry an
// entry the admin API would refuse, are dropped and counted; the valid
// message after them applies.
func TestBroadcastMalformedDropped(t *testing.T) {
	t.Parallel()
	e := newBusEnv(t)
	d := e.img.digest.String()
	e.mr.Publish(busChannel, "not json")
	e.publish(t, "C", "revocation-add", `{"digest":"`+d+`","reason":"r","by":"m","time":"2026-01-02T03:04:05Z","extra":1}`)
	e.publish(t, "C", "revocation-add", entry(strings.ToUpper(d)))
	e.mr.Publish(busChannel, `{"v":2,"kind":"revocation-add","replica":"C","entries":[`+entry(d)+`],"time":"2026-01-02T03:04:05Z"}`)
	other := "sha256:" + strings.Repeat("cd", 32)
	e.store(t, other, entry(other))
	e.publish(t, "C", "revocation-add", entry(other))
	eventually(t, 2*time.Second, "the valid message applied on B", func() bool { return hasRevocation(e.b.p, "digest:"+other) })
	if hasRevocation(e.b.p, "digest:"+d) {
		t.Fatal("a malformed message revoked the digest")
	}
	if code := e.pull(e.b); code != http.StatusOK {
		t.Errorf("pull on B = %d, want 200", code)
	}
	if n := e.b.sharedErrors(t, "events", "invalid"); n != 4 {
		t.Errorf("refused messages counted = %v, want 4", n)
	}
}

// TestBroadcastOwnMessageIgnored: a message carrying A's own id is not
// applied by A (it applied the change when it made it); B applies it.
func TestBroadcastOwnMessageIgnored(t *testing.T) {
	t.Parallel()
	e := newBusEnv(t)
	d := e.img.digest.String()
	e.store(t, d, entry(d))
	e.publish(t, "A", "revocation-add", entry(d))
	other := "sha256:" + strings.Repeat("ef", 32)
	e.store(t, other, entry(other))
	e.publish(t, "C", "revocation-add", entry(other))
	eventually(t, 2*time.Second, "the later message applied on A", func() bool { return hasRevocation(e.a.p, "digest:"+other) })
	if hasRevocation(e.a.p, "digest:"+d) {
		t.Error("A applied a message carrying its own id")
	}
	eventually(t, 2*time.Second, "B applied A's message", func() bool { return hasRevocation(e.b.p, "digest:"+d) })
}

// TestBroadcastPeerReload: a reload message from another replica runs the
// hook once, however many arrive together; a replica's own is ignored.
func TestBroadcastPeerReload(t *testing.T) {
	t.Parallel()
	e := newBusEnv(t)
	reloads := make(chan struct{}, 10)
	e.a.p.OnPeerReload(func() { reloads <- struct{}{} })
	for _, r := range []string{"A", "B", "C"} {
		e.mr.Publish(busChannel, `{"v":1,"kind":"reload","replica":"`+r+`","fingerprint":"f1","time":"2026-01-02T03:04:05Z"}`)
	}
	select {
	case <-reloads:
	case <-time.After(5 * time.Second):
		t.Fatal("no reload after another replica's")
	}
	// Without the debounce the first burst would have left a second
	// reload waiting by the time the next burst's is received.
	e.mr.Publish(busChannel, `{"v":1,"kind":"reload","replica":"A","fingerprint":"f2","time":"2026-01-02T03:04:05Z"}`)
	e.mr.Publish(busChannel, `{"v":1,"kind":"reload","replica":"C","fingerprint":"f3","time":"2026-01-02T03:04:05Z"}`)
	select {
	case <-reloads:
	case <-time.After(5 * time.Second):
		t.Fatal("no reload after the second message")
	}
	if n := len(reloads); n != 0 {
		t.Errorf("%d extra reloads, want the messages of one burst debounced into one", n)
	}
}
