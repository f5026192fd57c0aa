package proxy

import "time"

// EventKind names what an alert event is about.
type EventKind string

// Event kinds. Deny, would-deny (warn), fail-closed and drift come from
// decisions; the others from the subsystems that detect them.
const (
	EventDeny             EventKind = "deny"
	EventWouldDeny        EventKind = "would-deny"
	EventFailClosed       EventKind = "fail-closed"
	EventDrift            EventKind = "drift"
	EventRevocationHit    EventKind = "revocation-hit"
	EventReloadFailed     EventKind = "reload-failed"
	EventWatchAbsent      EventKind = "watch-absent"
	EventWatchStale       EventKind = "watch-stale"
	EventWatchChanged     EventKind = "watch-changed"
	EventWatchUnreachable EventKind = "watch-unreachable"
	// EventTrustedRootRefreshFailed: a refresh of a trusted root kept
	// through TUF failed; the last good root is kept until its metadata
	// expires.
	EventTrustedRootRefreshFailed EventKind = "trusted-root-refresh-failed"
	// EventTrustedRootUnavailable: a trust entry has no usable root (none
	// fetched, or expired); its keyless authorities deny everything.
	EventTrustedRootUnavailable EventKind = "trusted-root-unavailable"
)

// Event is one alertable occurrence. Decision is set for events about a
// served or refused request; Message says what happened in one line;
// Details carries kind-specific fields (a reload's errors, a watch's
// reference, both verdicts of a change).
type Event struct {
	Kind     EventKind         `json:"kind"`
	Time     time.Time         `json:"time"`
	Message  string            `json:"message"`
	Decision *Decision         `json:"decision,omitempty"`
	Details  map[string]string `json:"details,omitempty"`
}

// EventSink receives events. Emit must never block serving: a sink queues
// (bounded) and drops, counting what it drops.
type EventSink interface {
	Emit(Event)
}

// WithEventSink sets where alert events go. Default: nowhere.
func WithEventSink(s EventSink) Option {
	return func(o *options) error {
		o.events = s
		return nil
	}
}

// Emit hands e to the event sink, if any. Subsystems outside the proxy
// (configuration reload, watches) report through it.
func (p *Proxy) Emit(e Event) {
	if p.opts.events == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	p.opts.events.Emit(e)
}

// emitDecision turns a recorded decision into its alert events.
func (p *Proxy) emitDecision(d Decision) {
	if p.opts.events == nil {
		return
	}
	var kind EventKind
	switch {
	case d.FailClosed:
		kind = EventFailClosed
	case d.Decision == "deny":
		kind = EventDeny
	case d.Decision == "warn":
		kind = EventWouldDeny
	}
	if kind != "" {
		dc := d
		p.Emit(Event{Kind: kind, Time: d.Time, Message: eventMessage(d), Decision: &dc})
	}
	if d.Drift {
		dc := d
		p.Emit(Event{Kind: EventDrift, Time: d.Time, Message: "drift: " + eventMessage(d), Decision: &dc})
	}
}

func eventMessage(d Decision) string {
	msg := d.Decision + " " + d.Upstream + "/" + d.Repository + "@" + d.Digest
	if d.Boundary != "" {
		msg += " (boundary " + d.Boundary + ")"
	}
	if len(d.Reasons) > 0 {
		msg += ": " + d.Reasons[0]
	}
	return msg
}
