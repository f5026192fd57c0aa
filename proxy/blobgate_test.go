package proxy

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// acmeBoundary covers acme/** at every upstream, signed by k.
func acmeBoundary(name string, mode verify.Mode, k *fixtures.KeySigner, artifactTypes ...string) verify.Boundary {
	return verify.Boundary{
		Name: name, Repositories: []string{"acme/**"}, ArtifactTypes: artifactTypes, Mode: mode,
		Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)},
	}
}

func blindReason(repo string, d v1.Hash) string {
	return "blob " + d.String() + " is not referenced by any verified manifest in docker.io/" + repo
}

func gatingCount(t *testing.T, p *Proxy, boundary, decision string, mode verify.Mode) float64 {
	t.Helper()
	return counterValue(t, p, "portcullis_decisions_total", map[string]string{
		"boundary": boundary, "decision": decision, "mode": string(mode), "source": "blob-gating",
	})
}

func blobDecisions(p *Proxy) []Decision {
	var out []Decision
	for _, d := range p.decisions.list() {
		if d.Kind == KindBlob {
			out = append(out, d)
		}
	}
	return out
}

func TestBlobGatingDenialIsADecision(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	signed := reg.pushImage(t, "acme/app", "v1")
	reg.sign(t, "acme/app", signed.digest, k)
	blind := reg.pushImage(t, "acme/app", "v2") // never pulled through the proxy
	core, logs := observer.New(zapcore.InfoLevel)
	eng := newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}})
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithLogger(zap.New(core)))

	if w := do(p, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("signed manifest = %d", w.Code)
	}
	for _, b := range append(signed.layers, signed.config) {
		if w := do(p, http.MethodGet, blobPath("acme/app", b)); w.Code != http.StatusOK {
			t.Fatalf("blob of an allowed manifest = %d", w.Code)
		}
	}
	if got := blobDecisions(p); len(got) != 0 {
		t.Fatalf("blobs of an allowed manifest recorded as decisions: %+v", got)
	}

	w := do(p, http.MethodGet, blobPath("acme/app", blind.layers[0]))
	if w.Code != http.StatusForbidden {
		t.Fatalf("blind blob = %d, want 403", w.Code)
	}
	reason := blindReason("acme/app", blind.layers[0])
	if _, detail := deniedBody(t, w); !slices.Equal(detailReasons(detail), []string{reason}) || detail["boundary"] != "images" {
		t.Errorf("error detail = %v, want reasons [%s] in boundary images", detail, reason)
	}
	d := lastDecision(t, p, blind.layers[0])
	want := Decision{
		Time: d.Time, Kind: KindBlob, Client: d.Client, Upstream: "docker.io", Repository: "acme/app",
		Reference: blind.layers[0].String(), Digest: blind.layers[0].String(), Boundary: "images",
		Decision: "deny", Mode: verify.ModeEnforce, Reasons: []string{reason},
	}
	if d.Client == "" || d.Time.IsZero() || !decisionEqual(d, want) {
		t.Errorf("decision = %+v\nwant %+v", d, want)
	}
	if got := gatingCount(t, p, "images", "deny", verify.ModeEnforce); got != 1 {
		t.Errorf("blob-gating denials counted = %v, want 1", got)
	}
	audit := logs.FilterLoggerName("audit").FilterMessage("decision").All()
	a := audit[len(audit)-1]
	if a.Level != zapcore.WarnLevel {
		t.Errorf("audit level = %s, want warn", a.Level)
	}
	for k, v := range map[string]any{"kind": KindBlob, "decision": "deny", "boundary": "images", "digest": blind.layers[0].String()} {
		if a.ContextMap()[k] != v {
			t.Errorf("audit %s = %v, want %v", k, a.ContextMap()[k], v)
		}
	}

	// Every denied request is an event, as every manifest request is.
	if w := do(p, http.MethodHead, blobPath("acme/app", blind.layers[0])); w.Code != http.StatusForbidden {
		t.Fatalf("blind HEAD = %d, want 403", w.Code)
	}
	if got := gatingCount(t, p, "images", "deny", verify.ModeEnforce); got != 2 {
		t.Errorf("blob-gating denials counted = %v after a second request, want 2", got)
	}

	// /v1/decisions tells blob decisions from manifest ones.
	aw := do(p.AdminHandler(), http.MethodGet, "/v1/decisions")
	var body struct{ Decisions []map[string]any }
	if err := json.Unmarshal(aw.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, e := range body.Decisions {
		kinds[e["digest"].(string)] = e["kind"].(string)
	}
	if kinds[blind.layers[0].String()] != KindBlob || kinds[signed.digest.String()] != KindManifest {
		t.Errorf("/v1/decisions kinds = %v", kinds)
	}

	// A blob the upstream does not have is not a decision.
	n := len(p.decisions.list())
	missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	if w := do(p, http.MethodGet, blobPath("acme/app", missing)); w.Code != http.StatusNotFound {
		t.Fatalf("missing blob = %d, want 404", w.Code)
	}
	if got := len(p.decisions.list()); got != n {
		t.Errorf("a missing blob was recorded as a decision: %+v", p.decisions.list()[0])
	}
	if got := gatingCount(t, p, "images", "deny", verify.ModeEnforce); got != 2 {
		t.Errorf("a missing blob was counted as a denial: %v", got)
	}
}

