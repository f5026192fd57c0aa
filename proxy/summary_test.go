package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/portcullis-oci/portcullis/verify/summary"
)

// summaryEnv is a signed image with provenance in acme/app behind a proxy
// running the real engine, with a verdict cache and summaries on.
type summaryEnv struct {
	reg    *upstreamRegistry
	img    pushed
	proxy  *Proxy
	spy    *spy
	vc     *mapVerdicts
	signer *summary.Signer
	key    *fixtures.KeySigner // the summary key
	eng    *engineSpy
}

func newSummarySigner(t testing.TB) (*summary.Signer, *fixtures.KeySigner) {
	t.Helper()
	k := newKey(t)
	s, err := summary.NewSigner(k.PrivateKey())
	if err != nil {
		t.Fatal(err)
	}
	return s, k
}

func newSummaryEnv(t testing.TB, opts ...Option) *summaryEnv {
	t.Helper()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	release := newKey(t)
	reg.sign(t, "acme/app", img.digest, release)
	reg.attachProvenance(t, "acme/app", img.digest, release)
	eng := newEngineSpy(t, verify.Policy{Boundaries: []verify.Boundary{{
		Name: "prod", Mode: verify.ModeEnforce, Threshold: 1,
		Authorities:  []verify.Authority{keyAuthority("release", release)},
		Attestations: []verify.AttestationRule{provenanceRule("release")},
	}}})
	signer, key := newSummarySigner(t)
	vc := newMapVerdicts()
	p, s := newTestProxy(t, reg.srv.URL, eng, append([]Option{WithVerdictCache(vc), WithSummaries(signer, 0)}, opts...)...)
	return &summaryEnv{reg: reg, img: img, proxy: p, spy: s, vc: vc, signer: signer, key: key, eng: eng}
}

func (c *mapVerdicts) remove(k string) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

