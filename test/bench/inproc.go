package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// verifyCost is the CPU one cold verification takes in process.
type verifyCost struct {
	kind   string
	n      int
	cpu    time.Duration // user+system per verification
	wall   time.Duration // per verification
	signer string
}

const (
	keylessIssuer  = "https://token.actions.githubusercontent.com"
	keylessSubject = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
)

// measureVerify signs one subject with a key (legacy cosign .sig) and one
// keyless (sigstore bundle referrer, VirtualSigstore), pre-fetches all
// evidence into memory, then times repeated cold verifications: the engine
// holds no verdicts, so each call checks signatures from scratch and only
// the network is taken out.
func measureVerify(ctx context.Context, n int) ([]verifyCost, error) {
	reg, err := fixtures.StartRegistry()
	if err != nil {
		return nil, err
	}
	defer reg.Close()
	ks, err := fixtures.NewKeySigner(fixtures.AlgECDSAP256)
	if err != nil {
		return nil, err
	}
	ss, err := fixtures.NewSigstore()
	if err != nil {
		return nil, err
	}
	pol := verify.Policy{Fingerprint: "bench", Boundaries: []verify.Boundary{
		{
			Name: "key", Upstream: "*", Repositories: []string{"key/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{{Name: "release", Key: &verify.KeyAuthority{
				TrustName: "release-keys", Keys: []verify.NamedKey{{Name: "cosign.pub", PEM: ks.PublicKeyPEM()}},
			}}},
		},
		{
			Name: "keyless", Upstream: "*", Repositories: []string{"keyless/**"}, Mode: verify.ModeEnforce, Threshold: 1,
			Authorities: []verify.Authority{{Name: "ci", Keyless: &verify.KeylessAuthority{
				TrustName: "virtual-sigstore", TrustedRoot: ss, Issuer: keylessIssuer, Subject: keylessSubject,
				// The in-memory CA issues certificates without SCTs.
				InsecureSkipSCT: true,
			}}},
		},
	}}
	eng, err := verify.New(pol)
	if err != nil {
		return nil, fmt.Errorf("compile policy: %w", err)
	}

	cases := []struct {
		kind, repo string
		sign       func(name.Digest) error
	}{
		{"key, cosign legacy .sig", "key/app", func(d name.Digest) error {
			return fixtures.AttachLegacySignature(ctx, d, ks, fixtures.Tamper{})
		}},
		{"keyless, sigstore bundle", "keyless/app", func(d name.Digest) error {
			_, err := fixtures.AttachBundle(ctx, d, ss.Signer(keylessIssuer, keylessSubject), fixtures.BundleSpec{})
			return err
		}},
	}
	var out []verifyCost
	for _, c := range cases {
		ref, err := reg.Ref(c.repo + ":v1")
		if err != nil {
			return nil, err
		}
		d, err := fixtures.PushImage(ctx, ref)
		if err != nil {
			return nil, err
		}
		if err := c.sign(d); err != nil {
			return nil, fmt.Errorf("%s: %w", c.kind, err)
		}
		f := fixtures.Memoize(reg.Fetcher())
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return nil, err
		}
		m, err := f.Manifest(ctx, c.repo, h.String())
		if err != nil {
			return nil, err
		}
		subj := verify.Subject{
			Upstream: "bench", Repository: c.repo, Reference: h.String(),
			Digest: h, MediaType: m.MediaType, ArtifactType: "application/vnd.oci.image.config.v1+json", Manifest: m.Bytes,
		}
		// The first call fills the memoizing fetcher; it must allow, or the
		// loop would time a denial.
		v, err := eng.Verify(ctx, subj, f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.kind, err)
		}
		if !v.Allowed || len(v.Signers) == 0 {
			return nil, fmt.Errorf("%s: denied: %v", c.kind, v.Reasons)
		}
		cpu0, t0 := cpuTime(), time.Now()
		for range n {
			v, err := eng.Verify(ctx, subj, f)
			if err != nil || !v.Allowed {
				return nil, fmt.Errorf("%s: verification changed its mind: %v %v", c.kind, err, v.Reasons)
			}
		}
		cpu, wall := cpuTime()-cpu0, time.Since(t0)
		out = append(out, verifyCost{
			kind: c.kind, n: n,
			cpu: cpu / time.Duration(n), wall: wall / time.Duration(n),
			signer: v.Signers[0].Evidence,
		})
	}
	return out, nil
}

// cpuTime is the user+system CPU this process has used. The bench is idle
// while the loop runs, so the difference is the loop's cost, GC included.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureVerdictHeap fills a verdict cache of n entries with verdicts shaped
// like the proxy's (hex key over policy, upstream, repository and digest;
// one key signer) and returns the live heap it added.
func measureVerdictHeap(n int) (int64, error) {
	c, err := cache.NewVerdicts(n, 10*time.Minute, 30*time.Second)
	if err != nil {
		return 0, err
	}
	// Digests are formatted before the baseline because the cache keeps
	// them in binary form; keys are made inside the measured loop because
	// the cache retains them, as it does in the proxy.
	digests := make([]string, n)
	buf := make([]byte, 32)
	for i := range n {
		_, _ = rand.Read(buf)
		digests[i] = "sha256:" + hex.EncodeToString(buf)
	}
	now := time.Now()
	base := heapInUse()
	for i, d := range digests {
		k := sha256.Sum256([]byte(d))
		c.Add(hex.EncodeToString(k[:]), verify.Verdict{
			Allowed: true, Mode: verify.ModeEnforce, Boundary: "images", Digest: digests[i],
			Signers:   []verify.Signer{{Authority: "release", Kind: "key", Key: "keys/cosign.pub", Evidence: "cosign-legacy"}},
			CheckedAt: now,
		})
	}
	if c.Len() != n {
		return 0, fmt.Errorf("verdict cache holds %d of %d entries", c.Len(), n)
	}
	grown := heapInUse() - base
	runtime.KeepAlive(c)
	runtime.KeepAlive(digests)
	return grown, nil
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
