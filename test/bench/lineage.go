package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/test/internal/harness"
	"github.com/portcullis-oci/portcullis/verify"
)

// lineageAlias is the alias of the lineage Portcullis's upstream that
// provenance statements name as the registry of their dependencies. A
// dependency's registry is only ever a lookup key into the configured
// upstreams, and it must look like a host, which the upstream's name
// ("origin") does not.
const lineageAlias = "origin.bench.test"

// lineageBuilder is the builder the bench's provenance statements name.
const lineageBuilder = "https://ci.bench.test/builder@v1"

// lineageLevels are the repositories of one chain, root first: the model
// is built from a base model, the base model from a dataset, the dataset
// from a raw corpus. Every level but the corpus carries provenance naming
// the next one.
var lineageLevels = []struct {
	repo    string // under the direct registry
	depName string // name of this level in its parent's provenance
	dataset bool   // pushed as a ModelPack dataset rather than a model
}{
	{repo: "lineage/model"},
	{repo: "lineage/base", depName: "base-model"},
	{repo: "lineage/dataset", depName: "dataset", dataset: true},
	{repo: "lineage/corpus", depName: "corpus", dataset: true},
}

// lineageResult is the lineage phase's measurements.
type lineageResult struct {
	chains int
	cold   cell // first GET of each root: four verifications
	// single is the first GET of a signed corpus with no provenance: one
	// cold verification, in the same Portcullis, the unit cold is
	// compared with.
	single cell
	// attested is the first GET of a signed model with provenance under
	// a boundary that requires the provenance but follows no lineage: one
	// cold verification of a subject like the chain's upper three.
	attested   cell
	depsCached cell // first GET of a root whose dependencies are verified
	cached     cell // repeated GETs of verified roots
	// denied is the 403 message of a chain whose corpus is unsigned.
	denied string
	// tagsSaved and tagsMissed are the lineage Portcullis's
	// portcullis_evidence_tag_predictions_total after the cold rows: .sig
	// and .att tags, and indexes of repositories whose .sig tags decide,
	// not read ahead, and of those the ones read after all.
	tagsSaved, tagsMissed float64
	// walkCPU and walkWall are the in-process engine's cost of one whole
	// walk (four verifications, evidence in memory, no verdict cache),
	// averaged over walkN walks.
	walkN             int
	walkCPU, walkWall time.Duration
}

// chain is one pushed lineage chain, root first.
type chain []name.Digest

func (c chain) root() name.Digest { return c[0] }

