package shared

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/test/redistest"
)

// alongReplica is one replica's verdict and manifest caches on one client,
// paired as the proxy wires them.
type alongReplica struct {
	v     *Verdicts
	m     *Manifests
	guard *Guard
}

func newAlongReplica(t *testing.T, mr *miniredis.Miniredis, clk *clock) alongReplica {
	t.Helper()
	rdb, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	g := NewGuard(zap.NewNop(), nil, time.Second)
	g.now = clk.now
	l1, err := cache.NewVerdicts(100, testAllowTTL, testDenyTTL)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerdicts(l1, rdb, g, VerdictsOptions{KeyPrefix: "p:", AllowTTL: testAllowTTL, DenyTTL: testDenyTTL, Size: 100, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	lm, err := cache.NewManifests(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManifests(lm, rdb, g, ManifestsOptions{KeyPrefix: "p:", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.ReadBytesWith(m); err != nil {
		t.Fatal(err)
	}
	return alongReplica{v: v, m: m, guard: g}
}

// TestGetAlong: a verdict another replica stored comes with its manifest
// bytes, which are kept locally only when they hash to the digest; the
// verdict is refused as Get refuses it; Redis down is a miss.
func TestGetAlong(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newAlongReplica(t, mr, clk), newAlongReplica(t, mr, clk)
	m := testManifest("along")
	d := m.Digest.String()
	a.v.Add("k1", allowed("prod", d))
	a.m.Add(m)
	awaitKey(t, mr, "p:v1:manifest:"+d)

	got, ok, shared := b.v.GetAlong("k1", d)
	if !ok || !shared || !got.Allowed || got.Digest != d {
		t.Fatalf("GetAlong = %+v, %v, shared %v", got, ok, shared)
	}
	if lm, ok := b.m.GetLocal(d); !ok || string(lm.Bytes) != string(m.Bytes) {
		t.Fatal("the manifest bytes read along were not kept locally")
	}
	if _, ok := b.v.GetLocal("k1"); !ok {
		t.Error("the verdict read along was not kept locally")
	}
	if _, ok, shared := b.v.GetAlong("k1", d); !ok || shared {
		t.Errorf("second read: ok %v, shared %v; want a local hit", ok, shared)
	}

	// Bytes of another manifest under the digest: the verdict still
	// answers, the bytes are refused and counted.
	c := newAlongReplica(t, mr, clk)
	other := testManifest("planted")
	_ = mr.Set("p:v1:manifest:"+d, fmt.Sprintf(`{"v":1,"mt":%q,"b":%q}`, types.OCIManifestSchema1, base64.StdEncoding.EncodeToString(other.Bytes)))
	if _, ok, _ := c.v.GetAlong("k1", d); !ok {
		t.Fatal("verdict missed next to planted bytes")
	}
	if _, ok := c.m.GetLocal(d); ok {
		t.Error("planted bytes kept")
	}
	if n := testutil.ToFloat64(c.guard.errs.WithLabelValues("manifest_get", "invalid")); n != 1 {
		t.Errorf("planted bytes counted %v times, want 1", n)
	}

	// A verdict stored for another key is refused as Get refuses it.
	raw, _ := mr.Get("p:v1:verdict:k1")
	_ = mr.Set("p:v1:verdict:k2", raw)
	if v, ok, _ := newAlongReplica(t, mr, clk).v.GetAlong("k2", d); ok {
		t.Fatalf("verdict of k1 served for k2: %+v", v)
	}

	// Bytes in hand (no digest): the verdict alone, still from Redis.
	if v, ok, shared := newAlongReplica(t, mr, clk).v.GetAlong("k1", ""); !ok || !shared || v.Digest != d {
		t.Fatalf("verdict alone: %+v, %v, shared %v", v, ok, shared)
	}

	// Nothing stored: a miss.
	if _, ok, _ := newAlongReplica(t, mr, clk).v.GetAlong("k3", d); ok {
		t.Fatal("hit for a key never stored")
	}

	// Redis down: a miss, not an error turned into an answer.
	e := newAlongReplica(t, mr, clk)
	redistest.Down(t, mr)
	if _, ok, _ := e.v.GetAlong("k1", d); ok {
		t.Fatal("hit with Redis down")
	}
}

// TestReadBytesWithOtherClient: bytes are only read along from the same
// Redis the verdict comes from.
func TestReadBytesWithOtherClient(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	clk := &clock{t: time.Now()}
	a, b := newAlongReplica(t, mr, clk), newAlongReplica(t, mr, clk)
	if err := a.v.ReadBytesWith(b.m); err == nil {
		t.Fatal("paired with a manifest cache on another client")
	}
	if err := a.v.ReadBytesWith(nil); err == nil {
		t.Fatal("paired with no manifest cache")
	}
}
