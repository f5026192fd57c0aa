package proxy

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// testBuilder is the builder id the provenance fixtures carry.
const testBuilder = "https://github.com/acme/app/.github/workflows/build.yml@refs/heads/main"

// engineSpy is the real verify.Engine seen through a window: it counts and
// records the subjects handed to it, can hold a verification at a hook
// before it starts (to force a schedule), and can swap in another engine
// the way a policy reload would. Every decision is the engine's own.
type engineSpy struct {
	eng   atomic.Pointer[verify.Engine]
	calls atomic.Int64
	// hook, when set before the proxy is used, runs before each
	// verification; an error is returned as the Verifier's.
	hook func(ctx context.Context, s verify.Subject) error

	mu       sync.Mutex
	subjects map[v1.Hash][]verify.Subject
}

var (
	_ Verifier = (*engineSpy)(nil)
	_ Verifier = (*verify.Engine)(nil)
)

func newEngineSpy(t testing.TB, p verify.Policy) *engineSpy {
	t.Helper()
	s := &engineSpy{subjects: map[v1.Hash][]verify.Subject{}}
	s.swap(t, p)
	return s
}

// swap replaces the engine with one compiled from p.
func (s *engineSpy) swap(t testing.TB, p verify.Policy) {
	t.Helper()
	e, err := verify.New(p)
	if err != nil {
		t.Fatal(err)
	}
	s.eng.Store(e)
}

func (s *engineSpy) Verify(ctx context.Context, subj verify.Subject, f verify.Fetcher) (verify.Verdict, error) {
	s.calls.Add(1)
	s.mu.Lock()
	s.subjects[subj.Digest] = append(s.subjects[subj.Digest], subj)
	s.mu.Unlock()
	if s.hook != nil {
		if err := s.hook(ctx, subj); err != nil {
			return verify.Verdict{}, err
		}
	}
	return s.eng.Load().Verify(ctx, subj, f)
}

func (s *engineSpy) Fingerprint() string { return s.eng.Load().Fingerprint() }

func (s *engineSpy) FingerprintFor(upstream, repo string) string {
	return s.eng.Load().FingerprintFor(upstream, repo)
}

func (s *engineSpy) BoundaryName(upstream, repo, artifactType string) (string, bool) {
	return s.eng.Load().BoundaryName(upstream, repo, artifactType)
}

func (s *engineSpy) BlobMode(upstream, repo string) (string, verify.Mode, bool) {
	return s.eng.Load().BlobMode(upstream, repo)
}

func (s *engineSpy) callsFor(d v1.Hash) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subjects[d])
}

func (s *engineSpy) subjectsOf(d v1.Hash) []verify.Subject {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.subjects[d])
}

func newKey(t testing.TB) *fixtures.KeySigner {
	t.Helper()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyAuthority(authority string, k *fixtures.KeySigner) verify.Authority {
	return verify.Authority{Name: authority, Key: &verify.KeyAuthority{
		TrustName: authority,
		Keys:      []verify.NamedKey{{Name: authority + ".pub", PEM: k.PublicKeyPEM()}},
	}}
}

// keyEngine is a real engine with one enforcing boundary over every
// repository of every upstream that requires a signature by k.
func keyEngine(t testing.TB, k *fixtures.KeySigner) *verify.Engine {
	t.Helper()
	eng, err := verify.New(verify.Policy{Boundaries: []verify.Boundary{{
		Name: "all", Upstream: "*", Repositories: []string{"**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{keyAuthority("release", k)},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// provenanceRule requires a SLSA v1 provenance signed by authority.
func provenanceRule(authority string) verify.AttestationRule {
	return verify.AttestationRule{Name: "provenance", PredicateType: fixtures.PredicateSLSAProvenanceV1, Authorities: []string{authority}}
}

// ref names repo@d at the registry.
func (u *upstreamRegistry) ref(t testing.TB, repo string, d v1.Hash) name.Digest {
	t.Helper()
	r, err := name.NewDigest(u.host+"/"+repo+"@"+d.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sign attaches a sigstore bundle signature over repo@d made with k, as
// `cosign sign --key` writes it.
func (u *upstreamRegistry) sign(t testing.TB, repo string, d v1.Hash, k *fixtures.KeySigner) {
	t.Helper()
	if _, err := fixtures.AttachBundle(context.Background(), u.ref(t, repo, d), k, fixtures.BundleSpec{}); err != nil {
		t.Fatal(err)
	}
}

// attachProvenance attaches a SLSA v1 provenance about repo@d signed by k,
// listing deps. The bundle is a DSSE statement about d, so it also counts
// as a signature.
func (u *upstreamRegistry) attachProvenance(t testing.TB, repo string, d v1.Hash, k *fixtures.KeySigner, deps ...fixtures.ResourceDescriptor) {
	t.Helper()
	now := time.Now()
	spec := fixtures.BundleSpec{PredicateType: fixtures.PredicateSLSAProvenanceV1, Predicate: fixtures.SLSAProvenanceV1(testBuilder, deps, now, now)}
	if _, err := fixtures.AttachBundle(context.Background(), u.ref(t, repo, d), k, spec); err != nil {
		t.Fatal(err)
	}
}

// model is a CNCF ModelPack artifact pushed to a registry.
type model struct {
	desc    v1.Descriptor // as an index lists it
	weights []v1.Hash     // its layers
}

// pushModel pushes a ModelPack model of one weight file, distinct per
// content.
func (u *upstreamRegistry) pushModel(t testing.TB, repo, tag, content string) model {
	t.Helper()
	ref, err := name.ParseReference(u.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	weights := []byte(content)
	d, err := fixtures.PushModel(context.Background(), ref, map[string][]byte{"model.safetensors": weights}, "")
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(d)
	if err != nil {
		t.Fatal(err)
	}
	desc.ArtifactType = fixtures.MediaTypeModelManifest
	return model{desc: *desc, weights: []v1.Hash{sha(weights)}}
}

// describe returns the descriptor an index lists repo@d under.
func (u *upstreamRegistry) describe(t testing.TB, repo string, d v1.Hash) v1.Descriptor {
	t.Helper()
	desc, err := remote.Head(u.ref(t, repo, d))
	if err != nil {
		t.Fatal(err)
	}
	return *desc
}

type rawIndex []byte

func (r rawIndex) RawManifest() ([]byte, error)        { return r, nil }
func (r rawIndex) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }

// pushRawIndex pushes an OCI index listing children (already in repo).
func (u *upstreamRegistry) pushRawIndex(t testing.TB, repo, tag string, children ...v1.Descriptor) v1.Hash {
	t.Helper()
	raw, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: children})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref, rawIndex(raw)); err != nil {
		t.Fatal(err)
	}
	return sha(raw)
}

// manifestPath is the proxy path of repo@d at the docker.io upstream.
func manifestPath(repo string, ref string) string {
	return "/v2/" + repo + "/manifests/" + ref + "?ns=docker.io"
}

func blobPath(repo string, d v1.Hash) string {
	return "/v2/" + repo + "/blobs/" + d.String() + "?ns=docker.io"
}

// lastDecision is the most recent decision about digest d.
func lastDecision(t testing.TB, p *Proxy, d v1.Hash) Decision {
	t.Helper()
	for _, dec := range p.decisions.list() {
		if dec.Digest == d.String() {
			return dec
		}
	}
	t.Fatalf("no decision about %s", d)
	return Decision{}
}
