package config

import "time"

// Config is the whole configuration file (DESIGN.md §6). Field names map to
// YAML keys in snake_case; unknown keys are errors.
type Config struct {
	Listen          string     `yaml:"listen"` // default ":5000"
	Admin           string     `yaml:"admin"`  // default "127.0.0.1:9090" when the key is absent; an explicit "" disables
	TLS             *TLS       `yaml:"tls"`
	Clients         *Clients   `yaml:"clients"`    // registry listener auth (clients.go)
	AdminAuth       *AdminAuth `yaml:"admin_auth"` // admin listener auth (clients.go)
	Upstreams       []Upstream `yaml:"upstreams"`
	DefaultUpstream string     `yaml:"default_upstream"`
	Trust           []Trust    `yaml:"trust"`
	Boundaries      []Boundary `yaml:"boundaries"`
	// BoundariesDir is a directory of boundary files, one boundary per
	// *.yaml/*.yml file, relative to this file; they follow the inline
	// boundaries, ordered by their order key (see boundaries_dir.go).
	BoundariesDir string `yaml:"boundaries_dir"`
	// Unmatched is what happens to a repository no boundary matches:
	// "deny" (default). "insecure-allow" is the only other value.
	Unmatched string `yaml:"unmatched"`
	Cache     Cache  `yaml:"cache"`
	// BlobGating serves a blob only when an allowed manifest in the same
	// repository references it. Default true; turning it off is logged.
	InsecureDisableBlobGating bool `yaml:"insecure_disable_blob_gating"`
	// Timeouts for upstream calls and for one verification.
	UpstreamTimeout Duration `yaml:"upstream_timeout"` // default 30s
	VerifyTimeout   Duration `yaml:"verify_timeout"`   // default 60s
	// UpstreamIdleTimeout drops an upstream that sends no byte of a
	// response body for this long (default 30s).
	UpstreamIdleTimeout Duration `yaml:"upstream_idle_timeout"`
	// MaxConnsPerUpstream caps connections to each upstream host
	// (default 64); an upstream's max_conns overrides it.
	MaxConnsPerUpstream int `yaml:"max_conns_per_upstream"`
	// EvidenceTypes are the media type patterns (path.Match syntax) of
	// signatures, attestations and SBOMs served as evidence of an allowed
	// digest. Absent: the built-in list; an empty list serves none.
	EvidenceTypes *[]string `yaml:"evidence_types"`
	Limits        Limits    `yaml:"limits"`
	Log           Log       `yaml:"log"`
	// Summaries, when present, has the proxy sign an SLSA verification
	// summary of every enforce-mode allow.
	Summaries *Summaries `yaml:"summaries"`
	// Tracing, when present, exports OpenTelemetry spans (tracing.go).
	Tracing *Tracing `yaml:"tracing"`
	// Watch lists references re-verified on a schedule whether or not
	// anyone pulls them (watch.go).
	Watch []Watch `yaml:"watch"`
	// Alerts are the receivers of deny, would-deny, fail-closed, drift and
	// other events (alerts.go).
	Alerts []Alert `yaml:"alerts"`
	// Revocations and RefreshAhead: see revocations.go.
	Revocations  Revocations  `yaml:"revocations"`
	RefreshAhead RefreshAhead `yaml:"refresh_ahead"`
	// Shared shares decision state between replicas through Redis
	// (shared.go).
	Shared Shared `yaml:"shared"`
	// BlobCache, when present, keeps verified blobs on disk; BlobShare
	// bounds the memory of fetches shared without it (blobcache.go).
	BlobCache *BlobCache `yaml:"blob_cache"`
	BlobShare BlobShare  `yaml:"blob_share"`

	// Path is the file the config was read from ("" when parsed from bytes);
	// relative paths in the file are resolved against its directory.
	Path string `yaml:"-"`

	// lines maps key paths ("upstreams[1].aliases[0]") to the line they
	// appear on, so that checks made after parsing can point into the file.
	lines map[string]int
}

