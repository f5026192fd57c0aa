package verify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// maxClockSkew is how far in the future an attestation's time may be
// before max_age treats it as invalid.
const maxClockSkew = 5 * time.Minute

// FormatCosignAttestation names legacy "sha256-<hex>.att" evidence. It is
// only ever used for attestation rules: cosign verify does not read .att,
// so neither does the signature threshold.
const FormatCosignAttestation = "cosign-legacy-attestation"

const (
	mediaTypeDSSE   = "application/vnd.dsse.envelope.v1+json"
	mediaTypeInToto = "application/vnd.in-toto+json"
)

// statement is an in-toto statement as parsed for policy: the predicate is
// kept as generic JSON so conditions and the lineage parser can read any
// predicate type.
type statement struct {
	Type          string             `json:"_type"`
	Subject       []statementSubject `json:"subject"`
	PredicateType string             `json:"predicateType"`
	Predicate     json.RawMessage    `json:"predicate"`

	predicate map[string]any
}

type statementSubject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// parseStatement parses an in-toto statement v0.1 or v1 strictly: one
// JSON object, a known statement type, at least one subject and an object
// predicate (absent means empty).
func parseStatement(b []byte) (*statement, error) {
	var st statement
	if err := strictUnmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("malformed in-toto statement: %w", err)
	}
	if st.Type != StatementV01 && st.Type != StatementV1 {
		return nil, fmt.Errorf("unsupported in-toto statement type %q", st.Type)
	}
	if st.PredicateType == "" {
		return nil, errors.New("in-toto statement has no predicateType")
	}
	if len(st.Subject) == 0 {
		return nil, errors.New("in-toto statement has no subject")
	}
	st.predicate = map[string]any{}
	if len(st.Predicate) > 0 && !bytes.Equal(bytes.TrimSpace(st.Predicate), []byte("null")) {
		if err := json.Unmarshal(st.Predicate, &st.predicate); err != nil {
			return nil, fmt.Errorf("in-toto predicate is not a JSON object: %w", err)
		}
	}
	return &st, nil
}

// names reports whether the statement is about digest.
func (st *statement) names(s Subject) bool {
	for _, sub := range st.Subject {
		if strings.EqualFold(sub.Digest[s.Digest.Algorithm], s.Digest.Hex) {
			return true
		}
	}
	return false
}

// dsseStatement is the one reading of a DSSE envelope's in-toto
// statement, for bundles and legacy .att layers, key and keyless alike:
// the payload type must be in-toto and the statement is parsed from the
// decoded payload, exactly the bytes the envelope signature covers (its
// pre-authentication encoding is over payload type and these bytes).
func dsseStatement(payloadType string, payload []byte) (*statement, error) {
	if payloadType != mediaTypeInToto {
		return nil, fmt.Errorf("DSSE payload type %q is not in-toto", payloadType)
	}
	return parseStatement(payload)
}

func decodeB64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.URLEncoding.DecodeString(s)
}

// openAttestations reads the cosign legacy "sha256-<hex>.att" manifest.
func (e *Engine) openAttestations(ctx context.Context, s Subject, f Fetcher, m Manifest, d *discovery) ([]*evidence, error) {
	return e.openLayers(ctx, s, f, m, d, cosignLayers{
		format: FormatCosignAttestation, tag: "sha256-" + s.Digest.Hex + ".att", what: "attestation",
		mediaType: mediaTypeDSSE, source: "att", maxBytes: maxBundleBytes,
		parse: func(ev *evidence, raw []byte, l v1.Descriptor) {
			ev.legacy, ev.statement, ev.err = parseLegacyAttestation(raw, l.Annotations)
			if ev.statement != nil {
				// The annotation is unsigned; the signed statement decides.
				ev.predicateType = ev.statement.PredicateType
			} else {
				// Rejected evidence can never satisfy a rule; the annotation
				// only lets the rule's reasons say why it was rejected.
				ev.predicateType = l.Annotations["predicateType"]
			}
		},
	})
}

