package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
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