// TLS serves the registry listener over HTTPS.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Upstream is one registry the proxy pulls from.
type Upstream struct {
	Name     string   `yaml:"name"`
	URL      string   `yaml:"url"`     // scheme://host[:port], no path
	Aliases  []string `yaml:"aliases"` // accepted as ?ns= and as path prefix; Name is always one
	Insecure bool     `yaml:"insecure"`
	CAFile   string   `yaml:"ca_file"`
	Auth     *Auth    `yaml:"auth"`
	Timeout  Duration `yaml:"timeout"` // overrides UpstreamTimeout
	// MaxConns overrides MaxConnsPerUpstream for this upstream.
	MaxConns int `yaml:"max_conns"`
	// RedirectHosts are the storage hosts this upstream may redirect blob
	// requests to even when they resolve to loopback, private or
	// link-local addresses ("host", "host:port" or "*.suffix").
	RedirectHosts []string `yaml:"redirect_hosts"`
}

// Auth is how the proxy authenticates to an upstream. At most one of the
// basic fields, TokenEnv or DockerConfig is used.
type Auth struct {
	Username     string `yaml:"username"`
	UsernameEnv  string `yaml:"username_env"`
	Password     string `yaml:"password"` // discouraged; prefer password_env
	PasswordEnv  string `yaml:"password_env"`
	TokenEnv     string `yaml:"token_env"`     // a registry bearer/identity token
	DockerConfig string `yaml:"docker_config"` // path to a docker config.json
}

// Trust is named trust material: public keys or a sigstore trusted root.
type Trust struct {
	Name string   `yaml:"name"`
	Keys []string `yaml:"keys"`
	// RootSource is trusted_root as written: a file, or {tuf: ...}.
	// Validation copies it into TrustedRoot or TUF.
	RootSource TrustedRootSource `yaml:"trusted_root,omitempty" json:"-"`
	// TrustedRoot is a trusted_root.json file.
	TrustedRoot string `yaml:"-"`
	// TUF keeps the trusted root fresh through a TUF repository.
	TUF *TUF `yaml:"-" json:",omitempty"`
	// Notation is X.509 trust material of Notary Project signatures
	// (notation.go).
	Notation *NotationTrust `yaml:"notation" json:",omitempty"`
}

// Boundary is one trust boundary; the first whose match fits wins.
type Boundary struct {
	Name         string        `yaml:"name"`
	Match        Match         `yaml:"match"`
	Mode         string        `yaml:"mode"` // enforce (default) | warn
	Signatures   Signatures    `yaml:"signatures"`
	Attestations []Attestation `yaml:"attestations"`
	Lineage      *Lineage      `yaml:"lineage"`
	// Owner and Version describe who ships the boundary and which
	// revision is loaded; required in boundary files, optional inline.
	Owner   string `yaml:"owner" json:",omitempty"`
	Version string `yaml:"version" json:",omitempty"`
	// Order places a boundary file among the others (ascending);
	// required in boundary files, refused inline.
	Order *int `yaml:"order" json:",omitempty"`
	// Source is the boundary file it was read from; "" inline.
	Source string `yaml:"-" json:"-"`
	// Refused is set on a boundary standing in for a boundary file that
	// could not be loaded: its problems. Such a boundary denies whatever
	// it matches (its match when that could be read, else everything).
	Refused []Problem `yaml:"-" json:",omitempty"`
	// Stale is set when a boundary file could not be reloaded and its
	// last good version was kept: the new version's problems.
	Stale []Problem `yaml:"-" json:"-"`

	// lines maps a boundary file's key paths to their lines.
	lines map[string]int
}

// Match selects repositories for a boundary.
type Match struct {
	Upstream      string   `yaml:"upstream"`     // upstream name; "" or "*" = any
	Repositories  []string `yaml:"repositories"` // globs, "**" crosses slashes
	ArtifactTypes []string `yaml:"artifact_types"`
}

