package config

import (
	"fmt"
	"mime"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Validate checks c, which must have its defaults applied, and returns a
// *ValidationError listing every problem. It does not touch the file
// system; see CheckFiles.
func (c *Config) Validate() error {
	return c.validate(c.Path)
}

func (c *Config) validate(file string) error {
	r := &reporter{file: file, lines: c.lines}

	checkHostPort(r, "listen", c.Listen, false)
	checkHostPort(r, "admin", c.Admin, true)
	if c.TLS != nil && (c.TLS.Cert == "" || c.TLS.Key == "") {
		r.addf("tls", "cert and key must both be set")
	}

	upstreams := c.validateUpstreams(r)
	c.validateClients(r)
	if c.DefaultUpstream != "" {
		if _, ok := upstreams[c.DefaultUpstream]; !ok {
			r.addf("default_upstream", "no upstream is named %q", c.DefaultUpstream)
		}
	}
	trust := c.validateTrust(r)

	switch c.Unmatched {
	case UnmatchedDeny, UnmatchedInsecureAllow:
	default:
		r.addf("unmatched", "must be %q or %q, not %q", UnmatchedDeny, UnmatchedInsecureAllow, c.Unmatched)
	}
	if len(c.Boundaries) == 0 && c.BoundariesDir == "" && c.Unmatched != UnmatchedInsecureAllow {
		r.addf("boundaries", "at least one boundary is required (nothing would be served)")
	}
	bnames := map[string]string{}
	for i := range c.Boundaries {
		p := indexPath("boundaries", i)
		b := &c.Boundaries[i]
		if b.Source != "" {
			continue // checked against its own file when it was loaded
		}
		if b.Order != nil {
			r.addf(joinPath(p, "order"), "is only for boundary files: inline boundaries are decided in list order, before the files of boundaries_dir")
		}
		if b.Name == "" {
			r.addf(joinPath(p, "name"), "is required")
		} else if prev, dup := bnames[b.Name]; dup {
			r.addf(joinPath(p, "name"), "boundary name %q already used by %s", b.Name, prev)
		} else {
			bnames[b.Name] = p
		}
		validateBoundary(r, p, b, upstreams, trust)
	}

	if c.Cache.Verdicts <= 0 {
		r.addf("cache.verdicts", "must be positive")
	}
	if c.Cache.ManifestMiB <= 0 {
		r.addf("cache.manifest_mib", "must be positive")
	}
	if c.Cache.AllowTTL <= 0 {
		r.addf("cache.allow_ttl", "must be positive")
	}
	if c.Cache.DenyTTL <= 0 {
		r.addf("cache.deny_ttl", "must be positive")
	}
	if c.Cache.TagTTL < 0 {
		r.addf("cache.tag_ttl", "must not be negative")
	}
	if c.UpstreamTimeout <= 0 {
		r.addf("upstream_timeout", "must be positive")
	}
	if c.VerifyTimeout <= 0 {
		r.addf("verify_timeout", "must be positive")
	}
	if c.UpstreamIdleTimeout <= 0 {
		r.addf("upstream_idle_timeout", "must be positive")
	}
	if c.MaxConnsPerUpstream <= 0 {
		r.addf("max_conns_per_upstream", "must be positive")
	}
	if c.EvidenceTypes != nil {
		for i, t := range *c.EvidenceTypes {
			if _, err := path.Match(t, ""); err != nil || strings.TrimSpace(t) == "" || !strings.Contains(t, "/") {
				r.addf(indexPath("evidence_types", i), "%q is not a media type pattern (type/subtype, path.Match syntax)", t)
			}
		}
	}
	c.Limits.validate(r)
	c.validateAlerts(r)
	c.validateWatches(r, upstreams)
	c.validateRevocations(r)
	if c.Summaries != nil {
		c.Summaries.validate(r)
	}
	if c.Tracing != nil {
		c.Tracing.validate(r)
	}
	c.Shared.validate(r)
	if c.BlobCache != nil {
		c.BlobCache.validate(r)
	}
	c.BlobShare.validate(r)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		r.addf("log.level", "must be one of debug, info, warn, error, not %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		r.addf("log.format", "must be json or console, not %q", c.Log.Format)
	}
	return r.err()
}

// checkHostPort accepts host:port with a numeric port; the host may be
// empty (all interfaces).
func checkHostPort(r *reporter, path, v string, emptyOK bool) {
	if v == "" {
		if !emptyOK {
			r.addf(path, "is required")
		}
		return
	}
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		r.addf(path, "%q is not host:port", v)
		return
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || port == "" || (n == 0 && port != "0") {
		r.addf(path, "%q has an invalid port", v)
	}
}

// validateUpstreams returns the upstreams by name, for reference checks.
func (c *Config) validateUpstreams(r *reporter) map[string]*Upstream {
	byName := map[string]*Upstream{}
	if len(c.Upstreams) == 0 {
		r.addf("upstreams", "at least one upstream is required")
	}
	// Names and aliases share one namespace: both are routing keys.
	owner := map[string]string{} // routing key -> "upstreams[i]"
	claim := func(path, key, what, up string) {
		if prev, dup := owner[key]; dup {
			r.addf(path, "%s %q already used by %s", what, key, prev)
			return
		}
		owner[key] = up
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := indexPath("upstreams", i)
		switch {
		case u.Name == "":
			r.addf(joinPath(p, "name"), "is required")
		case !isRegistryHost(u.Name):
			r.addf(joinPath(p, "name"), "%q must look like a registry host (lowercase host[:port], no scheme or path): it is also a routing key", u.Name)
		default:
			claim(joinPath(p, "name"), u.Name, "name", p)
			byName[u.Name] = u
		}
		for j, a := range u.Aliases {
			ap := indexPath(joinPath(p, "aliases"), j)
			if !isRegistryHost(a) {
				r.addf(ap, "alias %q must look like a registry host (lowercase host[:port], no scheme or path)", a)
				continue
			}
			if a == u.Name {
				continue // the name is always an alias; repeating it is harmless
			}
			claim(ap, a, "alias", p)
		}
		validateURL(r, joinPath(p, "url"), u.URL, u.Insecure)
		if u.Timeout < 0 {
			r.addf(joinPath(p, "timeout"), "must not be negative")
		}
		if u.MaxConns < 0 {
			r.addf(joinPath(p, "max_conns"), "must not be negative")
		}
		for j, h := range u.RedirectHosts {
			if err := checkRedirectHost(h); err != nil {
				r.addf(indexPath(joinPath(p, "redirect_hosts"), j), "%v", err)
			}
		}
		if u.Auth != nil {
			validateAuth(r, joinPath(p, "auth"), u.Auth)
		}
	}
	return byName
}

func validateURL(r *reporter, path, raw string, insecure bool) {
	if raw == "" {
		r.addf(path, "is required")
		return
	}
	u, err := url.Parse(raw)
	if err != nil {
		r.addf(path, "%q is not a URL", raw)
		return
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !insecure {
			r.addf(path, "%q uses plain http; set insecure: true to allow it (loopback and labs only)", raw)
		}
	default:
		r.addf(path, "%q must use https (or http with insecure: true)", raw)
		return
	}
	if u.Opaque != "" || u.Host == "" {
		r.addf(path, "%q has no host", raw)
	}
	if u.User != nil {
		r.addf(path, "URL must not contain credentials; use auth")
	}
	if u.Path != "" && u.Path != "/" {
		r.addf(path, "%q must not have a path", raw)
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		r.addf(path, "%q must not have a query or fragment", raw)
	}
}

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validateAuth(r *reporter, path string, a *Auth) {
	basic := a.Username != "" || a.UsernameEnv != "" || a.Password != "" || a.PasswordEnv != ""
	hasUser := a.Username != "" || a.UsernameEnv != ""
	hasPass := a.Password != "" || a.PasswordEnv != ""
	switch {
	case a.DockerConfig != "" && (basic || a.TokenEnv != ""):
		r.addf(path, "docker_config cannot be combined with username, password or token_env")
		return
	case a.TokenEnv != "" && basic:
		r.addf(path, "token_env cannot be combined with username or password")
		return
	case !basic && a.TokenEnv == "" && a.DockerConfig == "":
		r.addf(path, "is empty; set username and password (or password_env), token_env or docker_config, or remove auth for anonymous access")
		return
	}
	if a.Username != "" && a.UsernameEnv != "" {
		r.addf(path, "username and username_env are exclusive")
	}
	if a.Password != "" && a.PasswordEnv != "" {
		r.addf(path, "password and password_env are exclusive")
	}
	if basic && !hasUser {
		r.addf(path, "a password needs a username (username or username_env)")
	}
	if basic && !hasPass {
		r.addf(path, "a username needs a password (password_env or password)")
	}
	for key, v := range map[string]string{"username_env": a.UsernameEnv, "password_env": a.PasswordEnv, "token_env": a.TokenEnv} {
		if v != "" && !envNameRE.MatchString(v) {
			r.addf(joinPath(path, key), "%q is not an environment variable name", v)
		}
	}
}

func (s *Summaries) validate(r *reporter) {
	if s.Key == "" {
		r.addf("summaries.key", "is required: the private key summaries are signed with")
	}
	if s.PasswordEnv != "" && !envNameRE.MatchString(s.PasswordEnv) {
		r.addf("summaries.password_env", "%q is not an environment variable name", s.PasswordEnv)
	}
	for _, f := range []struct{ key, v string }{{"summaries.verifier_id", s.VerifierID}, {"summaries.policy_uri", s.PolicyURI}} {
		if u, err := url.Parse(f.v); f.v != "" && (err != nil || u.Scheme == "") {
			r.addf(f.key, "%q is not an absolute URI", f.v)
		}
	}
	if s.CacheSize < 0 {
		r.addf("summaries.cache_size", "must not be negative")
	}
}

// validateTrust returns the trust entries by name.
func (c *Config) validateTrust(r *reporter) map[string]*Trust {
	byName := map[string]*Trust{}
	for i := range c.Trust {
		t := &c.Trust[i]
		p := indexPath("trust", i)
		if t.Name == "" {
			r.addf(joinPath(p, "name"), "is required")
		} else if prev, dup := byName[t.Name]; dup {
			r.addf(joinPath(p, "name"), "trust name %q already used by %s", t.Name, trustPath(c, prev))
		} else {
			byName[t.Name] = t
		}
		t.resolveRootSource()
		switch {
		case t.Notation != nil:
			c.validateNotationTrust(r, p, t)
		case len(t.Keys) > 0 && t.HasTrustedRoot():
			r.addf(p, "set exactly one of keys and trusted_root, not both")
		case len(t.Keys) == 0 && !t.HasTrustedRoot():
			r.addf(p, "set exactly one of keys and trusted_root")
		}
		if t.TUF != nil {
			validateTUF(r, p, t.TUF)
		}
		for j, k := range t.Keys {
			if strings.TrimSpace(k) == "" {
				r.addf(indexPath(joinPath(p, "keys"), j), "must be a file path")
			}
		}
	}
	return byName
}

func trustPath(c *Config, t *Trust) string {
	for i := range c.Trust {
		if &c.Trust[i] == t {
			return indexPath("trust", i)
		}
	}
	return ""
}

func validateBoundary(r *reporter, p string, b *Boundary, upstreams map[string]*Upstream, trust map[string]*Trust) {
	if u := b.Match.Upstream; u != "" && u != "*" {
		if _, ok := upstreams[u]; !ok {
			r.addf(joinPath(p, "match.upstream"), "no upstream is named %q", u)
		}
	}
	for i, g := range b.Match.Repositories {
		if err := checkRepoGlob(g); err != nil {
			r.addf(indexPath(joinPath(p, "match.repositories"), i), "%q: %v", g, err)
		}
	}
	for i, t := range b.Match.ArtifactTypes {
		if !isMediaType(t) {
			r.addf(indexPath(joinPath(p, "match.artifact_types"), i), "%q is not a media type", t)
		}
	}
	switch b.Mode {
	case ModeEnforce, ModeWarn:
	default:
		r.addf(joinPath(p, "mode"), "must be %q or %q, not %q", ModeEnforce, ModeWarn, b.Mode)
	}

	sp := joinPath(p, "signatures")
	auths := map[string]bool{}
	if len(b.Signatures.Authorities) == 0 {
		r.addf(joinPath(sp, "authorities"), "at least one authority is required")
	}
	for i := range b.Signatures.Authorities {
		a := &b.Signatures.Authorities[i]
		ap := indexPath(joinPath(sp, "authorities"), i)
		if a.Name == "" {
			r.addf(joinPath(ap, "name"), "is required")
		} else if auths[a.Name] {
			r.addf(joinPath(ap, "name"), "authority name %q is already used in this boundary", a.Name)
		} else {
			auths[a.Name] = true
		}
		switch {
		case a.Notation != nil:
			validateNotationAuthority(r, ap, a, trust)
		case a.Key != "" && a.Keyless != nil:
			r.addf(ap, "set exactly one of key and keyless, not both")
		case a.Key == "" && a.Keyless == nil:
			r.addf(ap, "set exactly one of key and keyless")
		case a.Key != "":
			if t, ok := trust[a.Key]; !ok {
				r.addf(joinPath(ap, "key"), "no trust entry is named %q", a.Key)
			} else if len(t.Keys) == 0 {
				r.addf(joinPath(ap, "key"), "trust entry %q has no keys", a.Key)
			}
		default:
			validateKeyless(r, joinPath(ap, "keyless"), a.Keyless, trust)
		}
	}
	if n := len(b.Signatures.Authorities); b.Signatures.Threshold < 1 || (n > 0 && b.Signatures.Threshold > n) {
		r.addf(joinPath(sp, "threshold"), "must be between 1 and the number of authorities (%d), not %d", n, b.Signatures.Threshold)
	}
	validateEvidenceRepository(r, sp, b.Signatures.Repository, b.Signatures.RepositoryStripPrefix, upstreams)
	validateNotationRules(r, p, b)

	anames := map[string]bool{}
	for i := range b.Attestations {
		at := &b.Attestations[i]
		ap := indexPath(joinPath(p, "attestations"), i)
		if at.Name == "" {
			r.addf(joinPath(ap, "name"), "is required")
		} else if anames[at.Name] {
			r.addf(joinPath(ap, "name"), "attestation name %q is already used in this boundary", at.Name)
		} else {
			anames[at.Name] = true
		}
		if !isAbsoluteURI(at.PredicateType) {
			r.addf(joinPath(ap, "predicate_type"), "%q must be an absolute URI", at.PredicateType)
		}
		if len(at.Authorities) == 0 {
			r.addf(joinPath(ap, "authorities"), "at least one authority is required")
		}
		for j, name := range at.Authorities {
			if !auths[name] {
				r.addf(indexPath(joinPath(ap, "authorities"), j), "no authority named %q in this boundary's signatures", name)
			}
		}
		if at.MaxAge < 0 {
			r.addf(joinPath(ap, "max_age"), "must not be negative")
		}
		switch at.Select {
		case "", SelectNewest, SelectAny:
		default:
			r.addf(joinPath(ap, "select"), "must be %q or %q, not %q", SelectNewest, SelectAny, at.Select)
		}
		validateEvidenceRepository(r, ap, at.Repository, at.RepositoryStripPrefix, upstreams)
	}

	if l := b.Lineage; l != nil {
		lp := joinPath(p, "lineage")
		if l.Depth < 1 || l.Depth > 10 {
			r.addf(joinPath(lp, "depth"), "must be between 1 and 10, not %d", l.Depth)
		}
		required := map[string]bool{}
		for i, g := range l.Require {
			validateDependencyGlob(r, indexPath(joinPath(lp, "require"), i), g)
			required[g] = true
		}
		for i, g := range l.Ignore {
			gp := indexPath(joinPath(lp, "ignore"), i)
			validateDependencyGlob(r, gp, g)
			// A name matched by a require and an ignore glob is verified;
			// the same glob on both lists is a contradiction, not a choice.
			if required[g] && strings.TrimSpace(g) != "" {
				r.addf(gp, "%q is also in lineage.require", g)
			}
		}
	}
}

// RepositoryPlaceholder in a signatures or attestation repository stands
// for the subject's repository.
const RepositoryPlaceholder = "{repository}"

// repoPathRE is the distribution grammar's repository path.
var repoPathRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// validateEvidenceRepository checks where a boundary's signatures (p is
// its signatures) or a rule's attestations are kept: "<upstream>/<path>",
// the upstream a lookup key into the configured names and aliases, never
// an address.
func validateEvidenceRepository(r *reporter, p, repo, strip string, upstreams map[string]*Upstream) {
	rp, sp := joinPath(p, "repository"), joinPath(p, "repository_strip_prefix")
	if repo == "" {
		if strip != "" {
			r.addf(sp, "needs repository")
		}
		return
	}
	key, path, ok := strings.Cut(repo, "/")
	if !ok || key == "" || path == "" {
		r.addf(rp, "%q must be <upstream>/<repository>", repo)
		return
	}
	if upstreamByKey(upstreams, key) == nil {
		r.addf(rp, "%q: no upstream is named or aliased %q", repo, key)
	}
	// Any repository may replace the placeholder; a path invalid with the
	// simplest is invalid with every one.
	if probe := strings.ReplaceAll(path, RepositoryPlaceholder, "x"); len(probe) > 255 || !repoPathRE.MatchString(probe) {
		r.addf(rp, "%q: %q is not a repository path (the only placeholder is %s)", repo, path, RepositoryPlaceholder)
	}
	if strip == "" {
		return
	}
	if !strings.Contains(path, RepositoryPlaceholder) {
		r.addf(sp, "has no effect without %s in repository", RepositoryPlaceholder)
	}
	if !repoPathRE.MatchString(strings.TrimSuffix(strip, "/")) {
		r.addf(sp, "%q is not a repository path prefix", strip)
	}
}

// upstreamByKey returns the upstream whose name or alias is key, nil when
// none is.
func upstreamByKey(upstreams map[string]*Upstream, key string) *Upstream {
	if u, ok := upstreams[key]; ok {
		return u
	}
	for _, u := range upstreams {
		if slices.Contains(u.Aliases, key) {
			return u
		}
	}
	return nil
}

// UpstreamFor returns the configured upstream whose name or alias is key:
// the lookup a signatures or attestation repository's first component
// gets.
func (c *Config) UpstreamFor(key string) (*Upstream, bool) {
	for i := range c.Upstreams {
		if u := &c.Upstreams[i]; u.Name == key || slices.Contains(u.Aliases, key) {
			return u, true
		}
	}
	return nil, false
}

// validateDependencyGlob checks a lineage name glob as path.Match reads it.
func validateDependencyGlob(r *reporter, p, g string) {
	if strings.TrimSpace(g) == "" {
		r.addf(p, "must not be empty")
		return
	}
	if _, err := path.Match(g, ""); err != nil {
		r.addf(p, "invalid glob %q: %v", g, err)
	}
}

func validateKeyless(r *reporter, p string, k *Keyless, trust map[string]*Trust) {
	if k.Trust == "" {
		r.addf(joinPath(p, "trust"), "is required")
	} else if t, ok := trust[k.Trust]; !ok {
		r.addf(joinPath(p, "trust"), "no trust entry is named %q", k.Trust)
	} else if !t.HasTrustedRoot() {
		r.addf(joinPath(p, "trust"), "trust entry %q has no trusted_root", k.Trust)
	}
	pair := func(exact, exactKey, re, reKey string) {
		switch {
		case exact != "" && re != "":
			r.addf(p, "%s and %s are exclusive", exactKey, reKey)
		case exact == "" && re == "":
			r.addf(p, "one of %s and %s is required", exactKey, reKey)
		case re != "":
			if _, err := regexp.Compile(re); err != nil {
				r.addf(joinPath(p, reKey), "invalid regular expression: %v", err)
			}
		}
	}
	pair(k.Issuer, "issuer", k.IssuerRegex, "issuer_regex")
	pair(k.Subject, "subject", k.SubjectRegex, "subject_regex")
	if k.TlogThreshold != nil && *k.TlogThreshold < 0 {
		r.addf(joinPath(p, "tlog_threshold"), "must not be negative")
	}
	if k.TimestampThreshold != nil && *k.TimestampThreshold < 0 {
		r.addf(joinPath(p, "timestamp_threshold"), "must not be negative")
	}
	// A zero here once meant "no SCT"; a weakening must say so by name.
	if k.SCTThreshold != nil && *k.SCTThreshold < 1 {
		r.addf(joinPath(p, "sct_threshold"), "must be at least 1, not %d; use insecure_skip_sct: true to accept certificates without certificate-transparency proof", *k.SCTThreshold)
	}
	// A Fulcio certificate lives minutes; without an observed signing time
	// its validity cannot be established.
	if k.TlogThreshold != nil && k.TimestampThreshold != nil && *k.TlogThreshold == 0 && *k.TimestampThreshold == 0 {
		r.addf(p, "tlog_threshold and timestamp_threshold cannot both be 0: a keyless signature needs an observed signing time")
	}
}

// isRegistryHost accepts what may follow "?ns=" or lead a repository path:
// a lowercase DNS name or IP, optionally with a port.
func isRegistryHost(s string) bool {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return false
		}
		host = s[1:end]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return false
		}
		if rest := s[end+1:]; rest != "" {
			var ok bool
			if port, ok = strings.CutPrefix(rest, ":"); !ok || port == "" {
				return false
			}
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
		if port == "" {
			return false
		}
		if !hostnameRE.MatchString(host) {
			return false
		}
	} else if !hostnameRE.MatchString(host) {
		return false
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return false
		}
	}
	return true
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