// referrers lists the referrers of d in repo through the proxy.
func referrers(t testing.TB, p http.Handler, repo string, d v1.Hash, query string) v1.IndexManifest {
	t.Helper()
	w := do(p, http.MethodGet, "/v2/"+repo+"/referrers/"+d.String()+"?ns=docker.io"+query)
	if w.Code != http.StatusOK {
		t.Fatalf("referrers of %s = %d %s", d, w.Code, w.Body)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(w.Body.Bytes(), &idx); err != nil {
		t.Fatal(err)
	}
	return idx
}

// summaryListed returns the summary descriptors among the referrers.
func summaryListed(idx v1.IndexManifest) []v1.Descriptor {
	var out []v1.Descriptor
	for _, d := range idx.Manifests {
		if d.Annotations[summary.AnnotationPredicateType] == summary.PredicateType {
			out = append(out, d)
		}
	}
	return out
}

// fetchSummary reads the summary manifest and bundle through the proxy
// and checks the bundle with the summary key; it returns the manifest and
// the signed statement.
func fetchSummary(t testing.TB, e *summaryEnv, repo string, desc v1.Descriptor, subject v1.Hash) (v1.Manifest, []byte) {
	t.Helper()
	w := do(e.proxy, http.MethodGet, manifestPath(repo, desc.Digest.String()))
	if w.Code != http.StatusOK {
		t.Fatalf("summary manifest = %d %s", w.Code, w.Body)
	}
	if sha(w.Body.Bytes()) != desc.Digest || w.Header().Get("Docker-Content-Digest") != desc.Digest.String() ||
		w.Header().Get("Content-Type") != string(types.OCIManifestSchema1) {
		t.Fatalf("summary manifest served as %s %s, hashing to %s", w.Header().Get("Content-Type"), w.Header().Get("Docker-Content-Digest"), sha(w.Body.Bytes()))
	}
	var m v1.Manifest
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m.Subject == nil || m.Subject.Digest != subject || len(m.Layers) != 1 {
		t.Fatalf("summary manifest = %s", w.Body)
	}
	w = do(e.proxy, http.MethodGet, blobPath(repo, m.Layers[0].Digest))
	if w.Code != http.StatusOK || sha(w.Body.Bytes()) != m.Layers[0].Digest || w.Header().Get("Content-Type") != summary.BundleMediaType {
		t.Fatalf("summary bundle = %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	st, err := summary.VerifyBundle(w.Body.Bytes(), e.key.PrivateKey().Public(), subject)
	if err != nil {
		t.Fatalf("the served summary does not verify with the summary key: %v", err)
	}
	if w := do(e.proxy, http.MethodGet, blobPath(repo, m.Config.Digest)); w.Code != http.StatusOK || w.Body.String() != "{}" {
		t.Fatalf("summary config = %d %q", w.Code, w.Body)
	}
	return m, st
}

func TestSummaryOfAnAllowedImage(t *testing.T) {
	t.Parallel()
	e := newSummaryEnv(t)
	if w := do(e.proxy, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("pull = %d %s", w.Code, w.Body)
	}
	idx := referrers(t, e.proxy, "acme/app", e.img.digest, "")
	sums := summaryListed(idx)
	if len(sums) != 1 || sums[0].ArtifactType != summary.BundleMediaType || sums[0].MediaType != types.OCIManifestSchema1 {
		t.Fatalf("summaries listed = %+v in %+v", sums, idx.Manifests)
	}
	if len(idx.Manifests) < 3 {
		t.Errorf("the upstream's referrers are missing next to the summary: %+v", idx.Manifests)
	}
	m, st := fetchSummary(t, e, "acme/app", sums[0], e.img.digest)
	if m.Subject.MediaType != types.MediaType(e.img.mt) || m.Subject.Size != int64(len(e.img.raw)) {
		t.Errorf("subject descriptor = %+v, want %s of %d bytes", m.Subject, e.img.mt, len(e.img.raw))
	}
	var vsa struct {
		Subject []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		Predicate struct {
			ResourceURI string `json:"resourceUri"`
			Policy      struct {
				Digest map[string]string `json:"digest"`
			} `json:"policy"`
			InputAttestations []struct {
				Digest map[string]string `json:"digest"`
			} `json:"inputAttestations"`
			VerificationResult string   `json:"verificationResult"`
			VerifiedLevels     []string `json:"verifiedLevels"`
			TimeVerified       time.Time
		} `json:"predicate"`
	}
	if err := json.Unmarshal(st, &vsa); err != nil {
		t.Fatal(err)
	}
	v, ok := e.vc.Get(verdictKey(e.eng.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", e.img.digest))
	if !ok || len(v.Attestations) != 1 || v.Attestations[0].Digest == "" {
		t.Fatalf("cached verdict = %+v", v)
	}
	fp := strings.TrimPrefix(e.eng.FingerprintFor("docker.io", "acme/app"), "sha256:")
	if vsa.Subject[0].Digest["sha256"] != e.img.digest.Hex || vsa.Predicate.ResourceURI != "oci://docker.io/acme/app@"+e.img.digest.String() ||
		vsa.Predicate.VerificationResult != "PASSED" || len(vsa.Predicate.VerifiedLevels) != 1 ||
		len(vsa.Predicate.InputAttestations) != 1 || "sha256:"+vsa.Predicate.InputAttestations[0].Digest["sha256"] != v.Attestations[0].Digest ||
		(len(fp) == 64 && vsa.Predicate.Policy.Digest["sha256"] != fp) {
		t.Errorf("statement = %s\nverdict attestations = %+v", st, v.Attestations)
	}

	// Made once per verdict: asked again, the same summary.
	if again := summaryListed(referrers(t, e.proxy, "acme/app", e.img.digest, "")); len(again) != 1 || again[0].Digest != sums[0].Digest {
		t.Errorf("second listing = %+v, want the same summary %s", again, sums[0].Digest)
	}
	// Filtered to the bundle type, it is still there.
	if f := summaryListed(referrers(t, e.proxy, "acme/app", e.img.digest, "&artifactType="+url.QueryEscape(summary.BundleMediaType))); len(f) != 1 {
		t.Errorf("filtered listing = %+v", f)
	}
	// Nothing was ever written upstream.
	for _, r := range e.spy.since(0) {
		if !strings.HasPrefix(r, http.MethodGet+" ") && !strings.HasPrefix(r, http.MethodHead+" ") {
			t.Errorf("upstream request %q", r)
		}
	}
	// Served in that repository only.
	for _, target := range []string{manifestPath("acme/other", sums[0].Digest.String()), "/v2/acme/app/manifests/" + sums[0].Digest.String() + "?ns=ghcr.io"} {
		if w := do(e.proxy, http.MethodGet, target); w.Code == http.StatusOK {
			t.Errorf("GET %s = 200: a summary served outside its repository", target)
		}
	}
	if w := do(e.proxy, http.MethodHead, manifestPath("acme/app", sums[0].Digest.String())); w.Code != http.StatusOK || w.Body.Len() != 0 ||
		w.Header().Get("Content-Length") != strconv.FormatInt(sums[0].Size, 10) {
		t.Errorf("HEAD summary = %d, %d body bytes, length %s", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
}

func TestSummaryWithoutAPriorPull(t *testing.T) {
	t.Parallel()
	e := newSummaryEnv(t)
	// cosign verify-attestation by digest lists referrers without pulling.
	sums := summaryListed(referrers(t, e.proxy, "acme/app", e.img.digest, ""))
	if len(sums) != 1 {
		t.Fatalf("summaries = %+v", sums)
	}
	fetchSummary(t, e, "acme/app", sums[0], e.img.digest)
	if n := e.eng.callsFor(e.img.digest); n != 1 {
		t.Errorf("verifications of the subject = %d, want 1", n)
	}
}

func TestSummaryConcurrentAskersShareOne(t *testing.T) {
	t.Parallel()
	e := newSummaryEnv(t)
	const n = 8
	got := make([]v1.Hash, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if ds := e.proxy.summaryDescriptors(context.Background(), e.proxy.router.byKey["docker.io"], "acme/app", e.img.digest); len(ds) == 1 {
				got[i] = ds[0].Digest
			}
		})
	}
	wg.Wait()
	for i, d := range got {
		if d != got[0] || d.Hex == "" {
			t.Fatalf("asker %d got %v, asker 0 %v: want one summary for all", i, d, got[0])
		}
	}
	if n := e.eng.callsFor(e.img.digest); n != 1 {
		t.Errorf("verifications = %d, want 1", n)
	}
}

func TestSummaryLivesWithItsVerdict(t *testing.T) {
	t.Parallel()
	e := newSummaryEnv(t)
	first := summaryListed(referrers(t, e.proxy, "acme/app", e.img.digest, ""))
	if len(first) != 1 {
		t.Fatalf("summaries = %+v", first)
	}
	m, _ := fetchSummary(t, e, "acme/app", first[0], e.img.digest)
	// The verdict expires: its summary, bundle and config go with it.
	e.vc.remove(verdictKey(e.eng.FingerprintFor("docker.io", "acme/app"), "docker.io", "acme/app", e.img.digest))
	if w := do(e.proxy, http.MethodGet, manifestPath("acme/app", first[0].Digest.String())); w.Code == http.StatusOK {
		t.Error("a summary was served after its verdict expired")
	}
	if w := do(e.proxy, http.MethodGet, blobPath("acme/app", m.Layers[0].Digest)); w.Code == http.StatusOK {
		t.Error("a summary bundle was served after its verdict expired")
	}
	// The next verdict gets its own summary.
	next := summaryListed(referrers(t, e.proxy, "acme/app", e.img.digest, ""))
	if len(next) != 1 || next[0].Digest == first[0].Digest {
		t.Fatalf("after a new verdict: %+v, first %s", next, first[0].Digest)
	}
	fetchSummary(t, e, "acme/app", next[0], e.img.digest)
	if n := e.eng.callsFor(e.img.digest); n != 2 {
		t.Errorf("verifications = %d, want 2", n)
	}
}

// withFakeSummaries is a proxy over an image with v deciding, a verdict
// cache and summaries on.
func withFakeSummaries(t *testing.T, v *fakeVerifier) (*Proxy, *mapVerdicts, pushed) {
	t.Helper()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	signer, _ := newSummarySigner(t)
	vc := newMapVerdicts()
	p, _ := newTestProxy(t, reg.srv.URL, v, WithVerdictCache(vc), WithSummaries(signer, 0))
	return p, vc, img
}

func TestNoSummaryWithoutAnEnforceAllow(t *testing.T) {
	t.Parallel()
	warnAllow := &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		return verify.Verdict{Allowed: true, Mode: verify.ModeWarn, Boundary: "prod", Digest: s.Digest.String()}, nil
	}}
	unmatched := &fakeVerifier{fn: func(_ context.Context, s verify.Subject) (verify.Verdict, error) {
		return verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Digest: s.Digest.String()}, nil
	}}
	for name, v := range map[string]*fakeVerifier{
		"deny": denyAll(verify.ModeEnforce), "warn-mode deny": denyAll(verify.ModeWarn),
		"warn-mode allow": warnAllow, "unmatched allow": unmatched,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _, img := withFakeSummaries(t, v)
			do(p, http.MethodGet, manifestPath("acme/app", "v1"))
			if s := summaryListed(referrers(t, p, "acme/app", img.digest, "")); len(s) != 0 {
				t.Errorf("summary listed: %+v", s)
			}
			if w := do(p.AdminHandler(), http.MethodGet, "/v1/decisions/"+img.digest.String()+"/summary?upstream=docker.io&repository=acme/app"); w.Code != http.StatusNotFound {
				t.Errorf("admin summary = %d %s", w.Code, w.Body)
			}
		})
	}
}

