package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// keyID is the revocation form of k: hex SHA-256 of its DER public key,
// computed here independently of the engine.
func keyID(t testing.TB, k *fixtures.KeySigner) string {
	t.Helper()
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(k.PublicKeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// revokeEnv is acme/app:v1 signed by release.pub (and, when asked, by a
// second key) behind a proxy with the real engine, a verdict cache and an
// event recorder.
type revokeEnv struct {
	u      *upstreamRegistry
	p      *Proxy
	eng    *engineSpy
	events *eventRecorder
	cache  *mapVerdicts
	img    pushed
	k1, k2 *fixtures.KeySigner
}

func newRevokeEnv(t *testing.T, mode verify.Mode, twoKeys bool, opts ...Option) *revokeEnv {
	t.Helper()
	e := &revokeEnv{u: newRegistry(t), events: &eventRecorder{}, cache: newMapVerdicts(), k1: newKey(t), k2: newKey(t)}
	e.img = e.u.pushImage(t, "acme/app", "v1")
	e.u.sign(t, "acme/app", e.img.digest, e.k1)
	auths := []verify.Authority{keyAuthority("release", e.k1)}
	if twoKeys {
		e.u.sign(t, "acme/app", e.img.digest, e.k2)
		auths = append(auths, keyAuthority("backup", e.k2))
	}
	e.eng = newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{{
		Name: "prod", Repositories: []string{"**"}, Mode: mode, Threshold: 1, Authorities: auths,
	}}})
	e.p, _ = newTestProxy(t, e.u.srv.URL, e.eng, append([]Option{WithVerdictCache(e.cache), WithEventSink(e.events)}, opts...)...)
	return e
}

func (e *revokeEnv) pull(t *testing.T) *httptest.ResponseRecorder {
	t.Helper()
	return do(e.p, http.MethodGet, manifestPath("acme/app", e.img.digest.String()))
}

func admin(p *Proxy, method, target, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	w := httptest.NewRecorder()
	p.AdminHandler().ServeHTTP(w, r)
	return w
}

func (e *revokeEnv) revokeAPI(t *testing.T, body string) Revocation {
	t.Helper()
	w := admin(e.p, http.MethodPost, "/v1/revocations", body)
	if w.Code != http.StatusCreated {
		t.Fatalf("POST /v1/revocations: %d %s", w.Code, w.Body)
	}
	var r Revocation
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func (e *revokeEnv) revocationHits() []Event {
	e.events.mu.Lock()
	defer e.events.mu.Unlock()
	var out []Event
	for _, ev := range e.events.events {
		if ev.Kind == EventRevocationHit {
			out = append(out, ev)
		}
	}
	return out
}

func TestRevokeDigestThroughAPI(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, false)
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull before revocation: %d %s", w.Code, w.Body)
	}
	layer := blobPath("acme/app", e.img.layers[0])
	if w := do(e.p, http.MethodHead, layer); w.Code != http.StatusOK {
		t.Fatalf("blob before revocation: %d", w.Code)
	}
	r := e.revokeAPI(t, `{"digest":"`+e.img.digest.String()+`","reason":"built from a compromised runner","by":"alice"}`)
	if r.ID != "digest:"+e.img.digest.String() || r.Source != RevocationFromAPI || r.Time.IsZero() {
		t.Fatalf("revocation = %+v", r)
	}
	calls := e.eng.calls.Load()
	w := e.pull(t)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "revoked by alice: built from a compromised runner") {
		t.Fatalf("pull of a revoked digest: %d %s", w.Code, w.Body)
	}
	if d := lastDecision(t, e.p, e.img.digest); d.Decision != "deny" || d.Reasons[0] != "revoked by alice: built from a compromised runner" {
		t.Fatalf("decision = %+v", d)
	}
	// The allow it had was purged, not merely overridden: it is decided
	// again (and then revoked).
	if e.eng.calls.Load() == calls {
		t.Fatal("the cached allow of a revoked digest was not purged")
	}
	// What the new verification cached is a denial too: nothing that
	// reads the cache (summaries, refresh-ahead) finds an allow.
	e.cache.mu.Lock()
	for _, v := range e.cache.m {
		if v.Digest == e.img.digest.String() && v.Allowed {
			t.Errorf("cached allow of a revoked digest: %+v", v)
		}
	}
	e.cache.mu.Unlock()
	// The blobs it opened are closed.
	if w := do(e.p, http.MethodHead, layer); w.Code == http.StatusOK {
		t.Fatal("a blob of a revoked manifest is still served")
	}
	if hits := e.revocationHits(); len(hits) != 1 || hits[0].Details["revocation"] != r.ID || hits[0].Details["by"] != "alice" {
		t.Fatalf("revocation-hit events = %+v", hits)
	}
	e.pull(t)
	if n := len(e.revocationHits()); n != 2 {
		t.Fatalf("%d revocation-hit events after two pulls, want one per request", n)
	}

	w = admin(e.p, http.MethodGet, "/v1/revocations", "")
	var list RevocationFile
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list.Revocations) != 1 || list.Revocations[0].ID != r.ID {
		t.Fatalf("GET /v1/revocations: %s (%v)", w.Body, err)
	}
	// Lifting it allows the digest again.
	if w := admin(e.p, http.MethodDelete, "/v1/revocations?id="+url.QueryEscape(r.ID), ""); w.Code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", w.Code, w.Body)
	}
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull after the revocation was lifted: %d %s", w.Code, w.Body)
	}
	if w := admin(e.p, http.MethodDelete, "/v1/revocations?id="+url.QueryEscape(r.ID), ""); w.Code != http.StatusNotFound {
		t.Fatalf("second DELETE: %d", w.Code)
	}
}

