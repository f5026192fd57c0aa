package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
)

func TestAdmin(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	reg.pushImage(t, "acme/app", "v1")
	reg.pushImage(t, "acme/app", "v2")
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	admin := p.AdminHandler()

	if w := do(admin, http.MethodGet, "/healthz"); w.Code != http.StatusOK {
		t.Errorf("/healthz = %d", w.Code)
	}
	if w := do(admin, http.MethodGet, "/readyz"); w.Code != http.StatusOK {
		t.Errorf("/readyz = %d", w.Code)
	}
	p.SetDraining(true)
	if w := do(admin, http.MethodGet, "/readyz"); w.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining = %d", w.Code)
	}
	if w := do(admin, http.MethodGet, "/healthz"); w.Code != http.StatusOK {
		t.Errorf("/healthz while draining = %d", w.Code)
	}
	p.SetDraining(false)
	if w := do(admin, http.MethodGet, "/readyz"); w.Code != http.StatusOK {
		t.Errorf("/readyz after draining = %d", w.Code)
	}

	for _, tag := range []string{"v1", "v2"} {
		if w := do(p, http.MethodGet, "/v2/acme/app/manifests/"+tag+"?ns=docker.io"); w.Code != http.StatusOK {
			t.Fatalf("GET %s = %d", tag, w.Code)
		}
	}
	// A blob the upstream does not have: 404, with blob gating on too.
	do(p, http.MethodGet, "/v2/acme/app/blobs/sha256:"+strings.Repeat("c", 64)+"?ns=docker.io")

	w := do(admin, http.MethodGet, "/v1/decisions")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("/v1/decisions = %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	var got struct {
		Decisions []Decision `json:"decisions"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Decisions) != 2 || got.Decisions[0].Reference != "v2" || got.Decisions[1].Reference != "v1" {
		t.Fatalf("decisions = %+v, want v2 then v1", got.Decisions)
	}
	if d := got.Decisions[0]; d.Decision != "allow" || d.Upstream != "docker.io" || d.Repository != "acme/app" ||
		!strings.HasPrefix(d.Digest, "sha256:") || d.Boundary != "prod" || len(d.Signers) != 1 {
		t.Errorf("decision = %+v", d)
	}

	w = do(admin, http.MethodGet, "/metrics")
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics = %d", w.Code)
	}
	body, _ := io.ReadAll(w.Body)
	for _, want := range []string{
		`portcullis_requests_total{code="200",method="GET",route="manifests"} 2`,
		`portcullis_requests_total{code="404",method="GET",route="blobs"} 1`,
		`portcullis_decisions_total{boundary="prod",decision="allow",mode="enforce",source="verified"} 2`,
		`portcullis_verifications_total 2`,
		`portcullis_request_duration_seconds_bucket`,
		`portcullis_verdict_cache_total{result="hit"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestDecisionRingIsBounded(t *testing.T) {
	t.Parallel()
	var r decisionRing
	for i := range decisionRingSize + 44 {
		r.add(Decision{Reference: string(rune('a' + i%26)), Digest: string(rune(i))})
	}
	l := r.list()
	if len(l) != decisionRingSize {
		t.Fatalf("len = %d", len(l))
	}
	if l[0].Digest != string(rune(decisionRingSize+43)) || l[len(l)-1].Digest != string(rune(44)) {
		t.Errorf("ring order: first %q last %q", l[0].Digest, l[len(l)-1].Digest)
	}
}

func TestRegisterer(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	ups := []Upstream{{Name: "docker.io", URL: "https://registry-1.docker.io"}}
	if _, err := New(ups, allowAll(), WithRegisterer(reg)); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) == 0 {
		t.Fatalf("nothing registered: %v", err)
	}
	// A second proxy on the same registry would report into the same
	// series; that is refused rather than silently merged.
	if _, err := New(ups, denyAll(verify.ModeEnforce), WithRegisterer(reg)); err == nil {
		t.Error("second registration on one registry accepted")
	}
}