// parseLegacyAttestation parses a cosign .att layer: the blob is the DSSE
// envelope, the annotations carry keyless material as on .sig layers.
func parseLegacyAttestation(raw []byte, ann map[string]string) (*legacySignature, *statement, error) {
	var env dsse.Envelope
	if err := strictUnmarshal(raw, &env); err != nil {
		return nil, nil, fmt.Errorf("malformed DSSE envelope: %w", err)
	}
	payload, err := decodeB64(env.Payload)
	if err != nil {
		return nil, nil, errors.New("DSSE payload is not base64")
	}
	st, err := dsseStatement(env.PayloadType, payload)
	if err != nil {
		return nil, nil, err
	}
	if len(env.Signatures) == 0 {
		return nil, nil, errors.New("DSSE envelope has no signatures")
	}
	var sigs [][]byte
	for _, s := range env.Signatures {
		sig, err := decodeB64(s.Sig)
		if err != nil || len(sig) == 0 {
			return nil, nil, errors.New("DSSE signature is not base64")
		}
		sigs = append(sigs, sig)
	}
	ls := &legacySignature{payload: payload, sig: sigs[0], sigs: sigs, env: &env}
	if err := parseLegacyMaterial(ls, ann); err != nil {
		return nil, nil, err
	}
	return ls, st, nil
}

// compiledRule is an attestation rule with its authorities resolved and its
// condition compiled.
type compiledRule struct {
	*AttestationRule
	authorities []*compiledAuthority
	cond        *condition
}

// ruleError is a problem with one attestation rule; New names it after
// its boundary as `boundary "b" attestation "r": …`.
type ruleError struct {
	rule string
	err  error
}

func (e *ruleError) Error() string { return fmt.Sprintf("attestation %q: %v", e.rule, e.err) }
func (e *ruleError) Unwrap() error { return e.err }

func compileRules(b *Boundary, auths []*compiledAuthority) ([]*compiledRule, error) {
	if len(b.Attestations) == 0 {
		return nil, nil
	}
	env, err := conditionEnv()
	if err != nil {
		return nil, fmt.Errorf("condition environment: %w", err)
	}
	byName := map[string]*compiledAuthority{}
	for _, a := range auths {
		byName[a.name] = a
	}
	names := map[string]bool{}
	var out []*compiledRule
	for i := range b.Attestations {
		r := &b.Attestations[i]
		if r.Name == "" {
			return nil, fmt.Errorf("attestation rule %d has no name", i)
		}
		if names[r.Name] {
			return nil, fmt.Errorf("duplicate attestation rule %q", r.Name)
		}
		names[r.Name] = true
		if r.PredicateType == "" {
			return nil, &ruleError{r.Name, errors.New("no predicate type")}
		}
		if r.MaxAge < 0 {
			return nil, &ruleError{r.Name, errors.New("negative max_age")}
		}
		switch r.Select {
		case "", SelectNewest, SelectAny:
		default:
			return nil, &ruleError{r.Name, fmt.Errorf("select %q is not %q or %q", r.Select, SelectNewest, SelectAny)}
		}
		cr := &compiledRule{AttestationRule: r}
		// No names means any of the boundary's authorities: all of them are
		// trusted for this boundary already.
		if len(r.Authorities) == 0 {
			cr.authorities = auths
		}
		for _, n := range r.Authorities {
			a, ok := byName[n]
			if !ok {
				return nil, &ruleError{r.Name, fmt.Errorf("unknown authority %q", n)}
			}
			cr.authorities = append(cr.authorities, a)
		}
		if r.Condition != "" {
			if cr.cond, err = compileCondition(env, r.Condition); err != nil {
				return nil, &ruleError{r.Name, fmt.Errorf("condition: %w", err)}
			}
		}
		out = append(out, cr)
	}
	return out, nil
}

// verifiedAttestation is an attestation whose envelope verified under an
// authority and whose statement is about the subject.
type verifiedAttestation struct {
	ev     *evidence
	st     *statement
	signer Signer
	// at is the signed time, else the statement's own time; zero if none.
	at     time.Time
	signed bool
}

