package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
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

// statement is an in-toto statement as parsed for policy. The predicate
// is kept as the signed bytes and read only when a rule needs it: a
// condition (object), a signed time (statementTime), a model signature's
// file list or lineage's dependencies.
type statement struct {
	Type          string             `json:"_type"`
	Subject       []statementSubject `json:"subject"`
	PredicateType string             `json:"predicateType"`
	Predicate     json.RawMessage    `json:"predicate"`

	// predicate is Predicate as generic JSON, set by object on first use.
	predicate map[string]any
}

type statementSubject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// statementDepth is how deeply a statement's own fields nest
// (subject → descriptor → digest); anything deeper is in its predicate.
const statementDepth = 4

// parseStatement parses an in-toto statement v0.1 or v1 strictly: one
// JSON object, a known statement type, at least one subject and an object
// predicate (absent means empty) nesting at most maxDepth levels. Nesting
// is counted before anything is decoded, so a deep predicate costs a scan,
// not a parse.
func parseStatement(b []byte, maxDepth int) (*statement, error) {
	if limit := max(maxDepth+1, statementDepth); jsonDepth(b, limit) > limit {
		return nil, errTooDeep(maxDepth)
	}
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
	// The decoder has checked the predicate is one JSON value; its first
	// byte says whether it is an object.
	if p := bytes.TrimSpace(st.Predicate); len(p) > 0 && p[0] != '{' && !bytes.Equal(p, []byte("null")) {
		return nil, errors.New("in-toto predicate is not a JSON object")
	}
	if jsonDepth(st.Predicate, maxDepth) > maxDepth {
		return nil, errTooDeep(maxDepth)
	}
	return &st, nil
}

func errTooDeep(maxDepth int) error {
	return fmt.Errorf("in-toto predicate nests deeper than the limit of %d levels", maxDepth)
}

// object returns the predicate as generic JSON, parsing it on first use.
// Its nesting was bounded when the statement was parsed.
func (st *statement) object() (map[string]any, error) {
	if st.predicate != nil {
		return st.predicate, nil
	}
	m := map[string]any{}
	if p := bytes.TrimSpace(st.Predicate); len(p) > 0 && !bytes.Equal(p, []byte("null")) {
		if err := json.Unmarshal(p, &m); err != nil {
			return nil, fmt.Errorf("in-toto predicate: %w", err)
		}
	}
	st.predicate = m
	return m, nil
}

// field returns the predicate's value at path, keys compared exactly and
// the last of duplicate keys winning, as for a parsed object. Only the
// objects on the path are read; siblings are skipped, not materialised.
func (st *statement) field(path ...string) (json.RawMessage, bool) {
	cur := []byte(st.Predicate)
	for _, key := range path {
		dec := json.NewDecoder(bytes.NewReader(cur))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			return nil, false
		}
		var found json.RawMessage
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return nil, false
			}
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return nil, false
			}
			if k, _ := tok.(string); k == key {
				found = v
			}
		}
		if found == nil {
			return nil, false
		}
		cur = found
	}
	return cur, true
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
// pre-authentication encoding is over payload type and these bytes). It
// is called only once the envelope signature has verified (run.open).
func dsseStatement(payloadType string, payload []byte, maxDepth int) (*statement, error) {
	if payloadType != mediaTypeInToto {
		return nil, fmt.Errorf("DSSE payload type %q is not in-toto", payloadType)
	}
	return parseStatement(payload, maxDepth)
}

func decodeB64(s string) ([]byte, error) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.URLEncoding.DecodeString(s)
}

// openAttestations reads the cosign legacy "sha256-<hex>.att" manifest.
func (r *run) openAttestations(ctx context.Context, m Manifest) error {
	return r.openLayers(ctx, m, cosignLayers{
		format: FormatCosignAttestation, tag: "sha256-" + r.s.Digest.Hex + ".att", what: "attestation",
		mediaType: mediaTypeDSSE, source: "att", maxBytes: r.e.limits.AttestationBytes,
		wanted: r.needAttestations,
		parse: func(ev *evidence, raw []byte, l v1.Descriptor) {
			// The annotation is unsigned: it stands until the signed
			// statement is read, and for rejected evidence only lets the
			// rule's reasons say why it was rejected.
			ev.predicateType = l.Annotations["predicateType"]
			ev.legacy, ev.err = parseLegacyAttestation(raw, l.Annotations)
		},
	})
}

