package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/test/fixtures"
)

// The shapes of the bombs, as the issue that bounded evidence describes
// them: a subject with as many referrers as a verification examines, each
// a bundle just under the largest one accepted before evidence was
// budgeted, and predicates of empty objects that inflate about twentyfold
// when decoded into generic JSON values.
const (
	BombReferrers      = 64
	BombBundleBytes    = 8<<20 - 16<<10
	PredicateBombBytes = 2 << 20
)

// BombInfo describes what was pushed for one subject.
type BombInfo struct {
	Referrers  int
	ItemBytes  int64 // size of the first evidence blob as stored
	TotalBytes int64 // all evidence blobs together
	// ManifestBytes is the size of the subject's own manifest, for a bomb
	// that is the manifest.
	ManifestBytes int64
}

// placement lists every referrer both ways, so the bomb reaches a
// verifier through a registry with the referrers API and through one
// without it (distribution 2.8) alike.
const placement = fixtures.PlaceReferrer | fixtures.PlaceFallback

// PushEvidenceBomb attaches n sigstore bundles of about bundleBytes each
// to subject. Each is a DSSE statement signed by s with a large padding
// predicate, but about another digest, so it parses and its signature
// verifies yet it is no signature of subject: a verifier cannot reject
// it before it has read, decoded and checked all of it. The bundles
// differ from each other and from those of any other subject.
func PushEvidenceBomb(ctx context.Context, subject name.Digest, s fixtures.Signer, n, bundleBytes int, opts ...remote.Option) (BombInfo, error) {
	// base64 makes the statement 4/3 larger inside the bundle JSON; the
	// rest of the bundle is well under the 2 KiB kept aside.
	pad := max(bundleBytes*3/4-2048, 64)
	pattern := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_", pad/64+1)
	info := BombInfo{Referrers: n}
	for i := range n {
		other := otherDigest(subject, i)
		prefix := fmt.Sprintf("%s/%d/", subject.DigestStr(), i)
		spec := fixtures.BundleSpec{
			Placement: placement,
			Predicate: map[string]any{"padding": prefix + pattern[:pad-len(prefix)]},
			Tamper:    fixtures.Tamper{SignDigest: &other},
		}
		h, err := fixtures.AttachBundle(ctx, subject, s, spec, opts...)
		if err != nil {
			return info, fmt.Errorf("failed to attach bomb bundle %d to %s: %w", i, subject, err)
		}
		if err := info.add(ctx, subject, h, opts); err != nil {
			return info, err
		}
	}
	return info, nil
}

// PushPredicateBomb attaches n SLSA v1 provenance bundles signed by s
// whose predicate is about predicateBytes of `[{},{},…]` (under
// buildDefinition.resolvedDependencies, where a lineage rule would look).
// Like the evidence bomb they are about another digest, so they never
// satisfy a rule for subject; they only cost whoever decodes them.
func PushPredicateBomb(ctx context.Context, subject name.Digest, s fixtures.Signer, n, predicateBytes int, opts ...remote.Option) (BombInfo, error) {
	info := BombInfo{Referrers: n}
	for i := range n {
		other := otherDigest(subject, i)
		spec := fixtures.BundleSpec{
			Placement:     placement,
			PredicateType: fixtures.PredicateSLSAProvenanceV1,
			Predicate:     emptyObjects(predicateBytes, i),
			Tamper:        fixtures.Tamper{SignDigest: &other},
		}
		h, err := fixtures.AttachBundle(ctx, subject, s, spec, opts...)
		if err != nil {
			return info, fmt.Errorf("failed to attach predicate bomb %d to %s: %w", i, subject, err)
		}
		if err := info.add(ctx, subject, h, opts); err != nil {
			return info, err
		}
	}
	return info, nil
}