// verifyAttestation checks one candidate under the given authorities. It
// returns the first authority that verifies, or the reasons none did.
func verifyAttestation(ev *evidence, s Subject, now time.Time, auths []*compiledAuthority) (*verifiedAttestation, error) {
	if ev.err != nil {
		return nil, ev.err
	}
	st := ev.statement
	if st == nil {
		return nil, errors.New("no in-toto statement")
	}
	// What the statement is about is decided here, on the statement
	// parsed when the evidence was read, so sigstore-go is asked only for
	// the envelope signature: it does not read the payload again to
	// compare a subject already compared.
	if st.PredicateType == PredicateModelSigning {
		// An OpenSSF model signature's subject is a hash over the model's
		// files, not the manifest digest. The subject check is replaced by
		// checkModelSigning, which ties each signed file to a layer of this
		// manifest.
		if err := checkModelSigning(st.predicate, s.Manifest); err != nil {
			return nil, err
		}
	} else if !st.names(s) {
		return nil, fmt.Errorf("statement subject is not the subject %s", s.Digest)
	}
	art := sgverify.WithoutArtifactUnsafe()
	var fails []string
	for _, a := range auths {
		signer, times, err := a.verify(ev, art, now)
		if err != nil {
			fails = appendUnique(fails, err.Error())
			continue
		}
		va := &verifiedAttestation{ev: ev, st: st, signer: signer}
		if len(times) > 0 {
			va.at, va.signed = slices.MinFunc(times, func(a, b time.Time) int { return a.Compare(b) }), true
		} else {
			va.at = statementTime(st)
		}
		return va, nil
	}
	if len(fails) == 0 {
		return nil, errors.New("no authority to verify it")
	}
	return nil, errors.New(strings.Join(fails, "; "))
}

// statementTime is the build or verification time a statement claims for
// itself, used for max_age only when nothing signed a time.
func statementTime(st *statement) time.Time {
	var paths [][]string
	switch st.PredicateType {
	case PredicateSLSAProvenanceV1:
		paths = [][]string{{"runDetails", "metadata", "finishedOn"}, {"runDetails", "metadata", "startedOn"}}
	case PredicateSLSAProvenanceV02:
		paths = [][]string{{"metadata", "buildFinishedOn"}, {"metadata", "buildStartedOn"}}
	case PredicateSLSAVSAV1:
		paths = [][]string{{"timeVerified"}}
	}
	for _, p := range paths {
		if s, ok := lookupString(st.predicate, p...); ok {
			if t, err := time.Parse(time.RFC3339, s); err == nil {
				return t
			}
		}
	}
	return time.Time{}
}

func lookupString(m map[string]any, path ...string) (string, bool) {
	var cur any = m
	for _, k := range path {
		obj, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		cur = obj[k]
	}
	s, ok := cur.(string)
	return s, ok
}