func TestNoSummaryOfAnotherFingerprintsVerdict(t *testing.T) {
	t.Parallel()
	p, vc, img := withFakeSummaries(t, denyAll(verify.ModeEnforce))
	// An allow decided under another policy is in the cache.
	vc.Add(verdictKey("sha256:"+strings.Repeat("e", 64), "docker.io", "acme/app", img.digest),
		verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: img.digest.String(), CheckedAt: time.Now()})
	if s := summaryListed(referrers(t, p, "acme/app", img.digest, "")); len(s) != 0 {
		t.Errorf("summary of another policy's verdict: %+v", s)
	}

	// A summary made under one policy is not served once the policy changed.
	v := allowAll()
	p, _, img = withFakeSummaries(t, v)
	sums := summaryListed(referrers(t, p, "acme/app", img.digest, ""))
	if len(sums) != 1 {
		t.Fatalf("summaries = %+v", sums)
	}
	if w := do(p, http.MethodGet, manifestPath("acme/app", sums[0].Digest.String())); w.Code != http.StatusOK {
		t.Fatalf("summary manifest = %d", w.Code)
	}
	v.setFingerprint("sha256:" + strings.Repeat("f", 64))
	if w := do(p, http.MethodGet, manifestPath("acme/app", sums[0].Digest.String())); w.Code == http.StatusOK {
		t.Error("a summary of the previous policy was served")
	}
	after := summaryListed(referrers(t, p, "acme/app", img.digest, ""))
	if len(after) != 1 || after[0].Digest == sums[0].Digest {
		t.Errorf("under the new policy: %+v", after)
	}
}

func TestNoSummaryWithoutAVerdictCache(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/app", "v1")
	signer, _ := newSummarySigner(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll(), WithSummaries(signer, 0))
	if s := summaryListed(referrers(t, p, "acme/app", img.digest, "")); len(s) != 0 {
		t.Errorf("summary without a verdict to live with: %+v", s)
	}
	if _, err := New([]Upstream{{Name: "x", URL: reg.srv.URL, Insecure: true}}, allowAll(), WithSummaries(nil, 0)); err == nil {
		t.Error("WithSummaries(nil) accepted")
	}
	if _, err := New([]Upstream{{Name: "x", URL: reg.srv.URL, Insecure: true}}, allowAll(), WithSummaries(signer, -1)); err == nil {
		t.Error("a negative summary cache size accepted")
	}
}

func TestSummaryAdmin(t *testing.T) {
	t.Parallel()
	e := newSummaryEnv(t)
	admin := e.proxy.AdminHandler()
	path := "/v1/decisions/" + e.img.digest.String() + "/summary"
	// No decision yet, nothing named: unknown.
	if w := do(admin, http.MethodGet, path); w.Code != http.StatusNotFound {
		t.Errorf("before any pull = %d %s", w.Code, w.Body)
	}
	if w := do(e.proxy, http.MethodGet, manifestPath("acme/app", "v1")); w.Code != http.StatusOK {
		t.Fatalf("pull = %d", w.Code)
	}
	var bundles [][]byte
	for _, target := range []string{path, path + "?upstream=docker.io&repository=acme/app", path + "?upstream=index.docker.io&repository=acme/app"} {
		w := do(admin, http.MethodGet, target)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != summary.BundleMediaType {
			t.Fatalf("GET %s = %d %s", target, w.Code, w.Body)
		}
		if _, err := summary.VerifyBundle(w.Body.Bytes(), e.key.PrivateKey().Public(), e.img.digest); err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		bundles = append(bundles, w.Body.Bytes())
	}
	for _, b := range bundles[1:] {
		if string(b) != string(bundles[0]) {
			t.Error("the admin API made another summary of the same verdict")
		}
	}
	// The same summary is the referrer.
	sums := summaryListed(referrers(t, e.proxy, "acme/app", e.img.digest, ""))
	if m, _ := fetchSummary(t, e, "acme/app", sums[0], e.img.digest); m.Layers[0].Digest != sha(bundles[0]) {
		t.Error("the admin API's bundle is not the referrer's")
	}
	for target, want := range map[string]int{
		"/v1/decisions/sha256:" + strings.Repeat("0", 64) + "/summary":                                 http.StatusNotFound,
		"/v1/decisions/sha256:nothex/summary":                                                          http.StatusBadRequest,
		path + "?upstream=docker.io":                                                                   http.StatusBadRequest,
		path + "?repository=acme/app":                                                                  http.StatusBadRequest,
		path + "?upstream=evil.example&repository=acme/app":                                            http.StatusNotFound,
		path + "?upstream=docker.io&repository=acme/../etc":                                            http.StatusBadRequest,
		path + "?upstream=docker.io&repository=acme/other":                                             http.StatusNotFound,
		"/v1/decisions/" + e.img.digest.String() + "/summary?upstream=ghcr.io&repository=acme/nothing": http.StatusNotFound,
	} {
		if w := do(admin, http.MethodGet, target); w.Code != want {
			t.Errorf("GET %s = %d %s, want %d", target, w.Code, w.Body, want)
		}
	}

	// Without summaries configured the route says so.
	reg := newRegistry(t)
	p, _ := newTestProxy(t, reg.srv.URL, allowAll())
	if w := do(p.AdminHandler(), http.MethodGet, path); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "not configured") {
		t.Errorf("without summaries = %d %s", w.Code, w.Body)
	}
}

