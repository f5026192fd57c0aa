package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

const (
	// DefaultWatchConcurrency is how many watch runs may verify at once.
	DefaultWatchConcurrency = 2
	// WatchClient is the client of the decisions a watch records.
	WatchClient = "watch"
	// watchUnreachableFactor times Every without a decision raises
	// watch-unreachable: one missed run is a blip, two are an outage.
	watchUnreachableFactor = 2
	// watchStaleFactor times Every is the default StaleAfter.
	watchStaleFactor = 4
)

// Results of a watch run (the result label of portcullis_watch_runs_total).
const (
	WatchAllowed     = "allowed"     // the reference verifies
	WatchDenied      = "denied"      // denied (or would be, in warn mode) for another reason than those below
	WatchAbsent      = "absent"      // the reference, or evidence the policy requires, is gone
	WatchStale       = "stale"       // provenance older than the rule's max_age
	WatchUnreachable = "unreachable" // the upstream did not answer
	WatchError       = "error"       // no decision for another reason (verifier, overload, invalid response)
)

// Watch is one reference re-verified on a schedule whether or not anyone
// pulls it.
type Watch struct {
	// Ref is "<upstream name or alias>/<repository>:<tag>" or
	// "<upstream name or alias>/<repository>@<digest>".
	Ref string
	// Every is the time between two runs, jittered by ±10%.
	Every time.Duration
	// StaleAfter raises watch-stale on a run that is not an allow when
	// the last allow (or the start, before any) is older than this.
	// Default: 4 × Every.
	StaleAfter time.Duration
}

// WatchOption configures a Watcher.
type WatchOption func(*Watcher) error

// WithWatchConcurrency bounds the watch runs going at once. Default:
// DefaultWatchConcurrency. Each run also takes one of the proxy's
// verification slots, so watches never verify beside more pulls than the
// proxy allows.
func WithWatchConcurrency(n int) WatchOption {
	return func(w *Watcher) error {
		if n <= 0 {
			return errors.New("watch concurrency must be positive")
		}
		w.sem = make(chan struct{}, n)
		return nil
	}
}

// withWatchClock replaces the clock runs are timed by.
func withWatchClock(now func() time.Time) WatchOption {
	return func(w *Watcher) error {
		w.now = now
		return nil
	}
}

// Watcher re-verifies watched references on their schedules. Create it
// with (*Proxy).NewWatcher and start it with Run.
type Watcher struct {
	p       *Proxy
	watches []*watchState
	sem     chan struct{}
	m       *watchMetrics
	// now and jitter (a random duration in [0, d)) are replaced by tests.
	now    func() time.Time
	jitter func(d time.Duration) time.Duration
}

// watchState is one watch and what its runs found. Only the watch's own
// goroutine runs check, so the fields after the parsed reference need no
// lock.
type watchState struct {
	Watch
	u     *upstreamEntry
	repo  string
	ref   string // the tag or the digest
	isTag bool

	lastAllowed time.Time // the start until the first allow
	allowed     bool      // ever allowed since the start
	lastDecided time.Time // the start until the first decision
	prev        *watchVerdict
}

// watchVerdict is what one run decided, compared with the next.
type watchVerdict struct {
	digest   string
	decision string
	reasons  []string
}

type watchMetrics struct {
	lastAllowed *prometheus.GaugeVec
	runs        *prometheus.CounterVec
}

// NewWatcher prepares watches against p's upstreams and verifier. Every
// reference must name a configured upstream (or alias) explicitly and a
// tag or digest.
func (p *Proxy) NewWatcher(watches []Watch, opts ...WatchOption) (*Watcher, error) {
	w := &Watcher{
		p:      p,
		sem:    make(chan struct{}, DefaultWatchConcurrency),
		now:    time.Now,
		jitter: func(d time.Duration) time.Duration { return rand.N(max(d, 1)) },
	}
	for _, o := range opts {
		if err := o(w); err != nil {
			return nil, err
		}
	}
	start := w.now()
	seen := map[string]bool{}
	for _, wt := range watches {
		if wt.Every <= 0 {
			return nil, fmt.Errorf("watch %q: every must be positive", wt.Ref)
		}
		if wt.StaleAfter == 0 {
			wt.StaleAfter = watchStaleFactor * wt.Every
		}
		if wt.StaleAfter < 0 {
			return nil, fmt.Errorf("watch %q: stale_after must not be negative", wt.Ref)
		}
		if seen[wt.Ref] {
			return nil, fmt.Errorf("watch %q: listed twice", wt.Ref)
		}
		seen[wt.Ref] = true
		ws, err := p.parseWatchRef(wt.Ref)
		if err != nil {
			return nil, fmt.Errorf("watch %q: %w", wt.Ref, err)
		}
		ws.Watch = wt
		ws.lastAllowed, ws.lastDecided = start, start
		w.watches = append(w.watches, ws)
	}
	m, err := newWatchMetrics(p.registerer())
	if err != nil {
		return nil, err
	}
	w.m = m
	for _, ws := range w.watches {
		// A reference never allowed since the start exports 0, so that an
		// alert on the time since the last allow fires for it too.
		m.lastAllowed.WithLabelValues(ws.Ref)
	}
	return w, nil
}