// evalRule decides one attestation rule. It returns the attestation that
// satisfied it, or the reasons it is not satisfied.
//
// An attestation is valid for the rule when its envelope verifies under
// one of the rule's authorities and its statement is about the subject;
// invalid ones are only listed in the reasons. Which valid attestation
// answers the rule depends on r.Select:
//
//   - SelectNewest (the default): the newest valid attestation decides, by
//     signed time, else the time its statement claims; it must pass
//     max_age and the condition, so a newer failing scan is not hidden by
//     an older passing one. An attestation with no time at all counts as
//     the oldest (it cannot show it is newer), and one whose time is in
//     the future is not valid (it would otherwise decide the rule for as
//     long as its clock is ahead). When several share the newest time,
//     each of them must pass: which one is "the" newest is not knowable,
//     so the conservative answer is that any failing one fails the rule.
//   - SelectAny: any valid attestation that passes satisfies the rule.
func (cb *compiledBoundary) evalRule(ctx context.Context, r *compiledRule, s Subject, cands []*evidence, now time.Time) (*verifiedAttestation, []string, error) {
	name := PredicateName(r.PredicateType)
	newest := r.Select != SelectAny
	var reasons []string
	type candidate struct {
		va    *verifiedAttestation
		label string
	}
	var valid []candidate
	for _, ev := range cands {
		if ev.predicateType != r.PredicateType {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		label := fmt.Sprintf("attestation %s (%s)", name, ev.label())
		va, err := verifyAttestation(ev, s, now, r.authorities)
		if err != nil {
			if ev.err == nil && ev.statement != nil {
				if other := cb.otherAuthority(ev, s, now, r.authorities); other != "" {
					err = fmt.Errorf("signed by authority %q not named by rule", other)
				}
			}
			reasons = append(reasons, label+": "+err.Error())
			continue
		}
		if !newest {
			fail, err := r.judge(ctx, va, now)
			if err != nil {
				return nil, nil, err
			}
			if fail == "" {
				return va, nil, nil
			}
			reasons = append(reasons, label+": "+fail)
			continue
		}
		if future(va, now) {
			reasons = append(reasons, fmt.Sprintf("%s: time %s is in the future", label, va.at.UTC().Format(time.RFC3339)))
			continue
		}
		valid = append(valid, candidate{va, label})
	}
	if len(valid) > 0 {
		latest := slices.MaxFunc(valid, func(a, b candidate) int { return a.va.at.Compare(b.va.at) }).va.at
		var decided *verifiedAttestation
		var fails []string
		older := 0
		for _, c := range valid {
			if c.va.at.Before(latest) {
				older++
				continue
			}
			fail, err := r.judge(ctx, c.va, now)
			if err != nil {
				return nil, nil, err
			}
			if fail != "" {
				fails = append(fails, c.label+": "+fail)
			} else if decided == nil {
				decided = c.va
			}
		}
		if len(fails) == 0 {
			return decided, nil, nil
		}
		reasons = append(reasons, fails...)
		return nil, append(reasons, fmt.Sprintf("attestation rule %q: the newest valid attestation %s (%s) fails; %d older valid %s not considered (select newest)",
			r.Name, r.PredicateType, fmtTime(latest), older, plural(older, "attestation is", "attestations are"))), nil
	}
	if len(reasons) == 0 {
		return nil, []string{fmt.Sprintf("attestation rule %q: missing attestation %s", r.Name, r.PredicateType)}, nil
	}
	return nil, append(reasons, fmt.Sprintf("attestation rule %q: no valid attestation %s", r.Name, r.PredicateType)), nil
}

// newestProvenance is the newest SLSA provenance among cands that verifies
// under auths and is about s, as select newest orders them (a future time
// is not valid; among equal times the first found). Nil when none is valid.
func newestProvenance(cands []*evidence, s Subject, now time.Time, auths []*compiledAuthority) *verifiedAttestation {
	var newest *verifiedAttestation
	for _, ev := range cands {
		if !isProvenance(ev.predicateType) {
			continue
		}
		va, err := verifyAttestation(ev, s, now, auths)
		if err != nil || future(va, now) {
			continue
		}
		if newest == nil || va.at.After(newest.at) {
			newest = va
		}
	}
	return newest
}

// judge applies max_age and the condition to a valid attestation. It
// returns why the attestation fails the rule, "" when it passes; an error
// only when the context ended.
func (r *compiledRule) judge(ctx context.Context, va *verifiedAttestation, now time.Time) (string, error) {
	if r.MaxAge > 0 {
		if va.at.IsZero() {
			return "no signed or statement time to check max_age against", nil
		}
		if future(va, now) {
			// A time in the future would keep an attestation fresh
			// forever; only ordinary clock skew is tolerated.
			return fmt.Sprintf("time %s is in the future", va.at.UTC().Format(time.RFC3339)), nil
		}
		if age := now.Sub(va.at); age > r.MaxAge {
			how := "built"
			if va.signed {
				how = "signed"
			}
			return fmt.Sprintf("stale: %s %s, max_age %s", how, va.at.UTC().Format(time.RFC3339), fmtDuration(r.MaxAge)), nil
		}
	}
	if r.cond != nil {
		ok, err := r.cond.eval(ctx, va.st, va.signer)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return "", cerr
			}
			return "condition error: " + err.Error(), nil
		}
		if !ok {
			return "condition false: " + r.Condition, nil
		}
	}
	return "", nil
}

// future reports a time beyond ordinary clock skew.
func future(va *verifiedAttestation, now time.Time) bool {
	return va.at.After(now.Add(maxClockSkew))
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "no time"
	}
	return t.UTC().Format(time.RFC3339)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// otherAuthority names a boundary authority outside the rule's that
// verifies ev, so the reason can say the signer is the wrong one rather
// than that the signature is bad.
func (cb *compiledBoundary) otherAuthority(ev *evidence, s Subject, now time.Time, named []*compiledAuthority) string {
	for _, a := range cb.authorities {
		if slices.Contains(named, a) {
			continue
		}
		if _, err := verifyAttestation(ev, s, now, []*compiledAuthority{a}); err == nil {
			return a.name
		}
	}
	return ""
}

// fmtDuration prints 720h instead of 720h0m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
