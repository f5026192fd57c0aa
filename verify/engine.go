package verify

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/cryptoutils/goodkey"
	"github.com/sigstore/sigstore/pkg/signature"
)

// DefaultMaxEvidence is the default number of referrers, fallback index
// entries and legacy signature layers examined per subject.
const DefaultMaxEvidence = 64

// Engine evaluates a Policy. It is immutable after New and safe for
// concurrent use.
type Engine struct {
	policy      Policy
	boundaries  []*compiledBoundary
	clock       func() time.Time
	maxEvidence int
	maxDeps     int
	// lineageConcurrency bounds the dependencies of one subject verified
	// at once.
	lineageConcurrency int
	inOrder            bool
	limits             EvidenceLimits
	fingerprint        string
	// scoped computes the per-repository fingerprints (FingerprintFor).
	scoped *scopedFingerprints
	// tags remembers which cosign tags each place needed (tagmemory.go);
	// nil when evidence is read in order.
	tags *tagMemory
}

// Option configures an Engine.
type Option func(*options) error

type options struct {
	clock       func() time.Time
	maxEvidence int
	maxDeps     int
	limits      EvidenceLimits
	// lineageConcurrency decides no verdict, only how soon: it is not
	// part of the fingerprint.
	lineageConcurrency int
	// inOrder turns reading evidence ahead off (tests compare the two).
	inOrder bool
}

// WithClock sets the clock used for CheckedAt and certificate expiry
// messages. Default time.Now.
func WithClock(clock func() time.Time) Option {
	return func(o *options) error {
		if clock == nil {
			return errors.New("nil clock")
		}
		o.clock = clock
		return nil
	}
}

// WithMaxEvidence bounds the referrers, fallback index entries and legacy
// signature layers examined for one subject, so a repository flooded with
// referrers costs bounded work. Default DefaultMaxEvidence.
func WithMaxEvidence(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max evidence must be at least 1, got %d", n)
		}
		o.maxEvidence = n
		return nil
	}
}

// WithMaxDependencies bounds how many provenance dependencies one subject
// may require to be followed; a subject asking for more is denied. Default
// DefaultMaxDependencies.
func WithMaxDependencies(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max dependencies must be at least 1, got %d", n)
		}
		o.maxDeps = n
		return nil
	}
}

type compiledBoundary struct {
	*Boundary
	authorities []*compiledAuthority
	rules       []*compiledRule
	// evidence lists where evidence is read from, signatures' place
	// first; the zero value is the subject's own repository.
	evidence []EvidenceRepository
}

type compiledAuthority struct {
	name     string
	keys     []*compiledKey
	keyless  *compiledKeyless
	notation *compiledNotation
}

type compiledKey struct {
	name     string
	verifier signature.Verifier
	// id is the hex SHA-256 of the key's DER encoding: the same key read
	// from two files, or written in two PEM forms, has one id.
	id string
	// hints are the identifiers a bundle's publicKey.hint may use for this
	// key: its configured name and the SHA-256 of its DER encoding.
	hints map[string]bool
	// bundle verifies DSSE envelopes and bundles against this key alone,
	// whatever hint a bundle carries (a hint only orders the keys tried):
	// key-signed legacy attestations go through it too, so every DSSE
	// envelope is verified by sigstore-go, key and keyless alike.
	bundle *sgverify.Verifier
}

type compiledKeyless struct {
	*KeylessAuthority
	// identity is the certificate identity sigstore-go's policy enforces
	// after the chain, log and timestamp checks.
	identity sgverify.CertificateIdentity
	verifier *sgverify.Verifier
}