func TestRevokeKeyLeavesOtherSigners(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, true)
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull: %d %s", w.Code, w.Body)
	}
	first := lastDecision(t, e.p, e.img.digest).Signers[0]
	if first.KeyID == "" {
		t.Fatalf("signer without a key id: %+v", first)
	}
	revoked, other := e.k1, "backup"
	if first.KeyID == keyID(t, e.k2) {
		revoked, other = e.k2, "release"
	}
	if first.KeyID != keyID(t, revoked) {
		t.Fatalf("signer key id %s is neither key's fingerprint", first.KeyID)
	}
	// The key that counted is revoked: the other one still meets the
	// threshold of 1.
	e.revokeAPI(t, `{"key":"sha256:`+keyID(t, revoked)+`","reason":"leaked","by":"sec"}`)
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull with one of two keys revoked: %d %s", w.Code, w.Body)
	}
	if d := lastDecision(t, e.p, e.img.digest); len(d.Signers) != 1 || d.Signers[0].Authority != other {
		t.Fatalf("decision after revocation = %+v, want signed by %s", d, other)
	}
	// Both revoked: nothing counts.
	remaining := e.k1
	if revoked == e.k1 {
		remaining = e.k2
	}
	e.revokeAPI(t, `{"key":"`+keyID(t, remaining)+`","reason":"leaked too","by":"sec"}`)
	w := e.pull(t)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "revoked by sec") {
		t.Fatalf("pull with both keys revoked: %d %s", w.Code, w.Body)
	}
}

func TestRevokeBoundary(t *testing.T) {
	t.Parallel()
	for _, mode := range []verify.Mode{verify.ModeEnforce, verify.ModeWarn} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			e := newRevokeEnv(t, mode, false)
			if w := e.pull(t); w.Code != http.StatusOK {
				t.Fatalf("pull: %d", w.Code)
			}
			e.revokeAPI(t, `{"boundary":"prod","reason":"trust root rotated","by":"ops"}`)
			w := e.pull(t)
			d := lastDecision(t, e.p, e.img.digest)
			want, decision := http.StatusForbidden, "deny"
			if mode == verify.ModeWarn {
				want, decision = http.StatusOK, "warn"
			}
			if w.Code != want || d.Decision != decision || d.Reasons[0] != "revoked by ops: trust root rotated" {
				t.Fatalf("pull in a revoked %s boundary: %d, decision %+v", mode, w.Code, d)
			}
			if len(e.revocationHits()) != 1 {
				t.Fatalf("events = %v", e.events.kinds())
			}
		})
	}
}

