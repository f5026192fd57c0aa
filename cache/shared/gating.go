package shared

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/portcullis-oci/portcullis/verify"
	"github.com/redis/go-redis/v9"
)

const (
	// gatingMaxValue bounds a blob or coverage value read from Redis; the
	// proxies write far smaller ones (a coverage value with a handful of
	// signers is a few hundred bytes).
	gatingMaxValue = 4 << 10
	// gatingMaxSigners bounds the signers a coverage value carries.
	gatingMaxSigners = 16
	// gatingMaxField bounds a boundary or artifact name in a value.
	gatingMaxField = 256
	gatingVersion  = 1
)

// Gating keeps blob gating and index coverage in Redis for the proxies of
// one deployment (it implements proxy.SharedState). Every value is bound
// to its key: it embeds the SHA-256 of the logical key it was written
// under and is refused under any other, so a value copied from one
// repository's entry to another's opens nothing. Values are read through
// a size bound and parsed strictly; a refused value, an error or a timeout
// is a miss, never an allow.
type Gating struct {
	c      redis.UniversalClient
	g      *Guard
	prefix string
	now    func() time.Time
	epoch  *epoch
}

// NewGating returns the blob gating and coverage store on client, whose
// keys start with prefix; guard bounds and counts every call.
func NewGating(client redis.UniversalClient, prefix string, guard *Guard) (*Gating, error) {
	if client == nil {
		return nil, errors.New("nil redis client")
	}
	if guard == nil {
		return nil, errors.New("nil guard")
	}
	return &Gating{c: client, g: guard, prefix: prefix, now: time.Now, epoch: newEpoch()}, nil
}

// bound is the hex SHA-256 of a logical key: the Redis key's last part
// and the binding every value embeds.
func bound(logical string) string {
	h := sha256.Sum256([]byte(logical))
	return hex.EncodeToString(h[:])
}

func (s *Gating) blobKey(h string) string   { return s.prefix + "v1:blob:" + h }
func (s *Gating) originKey(h string) string { return s.prefix + "v1:blobsrc:" + h }
func (s *Gating) coverKey(h string) string  { return s.prefix + "v1:cover:" + h }

// blobValue is an open blob: its declared size and when it closes (Unix
// milliseconds).
type blobValue struct {
	V int    `json:"v"`
	K string `json:"k"`
	S *int64 `json:"s"`
	U int64  `json:"u"`
}

// originValue names the decision that opened a blob, as the proxy wrote
// it (opaque here). It has a key of its own, not a field of blobValue, so
// that replicas that do not know it read blob values as before.
type originValue struct {
	V int    `json:"v"`
	K string `json:"k"`
	O string `json:"o"`
}

// coverValue is the coverage of a child by an index allowed in enforce
// mode: the index digest and the fields of its verdict the child's
// decision and audit need.
type coverValue struct {
	V int             `json:"v"`
	K string          `json:"k"`
	P string          `json:"p"`           // the index's digest
	B string          `json:"b"`           // boundary
	M verify.Mode     `json:"m"`           // always enforce
	T int64           `json:"t"`           // verdict checked at, Unix ns; 0 unknown
	U int64           `json:"u"`           // coverage ends, Unix ms
	A string          `json:"a,omitempty"` // artifact kind
	S []verify.Signer `json:"s,omitempty"`
}

// RecordBlobs opens blobs (proxy blob-gating key → declared size) until
// until, in one round trip, with the decision that opened each (origins,
// blob key → an opaque string of at most gatingMaxField printable bytes;
// one missing, empty or longer is not recorded). Failures are the Guard's
// to count.
func (s *Gating) RecordBlobs(ctx context.Context, blobs map[string]int64, origins map[string]string, until time.Time) error {
	ttl := until.Sub(s.now())
	if ttl <= 0 || len(blobs) == 0 {
		return nil
	}
	type kv struct {
		k string
		v []byte
	}
	vals := make([]kv, 0, 2*len(blobs))
	for k, size := range blobs {
		if size < 0 {
			continue
		}
		h := bound(k)
		b, err := json.Marshal(blobValue{V: gatingVersion, K: h, S: &size, U: until.UnixMilli()})
		if err != nil {
			continue
		}
		vals = append(vals, kv{s.blobKey(h), b})
		if o := origins[k]; validOrigin(o) {
			if b, err := json.Marshal(originValue{V: gatingVersion, K: h, O: o}); err == nil {
				vals = append(vals, kv{s.originKey(h), b})
			}
		}
	}
	return s.g.Do(ctx, "blob_record", func(ctx context.Context) error {
		_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, e := range vals {
				p.Set(ctx, e.k, e.v, ttl)
			}
			return nil
		})
		return err
	})
}