var globSegmentRE = regexp.MustCompile(`^[a-z0-9._*-]+$`)

// checkRepoGlob accepts "/"-separated segments of repository characters
// and "*"; "**" stands alone as a segment and crosses slashes.
func checkRepoGlob(g string) error {
	if g == "" {
		return fmt.Errorf("empty pattern")
	}
	for seg := range strings.SplitSeq(g, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("empty path segment")
		case seg == "**":
		case strings.Contains(seg, "**"):
			return fmt.Errorf(`"**" must be a whole path segment`)
		case !globSegmentRE.MatchString(seg):
			return fmt.Errorf("segments may contain only a-z, 0-9, '.', '_', '-' and '*'")
		}
	}
	return nil
}

func isAbsoluteURI(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && u.IsAbs() && (u.Host != "" || u.Opaque != "")
}

// isMediaType accepts a bare type/subtype, as artifactType and
// config.mediaType carry them: no parameters, lowercase.
func isMediaType(s string) bool {
	mt, params, err := mime.ParseMediaType(s)
	if err != nil || len(params) != 0 || mt != s {
		return false
	}
	typ, sub, ok := strings.Cut(mt, "/")
	return ok && typ != "" && sub != "" && !strings.Contains(sub, "/")
}

func (l *Limits) validate(r *reporter) {
	positive := func(key string, v int64) {
		if v <= 0 {
			r.addf("limits."+key, "must be positive")
		}
	}
	positive("evidence_bytes", l.EvidenceBytes.Int64())
	positive("signature_bytes", l.SignatureBytes.Int64())
	positive("attestation_bytes", l.AttestationBytes.Int64())
	positive("max_evidence", int64(l.MaxEvidence))
	positive("lineage_concurrency", int64(l.LineageConcurrency))
	positive("predicate_depth", int64(l.PredicateDepth))
	positive("client_connections", int64(l.ClientConnections))
	positive("client_idle_timeout", int64(l.ClientIdleTimeout))
	positive("verify_queue_wait", int64(l.VerifyQueueWait))
	positive("stream_buffer_bytes", l.StreamBufferBytes.Int64())
	positive("served_evidence_bytes", l.ServedEvidenceBytes.Int64())
	if l.HeaderBytes < 4<<10 {
		r.addf("limits.header_bytes", "must be at least 4KiB: registry clients send long Accept and Authorization headers")
	}
	if l.UpstreamHeaderBytes < 4<<10 || l.UpstreamHeaderBytes > 16<<20 {
		r.addf("limits.upstream_header_bytes", "must be 4KiB to 16MiB: a storage redirect's presigned URL alone can take a few KiB")
	}
	if l.ClientStallGrace != nil && *l.ClientStallGrace < 0 {
		r.addf("limits.client_stall_grace", "must not be negative (0 never drops a stalled client's stream early)")
	}
	if l.Verifications < 0 {
		r.addf("limits.verifications", "must not be negative (0 means 4 per CPU)")
	}
	if l.VerifyQueue < 0 {
		r.addf("limits.verify_queue", "must not be negative (0 means 8 per verification slot)")
	}
	// One item larger than the whole budget could never be read.
	for _, item := range []struct {
		key string
		v   ByteSize
	}{{"signature_bytes", l.SignatureBytes}, {"attestation_bytes", l.AttestationBytes}} {
		if item.v > l.EvidenceBytes && l.EvidenceBytes > 0 {
			r.addf("limits."+item.key, "%s is larger than evidence_bytes (%s)", item.v, l.EvidenceBytes)
		}
	}
}

// checkRedirectHost accepts "host", "host:port" and "*.suffix".
func checkRedirectHost(h string) error {
	host := strings.TrimPrefix(h, "*.")
	if hp, port, err := net.SplitHostPort(host); err == nil {
		if n, perr := strconv.ParseUint(port, 10, 16); perr != nil || n == 0 {
			return fmt.Errorf("redirect host %q has an invalid port", h)
		}
		host = hp
	}
	if host == "" || host == "*" || strings.ContainsAny(host, "/*@ ") || strings.ToLower(host) != host {
		return fmt.Errorf("redirect host %q must be a lowercase host, host:port or *.domain", h)
	}
	return nil
}