// New validates p and compiles it. It refuses a policy that could not
// verify anything or that would verify less than it says.
func New(p Policy, opts ...Option) (*Engine, error) {
	o := options{clock: time.Now, maxEvidence: DefaultMaxEvidence, maxDeps: DefaultMaxDependencies, limits: DefaultEvidenceLimits(),
		lineageConcurrency: DefaultLineageConcurrency}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	if len(p.Boundaries) == 0 && !p.InsecureAllowUnmatched {
		return nil, errors.New("verify: policy has no trust boundaries")
	}
	// The engine keeps its own copy so a caller mutating its Policy later
	// cannot change decisions behind the fingerprint.
	p.Boundaries = slices.Clone(p.Boundaries)
	e := &Engine{policy: p, clock: o.clock, maxEvidence: o.maxEvidence, maxDeps: o.maxDeps, limits: o.limits, lineageConcurrency: o.lineageConcurrency, inOrder: o.inOrder}
	names := map[string]bool{}
	for i := range p.Boundaries {
		b := &p.Boundaries[i]
		cb, err := compileBoundary(b)
		if re := (*ruleError)(nil); errors.As(err, &re) {
			return nil, fmt.Errorf("verify: boundary %q %w", b.Name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("verify: boundary %q: %w", b.Name, err)
		}
		if names[b.Name] {
			return nil, fmt.Errorf("verify: duplicate boundary name %q", b.Name)
		}
		names[b.Name] = true
		e.boundaries = append(e.boundaries, cb)
	}
	e.fingerprint = p.Fingerprint
	if e.fingerprint == "" {
		e.fingerprint = policyHash(p, o)
	}
	e.scoped = newScopedFingerprints(p, o)
	if !o.inOrder {
		e.tags = newTagMemory()
	}
	return e, nil
}

func compileBoundary(b *Boundary) (*compiledBoundary, error) {
	if b.Name == "" {
		return nil, errors.New("boundary has no name")
	}
	switch b.Mode {
	case ModeEnforce, ModeWarn:
	default:
		return nil, fmt.Errorf("unknown mode %q", b.Mode)
	}
	for _, g := range b.Repositories {
		if err := validateGlob(g); err != nil {
			return nil, err
		}
	}
	if b.Refused != "" {
		// A stand-in has no rules to compile: it denies what it matches.
		return &compiledBoundary{Boundary: b}, nil
	}
	if len(b.Authorities) == 0 {
		return nil, errors.New("no authorities")
	}
	if b.Threshold < 1 || b.Threshold > len(b.Authorities) {
		return nil, fmt.Errorf("threshold %d out of range 1..%d", b.Threshold, len(b.Authorities))
	}
	if b.Lineage != nil {
		if err := validateLineageRule(b.Lineage); err != nil {
			return nil, err
		}
	}
	cb := &compiledBoundary{Boundary: b}
	seen := map[string]bool{}
	for i := range b.Authorities {
		a := &b.Authorities[i]
		if a.Name == "" {
			return nil, fmt.Errorf("authority %d has no name", i)
		}
		if seen[a.Name] {
			return nil, fmt.Errorf("duplicate authority %q", a.Name)
		}
		seen[a.Name] = true
		ca, err := compileAuthority(a)
		if err != nil {
			return nil, fmt.Errorf("authority %q: %w", a.Name, err)
		}
		cb.authorities = append(cb.authorities, ca)
	}
	if err := checkSharedKeys(cb.authorities); err != nil {
		return nil, err
	}
	if err := refuseNotationRules(b); err != nil {
		return nil, err
	}
	var err error
	if cb.rules, err = compileRules(b, cb.authorities); err != nil {
		return nil, err
	}
	if cb.evidence, err = compileEvidence(b); err != nil {
		return nil, err
	}
	return cb, nil
}

// checkSharedKeys refuses two authorities holding one public key: a
// threshold of N promises N distinct signers, and one key under two names
// (or read from two files) would let one signature satisfy both.
func checkSharedKeys(auths []*compiledAuthority) error {
	type holder struct{ authority, key string }
	seen := map[string]holder{}
	for _, a := range auths {
		for _, k := range a.keys {
			if h, ok := seen[k.id]; ok && h.authority != a.name {
				return fmt.Errorf("authorities %q and %q share one public key (%s and %s): a threshold counts distinct keys", h.authority, a.name, h.key, k.name)
			}
			seen[k.id] = holder{a.name, k.name}
		}
	}
	return nil
}

func compileAuthority(a *Authority) (*compiledAuthority, error) {
	if a.Notation != nil {
		return compileNotation(a)
	}
	if (a.Key == nil) == (a.Keyless == nil) {
		return nil, errors.New("exactly one of key and keyless must be set")
	}
	ca := &compiledAuthority{name: a.Name}
	if a.Key != nil {
		if len(a.Key.Keys) == 0 {
			return nil, errors.New("no keys")
		}
		for _, nk := range a.Key.Keys {
			k, err := compileKey(nk)
			if err != nil {
				return nil, err
			}
			ca.keys = append(ca.keys, k)
		}
		return ca, nil
	}
	kl := a.Keyless
	if kl.TrustedRoot == nil {
		return nil, errors.New("keyless authority has no trusted root")
	}
	if kl.Issuer == "" && kl.IssuerRegex == "" {
		return nil, errors.New("keyless authority needs issuer or issuer_regex")
	}
	if kl.Subject == "" && kl.SubjectRegex == "" {
		return nil, errors.New("keyless authority needs subject or subject_regex")
	}
	ck := &compiledKeyless{KeylessAuthority: kl}
	issuer, err := sgverify.NewIssuerMatcher(kl.Issuer, kl.IssuerRegex)
	if err != nil {
		return nil, fmt.Errorf("issuer_regex: %w", err)
	}
	san, err := sgverify.NewSANMatcher(kl.Subject, kl.SubjectRegex)
	if err != nil {
		return nil, fmt.Errorf("subject_regex: %w", err)
	}
	if ck.identity, err = sgverify.NewCertificateIdentity(san, issuer, certificate.Extensions{}); err != nil {
		return nil, err
	}
	if kl.TlogThreshold < 0 || kl.TimestampThreshold < 0 || kl.SCTThreshold < 0 {
		return nil, errors.New("negative threshold")
	}
	// Keyless evidence always needs an observed signing time: the
	// certificate is short-lived and only a trusted time proves it was valid
	// when it signed. Both thresholds zero is the zero value and means the
	// defaults (one log entry, one timestamp); otherwise they are literal,
	// so a deployment without a transparency log can set tlog to 0.
	tlogN, tsN := kl.TlogThreshold, kl.TimestampThreshold
	if tlogN == 0 && tsN == 0 {
		tlogN, tsN = 1, 1
	}
	// The in-toto statement is parsed once, strictly, after the envelope
	// signature verified (dsseStatement); sigstore-go's copy in its result
	// is never read, so it is built without materialising the predicate.
	vopts := []sgverify.VerifierOption{sgverify.WithObserverTimestamps(max(tsN, 1)), sgverify.WithoutStatementPredicate()}
	if tlogN > 0 {
		vopts = append(vopts, sgverify.WithTransparencyLog(tlogN))
	}
	// Public Fulcio embeds SCTs in every certificate and cosign requires
	// one. A zero threshold is the zero value, not a request to skip the
	// check: only InsecureSkipSCT does that.
	if !kl.InsecureSkipSCT {
		vopts = append(vopts, sgverify.WithSignedCertificateTimestamps(max(kl.SCTThreshold, 1)))
	}
	ck.verifier, err = sgverify.NewVerifier(kl.TrustedRoot, vopts...)
	if err != nil {
		return nil, err
	}
	ca.keyless = ck
	return ca, nil
}

func compileKey(nk NamedKey) (*compiledKey, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(nk.PEM)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", nk.Name, err)
	}
	if err := goodkey.ValidatePubKey(pub); err != nil {
		return nil, fmt.Errorf("key %q: %w", nk.Name, err)
	}
	v, err := signature.LoadDefaultVerifier(pub)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", nk.Name, err)
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", nk.Name, err)
	}
	sum := sha256.Sum256(der)
	k := &compiledKey{
		name:     nk.Name,
		verifier: v,
		id:       hex.EncodeToString(sum[:]),
		hints: map[string]bool{
			nk.Name:                    true,
			hex.EncodeToString(sum[:]): true,
			base64.StdEncoding.EncodeToString(sum[:]): true,
		},
	}
	ek := root.NewExpiringKey(v, time.Time{}, time.Time{})
	tm := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return ek, nil })
	// A key signature made with --tlog-upload=false carries no log entry
	// and no timestamp; the key itself is the trust anchor. As for
	// keyless verifiers, the result's statement is built without its
	// predicate, which is read from the statement parsed once the
	// signature verified.
	k.bundle, err = sgverify.NewVerifier(tm, sgverify.WithNoObserverTimestamps(), sgverify.WithoutStatementPredicate())
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", nk.Name, err)
	}
	return k, nil
}

