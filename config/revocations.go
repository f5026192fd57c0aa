package config

// Revocation and refresh-ahead defaults.
const (
	DefaultRevocationEntries  = 10_000
	DefaultRefreshConcurrency = 4
	DefaultRefreshEntries     = 10_000
)

// Revocations configures the revocation list: digests, keys, keyless
// identities and whole boundaries denied whatever the policy says.
type Revocations struct {
	// File is a JSON revocation list, watched: a change is in force
	// within a second. It must exist at start. Default: none.
	File string `yaml:"file"`
	// StateFile keeps the revocations made through the admin API across
	// restarts. Default: none, they live in memory only.
	StateFile string `yaml:"state_file"`
	// MaxEntries bounds the entries of each source (file, API), and so
	// the size of the file read (2 KiB per entry). Default 10000.
	MaxEntries int `yaml:"max_entries"`
}

// RefreshAhead configures the background re-verification of pulled
// digests before their allow verdict expires.
type RefreshAhead struct {
	// Disabled turns refresh-ahead off. Default: on.
	Disabled bool `yaml:"disabled"`
	// Concurrency bounds the re-verifications running at once; each also
	// needs a free verification slot. Default 4.
	Concurrency int `yaml:"concurrency"`
	// Entries bounds the digests tracked. Default 10000.
	Entries int `yaml:"entries"`
}

func (c *Config) applyRevocationDefaults() {
	if c.Revocations.MaxEntries == 0 {
		c.Revocations.MaxEntries = DefaultRevocationEntries
	}
	if c.RefreshAhead.Concurrency == 0 {
		c.RefreshAhead.Concurrency = DefaultRefreshConcurrency
	}
	if c.RefreshAhead.Entries == 0 {
		c.RefreshAhead.Entries = DefaultRefreshEntries
	}
}

func (c *Config) validateRevocations(r *reporter) {
	rv := c.Revocations
	if rv.MaxEntries < 0 {
		r.addf("revocations.max_entries", "must be positive")
	}
	if rv.File != "" && rv.StateFile != "" && c.Resolve(rv.File) == c.Resolve(rv.StateFile) {
		r.addf("revocations.state_file", "must not be the watched file %q: the proxy writes it", rv.File)
	}
	if c.RefreshAhead.Concurrency < 0 {
		r.addf("refresh_ahead.concurrency", "must be positive")
	}
	if c.RefreshAhead.Entries < 0 {
		r.addf("refresh_ahead.entries", "must be positive")
	}
}