func TestRevocationRequestsParsedStrictly(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, false)
	d := e.img.digest.String()
	for _, body := range []string{
		``,
		`{"digest":"` + d + `","reason":"r"}`,
		`{"digest":"` + d + `","by":"a"}`,
		`{"digest":"` + d + `","boundary":"prod","reason":"r","by":"a"}`,
		`{"digest":"` + d + `","reason":"r","by":"a","extra":1}`,
		`{"digest":"` + d + `","reason":"r\nforged line","by":"a"}`,
		`{"digest":"` + strings.ToUpper(d) + `","reason":"r","by":"a"}`,
		`{"digest":"sha256:abc","reason":"r","by":"a"}`,
		`{"key":"not-hex","reason":"r","by":"a"}`,
		`{"issuer":"https://accounts.example","reason":"r","by":"a"}`,
		`{"digest":"` + d + `","reason":"r","by":"a","id":"digest:x"}`,
		`{"digest":"` + d + `","reason":"r","by":"a"} {}`,
	} {
		if w := admin(e.p, http.MethodPost, "/v1/revocations", body); w.Code != http.StatusBadRequest {
			t.Errorf("POST %q: %d, want 400", body, w.Code)
		}
	}
	if n := len(e.p.Revocations().List()); n != 0 {
		t.Fatalf("%d revocations in force after refused requests", n)
	}
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull: %d", w.Code)
	}
}

// TestRevokeFileEntries: entries set from a file apply like API ones,
// cannot be lifted through the API, and a file that does not parse is
// refused whole.
func TestRevokeFileEntries(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, false)
	if _, err := ParseRevocations([]byte(`{"revocations":[{"key":"`+keyID(t, e.k1)+`","reason":"r","by":"a"},{"digest":"bad","reason":"r","by":"a"}]}`), 0, time.Now()); err == nil {
		t.Fatal("a file with an invalid entry was accepted")
	}
	if _, err := ParseRevocations([]byte(`{"revocations":[{"key":"`+keyID(t, e.k1)+`","reason":"r","by":"a"},{"key":"`+keyID(t, e.k2)+`","reason":"r","by":"a"}]}`), 1, time.Now()); err == nil {
		t.Fatal("a file over the entry limit was accepted")
	}
	entries, err := ParseRevocations([]byte(`{"revocations":[{"key":"`+keyID(t, e.k1)+`","reason":"leaked","by":"file-admin"}]}`), 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.p.Revocations().SetFile(entries); err != nil {
		t.Fatal(err)
	}
	if w := e.pull(t); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "revoked by file-admin: leaked") {
		t.Fatalf("pull signed by a key revoked in the file: %d %s", w.Code, w.Body)
	}
	if w := admin(e.p, http.MethodDelete, "/v1/revocations?id=key:"+keyID(t, e.k1), ""); w.Code != http.StatusNotFound {
		t.Fatalf("DELETE of a file entry: %d", w.Code)
	}
	if err := e.p.Revocations().SetFile(nil); err != nil {
		t.Fatal(err)
	}
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull after the file entry was removed: %d %s", w.Code, w.Body)
	}
}

// TestRevocationSetMatchesLineage: a digest revoked as a lineage dependency
// denies the parents whose verdicts rest on it.
func TestRevocationSetMatchesLineage(t *testing.T) {
	t.Parallel()
	dep := "sha256:" + strings.Repeat("a", 64)
	s := buildRevocationSet([]Revocation{{Digest: dep, ID: "digest:" + dep, By: "a", Reason: "r"}})
	parent := verify.Verdict{Allowed: true, Digest: "sha256:" + strings.Repeat("b", 64), Lineage: []verify.Dependency{
		{Name: "base", Verdict: &verify.Verdict{Allowed: true, Digest: "sha256:" + strings.Repeat("c", 64), Lineage: []verify.Dependency{
			{Name: "data", Verdict: &verify.Verdict{Allowed: true, Digest: dep}},
		}}},
	}}
	if s.verdict(&parent) == nil {
		t.Fatal("a revoked dependency two levels down does not deny the parent")
	}
	parent.Lineage[0].Verdict.Lineage = nil
	if s.verdict(&parent) != nil {
		t.Fatal("a parent without the revoked dependency is denied")
	}
	ks := buildRevocationSet([]Revocation{{Identity: "https://ci/wf", ID: "identity:*|https://ci/wf", By: "a", Reason: "r"}})
	if ks.signer(verify.Signer{Kind: "keyless", Identity: "https://ci/wf", Issuer: "https://issuer"}) == nil {
		t.Fatal("an identity revoked under any issuer is not matched")
	}
	// A set revoking identities only still finds them in verdicts, in
	// an attestation's signer and down a lineage.
	signed := verify.Verdict{Allowed: true, Digest: dep, Attestations: []verify.AttestationResult{
		{Signer: verify.Signer{Kind: "keyless", Identity: "https://ci/wf", Issuer: "https://issuer"}}}}
	if !ks.matches(signed) {
		t.Fatal("a verdict attested by a revoked identity does not match a set of identities only")
	}
	if !ks.matches(verify.Verdict{Allowed: true, Lineage: []verify.Dependency{{Name: "base", Verdict: &signed}}}) {
		t.Fatal("a lineage attested by a revoked identity does not match")
	}
	ks = buildRevocationSet([]Revocation{{Identity: "https://ci/wf", Issuer: "https://other", ID: "x", By: "a", Reason: "r"}})
	if ks.signer(verify.Signer{Kind: "keyless", Identity: "https://ci/wf", Issuer: "https://issuer"}) != nil {
		t.Fatal("an identity revoked under another issuer is matched")
	}
}

