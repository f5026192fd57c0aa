package proxy

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const decisionRingSize = 256

// Kinds of Decision.
const (
	KindManifest = "manifest"
	// KindBlob is a blob no allowed manifest references: denied, or
	// served in a warn boundary. Blobs served through an allowed
	// manifest are not decisions.
	KindBlob = "blob"
)

// Decision is one manifest or blob decision as reported by /v1/decisions
// and the audit log.
type Decision struct {
	Time       time.Time       `json:"time"`
	Kind       string          `json:"kind"` // KindManifest or KindBlob
	Client     string          `json:"client"`
	Principal  string          `json:"principal,omitempty"` // see Principal.String
	Upstream   string          `json:"upstream"`
	Repository string          `json:"repository"`
	Reference  string          `json:"reference"`
	Digest     string          `json:"digest"`
	Boundary   string          `json:"boundary"`
	Decision   string          `json:"decision"` // allow, deny or warn
	Mode       verify.Mode     `json:"mode"`
	Signers    []verify.Signer `json:"signers,omitempty"`
	Reasons    []string        `json:"reasons,omitempty"`
	Cached     bool            `json:"cached"`
	CoveredBy  string          `json:"covered_by,omitempty"`
	// EvidenceOf is the digest a served signature, attestation or SBOM is
	// evidence of; its decision is that digest's.
	EvidenceOf string `json:"evidence_of,omitempty"`
	// FailClosed: nothing could be decided (evidence unreachable, timeout,
	// bytes not matching their digest); the request was refused.
	FailClosed bool `json:"fail_closed,omitempty"`
	Drift      bool `json:"drift,omitempty"`
}

// decisionRing keeps the most recent decisions for the admin API.
type decisionRing struct {
	mu   sync.Mutex
	buf  [decisionRingSize]Decision
	next int
	n    int
}

func (r *decisionRing) add(d Decision) {
	r.mu.Lock()
	r.buf[r.next] = d
	r.next = (r.next + 1) % len(r.buf)
	if r.n < len(r.buf) {
		r.n++
	}
	r.mu.Unlock()
}

// list returns the decisions newest first.
func (r *decisionRing) list() []Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Decision, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
	}
	return out
}

// AdminHandler serves the operational endpoints: /healthz (alive), /readyz
// (503 while draining), /metrics, /v1/decisions and
// /v1/decisions/<digest>/summary (see WithSummaries), /v1/revocations
// (see Revocations) and /v1/verdicts/ (see VerdictAnswer). It is meant for
// a separate, non-public listener.
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p.draining.Load() {
			writeText(w, http.StatusServiceUnavailable, "draining\n")
			return
		}
		writeText(w, http.StatusOK, "ready"+p.boundariesNote()+p.readinessNote()+"\n")
	})
	if p.gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(p.gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/decisions/{digest}/summary", p.serveSummaryAdmin)
	mux.HandleFunc("GET /v1/boundaries", p.serveBoundaries)
	p.revocationRoutes(mux)
	mux.HandleFunc("GET /v1/decisions", func(w http.ResponseWriter, _ *http.Request) {
		body, err := json.Marshal(struct {
			Decisions []Decision `json:"decisions"`
		}{p.decisions.list()})
		if err != nil {
			http.Error(w, genericInternalError, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	// Everything but the probes needs an admin token when tokens are set.
	return p.adminAuth(p.verdictRoutes(mux))
}

// SetDraining makes /readyz fail so load balancers stop sending new
// requests before shutdown; requests are still served.
func (p *Proxy) SetDraining(d bool) { p.draining.Store(d) }

func writeText(w http.ResponseWriter, status int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(s))
}
