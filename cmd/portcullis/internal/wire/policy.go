package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/sigstore/sigstore-go/pkg/root"
)

// Size limits for trust material read at start. A public key PEM is under
// a kilobyte; the public-good trusted_root.json is tens of kilobytes.
const (
	maxKeyFileBytes  = 64 << 10
	maxRootFileBytes = 16 << 20
)

// Policy translates the validated configuration into the verification
// policy. It reads every key file and trusted root once; the same bytes are
// parsed and fingerprinted, so the fingerprint always describes the trust
// material in use. cfg must have been validated by config.Parse or
// config.Load.
func Policy(cfg *config.Config) (verify.Policy, error) {
	l := &loader{cfg: cfg, files: map[string]string{}, keys: map[string][]verify.NamedKey{}, roots: map[string]root.TrustedMaterial{}}
	for _, t := range cfg.Trust {
		if err := l.loadTrust(t); err != nil {
			return verify.Policy{}, err
		}
	}
	p := verify.Policy{InsecureAllowUnmatched: cfg.Unmatched == config.UnmatchedInsecureAllow}
	for i, b := range cfg.Boundaries {
		vb, err := l.deployedBoundary(b)
		if err != nil {
			return verify.Policy{}, fmt.Errorf("boundaries[%d] (%s): %w", i, b.Name, err)
		}
		vb.Fingerprint = l.notationFingerprint(b, vb.Fingerprint)
		p.Boundaries = append(p.Boundaries, vb)
	}
	fp, err := fingerprint(cfg, l.files, l.evidenceUpstreams)
	if err != nil {
		return verify.Policy{}, err
	}
	p.Fingerprint = fp
	return p, nil
}

// EngineOptions are the verify.Engine options the configuration sets: the
// evidence limits, which are part of Policy's fingerprint, and the
// lineage concurrency, which decides no verdict and is not.
func EngineOptions(cfg *config.Config) []verify.Option {
	return []verify.Option{
		verify.WithMaxEvidence(cfg.Limits.MaxEvidence),
		verify.WithLineageConcurrency(cfg.Limits.LineageConcurrency),
		verify.WithEvidenceLimits(verify.EvidenceLimits{
			TotalBytes:       cfg.Limits.EvidenceBytes.Int64(),
			SignatureBytes:   cfg.Limits.SignatureBytes.Int64(),
			AttestationBytes: cfg.Limits.AttestationBytes.Int64(),
			PredicateDepth:   cfg.Limits.PredicateDepth,
		}),
	}
}

type loader struct {
	cfg *config.Config
	// files maps each trust file, as configured, to the SHA-256 of the
	// bytes that were loaded.
	files map[string]string
	keys  map[string][]verify.NamedKey
	roots map[string]root.TrustedMaterial
	// notation holds notation trust entries' certificates (notation.go).
	notation map[string]*notationTrust
	// evidenceUpstreams maps each upstream key a signatures or
	// attestation repository names to the upstream it resolved to.
	evidenceUpstreams map[string]string
	// unavailable maps each trust entry whose TUF-kept root cannot be
	// used now to why.
	unavailable map[string]tufUnavailable
}

func (l *loader) read(p string, limit int64) ([]byte, error) {
	resolved := l.cfg.Resolve(p)
	f, err := os.Open(resolved)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", resolved, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", resolved, limit)
	}
	sum := sha256.Sum256(b)
	l.files[p] = hex.EncodeToString(sum[:])
	return b, nil
}

func (l *loader) loadTrust(t config.Trust) error {
	if err := l.loadNotationTrust(t); err != nil {
		return err
	}
	for _, k := range t.Keys {
		b, err := l.read(k, maxKeyFileBytes)
		if err != nil {
			return fmt.Errorf("trust %s: key: %w", t.Name, err)
		}
		l.keys[t.Name] = append(l.keys[t.Name], verify.NamedKey{Name: k, PEM: b})
	}
	if t.TUF != nil {
		return l.loadTUF(t)
	}
	if t.TrustedRoot != "" {
		b, err := l.read(t.TrustedRoot, maxRootFileBytes)
		if err != nil {
			return fmt.Errorf("trust %s: trusted_root: %w", t.Name, err)
		}
		tr, err := root.NewTrustedRootFromJSON(b)
		if err != nil {
			return fmt.Errorf("trust %s: trusted_root %s: %w", t.Name, t.TrustedRoot, err)
		}
		l.roots[t.Name] = tr
	}
	return nil
}