// TestRevokedSignerInLateVerdict: a verification that began before a key
// was revoked may cache its allow after the purge; the request path still
// does not serve it.
func TestRevokedSignerInLateVerdict(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, false)
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull: %d", w.Code)
	}
	var key string
	var allow verify.Verdict
	e.cache.mu.Lock()
	for k, v := range e.cache.m {
		if v.Digest == e.img.digest.String() && v.Allowed {
			key, allow = k, v
		}
	}
	e.cache.mu.Unlock()
	if key == "" {
		t.Fatal("no cached allow")
	}
	e.revokeAPI(t, `{"key":"`+keyID(t, e.k1)+`","reason":"leaked","by":"sec"}`)
	if _, ok := e.cache.Get(key); ok {
		t.Fatal("the allow signed by a revoked key was not purged")
	}
	e.cache.Add(key, allow)
	w := e.pull(t)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "revoked by sec: leaked") {
		t.Fatalf("pull with a late cached allow by a revoked key: %d %s", w.Code, w.Body)
	}
}

// TestRevokeLineageDependency: a model whose provenance names a dataset is
// denied once the dataset's digest, or the key that signed the dataset,
// is revoked, even though both verdicts were cached as allows.
func TestRevokeLineageDependency(t *testing.T) {
	t.Parallel()
	for _, by := range []string{"digest", "key"} {
		t.Run(by, func(t *testing.T) {
			t.Parallel()
			e := newLineageEnv(t, lineageSetup{})
			data := e.dataset("ml/data", true)
			m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))
			if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
				t.Fatalf("pull: %d %s", w.Code, w.Body)
			}
			r := Revocation{Reason: "poisoned", By: "ml-sec"}
			if by == "digest" {
				r.Digest = data.digest.String()
			} else {
				r.Key = keyID(t, e.data)
			}
			if err := r.Normalize(time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := e.p.Revocations().Add(r); err != nil {
				t.Fatal(err)
			}
			w := e.pull("models", "ml/model", m.digest)
			if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "revoked by ml-sec: poisoned") {
				t.Fatalf("pull of a model whose dataset is revoked by %s: %d %s", by, w.Code, w.Body)
			}
		})
	}
}

// TestRevokeClosesBlobsAfterEviction: what a served manifest opened is
// closed by a revocation even when its bytes, its parse and its cached
// verdict have all been evicted since, for each kind of revocation that
// names it: its digest, its signer, the index that covered it.
func TestRevokeClosesBlobsAfterEviction(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"digest", "key", "index"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newRevokeEnv(t, verify.ModeEnforce, false)
			var layer, revocation string
			switch kind {
			case "digest", "key":
				if w := e.pull(t); w.Code != http.StatusOK {
					t.Fatalf("pull: %d %s", w.Code, w.Body)
				}
				layer = blobPath("acme/app", e.img.layers[0])
				revocation = `{"digest":"` + e.img.digest.String() + `"`
				if kind == "key" {
					revocation = `{"key":"` + keyID(t, e.k1) + `"`
				}
			case "index":
				idx, kids := e.u.pushIndex(t, "acme/app", "multi")
				e.u.sign(t, "acme/app", idx.digest, e.k1)
				if w := do(e.p, http.MethodGet, manifestPath("acme/app", idx.digest.String())); w.Code != http.StatusOK {
					t.Fatalf("index: %d %s", w.Code, w.Body)
				}
				if w := do(e.p, http.MethodGet, manifestPath("acme/app", kids[0].digest.String())); w.Code != http.StatusOK {
					t.Fatalf("child: %d %s", w.Code, w.Body)
				}
				if d := lastDecision(t, e.p, kids[0].digest); d.CoveredBy != idx.digest.String() {
					t.Fatalf("child decided by %+v, want coverage by the index", d)
				}
				layer = blobPath("acme/app", kids[0].layers[0])
				revocation = `{"digest":"` + idx.digest.String() + `"`
			}
			if w := do(e.p, http.MethodHead, layer); w.Code != http.StatusOK {
				t.Fatalf("blob before revocation: %d", w.Code)
			}
			// Everything a revocation could find the blobs through is gone.
			e.p.parsed.c.Purge()
			if e.p.opts.manifests != nil {
				t.Fatal("the environment has a manifest cache the test does not empty")
			}
			e.cache.mu.Lock()
			clear(e.cache.m)
			e.cache.mu.Unlock()

			// A revocation that names something else leaves the blob open.
			e.revokeAPI(t, `{"key":"`+keyID(t, e.k2)+`","reason":"unused key retired","by":"sec"}`)
			if w := do(e.p, http.MethodHead, layer); w.Code != http.StatusOK {
				t.Fatalf("blob after an unrelated revocation: %d, want 200", w.Code)
			}
			e.revokeAPI(t, revocation+`,"reason":"compromised","by":"sec"}`)
			if w := do(e.p, http.MethodHead, layer); w.Code != http.StatusForbidden {
				t.Fatalf("blob of a revoked manifest after eviction: %d, want 403", w.Code)
			}
		})
	}
}

