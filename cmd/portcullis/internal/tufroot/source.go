package tufroot

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	tufconfig "github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy/tuffetch"
)

// Target is the TUF target holding the sigstore trusted root.
const Target = "trusted_root.json"

// Size limits for what is read. The metadata limits are go-tuf's own
// defaults, applied to the cache too (go-tuf reads cached files whole);
// the public-good trusted_root.json is tens of kilobytes.
const (
	maxRootBytes      = 512_000
	maxTimestampBytes = 16_384
	maxSnapshotBytes  = 2_000_000
	maxTargetsBytes   = 5_000_000
	MaxTargetBytes    = 16 << 20
	// maxRootRotations bounds the root chain walked from the pinned root.
	maxRootRotations = 256
)

// RetryAfterFailure is the longest wait before a failed refresh is tried
// again (the configured refresh when shorter).
const RetryAfterFailure = 5 * time.Minute

// CheckRoot says whether b is a TUF root that verifies with its own keys:
// a pinned root that does not is a configuration error, found without
// the network.
func CheckRoot(b []byte) error {
	if _, err := trustedmetadata.New(b); err != nil {
		return fmt.Errorf("not a valid TUF root.json: %w", err)
	}
	return nil
}

// Spec says where one trust entry's root comes from.
type Spec struct {
	Trust    string        // trust entry name, for messages and metrics
	URL      string        // repository base URL
	Root     []byte        // the pinned root.json
	CacheDir string        // where verified metadata and the target are kept
	Refresh  time.Duration // how often to fetch new metadata
	Timeout  time.Duration // per download
	// MaxHeaderBytes bounds each answer's headers; 0 means the
	// upstream client's default.
	MaxHeaderBytes int64
	// Fetcher replaces the default HTTP fetcher (tests).
	Fetcher fetcher.Fetcher
}

func (s Spec) same(o Spec) bool {
	return s.Trust == o.Trust && s.URL == o.URL && bytes.Equal(s.Root, o.Root) && s.CacheDir == o.CacheDir &&
		s.Refresh == o.Refresh && s.Timeout == o.Timeout && s.MaxHeaderBytes == o.MaxHeaderBytes
}

// State is a verified trusted root with what vouched for it.
type State struct {
	Trusted *root.TrustedRoot
	// Digest identifies the trusted_root.json bytes ("sha256:<hex>").
	Digest string
	// Versions of the TUF roles it came from.
	RootVersion, TimestampVersion, SnapshotVersion, TargetsVersion int64
	// Expires is the earliest expiry of those roles: the root is not
	// handed out past it.
	Expires time.Time
	// From is "cache" or "network".
	From string
	// Checked is when the repository (or cache) last confirmed it.
	Checked time.Time

	rootJSON []byte // the newest verified TUF root, where the next fetch starts
}

// Source is one trust entry's trusted root, kept fresh by Refresh.
type Source struct {
	spec    Spec
	fetcher fetcher.Fetcher
	clock   func() time.Time
	m       *metrics

	update sync.Mutex // one fetch at a time

	mu      sync.Mutex
	cur     *State
	lastErr error
	// vouched is, per trusted_root.json digest, the latest expiry of
	// metadata that carried it: a root rotated out stays usable by the
	// engine still holding it until its own metadata expires.
	vouched     map[string]*atomic.Int64 // Unix nanoseconds
	next        time.Time                // when the next refresh is due
	lastAttempt time.Time
}

// DefaultRefresh applies to a Spec without a refresh interval.
const DefaultRefresh = 24 * time.Hour

func (s Spec) withDefaults() Spec {
	if s.Refresh <= 0 {
		s.Refresh = DefaultRefresh
	}
	return s
}

func newSource(spec Spec, clock func() time.Time, m *metrics) *Source {
	s := &Source{spec: spec, fetcher: spec.Fetcher, clock: clock, m: m, vouched: map[string]*atomic.Int64{}}
	if s.fetcher == nil {
		s.fetcher = tuffetch.New(spec.Timeout, "portcullis", spec.MaxHeaderBytes, nil)
	}
	return s
}

// Spec is what the source was opened with.
func (s *Source) Spec() Spec { return s.spec }