// parseWatchRef splits ref into its upstream, repository and tag or
// digest, with the grammar and routing a pull's path gets.
func (p *Proxy) parseWatchRef(ref string) (*watchState, error) {
	name, reference, byDigest := strings.Cut(ref, "@")
	ws := &watchState{}
	if byDigest {
		if _, derr := parseDigest(reference); derr != nil {
			return nil, errors.New(derr.Message)
		}
		ws.ref = reference
	} else {
		i := strings.LastIndex(ref, ":")
		if i < 0 || i < strings.LastIndex(ref, "/") {
			return nil, errors.New("must end in :<tag> or @<digest>")
		}
		name, ws.ref, ws.isTag = ref[:i], ref[i+1:], true
		if !tagRE.MatchString(ws.ref) {
			return nil, fmt.Errorf("invalid tag %q", ws.ref)
		}
	}
	if verr := validateName(name); verr != nil {
		return nil, errors.New(verr.Message)
	}
	// The upstream is named, never implied by a default upstream: the
	// reference says exactly what is watched.
	first, _, ok := strings.Cut(name, "/")
	if !ok || p.router.byKey[strings.ToLower(first)] == nil {
		return nil, fmt.Errorf("must start with a configured upstream name or alias (%s)", p.router.listing)
	}
	u, repo, rerr := p.router.route(name, "")
	if rerr != nil {
		return nil, errors.New(rerr.Message)
	}
	ws.u, ws.repo = u, repo
	return ws, nil
}

func (p *Proxy) registerer() prometheus.Registerer {
	if p.opts.registerer != nil {
		return p.opts.registerer
	}
	r, _ := p.gatherer.(prometheus.Registerer)
	return r
}

func newWatchMetrics(reg prometheus.Registerer) (*watchMetrics, error) {
	m := &watchMetrics{
		lastAllowed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "portcullis_watch_last_allowed_timestamp_seconds",
			Help: "When a watched reference was last verified as allowed, as a Unix time; 0 when it has not been since the start.",
		}, []string{"ref"}),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_watch_runs_total",
			Help: "Watch runs by reference and result (allowed, denied, absent, stale, unreachable, error).",
		}, []string{"ref", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	// A watcher built again on the same registry (a restart in tests, a
	// rebuilt proxy) carries on with the series already exported.
	if err := reg.Register(m.lastAllowed); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("failed to register watch metrics: %w", err)
		}
		g, ok := are.ExistingCollector.(*prometheus.GaugeVec)
		if !ok {
			return nil, fmt.Errorf("failed to register watch metrics: %w", err)
		}
		m.lastAllowed = g
	}
	if err := reg.Register(m.runs); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("failed to register watch metrics: %w", err)
		}
		c, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, fmt.Errorf("failed to register watch metrics: %w", err)
		}
		m.runs = c
	}
	return m, nil
}

// Run runs every watch on its schedule until ctx ends, then waits for the
// runs under way to stop. The first run of each watch comes within a
// quarter of its period, the next ones every period ±10%, so that watches
// started together do not hit the upstream together.
func (w *Watcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ws := range w.watches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop(ctx, ws)
		}()
	}
	wg.Wait()
}

func (w *Watcher) loop(ctx context.Context, ws *watchState) {
	delay := w.jitter(ws.Every / 4)
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case w.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		w.check(ctx, ws)
		<-w.sem
		delay = ws.Every - ws.Every/10 + w.jitter(ws.Every/5)
	}
}