// parseLegacyAttestation parses a cosign .att layer: the blob is the DSSE
// envelope, the annotations carry keyless material as on .sig layers. The
// statement inside is left for run.open.
func parseLegacyAttestation(raw []byte, ann map[string]string) (*legacySignature, error) {
	var env dsse.Envelope
	if err := strictUnmarshal(raw, &env); err != nil {
		return nil, fmt.Errorf("malformed DSSE envelope: %w", err)
	}
	payload, err := decodeB64(env.Payload)
	if err != nil {
		return nil, errors.New("DSSE payload is not base64")
	}
	if len(env.Signatures) == 0 {
		return nil, errors.New("DSSE envelope has no signatures")
	}
	var sigs [][]byte
	for _, s := range env.Signatures {
		sig, err := decodeB64(s.Sig)
		if err != nil || len(sig) == 0 {
			return nil, errors.New("DSSE signature is not base64")
		}
		sigs = append(sigs, sig)
	}
	ls := &legacySignature{payload: payload, sig: sigs[0], sigs: sigs, env: &env}
	if err := parseLegacyMaterial(ls, ann); err != nil {
		return nil, err
	}
	return ls, nil
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
// authority and whose statement is about the subject. It holds the
// statement, not the evidence, so the bundle or envelope it came in can
// be dropped once it is read.
type verifiedAttestation struct {
	st     *statement
	signer Signer
	digest string // of the signed statement bytes (AttestationResult.Digest)
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
	// parsed when the evidence was opened, so sigstore-go is asked only
	// for the envelope signature: it does not read the payload again to
	// compare a subject already compared.
	if st.PredicateType == PredicateModelSigning {
		// An OpenSSF model signature's subject is a hash over the model's
		// files, not the manifest digest. The subject check is replaced by
		// checkModelSigning, which ties each signed file to a layer of this
		// manifest.
		if err := checkModelSigning(st, s.Manifest); err != nil {
			return nil, err
		}
	} else if !st.names(s) {
		return nil, fmt.Errorf("statement subject is not the subject %s", s.Digest)
	}
	var fails []string
	for _, a := range auths {
		res := ev.result(a, now)
		if res.err != nil {
			fails = appendUnique(fails, res.err.Error())
			continue
		}
		if err := revokedSigner(s, res.signer); err != nil {
			fails = appendUnique(fails, err.Error())
			continue
		}
		va := &verifiedAttestation{st: st, signer: res.signer}
		if _, payload, ok := ev.envelope(); ok {
			sum := sha256.Sum256(payload)
			va.digest = "sha256:" + hex.EncodeToString(sum[:])
		}
		if len(res.times) > 0 {
			va.at, va.signed = slices.MinFunc(res.times, func(a, b time.Time) int { return a.Compare(b) }), true
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
		raw, ok := st.field(p...)
		if !ok {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			continue
		}
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			return t
		}
	}
	return time.Time{}
}

// ruleState is one attestation rule being decided while evidence is
// read. An attestation is valid for the rule when its envelope verifies
// under one of the rule's authorities and its statement is about the
// subject; invalid ones are only listed in the reasons. Which valid
// attestation answers the rule depends on its Select:
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
//     Such a rule is decided only once all evidence has been read.
//   - SelectAny: any valid attestation that passes satisfies the rule, as
//     soon as it is read.
type ruleState struct {
	*compiledRule
	// satisfied is the attestation that satisfied a select-any rule.
	satisfied *verifiedAttestation
	// latest are the valid attestations sharing the newest time seen so
	// far (select newest); older counts the valid ones it passed over.
	// Only these are kept: an older attestation can no longer decide.
	latest  []candidate
	older   int
	reasons []string
}

type candidate struct {
	va    *verifiedAttestation
	label string
}

// offer considers one piece of evidence of the rule's predicate type. An
// error only means the context ended.
func (cb *compiledBoundary) offer(ctx context.Context, rs *ruleState, ev *evidence, s Subject, now time.Time) error {
	ctx, span := startSpan(ctx, spanAttestation)
	defer endAttestation(span, rs, ev, len(rs.reasons))
	label := fmt.Sprintf("attestation %s (%s)", PredicateName(rs.PredicateType), ev.label())
	va, err := verifyAttestation(ev, s, now, rs.authorities)
	if err != nil {
		if ev.err == nil && ev.statement != nil {
			if other := cb.otherAuthority(ev, s, now, rs.authorities); other != "" {
				err = fmt.Errorf("signed by authority %q not named by rule", other)
			}
		}
		rs.reasons = append(rs.reasons, label+": "+err.Error())
		return nil
	}
	if rs.Select == SelectAny {
		fail, err := rs.judge(ctx, va, now)
		if err != nil {
			return err
		}
		if fail == "" {
			rs.satisfied, rs.reasons = va, nil
			return nil
		}
		rs.reasons = append(rs.reasons, label+": "+fail)
		return nil
	}
	if future(va, now) {
		rs.reasons = append(rs.reasons, fmt.Sprintf("%s: time %s is in the future", label, va.at.UTC().Format(time.RFC3339)))
		return nil
	}
	switch {
	case len(rs.latest) == 0 || va.at.After(rs.latest[0].va.at):
		rs.older += len(rs.latest)
		rs.latest = append(rs.latest[:0:0], candidate{va, label})
	case va.at.Equal(rs.latest[0].va.at):
		rs.latest = append(rs.latest, candidate{va, label})
	default:
		rs.older++
	}
	return nil
}

// endAttestation records which rule the evidence was offered to and
// whether it verified; when it was rejected, why. A rule that selects the
// newest attestation is judged once all evidence is read, after this span.
func endAttestation(span trace.Span, rs *ruleState, ev *evidence, reasons int) {
	if span.IsRecording() {
		rejected := rs.satisfied == nil && len(rs.reasons) > reasons
		span.SetAttributes(
			attribute.String("portcullis.rule", rs.Name),
			attribute.String("portcullis.predicate_type", rs.PredicateType),
			attribute.String("portcullis.evidence", ev.label()),
			attribute.Bool("portcullis.verified", !rejected),
			attribute.Bool("portcullis.satisfied", rs.satisfied != nil),
		)
		if rejected {
			span.SetAttributes(attribute.String("portcullis.rejected", trimReason(rs.reasons[len(rs.reasons)-1])))
		}
	}
	span.End()
}

// decide returns the attestation that satisfied the rule, or the reasons
// it is not satisfied. unread says a limit left evidence unread: a
// select-newest rule is then not decided, since the newest attestation
// may be among what was not read.
func (rs *ruleState) decide(ctx context.Context, now time.Time, unread bool) (*verifiedAttestation, []string, error) {
	if rs.satisfied != nil {
		return rs.satisfied, nil, nil
	}
	reasons := rs.reasons
	if unread && rs.Select != SelectAny {
		return nil, append(reasons, fmt.Sprintf("attestation rule %q not decided: not all evidence was read", rs.Name)), nil
	}
	if len(rs.latest) > 0 {
		var decided *verifiedAttestation
		var fails []string
		for _, c := range rs.latest {
			fail, err := rs.judge(ctx, c.va, now)
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
			rs.Name, rs.PredicateType, fmtTime(rs.latest[0].va.at), rs.older, plural(rs.older, "attestation is", "attestations are"))), nil
	}
	if len(reasons) == 0 {
		return nil, []string{fmt.Sprintf("attestation rule %q: missing attestation %s", rs.Name, rs.PredicateType)}, nil
	}
	return nil, append(reasons, fmt.Sprintf("attestation rule %q: no valid attestation %s", rs.Name, rs.PredicateType)), nil
}

// offerProvenance keeps the newest SLSA provenance that verifies under
// auths and is about s, as select newest orders them (a future time is
// not valid; among equal times the first found).
func offerProvenance(newest **verifiedAttestation, ev *evidence, s Subject, now time.Time, auths []*compiledAuthority) {
	va, err := verifyAttestation(ev, s, now, auths)
	if err != nil || future(va, now) {
		return
	}
	if *newest == nil || va.at.After((*newest).at) {
		*newest = va
	}
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