// policyHash identifies a policy that came without a Fingerprint,
// together with the engine's limits, which decide verdicts too. Trusted
// roots are interfaces; their CA certificates and log IDs are hashed, which
// covers sigstore-go's own implementations. Callers that load trust
// material from files should set Policy.Fingerprint over the file bytes
// and the limits they configure.
func policyHash(p Policy, o options) string {
	type key struct{ Name, PEM string }
	type authority struct {
		Name               string
		Keys               []key
		Keyless            bool
		Issuer, IssuerRe   string
		Subject, SubjectRe string
		Tlog, TS, SCT      int
		SkipSCT            bool
		Root               []string
		Notation           any `json:",omitempty"`
	}
	type boundary struct {
		Name, Upstream, Mode string
		Repos, Types         []string
		Threshold            int
		Authorities          []authority
		Attestations         []AttestationRule
		Lineage              *LineageRule
		SignatureRepository  *EvidenceRepository `json:",omitempty"`
	}
	var bs []boundary
	for _, b := range p.Boundaries {
		cb := boundary{Name: b.Name, Upstream: b.Upstream, Mode: string(b.Mode), Repos: b.Repositories, Types: b.ArtifactTypes, Threshold: b.Threshold,
			Attestations: b.Attestations, Lineage: b.Lineage, SignatureRepository: b.SignatureRepository}
		for _, a := range b.Authorities {
			ca := authority{Name: a.Name}
			if a.Key != nil {
				for _, k := range a.Key.Keys {
					ca.Keys = append(ca.Keys, key{k.Name, string(k.PEM)})
				}
			}
			if kl := a.Keyless; kl != nil {
				ca.Keyless, ca.Issuer, ca.IssuerRe, ca.Subject, ca.SubjectRe = true, kl.Issuer, kl.IssuerRegex, kl.Subject, kl.SubjectRegex
				ca.Tlog, ca.TS, ca.SCT, ca.SkipSCT = kl.TlogThreshold, kl.TimestampThreshold, kl.SCTThreshold, kl.InsecureSkipSCT
				ca.Root = trustedMaterialIDs(kl.TrustedRoot)
			}
			ca.Notation = notationHash(a.Notation)
			cb.Authorities = append(cb.Authorities, ca)
		}
		bs = append(bs, cb)
	}
	b, _ := json.Marshal(struct {
		B                 []boundary
		U                 bool
		Limits            EvidenceLimits
		MaxEvidence, Deps int
	}{bs, p.InsecureAllowUnmatched, o.limits, o.maxEvidence, o.maxDeps})
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func trustedMaterialIDs(tm root.TrustedMaterial) []string {
	if tm == nil {
		return nil
	}
	var ids []string
	cert := func(c *x509.Certificate) {
		if c != nil {
			sum := sha256.Sum256(c.Raw)
			ids = append(ids, hex.EncodeToString(sum[:]))
		}
	}
	for _, ca := range tm.FulcioCertificateAuthorities() {
		if f, ok := ca.(*root.FulcioCertificateAuthority); ok {
			cert(f.Root)
			for _, c := range f.Intermediates {
				cert(c)
			}
		}
	}
	for _, ta := range tm.TimestampingAuthorities() {
		if s, ok := ta.(*root.SigstoreTimestampingAuthority); ok {
			cert(s.Root)
			cert(s.Leaf)
		}
	}
	for _, logs := range []map[string]*root.TransparencyLog{tm.RekorLogs(), tm.CTLogs()} {
		for id := range logs {
			ids = append(ids, "log:"+id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Fingerprint identifies the policy and its trust material.
func (e *Engine) Fingerprint() string { return e.fingerprint }

// Boundary returns (a copy of) the first boundary matching the subject
// coordinates.
func (e *Engine) Boundary(upstream, repo, artifactType string) (*Boundary, bool) {
	if cb := e.match(upstream, repo, artifactType); cb != nil {
		b := *cb.Boundary
		return &b, true
	}
	return nil, false
}

func (e *Engine) match(upstream, repo, artifactType string) *compiledBoundary {
	for _, cb := range e.boundaries {
		if cb.matches(upstream, repo, artifactType) {
			return cb
		}
	}
	return nil
}

// Verify decides on s, reading evidence through f. A denial is a Verdict
// with a nil error; an error means the policy could not be evaluated
// (upstream failure, cancelled context) and must not be cached.
func (e *Engine) Verify(ctx context.Context, s Subject, f Fetcher) (Verdict, error) {
	if err := ctx.Err(); err != nil {
		return Verdict{}, err
	}
	v := Verdict{Mode: ModeEnforce, Digest: s.Digest.String(), CheckedAt: e.clock()}
	cb := e.match(s.Upstream, s.Repository, s.ArtifactType)
	if cb == nil {
		msg := fmt.Sprintf("no trust boundary matches %s/%s", s.Upstream, s.Repository)
		if e.policy.InsecureAllowUnmatched {
			v.Allowed = true
			v.Reasons = []string{msg + "; allowed without verification (insecure-allow unmatched)"}
			return v, nil
		}
		v.Reasons = []string{msg}
		return v, nil
	}
	v.Mode, v.Boundary = cb.Mode, cb.Name
	if cb.Refused != "" {
		v.Mode, v.Reasons = ModeEnforce, []string{cb.Refused}
		return v, nil
	}
	if s.Digest.Algorithm != "sha256" || len(s.Digest.Hex) != 64 {
		v.Reasons = []string{fmt.Sprintf("unsupported subject digest %q: signatures are found by sha256 digest", s.Digest)}
		return v, nil
	}
	if f == nil {
		return Verdict{}, errors.New("verify: nil fetcher")
	}

	if s.Manifest != nil {
		v.Artifact = ClassifyManifest(s.Manifest)
	} else {
		v.Artifact = ArtifactKind(s.ArtifactType)
	}

	r := e.newRun(cb, s, f, v.CheckedAt)
	if reason := r.locate(); reason != "" {
		v.Reasons = []string{reason}
		return v, nil
	}
	if err := r.collect(ctx); err != nil {
		return Verdict{}, err
	}
	if err := ctx.Err(); err != nil {
		return Verdict{}, err
	}
	v.Reads = r.reads
	t := r.tally
	v.Signers = t.signers
	reasons := append(t.reasons, r.notes...)
	allowed := len(t.signers) >= cb.Threshold
	placesNamed := false
	if !allowed {
		if r.found == 0 && r.limit == "" {
			reasons = append(reasons, r.noSignatures())
			placesNamed = true
		}
		reasons = append(reasons, thresholdReason(cb.Threshold, t.names()))
	}

	if len(cb.rules) > 0 || cb.Lineage != nil {
		ok, rs, err := e.evalAttestations(ctx, r, allowed, &v)
		if err != nil {
			return Verdict{}, err
		}
		allowed = allowed && ok
		reasons = append(reasons, rs...)
	}
	v.Allowed = allowed
	if !allowed {
		// Evidence a limit left unread might have changed the outcome;
		// the limit is named so the denial can be counted as its doing.
		v.Limit = r.limit
		if where := r.lookedIn(); where != "" && !placesNamed {
			reasons = append(reasons, where)
		}
	}
	v.Reasons = reasons
	return v, nil
}

// evalAttestations decides the boundary's attestation rules and, when
// everything else passed, its lineage rule. Lineage is followed last
// because it costs a verification per dependency.
func (e *Engine) evalAttestations(ctx context.Context, r *run, signaturesOK bool, v *Verdict) (bool, []string, error) {
	cb, unread := r.cb, r.limit != ""
	ok := true
	var reasons []string
	var prov *verifiedAttestation
	for _, rs := range r.rules {
		va, rsn, err := rs.decide(ctx, v.CheckedAt, unread)
		if err != nil {
			return false, nil, err
		}
		if va == nil {
			ok = false
			reasons = append(reasons, rsn...)
			continue
		}
		v.Attestations = append(v.Attestations, AttestationResult{
			Rule: rs.Name, PredicateType: rs.PredicateType, Name: PredicateName(rs.PredicateType),
			Signer: va.signer, Time: va.at, Digest: va.digest,
		})
		if prov == nil && isProvenance(rs.PredicateType) {
			prov = va
		}
	}
	if cb.Lineage == nil || !ok || !signaturesOK {
		return ok, reasons, nil
	}
	if !r.provRule {
		// Without a provenance rule, the newest provenance a boundary
		// authority signed about this subject describes its inputs; with
		// evidence left unread, which one that is cannot be known.
		if unread {
			return false, append(reasons, "lineage not decided: not all evidence was read"), nil
		}
		prov = r.prov
	}
	deps, rs, err := e.evalLineage(ctx, cb.Lineage, r.s, prov)
	if err != nil {
		return false, nil, err
	}
	v.Lineage = deps
	return len(rs) == 0, append(reasons, rs...), nil
}

// tally is the outcome of counting signatures towards a threshold.
type tally struct {
	signers []Signer // one per authority that counted, in order
	reasons []string // why each other piece of evidence did not count
	// keys and identities record who signed for each authority that
	// counted (hex SHA-256 of the public key; certificate issuer and SAN),
	// so one signer never counts for two authorities.
	keys       map[string]string
	identities map[string]string
	// sigs records each counted signature by signatureDigest, so the same
	// signature found twice (two layers, a layer and a bundle) is named
	// as a copy instead of being verified again.
	sigs map[[32]byte]string
	// done lists the authorities that counted.
	done map[string]bool
}

func (t *tally) names() []string {
	names := make([]string, len(t.signers))
	for i, s := range t.signers {
		names[i] = s.Authority
	}
	return names
}

// counted reports which authority the signer already counted for, if any.
func (t *tally) counted(id signerID) (string, bool) {
	if a, ok := t.keys[id.key]; ok {
		return a, true
	}
	if id.identity != "" {
		if a, ok := t.identities[id.identity]; ok {
			return a, true
		}
	}
	return "", false
}

// record remembers who signed ev for authority.
func (t *tally) record(id signerID, authority string, ev *evidence) {
	t.keys[id.key] = authority
	if id.identity != "" {
		t.identities[id.identity] = authority
	}
	if sum, ok := ev.signatureDigest(); ok {
		t.sigs[sum] = ev.label()
	}
}

// count verifies one piece of signature evidence against the boundary's
// authorities, called while the threshold is not met. A threshold of N
// needs N authorities, each satisfied by a different signer: a distinct
// public key, and for certificates also a distinct identity, because two
// keyless authorities may both accept one identity and one workflow can
// sign twice with two short-lived keys. One piece of evidence counts for
// one authority at most.
func (cb *compiledBoundary) count(t *tally, ev *evidence, s Subject, now time.Time) {
	if ev.err != nil {
		t.reasons = append(t.reasons, ev.label()+": "+ev.err.Error())
		return
	}
	// A DSSE bundle counts as a signature when its statement, read once
	// its envelope verified, names the digest: whoever signed it, it
	// counts for no one otherwise.
	if ev.statement != nil && !ev.statement.names(s) {
		t.reasons = append(t.reasons, fmt.Sprintf("%s: statement subject is not the subject %s", ev.label(), s.Digest))
		return
	}
	// Signers are recorded only under a threshold above 1; a threshold of
	// 1 cannot count anyone twice.
	if len(t.sigs) > 0 {
		if sum, ok := ev.signatureDigest(); ok {
			if first, dup := t.sigs[sum]; dup {
				t.reasons = append(t.reasons, ev.label()+": the same signature as "+first+", counted once")
				return
			}
		}
	}
	var fails []string
	for _, a := range cb.authorities {
		if t.done[a.name] {
			continue
		}
		var signer Signer
		var ref signerRef
		var err error
		if ev.statement != nil {
			res := ev.result(a, now)
			signer, ref, err = res.signer, res.ref, res.err
		} else if ev.notation != nil || a.notation != nil {
			signer, ref, err = a.checkNotation(ev, s)
		} else {
			signer, ref, err = a.check(ev, s, now)
		}
		if err == nil {
			err = revokedSigner(s, signer)
		}
		if err != nil {
			fails = appendUnique(fails, err.Error())
			continue
		}
		if cb.Threshold > 1 {
			id := ref.id()
			if prev, dup := t.counted(id); dup {
				// Every other authority would see the same signer.
				fails = append(fails, fmt.Sprintf("signed by %s, which already counted for authority %q", id, prev))
				break
			}
			t.record(id, a.name, ev)
		}
		t.done[a.name] = true
		t.signers = append(t.signers, signer)
		return
	}
	if len(fails) == 0 {
		fails = []string{"authorities it could satisfy have already verified"}
	}
	t.reasons = append(t.reasons, ev.label()+": "+strings.Join(fails, "; "))
}

func thresholdReason(threshold int, names []string) string {
	noun := "authorities"
	if len(names) == 1 {
		noun = "authority"
	}
	msg := fmt.Sprintf("threshold %d not met: %d %s verified", threshold, len(names), noun)
	if len(names) > 0 {
		msg += " (" + strings.Join(names, ", ") + ")"
	}
	return msg
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