// check runs one watch once and returns the run's result ("" when ctx
// ended first: a shutdown is not a failed run).
//
// The reference is resolved at the upstream (never from the tag cache)
// and verified afresh through the pull's shared verification, skipping
// the verdict cache; the fresh verdict then replaces the cached one, so a
// pull after a run that found evidence gone is denied without waiting for
// the cached allow to expire. The run is recorded as a decision with
// client "watch"; it is not counted in portcullis_decisions_total, which
// counts what clients were answered, and does not take part in drift
// detection, which stays with pulls.
func (w *Watcher) check(ctx context.Context, ws *watchState) string {
	p := w.p
	now := w.now()
	desc, have, err := ws.u.client.Resolve(ctx, ws.repo, ws.ref, nil)
	if err == nil {
		if _, perr := parseDigest(desc.Digest.String()); perr != nil {
			err = fmt.Errorf("upstream resolved %q to an unusable digest", ws.ref)
		}
	}
	if err != nil {
		return w.failed(ctx, ws, now, "", err)
	}
	v := p.currentVerifier()
	mr := manifestReq{u: ws.u, repo: ws.repo, ref: ws.ref, client: WatchClient, v: v, fresh: true}
	fp := v.FingerprintFor(ws.u.name, ws.repo)
	key := verdictKey(fp, ws.u.name, ws.repo, desc.Digest)
	res, err := p.verifyShared(ctx, mr, key, desc.Digest, have)
	if err != nil {
		return w.failed(ctx, ws, now, desc.Digest.String(), err)
	}
	// A revoked digest or signer denies a watch as it denies a pull.
	d := &manifestDecision{mr: mr, desc: desc, digest: desc.Digest.String(), fingerprint: fp, key: key,
		verdict: res.verdict, source: sourceVerified}
	if err := p.applyRevocations(ctx, d); err != nil {
		return w.failed(ctx, ws, now, d.digest, err)
	}
	return w.decided(ws, now, desc.Digest, d.verdict)
}

// decided reports a run that reached a verdict.
func (w *Watcher) decided(ws *watchState, now time.Time, digest v1.Hash, v verify.Verdict) string {
	p := w.p
	ws.lastDecided = now
	decision := "deny"
	switch {
	case v.Allowed:
		decision = "allow"
	case v.Served():
		decision = "warn"
	}
	mode := v.Mode
	if mode == "" {
		mode = verify.ModeEnforce
	}
	cur := &watchVerdict{digest: digest.String(), decision: decision, reasons: v.Reasons}
	d := Decision{
		Time:       now.UTC(),
		Kind:       KindManifest,
		Client:     WatchClient,
		Upstream:   ws.u.name,
		Repository: ws.repo,
		Reference:  ws.ref,
		Digest:     cur.digest,
		Boundary:   v.Boundary,
		Decision:   decision,
		Mode:       mode,
		Signers:    v.Signers,
		Reasons:    v.Reasons,
	}
	details := w.details(ws, cur)
	details["boundary"] = v.Boundary
	var events []Event
	result := WatchAllowed
	if v.Allowed {
		ws.lastAllowed, ws.allowed = now, true
		w.m.lastAllowed.WithLabelValues(ws.Ref).Set(float64(now.UnixNano()) / 1e9)
		p.note(d)
	} else {
		reason, kind := classifyDenial(v.Reasons)
		switch kind {
		case EventWatchAbsent:
			result = WatchAbsent
			events = append(events, w.event(kind, ws, "evidence is gone: "+reason, details))
		case EventWatchStale:
			result = WatchStale
			events = append(events, w.event(kind, ws, "provenance is stale: "+reason, details))
		default:
			result = WatchDenied
		}
		if kind == "" {
			// A denial for another reason is an ordinary deny alert, with
			// the decision it is about.
			p.record(d)
		} else {
			p.note(d)
		}
		if kind != EventWatchStale && now.Sub(ws.lastAllowed) > ws.StaleAfter {
			events = append(events, w.event(EventWatchStale, ws, "not allowed for "+w.since(ws, now), details))
		}
	}
	if ws.prev != nil && ws.prev.digest != cur.digest {
		events = append(events, w.event(EventWatchChanged, ws,
			fmt.Sprintf("now points at %s (%s), was %s (%s)", cur.digest, cur.decision, ws.prev.digest, ws.prev.decision), details))
	}
	ws.prev = cur
	w.m.runs.WithLabelValues(ws.Ref, result).Inc()
	level := zap.DebugLevel
	if result != WatchAllowed || len(events) > 0 {
		level = zap.WarnLevel
	}
	if ce := p.log.Check(level, "watch run"); ce != nil {
		ce.Write(zap.String("ref", ws.Ref), zap.String("result", result), zap.String("digest", cur.digest),
			zap.String("decision", decision), zap.Strings("reasons", v.Reasons))
	}
	for _, e := range events {
		p.Emit(e)
	}
	return result
}