// validOrigin accepts 1 to gatingMaxField printable ASCII bytes.
func validOrigin(o string) bool {
	if o == "" || len(o) > gatingMaxField {
		return false
	}
	for i := 0; i < len(o); i++ {
		if o[i] < 0x20 || o[i] > 0x7e {
			return false
		}
	}
	return true
}

// BlobOrigin returns the decision recorded with the open blob under key
// (see RecordBlobs). Anything else (no origin, an error, a refused value)
// is a miss: the proxy then treats the blob as one whose decision it
// cannot tell.
func (s *Gating) BlobOrigin(ctx context.Context, key string) (string, bool) {
	h := bound(key)
	raw, ok, _ := s.get(ctx, "blob_origin", s.originKey(h))
	if !ok {
		return "", false
	}
	var v originValue
	if err := strictDecode(raw, &v); err != nil {
		s.g.Invalid("blob_origin", key, err)
		return "", false
	}
	switch {
	case v.V != gatingVersion:
		s.g.Invalid("blob_origin", key, fmt.Errorf("unknown version %d", v.V))
	case v.K != h:
		s.g.Invalid("blob_origin", key, errors.New("value bound to another key"))
	case !validOrigin(v.O):
		s.g.Invalid("blob_origin", key, errors.New("invalid origin"))
	default:
		return v.O, true
	}
	return "", false
}

// LookupBlob returns the declared size of the open blob under key (a proxy
// blob-gating key) and when it closes. An error means Redis could not be
// asked (down, slow, circuit open): the answer is unknown, not "closed". A
// refused value is a miss, never an error.
func (s *Gating) LookupBlob(ctx context.Context, key string) (int64, time.Time, bool, error) {
	h := bound(key)
	raw, ok, err := s.get(ctx, "blob_lookup", s.blobKey(h))
	if !ok {
		return 0, time.Time{}, false, err
	}
	var v blobValue
	if err := strictDecode(raw, &v); err != nil {
		s.g.Invalid("blob_lookup", key, err)
		return 0, time.Time{}, false, nil
	}
	switch {
	case v.V != gatingVersion:
		s.g.Invalid("blob_lookup", key, fmt.Errorf("unknown version %d", v.V))
	case v.K != h:
		s.g.Invalid("blob_lookup", key, errors.New("value bound to another key"))
	case v.S == nil || *v.S < 0:
		s.g.Invalid("blob_lookup", key, errors.New("missing or negative size"))
	case v.U <= 0:
		s.g.Invalid("blob_lookup", key, errors.New("missing end"))
	default:
		until := time.UnixMilli(v.U)
		if !s.now().Before(until) {
			return 0, time.Time{}, false, nil
		}
		return *v.S, until, true, nil
	}
	return 0, time.Time{}, false, nil
}