// decisionEqual compares the fields a blob decision sets.
func decisionEqual(a, b Decision) bool {
	return a.Kind == b.Kind && a.Client == b.Client && a.Upstream == b.Upstream && a.Repository == b.Repository &&
		a.Reference == b.Reference && a.Digest == b.Digest && a.Boundary == b.Boundary && a.Decision == b.Decision &&
		a.Mode == b.Mode && slices.Equal(a.Reasons, b.Reasons) && !a.Cached && a.CoveredBy == "" && !a.Drift
}

func TestBlobGatingWarnServesAndRecords(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	unsigned := reg.pushImage(t, "acme/app", "v1")
	blind := reg.pushImage(t, "acme/app", "v2")
	eng := newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("rollout", verify.ModeWarn, k)}})
	p, _ := newTestProxy(t, reg.srv.URL, eng)

	// A warn-served manifest opens its blobs; they are not decisions.
	if w := do(p, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("unsigned manifest in warn = %d", w.Code)
	}
	if w := do(p, http.MethodGet, blobPath("acme/app", unsigned.layers[0])); w.Code != http.StatusOK {
		t.Fatalf("blob of a warn-served manifest = %d", w.Code)
	}
	if got := blobDecisions(p); len(got) != 0 {
		t.Fatalf("blob of a served manifest recorded: %+v", got)
	}

	w := do(p, http.MethodGet, blobPath("acme/app", blind.layers[0]))
	if w.Code != http.StatusOK || w.Body.Len() == 0 || !digestMatches(blind.layers[0], w.Body.Bytes()) {
		t.Fatalf("blind blob in warn = %d, %d bytes matching its digest: %v", w.Code, w.Body.Len(), digestMatches(blind.layers[0], w.Body.Bytes()))
	}
	d := lastDecision(t, p, blind.layers[0])
	if d.Kind != KindBlob || d.Decision != "warn" || d.Mode != verify.ModeWarn || d.Boundary != "rollout" ||
		!slices.Equal(d.Reasons, []string{blindReason("acme/app", blind.layers[0])}) {
		t.Errorf("decision = %+v", d)
	}
	if got := gatingCount(t, p, "rollout", "warn", verify.ModeWarn); got != 1 {
		t.Errorf("blob-gating would-be denials counted = %v, want 1", got)
	}
	if w := do(p, http.MethodHead, blobPath("acme/app", blind.layers[0])); w.Code != http.StatusOK || w.Header().Get("Content-Length") == "" {
		t.Errorf("blind HEAD in warn = %d, Content-Length %q", w.Code, w.Header().Get("Content-Length"))
	}
	if got := gatingCount(t, p, "rollout", "warn", verify.ModeWarn); got != 2 {
		t.Errorf("blob-gating would-be denials counted = %v after HEAD, want 2", got)
	}

	n := len(blobDecisions(p))
	missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	if w := do(p, http.MethodGet, blobPath("acme/app", missing)); w.Code != http.StatusNotFound {
		t.Fatalf("missing blob in warn = %d, want 404", w.Code)
	}
	if got := len(blobDecisions(p)); got != n {
		t.Errorf("a missing blob in warn was recorded: %+v", blobDecisions(p)[0])
	}
}