// TestRevocationNormalizeEdges: each check of a revocation entry at the
// edge it draws, accepted on one side and refused on the other.
func TestRevocationNormalizeEdges(t *testing.T) {
	t.Parallel()
	hex64, hex128 := strings.Repeat("ab", 32), strings.Repeat("cd", 64)
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.FixedZone("X", 3600))
	ok := func(r Revocation) Revocation { r.Reason, r.By = "r", "a"; return r }
	for _, c := range []struct {
		name   string
		r      Revocation
		id     string // the ID it gets; empty when it must be refused
		reason string // what the refusal says
	}{
		{"sha256 digest", ok(Revocation{Digest: "sha256:" + hex64}), "digest:sha256:" + hex64, ""},
		{"sha256 digest one short", ok(Revocation{Digest: "sha256:" + hex64[1:]}), "", "digest"},
		{"sha256 digest one long", ok(Revocation{Digest: "sha256:" + hex64 + "a"}), "", "digest"},
		{"sha256 digest in uppercase hex", ok(Revocation{Digest: "sha256:" + strings.ToUpper(hex64)}), "", "lowercase"},
		{"sha512 digest", ok(Revocation{Digest: "sha512:" + hex128}), "digest:sha512:" + hex128, ""},
		{"sha512 digest one short", ok(Revocation{Digest: "sha512:" + hex128[1:]}), "", "digest"},
		{"sha512 digest of sha256 length", ok(Revocation{Digest: "sha512:" + hex64}), "", "digest"},
		{"another algorithm", ok(Revocation{Digest: "sha384:" + strings.Repeat("ef", 48)}), "", "digest"},
		{"issuer with a digest", ok(Revocation{Digest: "sha256:" + hex64, Issuer: "https://issuer.example"}), "", "issuer is only valid with identity"},
		{"key", ok(Revocation{Key: hex64}), "key:" + hex64, ""},
		{"key with prefix, uppercase", ok(Revocation{Key: "sha256:" + strings.ToUpper(hex64)}), "key:" + hex64, ""},
		{"key of 64 letters not hex", ok(Revocation{Key: strings.Repeat("g", 64)}), "", "key must be"},
		{"key one short", ok(Revocation{Key: hex64[1:]}), "", "key must be"},
		{"identity under any issuer", ok(Revocation{Identity: "ci@example.com"}), "identity:*|ci@example.com", ""},
		{"identity under an issuer", ok(Revocation{Identity: "ci@example.com", Issuer: "https://issuer.example"}), "identity:https://issuer.example|ci@example.com", ""},
		{"identity at its bound", ok(Revocation{Identity: strings.Repeat("i", maxRevocationName)}), "identity:*|" + strings.Repeat("i", maxRevocationName), ""},
		{"identity past its bound", ok(Revocation{Identity: strings.Repeat("i", maxRevocationName+1)}), "", "identity is longer"},
		{"issuer past its bound", ok(Revocation{Identity: "ci", Issuer: strings.Repeat("i", maxRevocationName+1)}), "", "issuer is longer"},
		{"issuer with a control character", ok(Revocation{Identity: "ci", Issuer: "https://a\x1b[2J"}), "", "issuer contains"},
		{"boundary", ok(Revocation{Boundary: "prod"}), "boundary:prod", ""},
		{"boundary past its bound", ok(Revocation{Boundary: strings.Repeat("b", maxRevocationName+1)}), "", "boundary is longer"},
		{"reason at its bound", Revocation{Boundary: "prod", Reason: strings.Repeat("r", maxRevocationReason), By: "a"}, "boundary:prod", ""},
		{"reason past its bound", Revocation{Boundary: "prod", Reason: strings.Repeat("r", maxRevocationReason+1), By: "a"}, "", "reason is longer"},
		{"reason of spaces", Revocation{Boundary: "prod", Reason: "  ", By: "a"}, "", "reason and by are required"},
		{"reason not UTF-8", Revocation{Boundary: "prod", Reason: "r\xff", By: "a"}, "", "reason contains"},
		{"by at its bound", Revocation{Boundary: "prod", Reason: "r", By: strings.Repeat("b", maxRevocationBy)}, "boundary:prod", ""},
		{"by past its bound", Revocation{Boundary: "prod", Reason: "r", By: strings.Repeat("b", maxRevocationBy+1)}, "", "by is longer"},
		{"by of spaces", Revocation{Boundary: "prod", Reason: "r", By: "\t"}, "", "reason and by are required"},
		{"two things named", ok(Revocation{Key: hex64, Boundary: "prod"}), "", "exactly one"},
		{"nothing named", ok(Revocation{}), "", "exactly one"},
	} {
		r := c.r
		err := r.Normalize(now)
		switch {
		case c.id == "" && (err == nil || !strings.Contains(err.Error(), c.reason)):
			t.Errorf("%s: %v, want a refusal naming %q", c.name, err, c.reason)
		case c.id != "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.id != "" && r.ID != c.id:
			t.Errorf("%s: id %q, want %q", c.name, r.ID, c.id)
		case c.id != "" && (!r.Time.Equal(now) || r.Time.Location() != time.UTC):
			t.Errorf("%s: time %v, want now in UTC", c.name, r.Time)
		}
	}
	// A time given is kept.
	then := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := Revocation{Boundary: "prod", Reason: "r", By: "a", Time: then}
	if err := r.Normalize(now); err != nil || !r.Time.Equal(then) {
		t.Errorf("given time: %v %v", r.Time, err)
	}
}