// start loads the root: from the cache when it verifies (no network, and
// a refresh is due at once), else from the repository.
func (s *Source) start() {
	s.update.Lock()
	defer s.update.Unlock()
	now := s.clock()
	st, cacheErr := s.loadCache(now)
	if cacheErr == nil {
		s.set(st, nil, now, now)
		return
	}
	st, err := s.fetch(now, nil)
	if err != nil {
		err = fmt.Errorf("%w (cache: %v)", err, cacheErr)
		s.m.refreshed(s.spec.Trust, resultFailed)
		s.set(nil, err, now, now.Add(s.retryAfter()))
		return
	}
	s.m.refreshed(s.spec.Trust, resultUpdated)
	s.set(st, nil, now, now.Add(s.spec.Refresh))
}

func (s *Source) retryAfter() time.Duration {
	return min(s.spec.Refresh, RetryAfterFailure)
}

// set records the outcome of a load or refresh; a nil st keeps the
// current root.
func (s *Source) set(st *State, err error, attempt, next time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st != nil {
		s.cur = st
		v := s.vouched[st.Digest]
		if v == nil {
			v = &atomic.Int64{}
			s.vouched[st.Digest] = v
		}
		if exp := st.Expires.UnixNano(); exp > v.Load() {
			v.Store(exp)
		}
	}
	s.lastErr, s.lastAttempt, s.next = err, attempt, next
}

// Result of a refresh.
type Result struct {
	Changed bool   // a different trusted_root.json is now current
	State   *State // current after the refresh (nil: none ever)
	Err     error  // the refresh failed; State is the last good one
}

// Due says whether a refresh should run now.
func (s *Source) Due() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.clock().Before(s.next)
}

// Refresh fetches new metadata. On failure the current root is kept (it
// stops being handed out when its metadata expires).
func (s *Source) Refresh() Result {
	s.update.Lock()
	defer s.update.Unlock()
	now := s.clock()
	s.mu.Lock()
	prev := s.cur
	s.mu.Unlock()
	st, err := s.fetch(now, prev)
	if err != nil {
		s.m.refreshed(s.spec.Trust, resultFailed)
		s.set(nil, err, now, now.Add(s.retryAfter()))
		return Result{State: prev, Err: err}
	}
	changed := prev == nil || prev.Digest != st.Digest
	if changed {
		s.m.refreshed(s.spec.Trust, resultUpdated)
	} else {
		s.m.refreshed(s.spec.Trust, resultUnchanged)
	}
	s.set(st, nil, now, now.Add(s.spec.Refresh))
	return Result{Changed: changed, State: st}
}

// Current is the last good state (nil if none) and the last error (nil
// after a success).
func (s *Source) Current() (*State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, s.lastErr
}

// Unavailable says why a source has no root to hand out. Summary is for
// the clients a denial is sent to; Error adds the operator's detail (the
// repository and the failure).
type Unavailable struct {
	Summary string
	Detail  error
}

func (u *Unavailable) Error() string { return u.Summary + ": " + u.Detail.Error() }
func (u *Unavailable) Unwrap() error { return u.Detail }

// Material is the trusted material to verify with now, with an identity
// that changes whenever what it accepts changes (a new root, or none).
// When no usable root exists the material verifies nothing and err, an
// *Unavailable, says why; a keyless verification under it fails closed.
func (s *Source) Material() (tm root.TrustedMaterial, id string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	if s.cur == nil {
		err := s.lastErr
		if err == nil {
			err = errors.New("not fetched yet")
		}
		return unavailable{}, "unavailable", &Unavailable{Summary: "no trusted root fetched yet",
			Detail: fmt.Errorf("from %s: %w", s.spec.URL, err)}
	}
	if !now.Before(s.cur.Expires) {
		why := errors.New("not refreshed since")
		if s.lastErr != nil {
			why = fmt.Errorf("last refresh failed: %w", s.lastErr)
		}
		return unavailable{}, "expired:" + s.cur.Digest, &Unavailable{
			Summary: "trusted root expired at " + s.cur.Expires.UTC().Format(time.RFC3339),
			Detail:  fmt.Errorf("from %s, confirmed last at %s; %w", s.spec.URL, s.cur.Checked.UTC().Format(time.RFC3339), why)}
	}
	return &live{TrustedRoot: s.cur.Trusted, clock: s.clock, until: s.vouched[s.cur.Digest]}, s.cur.Digest, nil
}

// layout of the cache directory: go-tuf's metadata files at the top,
// targets under targets/, and every root version past the pinned one
// under roots/ so that a start from the cache can replay the chain.
func (s *Source) targetsDir() string { return filepath.Join(s.spec.CacheDir, "targets") }
func (s *Source) rootsDir() string   { return filepath.Join(s.spec.CacheDir, "roots") }