// TestBlobGatingMode pins which boundaries let a blind blob through: only
// warn boundaries that leave no manifest of the repository to an enforce
// boundary or to unmatched.
func TestBlobGatingMode(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	blind := reg.pushImage(t, "acme/app", "v1")
	model := fixtures.MediaTypeModelManifest
	other := verify.Boundary{Name: "other", Repositories: []string{"other/**"}, Mode: verify.ModeWarn,
		Threshold: 1, Authorities: []verify.Authority{keyAuthority("release", k)}}
	elsewhere := acmeBoundary("elsewhere", verify.ModeWarn, k)
	elsewhere.Upstream = "ghcr.io"

	for _, tc := range []struct {
		name       string
		boundaries []verify.Boundary
		allowAny   bool // unmatched: insecure-allow
		want       int
		decision   string
		boundary   string
	}{
		{"enforce", []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}, false, http.StatusForbidden, "deny", "images"},
		{"warn", []verify.Boundary{acmeBoundary("rollout", verify.ModeWarn, k)}, false, http.StatusOK, "warn", "rollout"},
		{"warn models, enforce images", []verify.Boundary{
			acmeBoundary("models", verify.ModeWarn, k, model), acmeBoundary("images", verify.ModeEnforce, k),
		}, false, http.StatusForbidden, "deny", "images"},
		{"enforce models, warn images", []verify.Boundary{
			acmeBoundary("models", verify.ModeEnforce, k, model), acmeBoundary("images", verify.ModeWarn, k),
		}, false, http.StatusForbidden, "deny", "models"},
		{"warn models, rest unmatched", []verify.Boundary{
			acmeBoundary("models", verify.ModeWarn, k, model), other,
		}, false, http.StatusForbidden, "deny", ""},
		{"warn models, rest insecure-allow", []verify.Boundary{
			acmeBoundary("models", verify.ModeWarn, k, model), other,
		}, true, http.StatusForbidden, "deny", ""},
		{"unmatched", []verify.Boundary{other}, false, http.StatusForbidden, "deny", ""},
		{"unmatched insecure-allow", []verify.Boundary{other}, true, http.StatusForbidden, "deny", ""},
		{"warn on another upstream", []verify.Boundary{elsewhere, acmeBoundary("images", verify.ModeEnforce, k)}, false, http.StatusForbidden, "deny", "images"},
		{"warn models, then warn images", []verify.Boundary{
			acmeBoundary("models", verify.ModeWarn, k, model), acmeBoundary("images", verify.ModeWarn, k),
			acmeBoundary("never", verify.ModeEnforce, k),
		}, false, http.StatusOK, "warn", "models"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			eng := newEngineSpy(t, verify.Policy{Boundaries: tc.boundaries, InsecureAllowUnmatched: tc.allowAny})
			p, _ := newTestProxy(t, reg.srv.URL, eng)
			w := do(p, http.MethodGet, blobPath("acme/app", blind.layers[0]))
			if w.Code != tc.want {
				t.Fatalf("blind blob = %d, want %d", w.Code, tc.want)
			}
			if tc.want == http.StatusOK && !digestMatches(blind.layers[0], w.Body.Bytes()) {
				t.Error("served bytes do not match the digest")
			}
			d := lastDecision(t, p, blind.layers[0])
			mode := verify.ModeEnforce
			if tc.decision == "warn" {
				mode = verify.ModeWarn
			}
			if d.Kind != KindBlob || d.Decision != tc.decision || d.Boundary != tc.boundary || d.Mode != mode {
				t.Errorf("decision = %s %s boundary %q mode %s, want blob %s boundary %q mode %s",
					d.Kind, d.Decision, d.Boundary, d.Mode, tc.decision, tc.boundary, mode)
			}
			if got := gatingCount(t, p, tc.boundary, tc.decision, mode); got != 1 {
				t.Errorf("counted %v, want 1", got)
			}
		})
	}
}