// lineage measures what lineage costs through a fresh Portcullis: the
// first pull of a model whose depth-3 provenance chain must be verified
// level by level, the first pull of a model whose dependencies were
// verified already, and pulls of a model whose verdict is cached.
func (b *bench) lineage(ctx context.Context) error {
	n := b.sz.lineageChains
	// A key of its own, so the lineage Portcullis trusts nothing the other
	// phases pushed.
	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return err
	}
	host := b.direct.host
	logf("lineage: pushing %d signed depth-3 chains", n+1)
	chains := make([]chain, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i := range n {
		g.Go(func() error {
			defer teardown.Guard()
			c, err := pushChain(gctx, host, fmt.Sprintf("c%d", i), signer, true)
			chains[i] = c
			return err
		})
	}
	var denied chain
	g.Go(func() error {
		defer teardown.Guard()
		c, err := pushChain(gctx, host, "unsigned-corpus", signer, false)
		denied = c
		return err
	})
	if err := g.Wait(); err != nil {
		return fmt.Errorf("push lineage chains: %w", err)
	}
	// Roots whose provenance names a base model of an already pushed
	// chain: once that chain is verified, only the root itself is new.
	reroots := make([]name.Digest, n)
	singles := make([]name.Digest, n)
	attested := make([]name.Digest, n)
	for i := range n {
		d, err := pushLevel(ctx, host, 0, fmt.Sprintf("r%d", i), signer, true, &chains[i][1])
		if err != nil {
			return fmt.Errorf("push lineage root: %w", err)
		}
		reroots[i] = d
		if singles[i], err = pushLevel(ctx, host, len(lineageLevels)-1, fmt.Sprintf("single%d", i), signer, true, nil); err != nil {
			return fmt.Errorf("push single subject: %w", err)
		}
		if attested[i], err = pushSubject(ctx, host, attestedRepo, false, lineageLevels[1].depName, fmt.Sprintf("attested%d", i), signer, true, &chains[i][1]); err != nil {
			return fmt.Errorf("push attested subject: %w", err)
		}
	}

	pc, err := startLineagePortcullis(ctx, b.client, b.pcBin, b.dir, "portcullis-lineage", b.direct.url(), signer.PublicKeyPEM())
	if err != nil {
		return err
	}
	defer pc.proc.Stop()
	t := &pc.target
	res := &lineageResult{chains: n}
	b.res.lineage = res

	// The denied chain first: it proves the walk reaches the corpus, so
	// the allowed roots below really were verified to the bottom.
	msg, err := deniedMessage(ctx, b.client, manifestURL(t, denied.root()))
	if err != nil {
		return fmt.Errorf("lineage: chain with an unsigned corpus: %w", err)
	}
	want := chainText(denied)
	i := strings.Index(msg, want)
	if i < 0 {
		return fmt.Errorf("lineage: denial of the chain with an unsigned corpus does not name the chain %q: %s", want, msg)
	}
	// The first reason naming the chain is enough for the report.
	res.denied = msg[i:]
	if j := strings.IndexAny(res.denied, ";\n"); j >= 0 {
		res.denied = res.denied[:j]
	}

	roots := make([]string, n)
	for i, c := range chains {
		roots[i] = manifestURL(t, c.root())
	}
	get := func(urls []string, requests int) cell {
		return t.measure(func() cell {
			return runLoad(ctx, b.client, probe{method: http.MethodGet, urls: urls, want: http.StatusOK}, requests, 1)
		})
	}
	urlsOf := func(ds []name.Digest) []string {
		urls := make([]string, len(ds))
		for i, d := range ds {
			urls[i] = manifestURL(t, d)
		}
		return urls
	}
	// Each row is the first GET of n subjects of its kind, in order.
	for _, row := range []struct {
		what string
		urls []string
		c    *cell
	}{
		{"roots (whole chains)", roots, &res.cold},
		{"single subjects", urlsOf(singles), &res.single},
		{"subjects with provenance, no lineage", urlsOf(attested), &res.attested},
		{"roots over verified dependencies", urlsOf(reroots), &res.depsCached},
	} {
		logf("lineage: cold GETs of %d %s", n, row.what)
		if *row.c = get(row.urls, n); !row.c.ok() {
			return fmt.Errorf("lineage: cold GET of %s: %d errors, first: %s", row.what, row.c.errors, row.c.firstErr)
		}
	}

	for _, m := range []struct {
		result string
		v      *float64
	}{{"saved", &res.tagsSaved}, {"missed", &res.tagsMissed}} {
		if *m.v, err = scrapeOr0(ctx, b.client, pc.metricsURL(), `portcullis_evidence_tag_predictions_total{result="`+m.result+`"}`); err != nil {
			return fmt.Errorf("lineage: %w", err)
		}
	}

	logf("lineage: cached GETs")
	runLoad(ctx, b.client, probe{method: http.MethodGet, urls: roots, want: http.StatusOK}, min(b.sz.lineageCached, 200), 1)
	if res.cached = get(roots, b.sz.lineageCached); !res.cached.ok() {
		return fmt.Errorf("lineage: cached GET: %d errors, first: %s", res.cached.errors, res.cached.firstErr)
	}
	pc.proc.Stop()

	logf("lineage: in-process walks")
	walks := max(b.sz.verifyRuns/4, 1)
	if res.walkCPU, res.walkWall, err = measureLineageWalk(ctx, walks); err != nil {
		return fmt.Errorf("in-process lineage walk: %w", err)
	}
	res.walkN = walks
	return nil
}

// pushChain pushes the four levels of one chain, bottom up, since each
// level's provenance names the digest of the one below. With signCorpus
// false the corpus is left unsigned, so the whole chain must be denied.
func pushChain(ctx context.Context, host, id string, s *fixtures.KeySigner, signCorpus bool) (chain, error) {
	c := make(chain, len(lineageLevels))
	for lvl := len(lineageLevels) - 1; lvl >= 0; lvl-- {
		var dep *name.Digest
		if lvl+1 < len(lineageLevels) {
			dep = &c[lvl+1]
		}
		sign := signCorpus || lvl != len(lineageLevels)-1
		d, err := pushLevel(ctx, host, lvl, id, s, sign, dep)
		if err != nil {
			return nil, err
		}
		c[lvl] = d
	}
	return c, nil
}

// pushLevel pushes one ModelPack artifact of level lvl tagged id, with
// content unique to (lvl, id). When sign is set it is signed; when dep is
// set it also gets a key-signed SLSA v1 provenance bundle naming dep
// through the lineage alias.
func pushLevel(ctx context.Context, host string, lvl int, id string, s *fixtures.KeySigner, sign bool, dep *name.Digest) (name.Digest, error) {
	l := lineageLevels[lvl]
	depName := ""
	if lvl+1 < len(lineageLevels) {
		depName = lineageLevels[lvl+1].depName
	}
	return pushSubject(ctx, host, l.repo, l.dataset, depName, id, s, sign, dep)
}

