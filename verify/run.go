package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// run is one Verify call's walk through the subject's evidence. Each piece
// is verified as it is read and kept only for what it decided: a signer
// counted, an attestation a rule may still need. Everything else is
// dropped at once, so memory follows the evidence that verified, not the
// evidence that was listed. Reading stops as soon as every decision is
// made, when the budget is spent, or at the evidence count limit.
type run struct {
	e   *Engine
	cb  *compiledBoundary
	s   Subject
	f   Fetcher
	now time.Time

	budget budget
	tally  *tally
	rules  []*ruleState
	// provRule says a rule asks for SLSA provenance; lineage then follows
	// the attestation that satisfied it. Without one, lineage follows the
	// newest provenance any boundary authority signed (prov), which needs
	// every piece of evidence.
	provRule bool
	prov     *verifiedAttestation

	// found counts the signature evidence read (referrers and .sig
	// layers), rejected or not.
	found int
	notes []string
	// locs are the places evidence is read from (locate), at the one
	// being read.
	locs []*location
	at   *location
	// ahead reads evidence ahead of the run during discovery.
	ahead *readAhead
	// limit names the limit that left evidence unread while a decision
	// still needed it; a denial then carries it in Verdict.Limit.
	limit string
	// reads counts how simple-signing layers were obtained.
	reads EvidenceReads
}

func (e *Engine) newRun(cb *compiledBoundary, s Subject, f Fetcher, now time.Time) *run {
	r := &run{
		e: e, cb: cb, s: s, f: f, now: now,
		budget: budget{limits: e.limits},
		tally:  &tally{keys: map[string]string{}, identities: map[string]string{}, sigs: map[[32]byte]string{}, done: map[string]bool{}},
	}
	for _, cr := range cb.rules {
		r.rules = append(r.rules, &ruleState{compiledRule: cr})
		if isProvenance(cr.PredicateType) {
			r.provRule = true
		}
	}
	return r
}

// needSignatures reports whether the threshold is still open.
func (r *run) needSignatures() bool { return len(r.tally.signers) < r.cb.Threshold }

// needAttestations reports whether an attestation rule or lineage may
// still be changed by evidence not yet read.
func (r *run) needAttestations() bool {
	for _, rs := range r.rules {
		if rs.satisfied == nil {
			return true
		}
	}
	return r.cb.Lineage != nil && !r.provRule
}

func (r *run) done() bool { return !r.needSignatures() && !r.needAttestations() }

// leftUnread records that limit left evidence unread; note says how much.
func (r *run) leftUnread(limit, note string) {
	r.notes = append(r.notes, note)
	if r.limit == "" {
		r.limit = limit
	}
}

// add decides what one piece of evidence contributes and lets it go.
// signature says it may count towards the threshold (a referrer or a .sig
// layer; legacy attestations never do). An error only means the context
// ended.
func (r *run) add(ctx context.Context, ev *evidence, signature bool) error {
	if r.at != nil && !r.at.own {
		ev.where = r.at.String()
	}
	if signature && r.needSignatures() {
		r.checkSignature(ctx, ev)
	} else {
		r.open(ev)
	}
	if signature {
		r.found++
	}
	if ev.predicateType == "" {
		return nil
	}
	for _, rs := range r.rules {
		if rs.satisfied == nil && rs.PredicateType == ev.predicateType {
			if err := r.cb.offer(ctx, rs, ev, r.s, r.now); err != nil {
				return err
			}
		}
	}
	if r.cb.Lineage != nil && !r.provRule && isProvenance(ev.predicateType) {
		offerProvenance(&r.prov, ev, r.s, r.now, r.cb.authorities)
	}
	return ctx.Err()
}

// open verifies a DSSE envelope's signature under the boundary's
// authorities and only then parses the statement it signs. An envelope no
// authority signed is rejected with their reasons, its payload never
// parsed; one whose statement does not parse is rejected too, whoever
// signed it.
func (r *run) open(ev *evidence) {
	if ev.err != nil || ev.statement != nil {
		return
	}
	payloadType, payload, ok := ev.envelope()
	if !ok {
		return
	}
	reject := func(err error) {
		if ev.bundle != nil {
			err = fmt.Errorf("bundle statement cannot name the subject: %w", err)
		}
		ev.err = err
	}
	// Nesting is counted first, by a scan that allocates nothing: past
	// encoding/json's own depth limit sigstore-go would refuse the
	// envelope with a misleading signature error, and a deep payload is
	// refused by dsseStatement anyway, whoever signed it.
	maxDepth := r.e.limits.PredicateDepth
	if limit := max(maxDepth+1, statementDepth); jsonDepth(payload, limit) > limit {
		reject(errTooDeep(maxDepth))
		return
	}
	var fails []string
	for _, a := range r.cb.authorities {
		res := ev.result(a, r.now)
		if res.err != nil {
			fails = appendUnique(fails, res.err.Error())
			continue
		}
		st, err := dsseStatement(payloadType, payload, maxDepth)
		if err != nil {
			reject(err)
			return
		}
		ev.statement, ev.predicateType = st, st.PredicateType
		return
	}
	ev.err = errors.New(strings.Join(fails, "; "))
}
