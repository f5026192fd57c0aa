package verify

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// RepositoryPlaceholder in EvidenceRepository.Repository stands for the
// subject's repository, so one boundary can cover many mirrored
// repositories whose evidence stays next to their sources.
const RepositoryPlaceholder = "{repository}"

// EvidenceRepository is where a boundary's signatures or attestations are
// kept instead of the subject's own repository, as cosign's
// COSIGN_REPOSITORY places them. Only the place changes: evidence found
// there must still name the subject's digest.
type EvidenceRepository struct {
	// Upstream is the configured upstream name the evidence is read
	// from: a lookup key (Subject.Fetchers), never an address.
	Upstream string `json:"upstream"`
	// Repository is the repository at Upstream; RepositoryPlaceholder in
	// it is replaced by the subject's repository.
	Repository string `json:"repository"`
	// StripPrefix, when set, is removed from the subject's repository
	// before it replaces the placeholder, as whole path segments: with
	// "mirror", "mirror/app" becomes "app". A subject outside the prefix
	// is denied.
	StripPrefix string `json:"strip_prefix,omitempty"`
}

// String is the template as configured, "upstream/repository".
func (er EvidenceRepository) String() string { return er.Upstream + "/" + er.Repository }

// FetcherSource gives the Fetcher of another configured upstream, for a
// boundary that keeps evidence there. upstream is a lookup key: an unknown
// one is reported false, never dialled.
type FetcherSource interface {
	FetcherFor(upstream string) (Fetcher, bool)
}

func (er EvidenceRepository) validate() error {
	if er.Upstream == "" {
		return errors.New("has no upstream")
	}
	if er.Repository == "" {
		return errors.New("has no repository")
	}
	if p := er.StripPrefix; p != "" {
		if !strings.Contains(er.Repository, RepositoryPlaceholder) {
			return fmt.Errorf("strip prefix %q needs %s in the repository", p, RepositoryPlaceholder)
		}
		if !isRepositoryName(p) {
			return fmt.Errorf("strip prefix %q is not a repository path", p)
		}
	}
	// Any repository name may replace the placeholder; one that is
	// invalid with the simplest is invalid with every one.
	if r := strings.ReplaceAll(er.Repository, RepositoryPlaceholder, "x"); !isRepositoryName(r) {
		return fmt.Errorf("repository %q is not a repository name (the only placeholder is %s)", er.Repository, RepositoryPlaceholder)
	}
	return nil
}

// resolve names the repository evidence about a subject in repo is read
// from.
func (er EvidenceRepository) resolve(repo string) (string, error) {
	if p := er.StripPrefix; p != "" {
		rest, ok := strings.CutPrefix(repo, p+"/")
		if !ok {
			return "", fmt.Errorf("subject repository %q does not start with %q, the prefix %s strips", repo, p+"/", er)
		}
		repo = rest
	}
	out := strings.ReplaceAll(er.Repository, RepositoryPlaceholder, repo)
	if !isRepositoryName(out) {
		return "", fmt.Errorf("%s gives %q for repository %q, which is not a repository name", er, out, repo)
	}
	return out, nil
}

// repositoryRE is the distribution grammar's path: go-containerregistry's
// own check accepts empty components, and a name read here is put into
// upstream URLs.
var repositoryRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

func isRepositoryName(s string) bool {
	return len(s) <= maxRepositoryLength && repositoryRE.MatchString(s)
}

// maxRepositoryLength is the distribution specification's limit.
const maxRepositoryLength = 255

// compileEvidence lists the distinct places a boundary's evidence is
// read from, the signatures' first; the zero value is the subject's own
// repository. A rule without a repository reads where signatures are.
func compileEvidence(b *Boundary) ([]EvidenceRepository, error) {
	var sig EvidenceRepository // the subject's own repository
	if b.SignatureRepository != nil {
		sig = *b.SignatureRepository
		if err := sig.validate(); err != nil {
			return nil, fmt.Errorf("signature repository %w", err)
		}
	}
	out := []EvidenceRepository{sig}
	for _, r := range b.Attestations {
		if r.Repository == nil {
			continue
		}
		if err := r.Repository.validate(); err != nil {
			return nil, &ruleError{r.Name, fmt.Errorf("repository %w", err)}
		}
		if !slices.Contains(out, *r.Repository) {
			out = append(out, *r.Repository)
		}
	}
	return out, nil
}

// location is one resolved place a run reads evidence from.
type location struct {
	upstream, repo string
	f              Fetcher
	// own says it is the subject's own repository; evidence from
	// anywhere else is labelled with where it was found.
	own bool
	// checked lists what was looked up there, for a denial's reasons.
	checked []string
}

func (l *location) String() string { return l.upstream + "/" + l.repo }

// locate resolves the boundary's evidence places for the run's subject.
// A place that cannot be resolved or read (the subject outside a strip
// prefix, an upstream this caller cannot read) is returned as the reason
// for a denial: evidence the policy says is there cannot be looked at,
// and looking anywhere else instead would not be the policy.
func (r *run) locate() string {
	s := r.s
	for _, er := range r.cb.evidence {
		l := &location{upstream: s.Upstream, repo: s.Repository, f: r.f}
		if er != (EvidenceRepository{}) {
			repo, err := er.resolve(s.Repository)
			if err != nil {
				return "evidence repository: " + err.Error()
			}
			l.upstream, l.repo = er.Upstream, repo
			if er.Upstream != s.Upstream {
				var ok bool
				if s.Fetchers != nil {
					l.f, ok = s.Fetchers.FetcherFor(er.Upstream)
				}
				if !ok || l.f == nil {
					return fmt.Sprintf("evidence repository %s: upstream %q cannot be read (not a configured upstream)", l, er.Upstream)
				}
			}
		}
		l.own = l.upstream == s.Upstream && l.repo == s.Repository
		// Two templates may resolve to one place; it is read once.
		if !slices.ContainsFunc(r.locs, func(x *location) bool { return x.upstream == l.upstream && x.repo == l.repo }) {
			r.locs = append(r.locs, l)
		}
	}
	return ""
}

// foreign reports whether any evidence is read outside the subject's own
// repository.
func (r *run) foreign() bool {
	for _, l := range r.locs {
		if !l.own {
			return true
		}
	}
	return false
}

// noSignatures says where signatures were looked for and not found.
func (r *run) noSignatures() string {
	if !r.foreign() {
		var checked []string
		for _, l := range r.locs {
			checked = append(checked, l.checked...)
		}
		return fmt.Sprintf("no signatures found (checked %s)", strings.Join(checked, ", "))
	}
	var parts []string
	for _, l := range r.locs {
		if len(l.checked) > 0 {
			parts = append(parts, fmt.Sprintf("%s (checked %s)", l, strings.Join(l.checked, ", ")))
		}
	}
	return "no signatures found in " + strings.Join(parts, "; ")
}

// lookedIn names the places evidence was read from when any is not the
// subject's own, so a denial says where its evidence was missing.
func (r *run) lookedIn() string {
	if !r.foreign() {
		return ""
	}
	names := make([]string, len(r.locs))
	for i, l := range r.locs {
		names[i] = l.String()
	}
	return "evidence looked up in " + strings.Join(names, ", ")
}