// emptyObjects is a provenance predicate of about size bytes whose
// dependency list holds only empty objects; nonce keeps predicates apart.
func emptyObjects(size, nonce int) json.RawMessage {
	head := fmt.Sprintf(`{"buildDefinition":{"buildType":"https://bench.test/bomb","externalParameters":{"n":%d},"resolvedDependencies":[`, nonce)
	const tail = `{}]}}`
	var b bytes.Buffer
	b.Grow(size + len(head) + len(tail))
	b.WriteString(head)
	for b.Len()+len(tail)+3 <= size {
		b.WriteString("{},")
	}
	b.WriteString(tail)
	return b.Bytes()
}

// otherDigest is a digest that is not subject's: what the bomb's
// statements are about.
func otherDigest(subject name.Digest, i int) v1.Hash {
	sum := sha256.Sum256(fmt.Appendf(nil, "not %s #%d", subject.DigestStr(), i))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// add records the size of the evidence blob of referrer h.
func (b *BombInfo) add(ctx context.Context, subject name.Digest, h v1.Hash, opts []remote.Option) error {
	desc, err := remote.Get(subject.Context().Digest(h.String()), append([]remote.Option{remote.WithContext(ctx)}, opts...)...)
	if err != nil {
		return fmt.Errorf("failed to read back referrer %s: %w", h, err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil || len(m.Layers) != 1 {
		return fmt.Errorf("referrer %s is not a one-layer manifest: %v", h, err)
	}
	if b.ItemBytes == 0 {
		b.ItemBytes = m.Layers[0].Size
	}
	b.TotalBytes += m.Layers[0].Size
	return nil
}

// KeyBombBytes is the size of the key bomb's manifest: just under the
// 4 MiB both the registry and the proxy accept.
const KeyBombBytes = 4<<20 - 4<<10

// PushKeyBomb pushes to ref an image whose manifest is about size bytes,
// nearly all of them annotations with distinct keys ("0", "1", … in hex,
// about 480 000 of them at 4 MiB), the last one written with an escape.
// Nothing signs it. A manifest's keys must be checked for duplicates
// before anything else about it is known, so a check that compares each
// key with the ones before it costs such a manifest a quadratic number of
// comparisons (minutes of CPU), and one that decodes every key as a token
// a hundred and more MiB of garbage. nonce keeps the manifests of
// several subjects apart.
func PushKeyBomb(ctx context.Context, ref name.Reference, size, nonce int, opts ...remote.Option) (name.Digest, BombInfo, error) {
	ropts := append([]remote.Option{remote.WithContext(ctx)}, opts...)
	d, err := fixtures.PushImage(ctx, ref, opts...)
	if err != nil {
		return name.Digest{}, BombInfo{}, err
	}
	desc, err := remote.Get(d, ropts...)
	if err != nil {
		return name.Digest{}, BombInfo{}, fmt.Errorf("failed to read back %s: %w", d, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return name.Digest{}, BombInfo{}, err
	}
	var b bytes.Buffer
	b.Grow(size)
	fmt.Fprintf(&b, `{"schemaVersion":2,"mediaType":%s,"config":%s,"layers":%s,"annotations":{"nonce":"%d"`, m["mediaType"], m["config"], m["layers"], nonce)
	const last = `,"\u0067g":""}}`
	for i := 0; ; i++ {
		k := fmt.Sprintf(`,"%x":""`, i)
		if b.Len()+len(k)+len(last) > size {
			break
		}
		b.WriteString(k)
	}
	b.WriteString(last)
	raw := rawManifest{b: b.Bytes(), mt: desc.MediaType}
	if err := remote.Put(ref, raw, ropts...); err != nil {
		return name.Digest{}, BombInfo{}, fmt.Errorf("failed to push the key bomb to %s: %w", ref, err)
	}
	sum := sha256.Sum256(raw.b)
	return ref.Context().Digest("sha256:" + hex.EncodeToString(sum[:])), BombInfo{ManifestBytes: int64(len(raw.b))}, nil
}

// rawManifest is a manifest pushed as the bytes it is.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }
