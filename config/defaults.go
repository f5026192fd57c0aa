package config

import "time"

// Defaults for values the file leaves out. A zero value in the file means
// "not set" for every field listed here, except admin (see below).
const (
	DefaultListen          = ":5000"
	DefaultAdmin           = "127.0.0.1:9090" // loopback: metrics and decisions are not public
	DefaultUnmatched       = UnmatchedDeny
	DefaultMode            = ModeEnforce
	DefaultThreshold       = 1
	DefaultCacheVerdicts   = 100_000
	DefaultAllowTTL        = 10 * time.Minute
	DefaultDenyTTL         = 30 * time.Second // short, so a newly signed artifact is served soon after
	DefaultManifestMiB     = 64
	DefaultTagTTL          = time.Duration(0) // tags are re-resolved on every request
	DefaultUpstreamTimeout = 30 * time.Second
	DefaultVerifyTimeout   = 60 * time.Second
	// DefaultUpstreamIdleTimeout drops an upstream that stalls mid-body.
	DefaultUpstreamIdleTimeout = 30 * time.Second
	DefaultMaxConnsPerUpstream = 64
	// Evidence budgets: one pull cannot make the proxy read (and parse)
	// more than this, whatever a repository holds.
	DefaultEvidenceBytes    = 16 << 20
	DefaultSignatureBytes   = 1 << 20
	DefaultAttestationBytes = 4 << 20
	DefaultMaxEvidence      = 64
	DefaultPredicateDepth   = 64
	// DefaultLineageConcurrency is verify.DefaultLineageConcurrency.
	DefaultLineageConcurrency = 4
	// DefaultVerifications is a multiple of GOMAXPROCS, resolved when the
	// proxy starts; the queue defaults to VerifyQueueFactor times it.
	DefaultVerificationsPerCPU = 4
	DefaultVerifyQueueFactor   = 8
	DefaultVerifyQueueWait     = 10 * time.Second
	DefaultClientConnections   = 4096
	DefaultClientIdleTimeout   = 60 * time.Second
	DefaultClientStallGrace    = 5 * time.Second
	DefaultHeaderBytes         = 64 << 10
	DefaultUpstreamHeaderBytes = 64 << 10
	DefaultStreamBufferBytes   = 16 << 20
	DefaultServedEvidenceBytes = 128 << 20
	DefaultLogLevel            = "info"
	DefaultLogFormat           = "json"
	// DefaultTlogThreshold and DefaultTimestampThreshold require one
	// transparency log entry and one signed timestamp for keyless
	// signatures, as cosign does.
	DefaultTlogThreshold      = 1
	DefaultTimestampThreshold = 1
	// DefaultSCTThreshold requires the certificate-transparency proof that
	// public Fulcio embeds in every certificate, as cosign does. It cannot
	// be lowered to 0; insecure_skip_sct: true turns the check off.
	DefaultSCTThreshold = 1
)

// Values of Config.Unmatched and Boundary.Mode.
const (
	UnmatchedDeny          = "deny"
	UnmatchedInsecureAllow = "insecure-allow"
	ModeEnforce            = "enforce"
	ModeWarn               = "warn"
)

// SetDefaults fills every unset field with its default. Parse and Load call
// it; programs that build a Config in code call it before Validate. It sets
// Admin when it is empty, so such programs disable the admin listener by
// clearing Admin afterwards; in a file, an explicit `admin: ""` does that.
func (c *Config) SetDefaults() {
	c.applyDefaults()
}

func (c *Config) applyDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, explicit := c.lines["admin"]; c.Admin == "" && !explicit {
		c.Admin = DefaultAdmin
	}
	if c.Unmatched == "" {
		c.Unmatched = DefaultUnmatched
	}
	if c.UpstreamTimeout == 0 {
		c.UpstreamTimeout = Duration(DefaultUpstreamTimeout)
	}
	if c.VerifyTimeout == 0 {
		c.VerifyTimeout = Duration(DefaultVerifyTimeout)
	}
	if c.UpstreamIdleTimeout == 0 {
		c.UpstreamIdleTimeout = Duration(DefaultUpstreamIdleTimeout)
	}
	if c.MaxConnsPerUpstream == 0 {
		c.MaxConnsPerUpstream = DefaultMaxConnsPerUpstream
	}
	c.Limits.applyDefaults()
	c.Tracing.applyDefaults()
	c.Shared.applyDefaults()
	c.BlobCache.applyDefaults()
	c.BlobShare.applyDefaults()
	for i := range c.Alerts {
		c.Alerts[i].applyDefaults()
	}
	c.applyWatchDefaults()
	c.applyRevocationDefaults()
	c.Clients.applyDefaults()
	if c.Cache.Verdicts == 0 {
		c.Cache.Verdicts = DefaultCacheVerdicts
	}
	if c.Cache.AllowTTL == 0 {
		c.Cache.AllowTTL = Duration(DefaultAllowTTL)
	}
	if c.Cache.DenyTTL == 0 {
		c.Cache.DenyTTL = Duration(DefaultDenyTTL)
	}
	if c.Cache.ManifestMiB == 0 {
		c.Cache.ManifestMiB = DefaultManifestMiB
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	for i := range c.Boundaries {
		c.Boundaries[i].applyDefaults()
	}
}

func (b *Boundary) applyDefaults() {
	if b.Mode == "" {
		b.Mode = DefaultMode
	}
	if b.Signatures.Threshold == 0 {
		b.Signatures.Threshold = DefaultThreshold
	}
	for j := range b.Signatures.Authorities {
		k := b.Signatures.Authorities[j].Keyless
		if k == nil {
			continue
		}
		if k.TlogThreshold == nil {
			v := DefaultTlogThreshold
			k.TlogThreshold = &v
		}
		if k.TimestampThreshold == nil {
			v := DefaultTimestampThreshold
			k.TimestampThreshold = &v
		}
		if k.SCTThreshold == nil {
			v := DefaultSCTThreshold
			k.SCTThreshold = &v
		}
	}
}

func (l *Limits) applyDefaults() {
	setSize := func(v *ByteSize, d int64) {
		if *v == 0 {
			*v = ByteSize(d)
		}
	}
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setSize(&l.EvidenceBytes, DefaultEvidenceBytes)
	setSize(&l.SignatureBytes, DefaultSignatureBytes)
	setSize(&l.AttestationBytes, DefaultAttestationBytes)
	setSize(&l.HeaderBytes, DefaultHeaderBytes)
	setSize(&l.UpstreamHeaderBytes, DefaultUpstreamHeaderBytes)
	setSize(&l.StreamBufferBytes, DefaultStreamBufferBytes)
	setSize(&l.ServedEvidenceBytes, DefaultServedEvidenceBytes)
	setInt(&l.MaxEvidence, DefaultMaxEvidence)
	setInt(&l.LineageConcurrency, DefaultLineageConcurrency)
	setInt(&l.PredicateDepth, DefaultPredicateDepth)
	setInt(&l.ClientConnections, DefaultClientConnections)
	// Verifications and VerifyQueue stay 0 ("per CPU"): the machine the
	// file is checked on need not be the one that serves it.
	if l.VerifyQueueWait == 0 {
		l.VerifyQueueWait = Duration(DefaultVerifyQueueWait)
	}
	if l.ClientIdleTimeout == 0 {
		l.ClientIdleTimeout = Duration(DefaultClientIdleTimeout)
	}
	// 0 is meaningful (no early drops), so only an absent key defaults.
	if l.ClientStallGrace == nil {
		d := Duration(DefaultClientStallGrace)
		l.ClientStallGrace = &d
	}
}

// StallGrace is ClientStallGrace, or its default when unset.
func (l Limits) StallGrace() time.Duration {
	if l.ClientStallGrace == nil {
		return DefaultClientStallGrace
	}
	return l.ClientStallGrace.D()
}

// VerificationSlots resolves Verifications and VerifyQueue for a process
// with gomaxprocs CPUs.
func (l Limits) VerificationSlots(gomaxprocs int) (running, queued int) {
	running, queued = l.Verifications, l.VerifyQueue
	if running == 0 {
		running = DefaultVerificationsPerCPU * max(gomaxprocs, 1)
	}
	if queued == 0 {
		queued = DefaultVerifyQueueFactor * running
	}
	return running, queued
}