// loadCache verifies the cached metadata from the pinned root, as go-tuf
// verifies fetched metadata (expiry included), without the network.
func (s *Source) loadCache(now time.Time) (*State, error) {
	tm, err := trustedmetadata.New(s.spec.Root)
	if err != nil {
		return nil, fmt.Errorf("pinned root: %w", err)
	}
	tm.RefTime = now
	rootJSON := s.spec.Root
	for v := tm.Root.Signed.Version + 1; v < tm.Root.Signed.Version+maxRootRotations; v++ {
		b, err := config.ReadLimited(filepath.Join(s.rootsDir(), strconv.FormatInt(v, 10)+".root.json"), maxRootBytes)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, err
		}
		if _, err := tm.UpdateRoot(b); err != nil {
			return nil, fmt.Errorf("cached root version %d: %w", v, err)
		}
		rootJSON = b
	}
	steps := []struct {
		role  string
		limit int64
		load  func([]byte) error
	}{
		{metadata.TIMESTAMP, maxTimestampBytes, func(b []byte) error { _, err := tm.UpdateTimestamp(b); return err }},
		{metadata.SNAPSHOT, maxSnapshotBytes, func(b []byte) error { _, err := tm.UpdateSnapshot(b, false); return err }},
		{metadata.TARGETS, maxTargetsBytes, func(b []byte) error {
			_, err := tm.UpdateDelegatedTargets(b, metadata.TARGETS, metadata.ROOT)
			return err
		}},
	}
	for _, st := range steps {
		b, err := config.ReadLimited(filepath.Join(s.spec.CacheDir, st.role+".json"), st.limit)
		if err != nil {
			return nil, fmt.Errorf("cached %s: %w", st.role, err)
		}
		if err := st.load(b); err != nil {
			return nil, fmt.Errorf("cached %s: %w", st.role, err)
		}
	}
	ti, ok := tm.Targets[metadata.TARGETS].Signed.Targets[Target]
	if !ok {
		return nil, fmt.Errorf("cached targets metadata lists no %s (targets delegated to other roles are read only online)", Target)
	}
	if ti.Length > MaxTargetBytes {
		return nil, fmt.Errorf("%s is listed with %d bytes, more than the %d allowed", Target, ti.Length, MaxTargetBytes)
	}
	// go-tuf keeps a target under its path, escaped.
	b, err := config.ReadLimited(filepath.Join(s.targetsDir(), url.PathEscape(Target)), ti.Length)
	if err != nil {
		return nil, fmt.Errorf("cached %s: %w", Target, err)
	}
	if err := ti.VerifyLengthHashes(b); err != nil {
		return nil, fmt.Errorf("cached %s: %w", Target, err)
	}
	return stateFrom(tm, b, rootJSON, "cache", now)
}