// TestParseRevocationsSizeBound: a file is read up to 2 KiB per entry
// allowed, and not a byte more.
func TestParseRevocationsSizeBound(t *testing.T) {
	t.Parallel()
	entry := `{"boundary":"prod","reason":"r","by":"a"}`
	file := func(size int) []byte {
		b := []byte(`{"revocations":[` + entry + `]}`)
		return append(b, bytes.Repeat([]byte(" "), size-len(b))...)
	}
	for _, entries := range []int{0, 2} {
		limit := entries * revocationEntryBytes
		if entries == 0 {
			limit = DefaultMaxRevocations * revocationEntryBytes
		}
		if rs, err := ParseRevocations(file(limit), entries, time.Now()); err != nil || len(rs) != 1 || rs[0].Source != RevocationFromFile {
			t.Errorf("max %d: a file of exactly %d bytes: %v %+v", entries, limit, err, rs)
		}
		if _, err := ParseRevocations(file(limit+1), entries, time.Now()); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("larger than %d bytes", limit)) {
			t.Errorf("max %d: a file of %d bytes: %v", entries, limit+1, err)
		}
	}
}

// TestRevocationsEntryBounds: each source holds up to its bound of
// entries, exactly, and an API entry replacing one of the same ID fits
// in a full list.
func TestRevocationsEntryBounds(t *testing.T) {
	t.Parallel()
	entry := func(b string) Revocation {
		r := Revocation{Boundary: b, Reason: "r", By: "a"}
		if err := r.Normalize(time.Now()); err != nil {
			t.Fatal(err)
		}
		return r
	}
	two := []Revocation{entry("a"), entry("b")}
	three := append(slices.Clone(two), entry("c"))
	r := NewRevocations(2, nil)
	if err := r.SetFile(two); err != nil {
		t.Errorf("file at the bound: %v", err)
	}
	if err := r.SetFile(three); err == nil {
		t.Error("file past the bound accepted")
	}
	if err := r.RestoreAPI(three); err == nil {
		t.Error("persisted entries past the bound accepted")
	}
	if err := r.RestoreAPI(two); err != nil {
		t.Errorf("persisted entries at the bound: %v", err)
	}
	if err := r.Add(entry("a")); err != nil {
		t.Errorf("replacing an entry of a full list: %v", err)
	}
	if err := r.Add(entry("c")); err == nil {
		t.Error("an entry past the bound added")
	}
	if ok, err := r.Remove("boundary:b"); !ok || err != nil {
		t.Fatalf("remove: %v %v", ok, err)
	}
	if err := r.Add(entry("c")); err != nil {
		t.Errorf("an entry back at the bound: %v", err)
	}
	if n := len(r.List()); n != 4 {
		t.Errorf("%d entries in force, want 2 from the file and 2 from the API", n)
	}

	// A file of exactly its bound of entries is read.
	doc := `{"revocations":[{"boundary":"a","reason":"r","by":"a"},{"boundary":"b","reason":"r","by":"a"}]}`
	if rs, err := ParseRevocations([]byte(doc), 2, time.Now()); err != nil || len(rs) != 2 {
		t.Errorf("file of 2 entries, bound 2: %v", err)
	}
	if _, err := ParseRevocations([]byte(doc), 1, time.Now()); err == nil || !strings.Contains(err.Error(), "2 entries, more than 1") {
		t.Errorf("file of 2 entries, bound 1: %v", err)
	}
}