func (l *loader) boundary(b config.Boundary) (verify.Boundary, error) {
	vb := verify.Boundary{
		Name:          b.Name,
		Upstream:      b.Match.Upstream,
		Repositories:  b.Match.Repositories,
		ArtifactTypes: b.Match.ArtifactTypes,
		Mode:          verify.Mode(b.Mode),
		Threshold:     b.Signatures.Threshold,
	}
	if vb.Mode == "" {
		vb.Mode = verify.ModeEnforce
	}
	if vb.Threshold == 0 {
		vb.Threshold = config.DefaultThreshold
	}
	for _, a := range b.Signatures.Authorities {
		va := verify.Authority{Name: a.Name}
		switch {
		case a.Notation != nil:
			na, err := l.notationAuthority(a)
			if err != nil {
				return verify.Boundary{}, err
			}
			va.Notation = na
		case a.Key != "" && a.Keyless == nil:
			keys, ok := l.keys[a.Key]
			if !ok || len(keys) == 0 {
				return verify.Boundary{}, fmt.Errorf("authority %s: trust %q has no keys", a.Name, a.Key)
			}
			va.Key = &verify.KeyAuthority{TrustName: a.Key, Keys: keys}
		case a.Key == "" && a.Keyless != nil:
			k := a.Keyless
			tr, ok := l.roots[k.Trust]
			if !ok {
				return verify.Boundary{}, fmt.Errorf("authority %s: trust %q has no trusted_root", a.Name, k.Trust)
			}
			va.Keyless = &verify.KeylessAuthority{
				TrustName: k.Trust, TrustedRoot: tr,
				Issuer: k.Issuer, IssuerRegex: k.IssuerRegex,
				Subject: k.Subject, SubjectRegex: k.SubjectRegex,
				TlogThreshold:      intOr(k.TlogThreshold, config.DefaultTlogThreshold),
				TimestampThreshold: intOr(k.TimestampThreshold, config.DefaultTimestampThreshold),
				SCTThreshold:       intOr(k.SCTThreshold, config.DefaultSCTThreshold),
				InsecureSkipSCT:    k.InsecureSkipSCT,
			}
		default:
			return verify.Boundary{}, fmt.Errorf("authority %s: exactly one of key and keyless must be set", a.Name)
		}
		vb.Authorities = append(vb.Authorities, va)
	}
	var err error
	if vb.SignatureRepository, err = l.evidenceRepository(b.Signatures.Repository, b.Signatures.RepositoryStripPrefix); err != nil {
		return verify.Boundary{}, fmt.Errorf("signatures: %w", err)
	}
	for _, at := range b.Attestations {
		rule := verify.AttestationRule{
			Name: at.Name, PredicateType: at.PredicateType, Authorities: at.Authorities,
			MaxAge: at.MaxAge.D(), Condition: at.Condition, Select: selectMode(at.Select),
		}
		// A rule without a repository inherits the signatures' place
		// (verify's nil), strip prefix included.
		if rule.Repository, err = l.evidenceRepository(at.Repository, at.RepositoryStripPrefix); err != nil {
			return verify.Boundary{}, fmt.Errorf("attestation %s: %w", at.Name, err)
		}
		vb.Attestations = append(vb.Attestations, rule)
	}
	if b.Lineage != nil {
		vb.Lineage = &verify.LineageRule{Depth: b.Lineage.Depth, Require: b.Lineage.Require, Ignore: b.Lineage.Ignore}
	}
	l.refuseWithoutRoot(&vb)
	return vb, nil
}

// evidenceRepository translates a validated "<upstream>/<path>" with its
// strip prefix; nil when repo is empty. The upstream key, name or alias,
// becomes the upstream's name: the proxy reads evidence through the
// upstream of that name and never dials the key.
func (l *loader) evidenceRepository(repo, strip string) (*verify.EvidenceRepository, error) {
	if repo == "" {
		return nil, nil
	}
	key, path, _ := strings.Cut(repo, "/")
	u, ok := l.cfg.UpstreamFor(key)
	if !ok {
		return nil, fmt.Errorf("repository %q: no upstream is named or aliased %q", repo, key)
	}
	if l.evidenceUpstreams == nil {
		l.evidenceUpstreams = map[string]string{}
	}
	l.evidenceUpstreams[key] = u.Name
	return &verify.EvidenceRepository{Upstream: u.Name, Repository: path, StripPrefix: strings.TrimSuffix(strip, "/")}, nil
}

// selectMode maps a validated config select to the engine's; the default
// is spelled out so the verdict explains itself.
func selectMode(s string) verify.Select {
	if s == config.SelectAny {
		return verify.SelectAny
	}
	return verify.SelectNewest
}

func intOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// fingerprint hashes the policy-relevant sections of the configuration
// together with the digests of the trust files they name. Listen
// addresses, upstream credentials, cache sizes and logging do not change
// decisions and are left out, so changing them keeps cached verdicts.
func fingerprint(cfg *config.Config, files, evidenceUpstreams map[string]string) (string, error) {
	// The evidence limits decide verdicts too: a subject denied for
	// exceeding a budget may be allowed under a larger one, so a changed
	// limit must not reuse cached verdicts.
	limits := struct {
		Evidence, Signature, Attestation int64
		MaxEvidence, PredicateDepth      int
	}{cfg.Limits.EvidenceBytes.Int64(), cfg.Limits.SignatureBytes.Int64(), cfg.Limits.AttestationBytes.Int64(),
		cfg.Limits.MaxEvidence, cfg.Limits.PredicateDepth}
	doc := struct {
		Version    int               `json:"v"`
		Trust      []config.Trust    `json:"trust"`
		Boundaries []config.Boundary `json:"boundaries"`
		Unmatched  string            `json:"unmatched"`
		Files      map[string]string `json:"files"` // encoding/json sorts map keys
		Limits     any               `json:"limits"`
		// Upstreams are otherwise left out, but an alias an evidence
		// repository names decides where evidence is read: moving it to
		// another upstream is a new policy.
		EvidenceUpstreams map[string]string `json:"evidence_upstreams,omitempty"`
	}{1, cfg.Trust, cfg.Boundaries, cfg.Unmatched, files, limits, evidenceUpstreams}
	b, err := json.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("policy fingerprint: %w", err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