// fetch runs the TUF client workflow against the repository, starting
// from the newest root already verified.
func (s *Source) fetch(now time.Time, prev *State) (*State, error) {
	startRoot := s.spec.Root
	if prev != nil {
		startRoot = prev.rootJSON
	}
	if err := os.MkdirAll(s.rootsDir(), 0o755); err != nil {
		return nil, fmt.Errorf("cache directory: %w", err)
	}
	// go-tuf reads cached metadata whole; a file past its role's limit
	// is not metadata it could accept, so it goes.
	for role, limit := range map[string]int64{metadata.ROOT: maxRootBytes, metadata.TIMESTAMP: maxTimestampBytes,
		metadata.SNAPSHOT: maxSnapshotBytes, metadata.TARGETS: maxTargetsBytes} {
		p := filepath.Join(s.spec.CacheDir, role+".json")
		if fi, err := os.Lstat(p); err == nil && (!fi.Mode().IsRegular() || fi.Size() > limit) {
			_ = os.Remove(p)
		}
	}
	cfg, err := tufconfig.New(s.spec.URL, startRoot)
	if err != nil {
		return nil, err
	}
	rec := &recorder{Fetcher: s.fetcher, roots: map[int64][]byte{}}
	cfg.Fetcher = rec
	cfg.LocalMetadataDir = s.spec.CacheDir
	cfg.LocalTargetsDir = s.targetsDir()
	cfg.RootMaxLength, cfg.TimestampMaxLength, cfg.SnapshotMaxLength, cfg.TargetsMaxLength = maxRootBytes, maxTimestampBytes, maxSnapshotBytes, maxTargetsBytes
	cfg.MaxRootRotations = maxRootRotations
	up, err := updater.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("tuf: %w", err)
	}
	up.UnsafeSetRefTime(now)
	if err := up.Refresh(); err != nil {
		return nil, fmt.Errorf("tuf refresh from %s: %w", s.spec.URL, err)
	}
	ti, err := up.GetTargetInfo(Target)
	if err != nil {
		return nil, fmt.Errorf("tuf target %s: %w", Target, err)
	}
	if ti.Length > MaxTargetBytes {
		return nil, fmt.Errorf("%s is listed with %d bytes, more than the %d allowed", Target, ti.Length, MaxTargetBytes)
	}
	_, b, err := up.FindCachedTarget(ti, "")
	if err != nil || b == nil {
		if _, b, err = up.DownloadTarget(ti, "", ""); err != nil {
			return nil, fmt.Errorf("tuf target %s: %w", Target, err)
		}
	}
	tm := up.GetTrustedMetadataSet()
	rootJSON := startRoot
	if v := tm.Root.Signed.Version; rec.roots[v] != nil {
		rootJSON = rec.roots[v]
	}
	// Keep every root version the updater accepted, for a start from
	// the cache to replay the chain from the pinned root.
	for v, b := range rec.roots {
		if v <= tm.Root.Signed.Version {
			if err := writeFile(filepath.Join(s.rootsDir(), strconv.FormatInt(v, 10)+".root.json"), b); err != nil {
				return nil, fmt.Errorf("cache: %w", err)
			}
		}
	}
	st, err := stateFrom(&tm, b, rootJSON, "network", now)
	if err != nil {
		return nil, err
	}
	// The cache gives go-tuf its rollback protection; this covers a
	// cache that was wiped while the process kept running.
	if prev != nil && (st.TimestampVersion < prev.TimestampVersion || st.SnapshotVersion < prev.SnapshotVersion ||
		st.TargetsVersion < prev.TargetsVersion || st.RootVersion < prev.RootVersion) {
		return nil, fmt.Errorf("tuf metadata from %s rolled back (timestamp %d < %d, snapshot %d, targets %d)",
			s.spec.URL, st.TimestampVersion, prev.TimestampVersion, st.SnapshotVersion, st.TargetsVersion)
	}
	return st, nil
}

func stateFrom(tm *trustedmetadata.TrustedMetadata, target, rootJSON []byte, from string, now time.Time) (*State, error) {
	tr, err := root.NewTrustedRootFromJSON(target)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Target, err)
	}
	targets := tm.Targets[metadata.TARGETS]
	if tm.Root == nil || tm.Timestamp == nil || tm.Snapshot == nil || targets == nil {
		return nil, errors.New("tuf: incomplete metadata")
	}
	exp := tm.Root.Signed.Expires
	for _, e := range []time.Time{tm.Timestamp.Signed.Expires, tm.Snapshot.Signed.Expires, targets.Signed.Expires} {
		if e.Before(exp) {
			exp = e
		}
	}
	sum := sha256.Sum256(target)
	return &State{
		Trusted: tr, Digest: "sha256:" + hex.EncodeToString(sum[:]),
		RootVersion: tm.Root.Signed.Version, TimestampVersion: tm.Timestamp.Signed.Version,
		SnapshotVersion: tm.Snapshot.Signed.Version, TargetsVersion: targets.Signed.Version,
		Expires: exp, From: from, Checked: now, rootJSON: rootJSON,
	}, nil
}

// recorder keeps the root versions the updater downloads, by version.
type recorder struct {
	fetcher.Fetcher
	mu    sync.Mutex
	roots map[int64][]byte
}

func (r *recorder) DownloadFile(u string, maxLength int64, timeout time.Duration) ([]byte, error) {
	b, err := r.Fetcher.DownloadFile(u, maxLength, timeout)
	if err != nil {
		return nil, err
	}
	base := filepath.Base(u)
	if v, ok := cutRootVersion(base); ok {
		r.mu.Lock()
		r.roots[v] = b
		r.mu.Unlock()
	}
	return b, nil
}

// cutRootVersion reads "<N>.root.json".
func cutRootVersion(base string) (int64, bool) {
	const suffix = ".root.json"
	if len(base) <= len(suffix) || base[len(base)-len(suffix):] != suffix {
		return 0, false
	}
	v, err := strconv.ParseInt(base[:len(base)-len(suffix)], 10, 64)
	return v, err == nil && v > 0
}

func writeFile(p string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), p)
}
