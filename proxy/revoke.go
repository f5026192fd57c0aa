package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
)

// Revocation sources.
const (
	RevocationFromFile = "file"
	RevocationFromAPI  = "api"
)

// Bounds of revocations read from clients and files.
const (
	// DefaultMaxRevocations bounds the entries of each source (the file,
	// the admin API).
	DefaultMaxRevocations = 10_000
	// maxRevocationBody bounds one admin API request body.
	maxRevocationBody = 64 << 10
	// revocationEntryBytes is what one entry of a revocation file may take
	// on average: the file is read up to max entries times this.
	revocationEntryBytes = 2 << 10
	maxRevocationReason  = 512
	maxRevocationBy      = 256
	maxRevocationName    = 1024
)

// Revocation withdraws trust in one thing, whatever the policy says:
// exactly one of Digest, Key, Identity or Boundary is set.
type Revocation struct {
	// ID names the revocation in the admin API; set by Normalize.
	ID string `json:"id,omitempty"`
	// Digest is a manifest digest: denied as a subject, as a lineage
	// dependency, as the index covering a child and as the subject of
	// evidence.
	Digest string `json:"digest,omitempty"`
	// Key is the hex SHA-256 of a public key's DER encoding (Signer
	// KeyID; `sha256:` may prefix it): signatures and attestations it
	// made no longer count for any authority.
	Key string `json:"key,omitempty"`
	// Identity is a keyless certificate's subject (SAN), Issuer its OIDC
	// issuer; an empty Issuer revokes the identity under every issuer.
	Identity string `json:"identity,omitempty"`
	Issuer   string `json:"issuer,omitempty"`
	// Boundary denies every subject decided in that trust boundary.
	Boundary string `json:"boundary,omitempty"`

	Reason string    `json:"reason"`
	By     string    `json:"by"`
	Time   time.Time `json:"time"`
	// Source is RevocationFromFile or RevocationFromAPI; set by the store.
	Source string `json:"source,omitempty"`
}

// Normalize checks r strictly and fills in its ID, and its Time with now
// when unset.
func (r *Revocation) Normalize(now time.Time) error {
	n := 0
	for _, s := range []string{r.Digest, r.Key, r.Identity, r.Boundary} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("exactly one of digest, key, identity and boundary must be set")
	}
	if r.Issuer != "" && r.Identity == "" {
		return errors.New("issuer is only valid with identity")
	}
	switch {
	case r.Digest != "":
		h, err := v1.NewHash(r.Digest)
		if err != nil || !isLowerHex(h.Hex) || (h.Algorithm == "sha256" && len(h.Hex) != 64) || (h.Algorithm == "sha512" && len(h.Hex) != 128) {
			return fmt.Errorf("digest %q is not a sha256 or sha512 digest in lowercase hex", truncate(r.Digest, 160))
		}
		if h.Algorithm != "sha256" && h.Algorithm != "sha512" {
			return fmt.Errorf("digest %q: unsupported algorithm", truncate(r.Digest, 160))
		}
		r.ID = "digest:" + r.Digest
	case r.Key != "":
		k := strings.ToLower(strings.TrimPrefix(r.Key, "sha256:"))
		if len(k) != 64 || !isLowerHex(k) {
			return errors.New("key must be the hex SHA-256 of the public key's DER encoding")
		}
		r.Key, r.ID = k, "key:"+k
	case r.Identity != "":
		if err := printable("identity", r.Identity, maxRevocationName); err != nil {
			return err
		}
		if err := printable("issuer", r.Issuer, maxRevocationName); err != nil {
			return err
		}
		issuer := r.Issuer
		if issuer == "" {
			issuer = "*"
		}
		r.ID = "identity:" + issuer + "|" + r.Identity
	default:
		if err := printable("boundary", r.Boundary, maxRevocationName); err != nil {
			return err
		}
		r.ID = "boundary:" + r.Boundary
	}
	if strings.TrimSpace(r.Reason) == "" || strings.TrimSpace(r.By) == "" {
		return errors.New("reason and by are required")
	}
	if err := printable("reason", r.Reason, maxRevocationReason); err != nil {
		return err
	}
	if err := printable("by", r.By, maxRevocationBy); err != nil {
		return err
	}
	if r.Time.IsZero() {
		r.Time = now.UTC()
	}
	return nil
}

func isLowerHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// printable refuses control characters, which would forge lines in logs
// and in the denial messages the reason ends up in.
func printable(field, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%s is longer than %d bytes", field, limit)
	}
	for _, c := range s {
		if unicode.IsControl(c) || c == unicode.ReplacementChar {
			return fmt.Errorf("%s contains a control character or invalid UTF-8", field)
		}
	}
	return nil
}

// RevocationFile is the format of a revocation file and of the admin
// API's listing.
type RevocationFile struct {
	Revocations []Revocation `json:"revocations"`
}

// ParseRevocations reads a revocation file: strict JSON, one object with
// the list "revocations", at most maxEntries entries (0 means
// DefaultMaxRevocations). Any error rejects the whole file; the caller
// keeps the list it had.
func ParseRevocations(b []byte, maxEntries int, now time.Time) ([]Revocation, error) {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxRevocations
	}
	if len(b) > maxEntries*revocationEntryBytes {
		return nil, fmt.Errorf("revocation file is larger than %d bytes", maxEntries*revocationEntryBytes)
	}
	var f RevocationFile
	if err := decodeStrict(b, &f); err != nil {
		return nil, fmt.Errorf("revocation file: %w", err)
	}
	if len(f.Revocations) > maxEntries {
		return nil, fmt.Errorf("revocation file has %d entries, more than %d", len(f.Revocations), maxEntries)
	}
	for i := range f.Revocations {
		r := &f.Revocations[i]
		if r.Source != "" || r.ID != "" {
			return nil, fmt.Errorf("revocations[%d]: id and source are set by the proxy", i)
		}
		if err := r.Normalize(now); err != nil {
			return nil, fmt.Errorf("revocations[%d]: %w", i, err)
		}
		r.Source = RevocationFromFile
	}
	return f.Revocations, nil
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// Revocations is the revocation list the proxy enforces: the entries of
// a watched file and those posted to the admin API. It is safe for
// concurrent use. Create it with NewRevocations and hand it to the proxy
// with WithRevocations; the same list can outlive a proxy replaced by a
// configuration reload.
type Revocations struct {
	mu      sync.Mutex
	file    []Revocation
	api     []Revocation
	max     int
	persist func([]Revocation) error
	// set is what the request path reads: one atomic load per request.
	set atomic.Pointer[revocationSet]
	// onChange is the proxy that purges what a change revokes; the newest
	// proxy given the list replaces the previous one.
	onChange func(old, cur *revocationSet)
	now      func() time.Time
	// sh shares the API entries with other replicas; nil without.
	sh *revShare
}

// NewRevocations returns an empty list holding at most maxEntries entries
// per source (0 means DefaultMaxRevocations). persist, when non-nil, is
// given the admin API's entries after each change, to keep them across a
// restart; nil keeps them in memory only.
func NewRevocations(maxEntries int, persist func([]Revocation) error) *Revocations {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxRevocations
	}
	r := &Revocations{max: maxEntries, persist: persist, now: time.Now}
	r.set.Store(buildRevocationSet(nil, nil))
	return r
}