func TestBlobGatingOffRecordsNothing(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	blind := reg.pushImage(t, "acme/app", "v1")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithBlobGating(false))
	if w := do(p, http.MethodGet, blobPath("acme/app", blind.layers[0])); w.Code != http.StatusOK {
		t.Fatalf("blob with gating off = %d", w.Code)
	}
	if got := p.decisions.list(); len(got) != 0 {
		t.Errorf("a blob served with gating off was recorded: %+v", got)
	}
}

// A warm pull does not add its manifest's blobs again while they are all
// still open; once any entry is gone (evicted, removed, expired) the next
// pull opens them again, so a served manifest's blobs are never denied.
func TestWarmPullReopensBlobsItLost(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	k := newKey(t)
	img := reg.pushImage(t, "acme/app", "v1")
	reg.sign(t, "acme/app", img.digest, k)
	eng := newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{acmeBoundary("images", verify.ModeEnforce, k)}})
	p, _ := newTestProxy(t, reg.srv.URL, eng)
	now := time.Now()
	var mu sync.Mutex
	p.blobs.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	get := func(step string) {
		t.Helper()
		if w := do(p, http.MethodGet, manifestPath("acme/app", img.digest.String())); w.Code != http.StatusOK {
			t.Fatalf("%s: manifest = %d", step, w.Code)
		}
		if w := do(p, http.MethodGet, blobPath("acme/app", img.layers[0])); w.Code != http.StatusOK {
			t.Fatalf("%s: layer = %d: %s", step, w.Code, w.Body)
		}
	}
	get("first pull")
	added := p.blobs.c.Len()
	get("warm pull")

	// Another manifest's blob evicted: this one's entries are still there,
	// but the count moved, so they are added again anyway.
	p.blobs.c.Remove(blobKey("docker.io", "acme/app", img.layers[0]))
	if w := do(p, http.MethodGet, blobPath("acme/app", img.layers[0])); w.Code != http.StatusForbidden {
		t.Fatalf("removed layer = %d, want 403", w.Code)
	}
	get("after a removal")
	if p.blobs.c.Len() != added {
		t.Fatalf("%d blob entries, want %d", p.blobs.c.Len(), added)
	}

	// Once the memo of the last add has lapsed, a pull adds them again,
	// so an entry opened by any pull has most of its TTL left.
	mu.Lock()
	now = now.Add(blobAllowTTL/10 + time.Second)
	mu.Unlock()
	get("after the memo lapsed")
	if e, ok := p.blobs.c.Peek(blobKey("docker.io", "acme/app", img.layers[0])); !ok || e.expires.Sub(now) != blobAllowTTL {
		t.Fatalf("after a pull past the memo, the layer's entry expires in %v, want %v", e.expires.Sub(now), blobAllowTTL)
	}

	// Past the blobs' TTL every entry has expired; the next pull opens them.
	mu.Lock()
	now = now.Add(blobAllowTTL + time.Second)
	mu.Unlock()
	if w := do(p, http.MethodGet, blobPath("acme/app", img.layers[0])); w.Code != http.StatusForbidden {
		t.Fatalf("expired layer = %d, want 403", w.Code)
	}
	get("after expiry")
}