// attestedRepo holds subjects signed and attested like a chain's models,
// under a boundary that requires their provenance and follows none of it.
const attestedRepo = "lineage/attested"

// pushSubject pushes one model or dataset to repo, signed when sign is
// set, with provenance naming dep (as depName) when dep is set.
func pushSubject(ctx context.Context, host, repo string, dataset bool, depName, id string, s *fixtures.KeySigner, sign bool, dep *name.Digest) (name.Digest, error) {
	ref, err := name.ParseReference(host+"/"+repo+":"+id, name.Insecure)
	if err != nil {
		return name.Digest{}, err
	}
	files := map[string][]byte{"data.bin": fmt.Appendf(nil, "%s %s", repo, id)}
	var d name.Digest
	if dataset {
		d, err = fixtures.PushDataset(ctx, ref, files)
	} else {
		d, err = fixtures.PushModel(ctx, ref, files, "")
	}
	if err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	if !sign {
		return d, nil
	}
	if err := fixtures.AttachLegacySignature(ctx, d, s, fixtures.Tamper{}); err != nil {
		return name.Digest{}, fmt.Errorf("sign %s: %w", d, err)
	}
	if dep == nil {
		return d, nil
	}
	built := time.Now().Add(-time.Hour)
	prov := fixtures.SLSAProvenanceV1(lineageBuilder, []fixtures.ResourceDescriptor{{
		Name: depName,
		URI:  "oci://" + lineageAlias + "/" + dep.Context().RepositoryStr() + "@" + dep.DigestStr(),
	}}, built.Add(-time.Hour), built)
	// The fallback tag as well as the subject field: distribution 2.8 has
	// no referrers API.
	_, err = fixtures.AttachBundle(ctx, d, s, fixtures.BundleSpec{
		Placement:     fixtures.PlaceReferrer | fixtures.PlaceFallback,
		PredicateType: fixtures.PredicateSLSAProvenanceV1,
		Predicate:     prov,
	})
	if err != nil {
		return name.Digest{}, fmt.Errorf("attest %s: %w", d, err)
	}
	return d, nil
}

// chainText is how a denial names a chain: each level as
// "repository@sha256:<12 hex>", root first, joined by " ← ".
func chainText(c chain) string {
	labels := make([]string, len(c))
	for i, d := range c {
		hx := strings.TrimPrefix(d.DigestStr(), "sha256:")
		labels[i] = d.Context().RepositoryStr() + "@sha256:" + hx[:min(12, len(hx))]
	}
	return strings.Join(labels, " ← ")
}

// deniedMessage GETs url, requires a 403 and returns the messages and
// details of its OCI error envelope as one string.
func deniedMessage(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusForbidden {
		return "", fmt.Errorf("GET %s: %s, want 403: %.512s", url, resp.Status, body)
	}
	return envelopeText(body)
}