// SetFile replaces the entries that came from the revocation file.
func (r *Revocations) SetFile(entries []Revocation) error {
	if len(entries) > r.max {
		return fmt.Errorf("%d file revocations, more than %d", len(entries), r.max)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.file = withSource(entries, RevocationFromFile)
	r.publish()
	return nil
}

// RestoreAPI sets the admin API's entries, as persisted by a previous
// run; it does not persist them again.
func (r *Revocations) RestoreAPI(entries []Revocation) error {
	if len(entries) > r.max {
		return fmt.Errorf("%d persisted revocations, more than %d", len(entries), r.max)
	}
	for i := range entries {
		if err := entries[i].Normalize(r.now()); err != nil {
			return fmt.Errorf("persisted revocation %d: %w", i, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.api = withSource(entries, RevocationFromAPI)
	r.publish()
	return nil
}

func withSource(entries []Revocation, src string) []Revocation {
	out := slices.Clone(entries)
	for i := range out {
		out[i].Source = src
	}
	return out
}

// errNotPersisted: the change is in force but could not be saved.
var errNotPersisted = errors.New("revocation in force but not persisted")

// Add revokes e (already normalized) as an admin API entry, replacing an
// API entry with the same ID. A failure to persist still revokes: a
// revocation is never held back for want of a disk.
func (r *Revocations) Add(e Revocation) error {
	e.Source = RevocationFromAPI
	r.mu.Lock()
	defer r.mu.Unlock()
	api := slices.DeleteFunc(slices.Clone(r.api), func(x Revocation) bool { return x.ID == e.ID })
	if len(api) >= r.max {
		return fmt.Errorf("already %d revocations from the API", r.max)
	}
	r.api = append(api, e)
	r.publish()
	r.sharedAdded(e)
	if r.persist != nil {
		if err := r.persist(r.api); err != nil {
			return fmt.Errorf("%w: %v", errNotPersisted, err)
		}
	}
	return nil
}

// Remove lifts the admin API entry id. It reports false when there is no
// such API entry; file entries are lifted by editing the file. When the
// change cannot be persisted the revocation stays in force.
func (r *Revocations) Remove(id string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.api, func(x Revocation) bool { return x.ID == id })
	if i < 0 {
		return false, nil
	}
	api := slices.Delete(slices.Clone(r.api), i, i+1)
	if r.persist != nil {
		if err := r.persist(api); err != nil {
			return true, fmt.Errorf("revocation not lifted: %w", err)
		}
	}
	lifted := r.api[i]
	r.api = api
	r.publish()
	r.sharedLifted(lifted)
	return true, nil
}

// List returns every entry in force, file entries first.
func (r *Revocations) List() []Revocation {
	return slices.Clone(r.set.Load().entries)
}

// publish builds the new set and hands it to the proxy. Callers hold mu,
// so changes reach the proxy in order.
func (r *Revocations) publish() {
	cur := buildRevocationSet(r.file, r.api)
	old := r.set.Swap(cur)
	if r.onChange != nil {
		r.onChange(old, cur)
	}
}

func (r *Revocations) attach(fn func(old, cur *revocationSet)) {
	r.mu.Lock()
	r.onChange = fn
	r.mu.Unlock()
}

func (r *Revocations) current() *revocationSet { return r.set.Load() }

type identityKey struct{ issuer, san string }

// revocationSet is an immutable index of the entries in force.
type revocationSet struct {
	entries    []Revocation
	digests    map[string]*Revocation
	keys       map[string]*Revocation
	identities map[identityKey]*Revocation // issuer "" matches any issuer
	boundaries map[string]*Revocation
}

func buildRevocationSet(lists ...[]Revocation) *revocationSet {
	s := &revocationSet{
		digests:    map[string]*Revocation{},
		keys:       map[string]*Revocation{},
		identities: map[identityKey]*Revocation{},
		boundaries: map[string]*Revocation{},
	}
	for _, l := range lists {
		s.entries = append(s.entries, l...)
	}
	for i := range s.entries {
		e := &s.entries[i]
		switch {
		case e.Digest != "":
			addFirst(s.digests, e.Digest, e)
		case e.Key != "":
			addFirst(s.keys, e.Key, e)
		case e.Identity != "":
			addFirst(s.identities, identityKey{e.Issuer, e.Identity}, e)
		case e.Boundary != "":
			addFirst(s.boundaries, e.Boundary, e)
		}
	}
	return s
}

func addFirst[K comparable](m map[K]*Revocation, k K, e *Revocation) {
	if _, ok := m[k]; !ok {
		m[k] = e
	}
}

func (s *revocationSet) empty() bool { return s == nil || len(s.entries) == 0 }

func (s *revocationSet) hasSigners() bool {
	return s != nil && (len(s.keys) > 0 || len(s.identities) > 0)
}

// minus is the set of the entries of s whose IDs are not in other.
func (s *revocationSet) minus(other *revocationSet) *revocationSet {
	have := map[string]bool{}
	for _, e := range other.entries {
		have[e.ID] = true
	}
	var out []Revocation
	for _, e := range s.entries {
		if !have[e.ID] {
			out = append(out, e)
		}
	}
	return buildRevocationSet(out)
}

func (e *Revocation) reason() string { return "revoked by " + e.By + ": " + e.Reason }

// signer returns the entry revoking sg, if any.
func (s *revocationSet) signer(sg verify.Signer) *Revocation {
	switch {
	case sg.KeyID != "":
		return s.keys[sg.KeyID]
	case sg.Kind == "keyless":
		if e := s.identities[identityKey{sg.Issuer, sg.Identity}]; e != nil {
			return e
		}
		return s.identities[identityKey{"", sg.Identity}]
	}
	return nil
}

// SignerRevoked makes the set the engine's view of revoked signers.
func (s *revocationSet) SignerRevoked(sg verify.Signer) (string, bool) {
	if e := s.signer(sg); e != nil {
		return e.reason(), true
	}
	return "", false
}

// staleSigner returns an entry revoking a signer v counted, in v or in
// the verdicts of its lineage: v was decided before that revocation.
func (s *revocationSet) staleSigner(v *verify.Verdict) *Revocation {
	if !s.hasSigners() {
		return nil
	}
	for _, sg := range v.Signers {
		if e := s.signer(sg); e != nil {
			return e
		}
	}
	for _, a := range v.Attestations {
		if e := s.signer(a.Signer); e != nil {
			return e
		}
	}
	for _, d := range v.Lineage {
		if d.Verdict != nil {
			if e := s.staleSigner(d.Verdict); e != nil {
				return e
			}
		}
	}
	return nil
}

// verdict returns an entry that denies v outright: its boundary, its
// digest, or the digest of a dependency in its lineage.
func (s *revocationSet) verdict(v *verify.Verdict) *Revocation {
	if len(s.boundaries) > 0 && v.Boundary != "" {
		if e := s.boundaries[v.Boundary]; e != nil {
			return e
		}
	}
	if len(s.digests) == 0 {
		return nil
	}
	if e := s.digests[v.Digest]; e != nil {
		return e
	}
	for _, d := range v.Lineage {
		if d.Verdict != nil {
			if e := s.verdict(d.Verdict); e != nil {
				return e
			}
		}
	}
	return nil
}

// matches reports whether v rests on anything s revokes.
func (s *revocationSet) matches(v verify.Verdict) bool {
	return s.verdict(&v) != nil || s.staleSigner(&v) != nil
}

// WithRevocations has the proxy enforce r. Default: an empty list of its
// own, filled through the admin API only.
func WithRevocations(r *Revocations) Option {
	return func(o *options) error {
		if r == nil {
			return errors.New("nil revocations")
		}
		o.revocations = r
		return nil
	}
}

// initRevocations attaches the proxy to its revocation list.
func (p *Proxy) initRevocations() {
	if p.opts.revocations == nil {
		p.opts.revocations = NewRevocations(0, nil)
	}
	p.revs = p.opts.revocations
	p.revs.attach(p.revocationsChanged)
	if cur := p.revs.current(); !cur.empty() {
		p.revocationsChanged(buildRevocationSet(), cur)
	}
}

// Revocations is the list the proxy enforces.
func (p *Proxy) Revocations() *Revocations { return p.revs }

// signerRevocations is what the verifier is told, nil when no signer is
// revoked so that verification pays nothing.
func (p *Proxy) signerRevocations() verify.SignerRevocations {
	if s := p.revs.current(); s.hasSigners() {
		return s
	}
	return nil
}

// applyRevocations runs on every manifest decision once it has a verdict:
// one atomic load when nothing is revoked. A verdict that counted a signer
// revoked since is decided again without it; a revoked digest, boundary
// or dependency turns the verdict into a denial (a would-be denial in a
// warn boundary).
func (p *Proxy) applyRevocations(ctx context.Context, d *manifestDecision) error {
	s := p.revs.current()
	if s.empty() {
		return nil
	}
	if e := s.staleSigner(&d.verdict); e != nil {
		switch d.source {
		case sourceCache, sourceCoverage, sourceVerified:
			if vc := p.opts.verdicts; vc != nil {
				vc.Remove(d.key)
			}
			p.coverage.c.Remove(d.key)
			d.verdict, d.source, d.coveredBy = verify.Verdict{}, sourceNone, ""
			if err := p.verifyManifest(ctx, d); err != nil {
				return err
			}
			e = s.staleSigner(&d.verdict)
		}
		if e != nil {
			// A verification that began before the revocation, or the
			// verdict of the subject this is evidence of.
			p.revoke(d, e)
			return nil
		}
	}
	e := s.verdict(&d.verdict)
	if e == nil && len(s.digests) > 0 {
		for _, dg := range []string{d.digest, d.evidenceOf, d.coveredBy} {
			if e = s.digests[dg]; e != nil {
				break
			}
		}
	}
	if e != nil {
		p.revoke(d, e)
	}
	return nil
}

// revokedVerdict is what a verification decided, denied when it rests on
// a revoked digest, boundary or dependency, so that no verdict cached,
// summarised or refreshed from now on is an allow of something revoked.
func (p *Proxy) revokedVerdict(v verify.Verdict) verify.Verdict {
	s := p.revs.current()
	if s.empty() {
		return v
	}
	if e := s.verdict(&v); e != nil {
		return denyRevoked(v, e)
	}
	return v
}

func denyRevoked(v verify.Verdict, e *Revocation) verify.Verdict {
	mode := v.Mode
	if mode == "" {
		mode = verify.ModeEnforce
	}
	return verify.Verdict{
		Mode:      mode,
		Boundary:  v.Boundary,
		Digest:    v.Digest,
		Signers:   v.Signers,
		Reasons:   []string{e.reason()},
		Artifact:  v.Artifact,
		Lineage:   v.Lineage,
		CheckedAt: time.Now(),
	}
}

// revoke denies d on e and reports the hit.
func (p *Proxy) revoke(d *manifestDecision, e *Revocation) {
	d.verdict = denyRevoked(d.verdict, e)
	d.verdict.Digest = d.digest
	p.metrics.revocationHits.Inc()
	p.Emit(Event{
		Kind:    EventRevocationHit,
		Message: fmt.Sprintf("revoked %s/%s@%s asked for: %s", d.mr.u.name, d.mr.repo, d.digest, e.reason()),
		Details: map[string]string{
			"upstream":   d.mr.u.name,
			"repository": d.mr.repo,
			"digest":     d.digest,
			"boundary":   d.verdict.Boundary,
			"client":     d.mr.client,
			"revocation": e.ID,
			"by":         e.By,
			"reason":     e.Reason,
		},
	})
}

// cachedDependency is a lineage dependency's cached verdict unless it
// counted a signer revoked since (then it is dropped, to be decided
// again).
func (p *Proxy) cachedDependency(vc VerdictCache, key string) (verify.Verdict, bool) {
	v, ok := vc.Get(key)
	if !ok {
		return v, false
	}
	if s := p.revs.current(); !s.empty() && s.staleSigner(&v) != nil {
		vc.Remove(key)
		return verify.Verdict{}, false
	}
	return v, true
}

// revokeDependency denies a dependency's verdict that rests on a
// revocation; the parent's verdict then denies too.
func (p *Proxy) revokeDependency(v verify.Verdict, err error) (verify.Verdict, error) {
	if err != nil {
		return v, err
	}
	s := p.revs.current()
	if s.empty() {
		return v, nil
	}
	e := s.verdict(&v)
	if e == nil {
		e = s.staleSigner(&v)
	}
	if e == nil {
		return v, nil
	}
	return denyRevoked(v, e), nil
}

// revocationsChanged purges what rests on a new revocation, so that no
// verdict, coverage, open blob, evidence link or summary outlives it, and
// drops the denials a lifted revocation caused so the next pull is decided
// afresh. The request path checks every verdict anyway; the purge makes
// the change complete rather than merely effective.
func (p *Proxy) revocationsChanged(old, cur *revocationSet) {
	added, lifted := cur.minus(old), old.minus(cur)
	closed := map[string]bool{}
	if !added.empty() {
		p.shared.revoked(p.blobs.now())
		for _, e := range added.entries {
			if e.Digest != "" {
				closed[e.Digest] = true
			}
		}
		if vc := p.opts.verdicts; vc != nil {
			vc.RemoveFunc(func(v verify.Verdict) bool {
				if added.matches(v) {
					closed[v.Digest] = true
					return true
				}
				return false
			})
		}
		p.coverage.removeIf(func(_ string, ce coverEntry) bool {
			return closed[ce.parent] || added.matches(ce.verdict)
		})
		p.closeBlobs(closed, added)
		p.evidence.removeIf(func(_ string, subject v1.Hash) bool { return closed[subject.String()] })
	}
	if !lifted.empty() {
		if vc := p.opts.verdicts; vc != nil {
			vc.RemoveFunc(func(v verify.Verdict) bool {
				return !v.Allowed && slices.ContainsFunc(v.Reasons, func(r string) bool { return strings.Contains(r, "revoked by ") })
			})
		}
	}
	p.log.Info("revocations changed", zap.Int("in_force", len(cur.entries)),
		zap.Int("added", len(added.entries)), zap.Int("lifted", len(lifted.entries)), zap.Int("closed_digests", len(closed)))
}

// blobGrant opens a blob in one repository of one upstream.
type blobGrant struct {
	size int64
	// src is the decision that opened the blob; nil when the grant was
	// read from the shared state, where another replica decided it,
	// without a revocation since to check that decision against.
	src *grantSource
}

// grantSource is the decision a served manifest opened its blobs on, one
// per served manifest and shared by its blobs. It is kept with them so
// that a revocation or a drifted verdict closes them whatever has been
// evicted since: the manifest's bytes, its parse, its cached verdict.
type grantSource struct {
	manifest string // the served manifest's digest
	// verdict is the one the manifest was served on: its own, or that of
	// the index that covered it or of the subject it is evidence of.
	verdict verify.Verdict
}

// closeBlobs withdraws the blob gating of the manifests whose digests are
// in digests and of those served on the verdict of one (an index that
// covered them, the subject they are evidence of), and, when added is
// set, of every manifest served on a verdict added rests on.
// Grants read from the shared state without their decision are all
// dropped by a revocation. Looked up again, an entry recorded before it
// opens its blob only with the decision recorded next to it, if that
// still stands (sharedBlob).
func (p *Proxy) closeBlobs(digests map[string]bool, added *revocationSet) {
	revoked := map[*grantSource]bool{}
	p.blobs.removeIf(func(_ string, g blobGrant) bool {
		if g.src == nil {
			return added != nil
		}
		if digests[g.src.manifest] || digests[g.src.verdict.Digest] {
			return true
		}
		if added == nil {
			return false
		}
		r, ok := revoked[g.src]
		if !ok {
			r = added.matches(g.src.verdict)
			revoked[g.src] = r
		}
		return r
	})
}

// removeIf drops every entry match is true for. An entry added again for
// the same key between the look and the removal may go too, which only
// costs a fresh decision.
func (t *ttlCache[K, V]) removeIf(match func(K, V) bool) {
	for _, k := range t.c.Keys() {
		if e, ok := t.c.Peek(k); ok && match(k, e.v) {
			t.c.Remove(k)
		}
	}
}

// revocationRoutes serves the revocation list on the admin listener.
func (p *Proxy) revocationRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/revocations", p.listRevocations)
	mux.HandleFunc("POST /v1/revocations", p.postRevocation)
	mux.HandleFunc("DELETE /v1/revocations", p.deleteRevocation)
}

func (p *Proxy) listRevocations(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, RevocationFile{Revocations: p.revs.List()})
}

func (p *Proxy) postRevocation(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRevocationBody+1))
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "failed to read body")
		return
	}
	if len(body) > maxRevocationBody {
		writeJSONError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", maxRevocationBody))
		return
	}
	var e Revocation
	if err := decodeStrict(body, &e); err != nil {
		writeJSONError(w, http.StatusBadRequest, "invalid revocation: "+truncate(err.Error(), maxReasonLength))
		return
	}
	if e.ID != "" || e.Source != "" {
		writeJSONError(w, http.StatusBadRequest, "id and source are set by the proxy")
		return
	}
	if err := e.Normalize(time.Now()); err != nil {
		writeJSONError(w, http.StatusBadRequest, "invalid revocation: "+err.Error())
		return
	}
	err = p.revs.Add(e)
	p.audit.Warn("revocation added", zap.String("id", e.ID), zap.String("by", e.By), zap.String("reason", e.Reason),
		zap.String("client", r.RemoteAddr), zap.Error(err))
	switch {
	case errors.Is(err, errNotPersisted):
		writeJSONError(w, http.StatusInternalServerError, err.Error())
	case err != nil:
		writeJSONError(w, http.StatusConflict, err.Error())
	default:
		e.Source = RevocationFromAPI
		writeJSON(w, http.StatusCreated, e)
	}
}

func (p *Proxy) deleteRevocation(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" {
		writeJSONError(w, http.StatusBadRequest, "id query parameter required")
		return
	}
	found, err := p.revs.Remove(id)
	switch {
	case err != nil:
		writeJSONError(w, http.StatusInternalServerError, err.Error())
		return
	case !found:
		writeJSONError(w, http.StatusNotFound, "no revocation "+truncate(id, maxRevocationName)+" from the API (file entries are lifted by editing the file)")
		return
	}
	p.audit.Warn("revocation lifted", zap.String("id", id), zap.String("client", r.RemoteAddr))
	w.WriteHeader(http.StatusNoContent)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, genericInternalError, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