// TestRevokeCoveredChildByDigest: a child revoked by its own digest is
// denied although the index covering it stays allowed (its coverage
// entry outlives the purge, which only drops coverage by revoked
// parents), and the blobs it opened close.
func TestRevokeCoveredChildByDigest(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, false)
	idx, kids := e.u.pushIndex(t, "acme/app", "multi")
	e.u.sign(t, "acme/app", idx.digest, e.k1)
	child := manifestPath("acme/app", kids[0].digest.String())
	if w := do(e.p, http.MethodGet, manifestPath("acme/app", idx.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("index: %d %s", w.Code, w.Body)
	}
	if w := do(e.p, http.MethodGet, child); w.Code != http.StatusOK {
		t.Fatalf("child: %d %s", w.Code, w.Body)
	}
	layer := blobPath("acme/app", kids[0].layers[0])
	if w := do(e.p, http.MethodHead, layer); w.Code != http.StatusOK {
		t.Fatalf("child's blob: %d", w.Code)
	}
	e.revokeAPI(t, `{"digest":"`+kids[0].digest.String()+`","reason":"poisoned platform image","by":"sec"}`)
	if w := do(e.p, http.MethodGet, child); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "revoked by sec: poisoned platform image") {
		t.Fatalf("revoked child under an allowed index: %d %s", w.Code, w.Body)
	}
	if w := do(e.p, http.MethodHead, layer); w.Code != http.StatusForbidden {
		t.Fatalf("blob of a revoked child: %d", w.Code)
	}
	// The index and its other child are untouched.
	if w := do(e.p, http.MethodGet, manifestPath("acme/app", idx.digest.String())); w.Code != http.StatusOK {
		t.Fatalf("index after its child was revoked: %d %s", w.Code, w.Body)
	}
	if w := do(e.p, http.MethodGet, manifestPath("acme/app", kids[1].digest.String())); w.Code != http.StatusOK {
		t.Fatalf("the other child: %d %s", w.Code, w.Body)
	}
}

// TestRevocationRequestBodyBound: a request body is read up to 64 KiB,
// exactly; one byte more is refused as too large, not parsed.
func TestRevocationRequestBodyBound(t *testing.T) {
	t.Parallel()
	e := newRevokeEnv(t, verify.ModeEnforce, false)
	body := func(size int, b string) string {
		doc := `{"boundary":"` + b + `","reason":"r","by":"a"}`
		return doc + strings.Repeat(" ", size-len(doc))
	}
	if w := admin(e.p, http.MethodPost, "/v1/revocations", body(maxRevocationBody, "a")); w.Code != http.StatusCreated {
		t.Errorf("body of exactly %d bytes: %d %s", maxRevocationBody, w.Code, w.Body)
	}
	if w := admin(e.p, http.MethodPost, "/v1/revocations", body(maxRevocationBody+1, "b")); w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("body of %d bytes: %d %s", maxRevocationBody+1, w.Code, w.Body)
	}
	if n := len(e.p.Revocations().List()); n != 1 {
		t.Errorf("%d revocations in force, want 1", n)
	}
}