// Signatures says which authorities must sign and how many.
type Signatures struct {
	Threshold   int         `yaml:"threshold"` // default 1
	Authorities []Authority `yaml:"authorities"`
	// Repository is where signatures, and the attestations of rules
	// without their own repository, are looked up instead of the
	// subject's repository: "<upstream>/<path>", the upstream a
	// configured name or alias, "{repository}" in the path standing for
	// the subject's repository. Empty: the subject's repository.
	Repository string `yaml:"repository" json:",omitempty"`
	// RepositoryStripPrefix is removed (whole path segments) from the
	// subject's repository before it replaces {repository}; a subject
	// without the prefix is denied.
	RepositoryStripPrefix string `yaml:"repository_strip_prefix" json:",omitempty"`
}

// Authority is a signer: a trust entry with keys, or a keyless identity.
type Authority struct {
	Name    string   `yaml:"name"`
	Key     string   `yaml:"key"` // name of a Trust entry with keys
	Keyless *Keyless `yaml:"keyless"`
	// Notation accepts Notary Project signatures (notation.go).
	Notation *NotationAuthority `yaml:"notation" json:",omitempty"`
}

// Keyless is a Fulcio certificate identity under a trusted root.
type Keyless struct {
	Trust              string `yaml:"trust"` // name of a Trust entry with trusted_root
	Issuer             string `yaml:"issuer"`
	IssuerRegex        string `yaml:"issuer_regex"`
	Subject            string `yaml:"subject"`
	SubjectRegex       string `yaml:"subject_regex"`
	TlogThreshold      *int   `yaml:"tlog_threshold"`      // default 1
	TimestampThreshold *int   `yaml:"timestamp_threshold"` // default 1
	// SCTThreshold is how many certificate-transparency SCTs embedded in
	// the Fulcio certificate must verify against the trusted root's CT
	// logs (default 1, as cosign requires; at least 1).
	SCTThreshold *int `yaml:"sct_threshold"`
	// InsecureSkipSCT accepts certificates without certificate-transparency
	// proof (a private Fulcio without a CT log); logged at start.
	InsecureSkipSCT bool `yaml:"insecure_skip_sct"`
}

// Attestation is a required attestation rule.
type Attestation struct {
	Name          string   `yaml:"name"`
	PredicateType string   `yaml:"predicate_type"`
	Authorities   []string `yaml:"authorities"` // authority names of the same boundary
	MaxAge        Duration `yaml:"max_age"`
	Condition     string   `yaml:"condition"` // CEL
	// Select says which of several valid attestations answers the rule:
	// "newest" (default) decides on the newest by signed time, else
	// statement time; "any" is satisfied by any one that passes.
	Select string `yaml:"select"`
	// Repository and RepositoryStripPrefix say where this rule's
	// attestations are looked up, as in Signatures; empty inherits both
	// from signatures.
	Repository            string `yaml:"repository" json:",omitempty"`
	RepositoryStripPrefix string `yaml:"repository_strip_prefix" json:",omitempty"`
}

// Values of Attestation.Select; empty means SelectNewest.
const (
	SelectNewest = "newest"
	SelectAny    = "any"
)

// Lineage makes provenance dependencies part of the decision.
type Lineage struct {
	Depth   int      `yaml:"depth"`
	Require []string `yaml:"require"`
	// Ignore lists dependency name globs whose OCI inputs are deliberately
	// not verified (every other OCI input is); each is a warning.
	Ignore []string `yaml:"ignore"`
}

// Cache sizes and lifetimes.
type Cache struct {
	Verdicts    int      `yaml:"verdicts"`     // default 100000
	AllowTTL    Duration `yaml:"allow_ttl"`    // default 10m
	DenyTTL     Duration `yaml:"deny_ttl"`     // default 30s
	ManifestMiB int      `yaml:"manifest_mib"` // verified manifest bytes kept, and parsed manifests by their bytes; default 64
	TagTTL      Duration `yaml:"tag_ttl"`      // default 0: re-resolve tags on every request
}

