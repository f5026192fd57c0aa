package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus"
)

// maxCountedBoundaries bounds the boundary names decisions are counted
// under; names come from the policy, which reloads may change over time.
const maxCountedBoundaries = 4096

// BoundaryLister is implemented by a Verifier that can describe its
// boundaries (verify.Engine does); /v1/boundaries lists them.
type BoundaryLister interface {
	Boundaries() []verify.BoundaryInfo
}

// boundaryCounts counts decisions per boundary since start. The zero value
// is ready to use.
type boundaryCounts struct {
	m sync.Map // boundary name -> *decisionCounts
	n atomic.Int64
}

type decisionCounts struct{ allow, deny, warn atomic.Int64 }

// DecisionCounts are the decisions made under one boundary since start.
type DecisionCounts struct {
	Allow int64 `json:"allow"`
	Deny  int64 `json:"deny"`
	Warn  int64 `json:"warn"`
}

func (b *boundaryCounts) add(boundary, decision string) {
	c, ok := b.m.Load(boundary)
	if !ok {
		if b.n.Load() >= maxCountedBoundaries {
			return
		}
		var loaded bool
		if c, loaded = b.m.LoadOrStore(boundary, &decisionCounts{}); !loaded {
			b.n.Add(1)
		}
	}
	dc := c.(*decisionCounts)
	switch decision {
	case "allow":
		dc.allow.Add(1)
	case "warn":
		dc.warn.Add(1)
	default:
		dc.deny.Add(1)
	}
}

func (b *boundaryCounts) get(boundary string) DecisionCounts {
	c, ok := b.m.Load(boundary)
	if !ok {
		return DecisionCounts{}
	}
	dc := c.(*decisionCounts)
	return DecisionCounts{Allow: dc.allow.Load(), Deny: dc.deny.Load(), Warn: dc.warn.Load()}
}

// BoundaryStatus is one boundary as /v1/boundaries shows it.
type BoundaryStatus struct {
	verify.BoundaryInfo
	Decisions DecisionCounts `json:"decisions"`
}

// BoundariesReport is the body of /v1/boundaries.
type BoundariesReport struct {
	// Fingerprint identifies the whole policy in effect.
	Fingerprint string           `json:"fingerprint"`
	Boundaries  []BoundaryStatus `json:"boundaries"`
	// Refused counts the boundaries standing in for files that could not
	// be loaded, StaleCount those kept at their last good version.
	Refused int `json:"refused"`
	Stale   int `json:"stale"`
	// Unmatched counts decisions on subjects no boundary matched.
	Unmatched DecisionCounts `json:"unmatched"`
}

// Boundaries reports the boundaries of the policy in effect with their
// decision counts since start.
func (p *Proxy) Boundaries() BoundariesReport {
	v := p.currentVerifier()
	rep := BoundariesReport{Fingerprint: v.Fingerprint(), Boundaries: []BoundaryStatus{}, Unmatched: p.boundaryCounts.get("")}
	bl, ok := v.(BoundaryLister)
	if !ok {
		return rep
	}
	for _, b := range bl.Boundaries() {
		switch {
		case b.Refused != "":
			rep.Refused++
		case len(b.Problems) > 0:
			rep.Stale++
		}
		rep.Boundaries = append(rep.Boundaries, BoundaryStatus{BoundaryInfo: b, Decisions: p.boundaryCounts.get(b.Name)})
	}
	return rep
}

func (p *Proxy) serveBoundaries(w http.ResponseWriter, _ *http.Request) {
	body, err := json.Marshal(p.Boundaries())
	if err != nil {
		http.Error(w, genericInternalError, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// registerBoundaryMetrics exports how many boundaries of the policy in
// effect stand in for a file that could not be loaded, or were kept at
// their last good version because a newer one could not.
func (p *Proxy) registerBoundaryMetrics(reg prometheus.Registerer) error {
	refused := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "portcullis_boundaries_refused",
		Help: "Boundary files that could not be loaded: each is replaced by a boundary denying what it matches (see /v1/boundaries).",
	}, func() float64 { return float64(p.Boundaries().Refused) })
	stale := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "portcullis_boundaries_stale",
		Help: "Boundary files whose new version could not be loaded, so the last good version keeps deciding (see /v1/boundaries).",
	}, func() float64 { return float64(p.Boundaries().Stale) })
	for _, c := range []prometheus.Collector{refused, stale} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// boundariesNote tells /readyz that boundary files are refused or stale:
// the proxy is ready (the rest serve), but not as configured.
func (p *Proxy) boundariesNote() string {
	rep := p.Boundaries()
	if rep.Refused == 0 && rep.Stale == 0 {
		return ""
	}
	return fmt.Sprintf(" (boundary files: %d refused, denying what they match; %d stale, last good version kept; see /v1/boundaries)", rep.Refused, rep.Stale)
}
