package proxy

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/verify"
)

// BenchmarkBlobGrantMemory measures what blob gating keeps per served
// image (a config and two layers), with the record of the decision each
// grant keeps for revocations, against grants holding only their size.
// Each image has a verdict of its own, as when the verdict cache has
// evicted it and the grants alone keep it. Run with -benchtime Nx, N at
// most a third of the gating's capacity (33 333), so nothing is evicted.
func BenchmarkBlobGrantMemory(b *testing.B) {
	for _, withRecord := range []bool{true, false} {
		b.Run(fmt.Sprintf("record=%v", withRecord), func(b *testing.B) {
			p, _ := newTestProxy(b, "http://127.0.0.1:1", allowAll())
			u := p.router.byKey["docker.io"]
			if b.N*3 > blobAllowSize {
				b.Skipf("%d images would evict grants", b.N)
			}
			hex := func(n, i int) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", n*1_000_000+i)} }
			ds := make([]*manifestDecision, b.N)
			for i := range ds {
				dg := hex(0, i)
				ds[i] = &manifestDecision{
					mr:     manifestReq{u: u, repo: "acme/app"},
					digest: dg.String(),
					parsed: &parsedManifest{config: blobRef{hex(1, i), 1 << 10},
						layers: []blobRef{{hex(2, i), 1 << 20}, {hex(3, i), 1 << 30}}},
					verdict: verify.Verdict{Allowed: true, Mode: verify.ModeEnforce, Boundary: "prod", Digest: dg.String(),
						CheckedAt: time.Now()},
				}
			}
			keyID := strings.Repeat("ab", 32)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d := ds[i]
				// The verdict's signers, allocated here and then dropped by
				// the decision: only what the gating keeps holds them.
				d.verdict.Signers = []verify.Signer{{Kind: "key", KeyID: keyID, Authority: "release"}}
				if withRecord {
					p.remember(d)
				} else {
					pm := d.parsed
					p.blobs.add(blobKey(u.name, "acme/app", pm.config.digest), blobGrant{size: pm.config.size})
					for _, l := range pm.layers {
						p.blobs.add(blobKey(u.name, "acme/app", l.digest), blobGrant{size: l.size})
					}
				}
				d.verdict.Signers = nil
			}
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			if n := p.blobs.c.Len(); n != 3*b.N {
				b.Fatalf("%d grants, want %d", n, 3*b.N)
			}
			b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "retained-B/image")
			runtime.KeepAlive(p)
			runtime.KeepAlive(ds)
		})
	}
}