// Limits bound the memory, connections and work one client, upstream or
// subject can cost. Zero means the default.
type Limits struct {
	// Evidence read per verification, in total and per item.
	EvidenceBytes    ByteSize `yaml:"evidence_bytes"`    // default 16MiB
	SignatureBytes   ByteSize `yaml:"signature_bytes"`   // default 1MiB
	AttestationBytes ByteSize `yaml:"attestation_bytes"` // default 4MiB
	MaxEvidence      int      `yaml:"max_evidence"`      // referrers examined per subject; default 64
	PredicateDepth   int      `yaml:"predicate_depth"`   // JSON nesting of a predicate; default 64
	// LineageConcurrency is how many lineage dependencies of one subject
	// are verified at once (default 4; 1 = one after the other).
	LineageConcurrency int `yaml:"lineage_concurrency"`
	// Verifications is how many verifications run at once (default
	// 4 × GOMAXPROCS, written as 0); VerifyQueue more wait up to
	// VerifyQueueWait before the client gets 429.
	Verifications   int      `yaml:"verifications"`
	VerifyQueue     int      `yaml:"verify_queue"`      // default 8 × verifications
	VerifyQueueWait Duration `yaml:"verify_queue_wait"` // default 10s
	// Client side of the registry listener.
	ClientConnections int      `yaml:"client_connections"`  // default 4096
	ClientIdleTimeout Duration `yaml:"client_idle_timeout"` // default 60s
	HeaderBytes       ByteSize `yaml:"header_bytes"`        // default 64KiB
	// UpstreamHeaderBytes bounds the status line and headers of every
	// answer from an upstream and the hosts it redirects to, a TUF
	// repository and an alert receiver (default 64KiB).
	UpstreamHeaderBytes ByteSize `yaml:"upstream_header_bytes"`
	// ClientStallGrace is how long a client may take nothing before its
	// blob stream may be dropped for a pull waiting on the upstream's
	// stream connections (default 5s; 0 never drops one early). Nil
	// before defaults are applied.
	ClientStallGrace *Duration `yaml:"client_stall_grace"`
	// StreamBufferBytes bounds the large copy buffers all blob streams
	// hold together (default 16MiB); streams beyond it use small ones.
	StreamBufferBytes ByteSize `yaml:"stream_buffer_bytes"`
	// ServedEvidenceBytes bounds what a manifest served unsigned as
	// evidence (a signature, attestation or SBOM of an allowed digest) may
	// declare in its config and layers together (default 128MiB); above
	// it the manifest is decided on its own, as content.
	ServedEvidenceBytes ByteSize `yaml:"served_evidence_bytes"`
	// WatchConcurrency bounds the watch runs going at once (default 2).
	WatchConcurrency int `yaml:"watch_concurrency"`
}

// Summaries configures the signed verification summaries (SLSA VSA) the
// proxy serves as referrers of the digests it allowed.
type Summaries struct {
	// Key is a PEM private key file: PKCS#8, EC or RSA, or a cosign key
	// ("ENCRYPTED SIGSTORE PRIVATE KEY") with PasswordEnv. Required.
	Key string `yaml:"key"`
	// PasswordEnv names the environment variable holding the password of
	// an encrypted key; it may be set to the empty string (cosign
	// generate-key-pair with an empty COSIGN_PASSWORD).
	PasswordEnv string `yaml:"password_env"`
	// VerifierID is predicate.verifier.id, an absolute URI; default
	// https://github.com/portcullis-oci/portcullis.
	VerifierID string `yaml:"verifier_id"`
	// PolicyURI is predicate.policy.uri, an absolute URI; default
	// urn:portcullis:policy:<boundary>.
	PolicyURI string `yaml:"policy_uri"`
	// CacheSize bounds the summaries kept in memory; default (0) 4096.
	CacheSize int `yaml:"cache_size"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug|info|warn|error, default info
	Format string `yaml:"format"` // json (default) | console
}

// Duration is a time.Duration written as a Go duration string ("30s", "720h").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
