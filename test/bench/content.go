package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis-oci/portcullis/test/fixtures"
)

// fileLayer is a layer whose bytes live in a file, so pushing and serving a
// 1 GiB layer never holds it in memory. The bytes are random, not a tar
// stream; registries do not look inside layers.
type fileLayer struct {
	path   string
	size   int64
	digest v1.Hash
}

var _ v1.Layer = (*fileLayer)(nil)

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }

// writeRandomFile streams size bytes from a seeded ChaCha8 generator to
// path and returns their digest. The seed makes runs reproducible without
// the content compressing or deduplicating.
func writeRandomFile(path string, size int64, seed byte) (*fileLayer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var key [32]byte
	key[0] = seed
	src := rand.NewChaCha8(key)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		chunk := buf[:n]
		_, _ = src.Read(chunk) // never fails
		h.Write(chunk)
		if _, err := f.Write(chunk); err != nil {
			return nil, err
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return &fileLayer{
		path:   path,
		size:   size,
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))},
	}, nil
}

// pushLayerImage pushes a one-layer OCI image to ref, signs it with the
// bench key and returns its digest reference.
func pushLayerImage(ctx context.Context, ref name.Reference, l *fileLayer, s fixtures.Signer) (name.Digest, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, l)
	if err != nil {
		return name.Digest{}, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	h, err := img.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	d := ref.Context().Digest(h.String())
	if err := fixtures.AttachLegacySignature(ctx, d, s, fixtures.Tamper{}); err != nil {
		return name.Digest{}, fmt.Errorf("sign %s: %w", d, err)
	}
	return d, nil
}

// pushSignedSmall pushes n small random images to repo, tagged img-<i>, each
// with a legacy cosign signature, and returns their digests in order.
func pushSignedSmall(ctx context.Context, host, repo string, n int, s fixtures.Signer) ([]name.Digest, error) {
	out := make([]name.Digest, n)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range n {
		g.Go(func() error {
			defer teardown.Guard()
			ref, err := name.ParseReference(fmt.Sprintf("%s/%s:img-%d", host, repo, i), name.Insecure)
			if err != nil {
				return err
			}
			d, err := fixtures.PushImage(ctx, ref)
			if err != nil {
				return fmt.Errorf("push %s: %w", ref, err)
			}
			if err := fixtures.AttachLegacySignature(ctx, d, s, fixtures.Tamper{}); err != nil {
				return fmt.Errorf("sign %s: %w", d, err)
			}
			out[i] = d
			return nil
		})
	}
	return out, g.Wait()
}
