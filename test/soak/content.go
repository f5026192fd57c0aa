package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/portcullis-oci/portcullis/test/bench/hostile"
	"github.com/portcullis-oci/portcullis/test/fixtures"
)

// item is a manifest the soak asks for.
type item struct {
	repo, tag, digest string
}

// blobRef is a blob the soak asks for.
type blobRef struct {
	repo, digest string
	size         int64
}

// content is everything pushed to the upstream, and what the harness
// knows about it: the only manifests Portcullis may ever answer 200 with
// are in allowedSet.
type content struct {
	allowed      []item // signed by the trusted key
	denied       []item // unsigned, or signed by a key Portcullis does not trust
	allowedBlobs []blobRef
	deniedBlobs  []blobRef // layers of denied images
	stall        blobRef   // a 16 MiB layer of an allowed image
	bombs        []item    // evidence bomb subjects (denied)
	pbombs       []item    // predicate bomb subjects (denied)
	allowedSet   map[string]bool
	bombInfo     hostile.BombInfo
	pbombInfo    hostile.BombInfo
}

type pushSizes struct {
	allowed, denied, bombs, pbombs int
	mediumMiB, stallMiB            int64
}

// push writes the soak's content to the upstream at host.
func push(ctx context.Context, host string, sz pushSizes, trusted *fixtures.KeySigner) (*content, error) {
	untrusted, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return nil, err
	}
	c := &content{allowedSet: map[string]bool{}}
	type job struct {
		repo, tag string
		layerMiB  int64
		signer    *fixtures.KeySigner // nil: unsigned
		allowed   bool
		stall     bool
	}
	var jobs []job
	for i := range sz.allowed {
		jobs = append(jobs, job{repo: "soak/allowed", tag: fmt.Sprintf("img-%d", i), signer: trusted, allowed: true})
	}
	jobs = append(jobs,
		job{repo: "soak/medium", tag: "v1", layerMiB: sz.mediumMiB, signer: trusted, allowed: true},
		job{repo: "soak/stall", tag: "v1", layerMiB: sz.stallMiB, signer: trusted, allowed: true, stall: true})
	for i := range sz.denied {
		if i%2 == 0 {
			jobs = append(jobs, job{repo: "soak/denied", tag: fmt.Sprintf("unsigned-%d", i)})
		} else {
			jobs = append(jobs, job{repo: "soak/denied", tag: fmt.Sprintf("untrusted-%d", i), signer: untrusted})
		}
	}
	type pushed struct {
		it    item
		blobs []blobRef
	}
	out := make([]pushed, len(jobs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, j := range jobs {
		g.Go(func() error {
			defer teardown.Guard()
			ref, err := name.ParseReference(fmt.Sprintf("%s/%s:%s", host, j.repo, j.tag), name.Insecure)
			if err != nil {
				return err
			}
			d, err := pushImage(gctx, ref, j.layerMiB)
			if err != nil {
				return fmt.Errorf("failed to push %s: %w", ref, err)
			}
			if j.signer != nil {
				if err := fixtures.AttachLegacySignature(gctx, d, j.signer, fixtures.Tamper{}); err != nil {
					return fmt.Errorf("failed to sign %s: %w", d, err)
				}
			}
			blobs, err := blobsOf(gctx, d)
			if err != nil {
				return err
			}
			out[i] = pushed{it: item{repo: j.repo, tag: j.tag, digest: d.DigestStr()}, blobs: blobs}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i, j := range jobs {
		p := out[i]
		switch {
		case j.stall:
			c.allowedSet[p.it.digest] = true
			c.allowed = append(c.allowed, p.it)
			c.stall = p.blobs[len(p.blobs)-1]
		case j.allowed:
			c.allowedSet[p.it.digest] = true
			c.allowed = append(c.allowed, p.it)
			c.allowedBlobs = append(c.allowedBlobs, p.blobs...)
		default:
			c.denied = append(c.denied, p.it)
			c.deniedBlobs = append(c.deniedBlobs, p.blobs...)
		}
	}

	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(2)
	bombs := make([]item, sz.bombs)
	pbombs := make([]item, sz.pbombs)
	for i := range sz.bombs + sz.pbombs {
		g.Go(func() error {
			defer teardown.Guard()
			repo, k := "soak/bomb", i
			if i >= sz.bombs {
				repo, k = "soak/pbomb", i-sz.bombs
			}
			tag := fmt.Sprintf("s%d", k)
			ref, err := name.ParseReference(fmt.Sprintf("%s/%s:%s", host, repo, tag), name.Insecure)
			if err != nil {
				return err
			}
			d, err := fixtures.PushImage(gctx, ref)
			if err != nil {
				return err
			}
			it := item{repo: repo, tag: tag, digest: d.DigestStr()}
			if i < sz.bombs {
				info, err := hostile.PushEvidenceBomb(gctx, d, trusted, hostile.BombReferrers, hostile.BombBundleBytes)
				bombs[k] = it
				if k == 0 {
					c.bombInfo = info
				}
				return err
			}
			// The predicate bomb's subject is validly signed: only the
			// provenance rule of its boundary can deny it, after reading
			// the attestations.
			if err := fixtures.AttachLegacySignature(gctx, d, trusted, fixtures.Tamper{}); err != nil {
				return err
			}
			info, err := hostile.PushPredicateBomb(gctx, d, trusted, hostile.BombReferrers, hostile.PredicateBombBytes)
			pbombs[k] = it
			if k == 0 {
				c.pbombInfo = info
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	c.bombs, c.pbombs = bombs, pbombs
	return c, nil
}

// pushImage pushes a small random OCI image, or one with a single random
// layer of layerMiB MiB.
func pushImage(ctx context.Context, ref name.Reference, layerMiB int64) (name.Digest, error) {
	if layerMiB == 0 {
		return fixtures.PushImage(ctx, ref)
	}
	l, err := random.Layer(layerMiB<<20, types.OCIUncompressedLayer)
	if err != nil {
		return name.Digest{}, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, l)
	if err != nil {
		return name.Digest{}, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return name.Digest{}, err
	}
	h, err := img.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return ref.Context().Digest(h.String()), nil
}

// blobsOf lists an image's config and layers, config first.
func blobsOf(ctx context.Context, d name.Digest) ([]blobRef, error) {
	desc, err := remote.Get(d, remote.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("failed to read back %s: %w", d, err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, err
	}
	repo := d.Context().RepositoryStr()
	out := []blobRef{{repo: repo, digest: m.Config.Digest.String(), size: m.Config.Size}}
	for _, l := range m.Layers {
		out = append(out, blobRef{repo: repo, digest: l.Digest.String(), size: l.Size})
	}
	return out, nil
}
