package shared

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/portcullis-oci/portcullis/test/redistest"
	"github.com/portcullis-oci/portcullis/verify"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

const (
	parentDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	blobLogical  = "docker.io\x00acme/app\x00sha256:2222222222222222222222222222222222222222222222222222222222222222"
	coverLogical = "3333333333333333333333333333333333333333333333333333333333333333"
)

func newTestGating(t *testing.T) (*Gating, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	c, err := NewClient(ClientOptions{Addr: mr.Addr(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s, err := NewGating(c, "p:", NewGuard(zap.NewNop(), nil, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return s, mr
}

func (s *Gating) invalid(op string) float64 {
	return testutil.ToFloat64(s.g.errs.WithLabelValues(op, "invalid"))
}

func allowVerdict() verify.Verdict {
	return verify.Verdict{
		Allowed: true, Mode: verify.ModeEnforce, Boundary: "images", Digest: parentDigest,
		CheckedAt: time.Now().Add(-time.Minute), Artifact: "model",
		Signers: []verify.Signer{{Authority: "release", Kind: "key", KeyID: "ab", Evidence: "sigstore-bundle"}},
		Reasons: []string{"not carried"},
	}
}

func TestGatingRoundTrip(t *testing.T) {
	t.Parallel()
	s, mr := newTestGating(t)
	ctx := context.Background()
	until := time.Now().Add(10 * time.Minute)
	if err := s.RecordBlobs(ctx, map[string]int64{blobLogical: 42}, nil, until); err != nil {
		t.Fatal(err)
	}
	size, got, ok, _ := s.LookupBlob(ctx, blobLogical)
	if !ok || size != 42 || got.UnixMilli() != until.UnixMilli() {
		t.Errorf("blob = %d until %v (%v), want 42 until %v", size, got, ok, until)
	}
	if ttl := mr.TTL("p:v1:blob:" + bound(blobLogical)); ttl <= 9*time.Minute || ttl > 10*time.Minute {
		t.Errorf("blob TTL in redis = %v, want the gating TTL", ttl)
	}
	if _, _, ok, _ := s.LookupBlob(ctx, "docker.io\x00acme/other\x00sha256:22"); ok {
		t.Error("a blob never recorded was found")
	}

	v := allowVerdict()
	if err := s.RecordCoverage(ctx, []string{coverLogical}, parentDigest, v, until); err != nil {
		t.Fatal(err)
	}
	parent, cv, cu, ok := s.LookupCoverage(ctx, coverLogical)
	if !ok || parent != parentDigest || cu.UnixMilli() != until.UnixMilli() {
		t.Fatalf("coverage = %q until %v (%v)", parent, cu, ok)
	}
	if !cv.Allowed || cv.Mode != verify.ModeEnforce || cv.Boundary != "images" || cv.Digest != parentDigest ||
		!cv.CheckedAt.Equal(v.CheckedAt) || cv.Artifact != "model" || len(cv.Signers) != 1 || cv.Signers[0] != v.Signers[0] {
		t.Errorf("coverage verdict = %+v, want %+v", cv, v)
	}
	if len(cv.Reasons) != 0 {
		t.Errorf("coverage carried reasons %v", cv.Reasons)
	}
}

// TestGatingRecordsOnlyEnforceAllows: nothing but an enforce-mode allow in
// a named boundary is written as coverage.
func TestGatingRecordsOnlyEnforceAllows(t *testing.T) {
	t.Parallel()
	s, mr := newTestGating(t)
	until := time.Now().Add(time.Minute)
	warn := allowVerdict()
	warn.Mode = verify.ModeWarn
	denied := allowVerdict()
	denied.Allowed = false
	unnamed := allowVerdict()
	unnamed.Boundary = ""
	for _, v := range []verify.Verdict{warn, denied, unnamed} {
		if err := s.RecordCoverage(context.Background(), []string{coverLogical}, parentDigest, v, until); err != nil {
			t.Fatal(err)
		}
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("recorded %v", keys)
	}
}

// TestGatingRefusesValues plants values under the keys a lookup reads:
// each is a miss, counted as invalid.
func TestGatingRefusesValues(t *testing.T) {
	t.Parallel()
	future := time.Now().Add(time.Minute).UnixMilli()
	bh, ch := bound(blobLogical), bound(coverLogical)
	num := func(n int64) string { return strconv.FormatInt(n, 10) }
	blob := func(k, extra string) string {
		return `{"v":1,"k":"` + k + `","s":42,"u":` + num(future) + extra + `}`
	}
	cover := func(k, mode, parent string) string {
		return `{"v":1,"k":"` + k + `","p":"` + parent + `","b":"images","m":"` + mode + `","t":1,"u":` + num(future) + `}`
	}
	for _, tc := range []struct {
		name, value string
		coverage    bool
	}{
		{name: "bound to another key", value: blob(bound("docker.io\x00acme/other\x00sha256:22"), "")},
		{name: "unknown field", value: blob(bh, `,"x":1`)},
		{name: "trailing data", value: blob(bh, "") + " {}"},
		{name: "wrong version", value: strings.Replace(blob(bh, ""), `"v":1`, `"v":2`, 1)},
		{name: "no size", value: `{"v":1,"k":"` + bh + `","u":` + num(future) + `}`},
		{name: "negative size", value: strings.Replace(blob(bh, ""), `"s":42`, `"s":-1`, 1)},
		{name: "oversized", value: blob(bh, `,"pad":"`+strings.Repeat("a", gatingMaxValue)+`"`)},
		{name: "not json", value: "allow"},
		{name: "coverage bound to another key", value: cover(bound("other"), "enforce", parentDigest), coverage: true},
		{name: "coverage in warn mode", value: cover(ch, "warn", parentDigest), coverage: true},
		{name: "coverage with a bad parent", value: cover(ch, "enforce", "sha256:12"), coverage: true},
		{name: "blob value as coverage", value: blob(ch, ""), coverage: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, mr := newTestGating(t)
			ctx := context.Background()
			if tc.coverage {
				_ = mr.Set("p:v1:cover:"+ch, tc.value)
				if _, _, _, ok := s.LookupCoverage(ctx, coverLogical); ok {
					t.Error("taken")
				}
				if n := s.invalid("coverage_lookup"); n != 1 {
					t.Errorf("invalid counted %v times, want 1", n)
				}
				return
			}
			_ = mr.Set("p:v1:blob:"+bh, tc.value)
			// Refused, not unknown: a planted value must not turn denials
			// into retries.
			if _, _, ok, err := s.LookupBlob(ctx, blobLogical); ok || err != nil {
				t.Errorf("taken or reported as an error: %v, %v", ok, err)
			}
			if n := s.invalid("blob_lookup"); n != 1 {
				t.Errorf("invalid counted %v times, want 1", n)
			}
		})
	}
}

// TestGatingBlobOrigin: the origin recorded with a blob is read back as it
// was, with the blob's TTL, under its own key (blob values keep the shape
// other replicas read); an origin that is not short printable ASCII is not
// recorded, and a planted one is refused and counted.
func TestGatingBlobOrigin(t *testing.T) {
	t.Parallel()
	s, mr := newTestGating(t)
	ctx := context.Background()
	until := time.Now().Add(10 * time.Minute)
	const (
		plain   = "docker.io\x00acme/app\x00sha256:aa"
		long    = "docker.io\x00acme/app\x00sha256:bb"
		control = "docker.io\x00acme/app\x00sha256:cc"
		atBound = "docker.io\x00acme/app\x00sha256:dd"
		none    = "docker.io\x00acme/app\x00sha256:ee"
	)
	origin := "sha256:" + strings.Repeat("1", 64) + " " + strings.Repeat("2", 64)
	const (
		edges = "docker.io\x00acme/app\x00sha256:ff"
		del   = "docker.io\x00acme/app\x00sha256:11"
	)
	err := s.RecordBlobs(ctx, map[string]int64{plain: 1, long: 2, control: 3, atBound: 4, none: 5, edges: 6, del: 7}, map[string]string{
		plain: origin, long: strings.Repeat("o", gatingMaxField+1), control: "a\nb", atBound: strings.Repeat("o", gatingMaxField),
		edges: " ~", del: "a\x7f",
	}, until)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := s.BlobOrigin(ctx, plain); !ok || got != origin {
		t.Errorf("origin = %q, %v, want %q", got, ok, origin)
	}
	if got, ok := s.BlobOrigin(ctx, atBound); !ok || got != strings.Repeat("o", gatingMaxField) {
		t.Errorf("origin at the bound = %q, %v", got, ok)
	}
	if got, ok := s.BlobOrigin(ctx, edges); !ok || got != " ~" {
		t.Errorf("origin of the printable edges = %q, %v", got, ok)
	}
	for _, k := range []string{long, control, none, del} {
		if size, _, ok, _ := s.LookupBlob(ctx, k); !ok || size == 0 {
			t.Errorf("blob %q not recorded with its origin refused", k)
		}
		if got, ok := s.BlobOrigin(ctx, k); ok {
			t.Errorf("origin of %q = %q, want none", k, got)
		}
	}
	if ttl := mr.TTL("p:v1:blobsrc:" + bound(plain)); ttl <= 9*time.Minute || ttl > 10*time.Minute {
		t.Errorf("origin TTL in redis = %v, want the gating TTL", ttl)
	}
	if raw, _ := mr.Get("p:v1:blob:" + bound(plain)); strings.Contains(raw, origin) || strings.Contains(raw, `"o"`) {
		t.Errorf("the blob value carries the origin: %s", raw)
	}
	if n := s.invalid("blob_origin"); n != 0 {
		t.Errorf("invalid counted %v times for values it wrote", n)
	}

	h := bound(plain)
	for _, tc := range []struct{ name, value string }{
		{"bound to another key", `{"v":1,"k":"` + bound(none) + `","o":"x"}`},
		{"wrong version", `{"v":2,"k":"` + h + `","o":"x"}`},
		{"unknown field", `{"v":1,"k":"` + h + `","o":"x","s":1}`},
		{"empty origin", `{"v":1,"k":"` + h + `","o":""}`},
		{"control character", `{"v":1,"k":"` + h + `","o":"a\u0000b"}`},
		{"over the bound", `{"v":1,"k":"` + h + `","o":"` + strings.Repeat("o", gatingMaxField+1) + `"}`},
		{"not json", "origin"},
	} {
		before := s.invalid("blob_origin")
		_ = mr.Set("p:v1:blobsrc:"+h, tc.value)
		if got, ok := s.BlobOrigin(ctx, plain); ok {
			t.Errorf("%s: taken as %q", tc.name, got)
		}
		if n := s.invalid("blob_origin") - before; n != 1 {
			t.Errorf("%s: invalid counted %v times, want 1", tc.name, n)
		}
	}
}

// TestGatingExpiredValue: a value past the end it carries is a miss even
// while Redis still holds it (a writer's TTL is not trusted alone).
func TestGatingExpiredValue(t *testing.T) {
	t.Parallel()
	s, _ := newTestGating(t)
	ctx := context.Background()
	if err := s.RecordBlobs(ctx, map[string]int64{blobLogical: 1}, nil, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if _, _, ok, _ := s.LookupBlob(ctx, blobLogical); ok {
		t.Error("an expired blob entry was taken")
	}
}

// TestGatingRedisDown: every call is a miss or an error, never a panic or
// an allow.
func TestGatingRedisDown(t *testing.T) {
	t.Parallel()
	s, mr := newTestGating(t)
	ctx := context.Background()
	if err := s.RecordBlobs(ctx, map[string]int64{blobLogical: 1}, nil, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := s.LookupBlob(ctx, blobLogical); !ok || err != nil {
		t.Fatalf("lookup with Redis up = %v, %v", ok, err)
	}
	if _, _, ok, err := s.LookupBlob(ctx, "docker.io\x00acme/other\x00sha256:33"); ok || err != nil {
		t.Errorf("a missing entry with Redis up = %v, %v: want a miss without error", ok, err)
	}
	redistest.Down(t, mr)
	// The proxy tells "not opened" from "cannot know" by the error.
	if _, _, ok, err := s.LookupBlob(ctx, blobLogical); ok || err == nil {
		t.Errorf("a lookup with Redis down = %v, %v: want a miss with an error", ok, err)
	}
	if err := s.RecordBlobs(ctx, map[string]int64{blobLogical: 1}, nil, time.Now().Add(time.Minute)); err == nil {
		t.Error("a write with Redis down reported success")
	}
	if _, _, _, ok := s.LookupCoverage(ctx, coverLogical); ok {
		t.Error("a coverage lookup with Redis down found coverage")
	}
}

// TestGatingBoundaries: a record that ends now is not written (Redis
// would keep a TTL of 0 forever); a stored value of exactly the size
// bound is read and one byte more is refused; digests are lower-case hex
// and nothing next to it.
func TestGatingBoundaries(t *testing.T) {
	t.Parallel()
	s, mr := newTestGating(t)
	ctx := context.Background()
	now := time.Now()
	s.now = func() time.Time { return now }
	if err := s.RecordBlobs(ctx, map[string]int64{blobLogical: 42}, nil, now); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCoverage(ctx, []string{coverLogical}, parentDigest, allowVerdict(), now); err != nil {
		t.Fatal(err)
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Fatalf("records ending now were written: %v", keys)
	}

	s.now = time.Now
	bh := bound(blobLogical)
	value := `{"v":1,"k":"` + bh + `","s":42,"u":` + strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10) + `}`
	// JSON allows trailing white space: pad the value to the bound.
	atBound := value + strings.Repeat(" ", gatingMaxValue-len(value))
	_ = mr.Set("p:v1:blob:"+bh, atBound)
	if size, _, ok, err := s.LookupBlob(ctx, blobLogical); !ok || err != nil || size != 42 {
		t.Errorf("a value of exactly %d bytes: %d, %v, %v; want it read", gatingMaxValue, size, ok, err)
	}
	_ = mr.Set("p:v1:blob:"+bh, atBound+" ")
	if _, _, ok, _ := s.LookupBlob(ctx, blobLogical); ok {
		t.Errorf("a value of %d bytes was read", gatingMaxValue+1)
	}

	// At most gatingMaxSigners signers are carried; a verdict with more
	// is not recorded (its children are then verified on their own).
	for _, n := range []int{gatingMaxSigners, gatingMaxSigners + 1} {
		mr.FlushAll()
		v := allowVerdict()
		v.Signers = nil
		for i := range n {
			v.Signers = append(v.Signers, verify.Signer{Authority: "release", Kind: "key", KeyID: strconv.Itoa(i)})
		}
		if err := s.RecordCoverage(ctx, []string{coverLogical}, parentDigest, v, time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		_, cv, _, ok := s.LookupCoverage(ctx, coverLogical)
		if want := n <= gatingMaxSigners; ok != want || (ok && len(cv.Signers) != n) {
			t.Errorf("%d signers: recorded %v with %d, want recorded %v", n, ok, len(cv.Signers), want)
		}
	}

	hex := strings.Repeat("0123456789abcdef", 4)
	if !validDigest("sha256:" + hex) {
		t.Error("a digest using every hex digit was refused")
	}
	for _, c := range "/:`gAF" {
		if d := "sha256:" + string(c) + hex[1:]; validDigest(d) {
			t.Errorf("%q accepted", d)
		}
	}
	for _, d := range []string{"sha256:" + hex[1:], "sha256:" + hex + "0", "sha512:" + hex, ""} {
		if validDigest(d) {
			t.Errorf("%q accepted", d)
		}
	}
}