// failed reports a run that reached no verdict: the reference (or the
// manifest it resolved to) not found is an absence; anything else is a
// failure to decide, alerted once no run has decided for twice the
// period, and on every failed run after that.
func (w *Watcher) failed(ctx context.Context, ws *watchState, now time.Time, digest string, err error) string {
	p := w.p
	if ctx.Err() != nil {
		return ""
	}
	var fe *fetchError
	var ve *verifyError
	var oe *overloadError
	var ue *upstream.Error
	notFound := errors.As(err, &ue) && ue.Status == http.StatusNotFound && !errors.As(err, &ve)
	result := WatchError
	switch {
	case notFound:
		result = WatchAbsent
	case errors.As(err, &oe):
	case errors.As(err, &fe), errors.As(err, &ve):
		if upstream.IsTransient(err) || errors.Is(err, context.DeadlineExceeded) {
			result = WatchUnreachable
		}
	case upstream.IsTransient(err), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ue) && ue.Status >= 500:
		result = WatchUnreachable
	}
	w.m.runs.WithLabelValues(ws.Ref, result).Inc()
	details := w.details(ws, &watchVerdict{digest: digest})
	details["error"] = truncate(err.Error(), maxReasonLength)
	p.log.Warn("watch run failed", zap.String("ref", ws.Ref), zap.String("result", result), zap.String("digest", digest), zap.Error(err))
	if result == WatchAbsent {
		ws.lastDecided = now
		what := "the reference"
		if digest != "" {
			what = digest
		}
		// The previous digest is kept: a tag that comes back is a change
		// only when it names another digest.
		p.Emit(w.event(EventWatchAbsent, ws, what+" is not found at upstream "+ws.u.name, details))
		if now.Sub(ws.lastAllowed) > ws.StaleAfter {
			p.Emit(w.event(EventWatchStale, ws, "not allowed for "+w.since(ws, now), details))
		}
		return result
	}
	if now.Sub(ws.lastDecided) >= watchUnreachableFactor*ws.Every {
		details["last_decided"] = ws.lastDecided.UTC().Format(time.RFC3339)
		p.Emit(w.event(EventWatchUnreachable, ws, "no decision for "+now.Sub(ws.lastDecided).Round(time.Second).String()+": "+truncate(err.Error(), maxReasonLength), details))
	}
	return result
}

// classifyDenial says whether a denial cites evidence that is missing or
// provenance too old for its rule's max_age, with the reason that says so.
func classifyDenial(reasons []string) (string, EventKind) {
	for _, r := range reasons {
		if strings.Contains(r, "no signatures found") || strings.Contains(r, "missing attestation") {
			return r, EventWatchAbsent
		}
	}
	for _, r := range reasons {
		if strings.Contains(r, "stale: ") {
			return r, EventWatchStale
		}
	}
	return "", ""
}

// details are the fields every watch event carries: the reference, this
// run's digest and verdict, the previous run's, and the last allow.
func (w *Watcher) details(ws *watchState, cur *watchVerdict) map[string]string {
	d := map[string]string{
		"ref":        ws.Ref,
		"upstream":   ws.u.name,
		"repository": ws.repo,
		"reference":  ws.ref,
		"digest":     cur.digest,
		"verdict":    cur.decision,
		"reasons":    strings.Join(cur.reasons, "; "),
	}
	if ws.allowed {
		d["last_allowed"] = ws.lastAllowed.UTC().Format(time.RFC3339)
	} else {
		d["last_allowed"] = "never"
	}
	if ws.prev != nil {
		d["previous_digest"] = ws.prev.digest
		d["previous_verdict"] = ws.prev.decision
		d["previous_reasons"] = strings.Join(ws.prev.reasons, "; ")
	}
	return d
}

func (w *Watcher) event(kind EventKind, ws *watchState, msg string, details map[string]string) Event {
	// Each event gets its own map: a sink may keep it.
	return Event{Kind: kind, Time: w.now().UTC(), Message: "watch " + ws.Ref + ": " + msg, Details: maps.Clone(details)}
}

func (w *Watcher) since(ws *watchState, now time.Time) string {
	s := now.Sub(ws.lastAllowed).Round(time.Second).String()
	if !ws.allowed {
		return s + " (never since the start)"
	}
	return s
}