// RecordCoverage records that the manifests under children (proxy verdict
// keys) are covered by the index parent, allowed by v, until until. Only
// an enforce-mode allow in a named boundary is recorded; a value that
// would exceed the size bound is not written (each child is then verified
// on its own elsewhere).
func (s *Gating) RecordCoverage(ctx context.Context, children []string, parent string, v verify.Verdict, until time.Time) error {
	ttl := until.Sub(s.now())
	if ttl <= 0 || len(children) == 0 || !v.Allowed || v.Mode != verify.ModeEnforce || v.Boundary == "" ||
		!validDigest(parent) || len(v.Signers) > gatingMaxSigners {
		return nil
	}
	cv := coverValue{V: gatingVersion, P: parent, B: v.Boundary, M: v.Mode, U: until.UnixMilli(), A: v.Artifact, S: v.Signers}
	if !v.CheckedAt.IsZero() {
		cv.T = v.CheckedAt.UnixNano()
	}
	type kv struct {
		k string
		v []byte
	}
	vals := make([]kv, 0, len(children))
	for _, c := range children {
		cv.K = bound(c)
		b, err := json.Marshal(cv)
		if err != nil || len(b) > gatingMaxValue {
			return nil
		}
		vals = append(vals, kv{s.coverKey(cv.K), b})
	}
	return s.g.Do(ctx, "coverage_record", func(ctx context.Context) error {
		_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, e := range vals {
				p.Set(ctx, e.k, e.v, ttl)
			}
			return nil
		})
		return err
	})
}

// LookupCoverage returns the index covering the manifest under key (a
// proxy verdict key), its verdict as recorded, and when coverage ends.
func (s *Gating) LookupCoverage(ctx context.Context, key string) (string, verify.Verdict, time.Time, bool) {
	h := bound(key)
	raw, ok, _ := s.get(ctx, "coverage_lookup", s.coverKey(h))
	if !ok {
		return "", verify.Verdict{}, time.Time{}, false
	}
	var v coverValue
	if err := strictDecode(raw, &v); err != nil {
		s.g.Invalid("coverage_lookup", key, err)
		return "", verify.Verdict{}, time.Time{}, false
	}
	if err := v.check(h); err != nil {
		s.g.Invalid("coverage_lookup", key, err)
		return "", verify.Verdict{}, time.Time{}, false
	}
	until := time.UnixMilli(v.U)
	if !s.now().Before(until) {
		return "", verify.Verdict{}, time.Time{}, false
	}
	verdict := verify.Verdict{Allowed: true, Mode: v.M, Boundary: v.B, Digest: v.P, Artifact: v.A, Signers: v.S}
	if v.T != 0 {
		verdict.CheckedAt = time.Unix(0, v.T)
	}
	return v.P, verdict, until, true
}

func (v *coverValue) check(h string) error {
	switch {
	case v.V != gatingVersion:
		return fmt.Errorf("unknown version %d", v.V)
	case v.K != h:
		return errors.New("value bound to another key")
	case !validDigest(v.P):
		return errors.New("invalid index digest")
	case v.B == "" || len(v.B) > gatingMaxField || len(v.A) > gatingMaxField:
		return errors.New("invalid boundary or artifact")
	case v.M != verify.ModeEnforce:
		return fmt.Errorf("mode %q covers nothing", v.M)
	case v.T < 0 || v.U <= 0:
		return errors.New("invalid times")
	case len(v.S) > gatingMaxSigners:
		return errors.New("too many signers")
	}
	return nil
}

// get reads at most gatingMaxValue+1 bytes of the value under key;
// false on a missing key, an error (returned; the Guard counts it) or a
// value over the bound (counted as invalid).
func (s *Gating) get(ctx context.Context, op, key string) ([]byte, bool, error) {
	var raw []byte
	err := s.g.Do(ctx, op, func(ctx context.Context) error {
		// GETRANGE bounds what Redis sends, whatever is stored; a
		// missing key reads as empty.
		b, err := s.c.GetRange(ctx, key, 0, gatingMaxValue).Bytes()
		raw = b
		return err
	})
	if err != nil {
		return nil, false, err
	}
	if len(raw) == 0 {
		return nil, false, nil
	}
	if len(raw) > gatingMaxValue {
		s.g.Invalid(op, key, fmt.Errorf("value over %d bytes", gatingMaxValue))
		return nil, false, nil
	}
	return raw, true, nil
}

// strictDecode parses exactly one JSON object with only v's fields.
func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the value")
	}
	return nil
}

// validDigest accepts "sha256:" and 64 lowercase hex digits.
func validDigest(d string) bool {
	const p = "sha256:"
	if len(d) != len(p)+64 || d[:len(p)] != p {
		return false
	}
	for _, c := range d[len(p):] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
