package tufroot

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Registry holds the sources of a process, one per trust entry. A reload
// that keeps an entry's settings keeps its source, with the root it has
// and its refresh schedule.
type Registry struct {
	clock func() time.Time
	m     *metrics

	opening sync.Mutex
	mu      sync.Mutex
	sources map[string]*Source // by trust name
}

// NewRegistry returns an empty registry; clock nil means time.Now.
func NewRegistry(clock func() time.Time) *Registry {
	if clock == nil {
		clock = time.Now
	}
	r := &Registry{clock: clock, sources: map[string]*Source{}}
	r.m = newMetrics(r)
	return r
}

// Open returns the source for spec, loading it (from the cache, else the
// repository) when the trust entry is new or its settings changed. It
// never fails: a root that cannot be had is a source whose Material
// trusts nothing and says why.
func (r *Registry) Open(spec Spec) *Source {
	r.opening.Lock() // one load at a time; scrapes do not wait for it
	defer r.opening.Unlock()
	spec = spec.withDefaults()
	if s := r.Lookup(spec.Trust); s != nil && s.spec.same(spec) && (spec.Fetcher == nil || spec.Fetcher == s.spec.Fetcher) {
		return s
	}
	s := newSource(spec, r.clock, r.m)
	s.start()
	r.mu.Lock()
	r.sources[spec.Trust] = s
	r.mu.Unlock()
	return s
}

// Lookup is the source last opened for a trust entry.
func (r *Registry) Lookup(trust string) *Source {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sources[trust]
}

func (r *Registry) all() []*Source {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Source, 0, len(r.sources))
	for _, s := range r.sources {
		out = append(out, s)
	}
	return out
}

// Seed creates the refresh series of a trust entry at zero, so that the
// first failure is seen by increase().
func (r *Registry) Seed(trust string) {
	for _, res := range []string{resultUpdated, resultUnchanged, resultFailed} {
		r.m.refreshes.WithLabelValues(trust, res)
	}
}

// Collectors are the registry's metrics, for the proxy's registry.
func (r *Registry) Collectors() []prometheus.Collector {
	return []prometheus.Collector{r.m.refreshes, r.m}
}

const (
	resultUpdated   = "updated"
	resultUnchanged = "unchanged"
	resultFailed    = "failed"
)

// metrics counts refreshes and reports, at each scrape, each source's
// expiry and whether its root is usable now.
type metrics struct {
	reg       *Registry
	refreshes *prometheus.CounterVec
	expiry    *prometheus.Desc
	usable    *prometheus.Desc
	success   *prometheus.Desc
}

func newMetrics(r *Registry) *metrics {
	return &metrics{
		reg: r,
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "portcullis_trusted_root_refresh_total",
			Help: "Fetches of a TUF-kept trusted root by trust entry and result (updated, unchanged, failed).",
		}, []string{"trust", "result"}),
		expiry: prometheus.NewDesc("portcullis_trusted_root_expiry_timestamp_seconds",
			"When the TUF metadata behind the current trusted root expires (Unix seconds); keyless verifications under the entry fail closed past it.", []string{"trust"}, nil),
		usable: prometheus.NewDesc("portcullis_trusted_root_usable",
			"1 when the trust entry has a trusted root that has not expired, else 0.", []string{"trust"}, nil),
		success: prometheus.NewDesc("portcullis_trusted_root_last_success_timestamp_seconds",
			"When the trusted root was last confirmed by the repository or the cache (Unix seconds).", []string{"trust"}, nil),
	}
}

func (m *metrics) refreshed(trust, result string) {
	if m != nil {
		m.refreshes.WithLabelValues(trust, result).Inc()
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.expiry
	ch <- m.usable
	ch <- m.success
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, s := range m.reg.all() {
		st, _ := s.Current()
		usable := 0.0
		if st != nil {
			ch <- prometheus.MustNewConstMetric(m.expiry, prometheus.GaugeValue, float64(st.Expires.Unix()), s.spec.Trust)
			ch <- prometheus.MustNewConstMetric(m.success, prometheus.GaugeValue, float64(st.Checked.Unix()), s.spec.Trust)
			if s.clock().Before(st.Expires) {
				usable = 1
			}
		}
		ch <- prometheus.MustNewConstMetric(m.usable, prometheus.GaugeValue, usable, s.spec.Trust)
	}
}