// TestRevokedSignerInLateDependencyVerdict: a dataset's allow counting a
// key revoked since, cached late (by a verification that began before the
// revocation), is not used for a model's lineage: the dataset is decided
// again without the key, and another key that signed it still counts.
func TestRevokedSignerInLateDependencyVerdict(t *testing.T) {
	t.Parallel()
	e := newLineageEnv(t, lineageSetup{})
	backup := newKey(t)
	pol := lineagePolicy(e.release, e.data)
	for i := range pol.Boundaries {
		if pol.Boundaries[i].Name == "datasets" {
			pol.Boundaries[i].Authorities = append(pol.Boundaries[i].Authorities, keyAuthority("backup", backup))
		}
	}
	e.spy.swap(t, pol)
	data := e.dataset("ml/data", true)
	e.datasets.sign(t, "ml/data", data.digest, backup)
	m := e.model("ml/model", input("dataset-train", datasetsHost, "ml/data", data.digest))
	if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
		t.Fatalf("pull: %d %s", w.Code, w.Body)
	}
	var key string
	var late verify.Verdict
	e.verdicts.mu.Lock()
	for k, v := range e.verdicts.m {
		if v.Digest == data.digest.String() {
			key, late = k, v
		}
	}
	e.verdicts.mu.Unlock()
	if key == "" || !late.Allowed || len(late.Signers) == 0 || late.Signers[0].KeyID == "" {
		t.Fatalf("dataset verdict %q: %+v", key, late)
	}
	r := Revocation{Key: late.Signers[0].KeyID, Reason: "leaked", By: "sec"}
	if err := r.Normalize(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Revocations().Add(r); err != nil {
		t.Fatal(err)
	}
	e.verdicts.Add(key, late)
	before := e.spy.callsFor(data.digest)
	if w := e.pull("models", "ml/model", m.digest); w.Code != http.StatusOK {
		t.Fatalf("pull with the dataset's other key still valid: %d %s", w.Code, w.Body)
	}
	if e.spy.callsFor(data.digest) == before {
		t.Fatal("the late verdict counting a revoked key was used, not decided again")
	}
}

// TestRevocationPersistFailure: a revocation that cannot be saved is in
// force anyway (500, saying so), and one whose lifting cannot be saved
// stays in force (500); when saving works again both go through.
func TestRevocationPersistFailure(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	var saved atomic.Int32
	revs := NewRevocations(0, func(rs []Revocation) error {
		if failing.Load() {
			return errors.New("disk full")
		}
		saved.Store(int32(len(rs)))
		return nil
	})
	e := newRevokeEnv(t, verify.ModeEnforce, false, WithRevocations(revs))
	failing.Store(true)
	body := `{"digest":"` + e.img.digest.String() + `","reason":"r","by":"a"}`
	if w := admin(e.p, http.MethodPost, "/v1/revocations", body); w.Code != http.StatusInternalServerError ||
		!strings.Contains(w.Body.String(), "in force but not persisted") {
		t.Fatalf("POST with saving failing: %d %s", w.Code, w.Body)
	}
	if w := e.pull(t); w.Code != http.StatusForbidden {
		t.Fatalf("pull of a revoked digest whose revocation was not saved: %d", w.Code)
	}
	id := url.QueryEscape("digest:" + e.img.digest.String())
	if w := admin(e.p, http.MethodDelete, "/v1/revocations?id="+id, ""); w.Code != http.StatusInternalServerError ||
		!strings.Contains(w.Body.String(), "not lifted") {
		t.Fatalf("DELETE with saving failing: %d %s", w.Code, w.Body)
	}
	if w := e.pull(t); w.Code != http.StatusForbidden {
		t.Fatalf("pull after a lifting that could not be saved: %d", w.Code)
	}
	failing.Store(false)
	if w := admin(e.p, http.MethodDelete, "/v1/revocations?id="+id, ""); w.Code != http.StatusNoContent || saved.Load() != 0 {
		t.Fatalf("DELETE with saving working: %d %s (saved %d entries)", w.Code, w.Body, saved.Load())
	}
	if w := e.pull(t); w.Code != http.StatusOK {
		t.Fatalf("pull after the lifting: %d", w.Code)
	}
	if w := admin(e.p, http.MethodPost, "/v1/revocations", body); w.Code != http.StatusCreated || saved.Load() != 1 {
		t.Fatalf("POST with saving working: %d %s (saved %d entries)", w.Code, w.Body, saved.Load())
	}
}