// cosign3 is the cosign v3 binary test/e2e/install.sh builds.
func cosign3Bin() string {
	dir := os.Getenv("E2E_BIN")
	if dir == "" {
		dir = "/usr/local/e2e/bin"
	}
	return filepath.Join(dir, "cosign3")
}

// TestCosignVerifiesSummary has cosign v3 verify the summary through the
// proxy, as a client would: referrers, manifest, bundle.
func TestCosignVerifiesSummary(t *testing.T) {
	t.Parallel()
	bin := cosign3Bin()
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		if os.Getenv("PORTCULLIS_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s: not installed (PORTCULLIS_REQUIRE_TOOLS=1; run test/e2e/install.sh)", bin)
		}
		t.Skipf("%s not installed", bin)
	}
	e := newSummaryEnv(t, WithDefaultUpstream("docker.io"))
	srv := httptest.NewServer(e.proxy)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	pub, err := e.signer.PublicKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	for f, b := range map[string][]byte{
		"portcullis.pub":    pub,
		"trusted_root.json": []byte(`{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`),
		"other.pub":         newKey(t).PublicKeyPEM(),
	} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/acme/app@" + e.img.digest.String()
	run := func(key string) (string, error) {
		cmd := exec.Command(bin, "verify-attestation", "--key", key, "--type", summary.PredicateType,
			"--insecure-ignore-tlog=true", "--allow-http-registry", "--trusted-root", "trusted_root.json", ref)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "TUF_ROOT="+t.TempDir(), "HOME="+t.TempDir(), "COSIGN_EXPERIMENTAL=0")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("portcullis.pub")
	if err != nil {
		t.Fatalf("cosign verify-attestation rejected the summary: %v\n%s", err, out)
	}
	// cosign prints each verified envelope on a line of its own.
	verified := false
	for _, line := range strings.Split(out, "\n") {
		var env struct {
			Payload []byte `json:"payload"`
		}
		var st struct {
			PredicateType string `json:"predicateType"`
		}
		if json.Unmarshal([]byte(line), &env) == nil && json.Unmarshal(env.Payload, &st) == nil && st.PredicateType == summary.PredicateType {
			verified = true
		}
	}
	if !verified {
		t.Errorf("cosign printed no verified summary:\n%s", out)
	}
	// With another key it fails, so the success above is the summary's.
	if out, err := run("other.pub"); err == nil {
		t.Fatalf("cosign verify-attestation accepted the summary with another key:\n%s", out)
	}
}

// TestSummaryNotListedNextToLegacySignatures: cosign v2 reads only bundles
// once any referrer is one, so a summary listed next to an image signed
// only with a legacy .sig would make cosign v2 fail through the proxy. It
// is made, and served by the admin API, but not listed.
func TestSummaryNotListedNextToLegacySignatures(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	img := reg.pushImage(t, "acme/legacy", "v1")
	release := newKey(t)
	signLegacy(t, reg, "acme/legacy", img.digest, release)
	eng := newEngineSpy(t, evidencePolicy(release))
	signer, _ := newSummarySigner(t)
	p, _ := newTestProxy(t, reg.srv.URL, eng, WithVerdictCache(newMapVerdicts()), WithSummaries(signer, 0))
	if w := do(p, http.MethodGet, manifestPath("acme/legacy", "v1")); w.Code != http.StatusOK {
		t.Fatalf("legacy-signed image = %d %s", w.Code, w.Body)
	}
	if got := summaryListed(referrers(t, p, "acme/legacy", img.digest, "")); len(got) != 0 {
		t.Errorf("a summary is listed next to a legacy-only signature: %v", got)
	}
	if w := do(p.AdminHandler(), http.MethodGet, "/v1/decisions/"+img.digest.String()+"/summary"); w.Code != http.StatusOK {
		t.Errorf("admin summary of the legacy-signed image = %d %s", w.Code, w.Body)
	}
}