// envelopeText flattens an OCI error envelope into its messages and every
// string in their details, so a check does not depend on where the
// proxy places the reasons.
func envelopeText(body []byte) (string, error) {
	var env struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Detail  any    `json:"detail"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return "", fmt.Errorf("malformed error envelope: %w", err)
	}
	if len(env.Errors) == 0 {
		return "", errors.New("error envelope lists no errors")
	}
	var parts []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			parts = append(parts, x)
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for _, e := range env.Errors {
		parts = append(parts, e.Code+": "+e.Message)
		walk(e.Detail)
	}
	return strings.Join(parts, "\n"), nil
}

// lineageConfig is the lineage Portcullis's configuration: the upstream
// known also by lineageAlias, and a boundary for the models, base models
// and datasets that requires a signature, SLSA v1 provenance and every
// provenance dependency verified three levels down. The corpus falls to
// the catch-all, which requires a signature only: it is the leaf and has
// no provenance to follow.
func lineageConfig(upstream string) harness.Config {
	return benchConfig(upstream, []string{lineageAlias}, harness.Boundary{
		Name: "lineage", Upstream: "origin", Repositories: []string{"lineage/model", "lineage/base", "lineage/dataset"},
		Provenance: true, LineageDepth: 3,
	}, harness.Boundary{
		Name: "attested", Upstream: "origin", Repositories: []string{attestedRepo}, Provenance: true,
	})
}

// startLineagePortcullis runs the binary with lineageConfig, with the
// verdict and manifest caches at their production defaults.
func startLineagePortcullis(ctx context.Context, client *http.Client, bin, dir, name, upstream string, pubPEM []byte) (*portcullis, error) {
	return startPortcullisWith(ctx, client, bin, dir, name, pubPEM, lineageConfig(upstream))
}

// lineageDeps is the engine's dependency verifier for the in-process walk:
// the proxy's lookup of a dependency's registry among the upstreams,
// reduced to the one alias, with no verdict cache, so every walk verifies
// all four subjects again.
type lineageDeps struct {
	eng   *verify.Engine
	fetch verify.Fetcher
}

func (d *lineageDeps) VerifyDependency(ctx context.Context, ref verify.DependencyRef, lc verify.LineageContext) (verify.Verdict, error) {
	if ref.Registry != lineageAlias {
		return verify.Verdict{Digest: ref.Digest.String(), Reasons: []string{"unknown registry " + ref.Registry}}, nil
	}
	m, err := d.fetch.Manifest(ctx, ref.Repository, ref.Digest.String())
	if err != nil {
		return verify.Verdict{}, err
	}
	return d.eng.Verify(ctx, verify.Subject{
		Upstream: "origin", Repository: ref.Repository, Reference: ref.Digest.String(),
		Digest: ref.Digest, MediaType: m.MediaType, Manifest: m.Bytes, Lineage: lc,
	}, d.fetch)
}

// lineagePolicy is lineageConfig's policy as the engine sees it.
func lineagePolicy(pubPEM []byte) verify.Policy {
	auth := verify.Authority{Name: "bench", Key: &verify.KeyAuthority{
		TrustName: "bench-key", Keys: []verify.NamedKey{{Name: "cosign.pub", PEM: pubPEM}},
	}}
	repos := make([]string, 0, len(lineageLevels)-1)
	for _, l := range lineageLevels[:len(lineageLevels)-1] {
		repos = append(repos, l.repo)
	}
	return verify.Policy{Fingerprint: "bench-lineage", Boundaries: []verify.Boundary{
		{
			Name: "lineage", Upstream: "origin", Repositories: repos, Mode: verify.ModeEnforce,
			Threshold: 1, Authorities: []verify.Authority{auth},
			Attestations: []verify.AttestationRule{{Name: "provenance", PredicateType: fixtures.PredicateSLSAProvenanceV1, Authorities: []string{"bench"}}},
			Lineage:      &verify.LineageRule{Depth: 3, Require: []string{"*"}},
		},
		{Name: "everything", Upstream: "*", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1, Authorities: []verify.Authority{auth}},
	}}
}

// measureLineageWalk times n in-process lineage walks of one depth-3
// chain with its evidence already in memory: the engine's own cost of
// verifying four subjects, the network taken out.
func measureLineageWalk(ctx context.Context, n int) (cpu, wall time.Duration, err error) {
	reg, err := fixtures.StartRegistry()
	if err != nil {
		return 0, 0, err
	}
	defer reg.Close()
	signer, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return 0, 0, err
	}
	c, err := pushChain(ctx, reg.Host, "inproc", signer, true)
	if err != nil {
		return 0, 0, err
	}
	eng, err := verify.New(lineagePolicy(signer.PublicKeyPEM()))
	if err != nil {
		return 0, 0, fmt.Errorf("compile lineage policy: %w", err)
	}
	f := fixtures.Memoize(reg.Fetcher())
	root := c.root()
	h, err := v1.NewHash(root.DigestStr())
	if err != nil {
		return 0, 0, err
	}
	m, err := f.Manifest(ctx, root.Context().RepositoryStr(), h.String())
	if err != nil {
		return 0, 0, err
	}
	deps := &lineageDeps{eng: eng, fetch: f}
	subj := verify.Subject{
		Upstream: "origin", Repository: root.Context().RepositoryStr(), Reference: h.String(),
		Digest: h, MediaType: m.MediaType, Manifest: m.Bytes,
		Lineage: verify.LineageContext{Dependencies: deps},
	}
	// The first walk fills the memoizing fetcher; it must allow and reach
	// the corpus, or the loop would time something shorter.
	v, err := eng.Verify(ctx, subj, f)
	if err != nil {
		return 0, 0, err
	}
	if !v.Allowed {
		return 0, 0, fmt.Errorf("in-process lineage walk denied: %q", v.Reasons)
	}
	if got := walkDepth(v.Lineage); got != len(lineageLevels)-1 {
		return 0, 0, fmt.Errorf("in-process lineage walk went %d levels deep, want %d", got, len(lineageLevels)-1)
	}
	cpu0, t0 := cpuTime(), time.Now()
	for range n {
		v, err := eng.Verify(ctx, subj, f)
		if err != nil || !v.Allowed {
			return 0, 0, fmt.Errorf("in-process lineage walk changed its mind: %v %q", err, v.Reasons)
		}
	}
	return (cpuTime() - cpu0) / time.Duration(n), time.Since(t0) / time.Duration(n), nil
}

// walkDepth is how many levels of followed dependencies a verdict records.
func walkDepth(deps []verify.Dependency) int {
	d := 0
	for _, dep := range deps {
		if dep.Verdict != nil {
			d = max(d, 1+walkDepth(dep.Verdict.Lineage))
		}
	}
	return d
}
