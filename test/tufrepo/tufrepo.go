package tufrepo

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// target is the name sigstore publishes its trusted root under.
const target = "trusted_root.json"

// Repo is a TUF repository built in the test with go-tuf's metadata
// API and served by httptest, publishing a trusted_root.json target.
type Repo struct {
	t    testing.TB
	base time.Time // expiries are relative to it

	mu    sync.Mutex
	files map[string][]byte // served path (no leading slash) -> bytes
	down  bool

	keys      map[string]ed25519.PrivateKey // role -> signing key
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
	roots     map[int64][]byte

	srv *httptest.Server
}

// NewKey makes an ed25519 signing key.
func NewKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// New builds and serves a repository publishing trustedRoot. Expiries
// count from base: the timestamp a day, snapshot and targets a week, the
// root a year.
func New(t testing.TB, base time.Time, trustedRoot []byte) *Repo {
	t.Helper()
	r := &Repo{t: t, base: base, files: map[string][]byte{}, keys: map[string]ed25519.PrivateKey{}, roots: map[int64][]byte{}}
	r.root = metadata.Root(base.Add(365 * 24 * time.Hour))
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		r.keys[role] = NewKey(t)
		k, err := metadata.KeyFromPublicKey(r.keys[role].Public())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.root.Signed.AddKey(k, role); err != nil {
			t.Fatal(err)
		}
	}
	r.targets = metadata.Targets(base.Add(7 * 24 * time.Hour))
	r.snapshot = metadata.Snapshot(base.Add(7 * 24 * time.Hour))
	r.timestamp = metadata.Timestamp(base.Add(24 * time.Hour))
	r.targets.Signed.Version, r.snapshot.Signed.Version, r.timestamp.Signed.Version = 0, 0, 0
	r.publishRoot(r.keys[metadata.ROOT])
	r.SetTarget(trustedRoot)
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

// URL is the repository's base URL.
func (r *Repo) URL() string { return r.srv.URL }

func (r *Repo) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	p := strings.TrimPrefix(req.URL.Path, "/")
	b, ok := r.files[p]
	down := r.down
	r.mu.Unlock()
	if down {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	if !ok {
		http.NotFound(w, req)
		return
	}
	_, _ = w.Write(b)
}

// SetDown makes every request fail with 503 (the repository unreachable).
func (r *Repo) SetDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

func (r *Repo) signer(k ed25519.PrivateKey) signature.Signer {
	s, err := signature.LoadSigner(k, crypto.Hash(0))
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// publishRoot signs the current root with the given keys (a rotation
// needs both the old and the new root keys) and serves it as N.root.json.
func (r *Repo) publishRoot(signers ...ed25519.PrivateKey) {
	r.root.ClearSignatures()
	for _, k := range signers {
		if _, err := r.root.Sign(r.signer(k)); err != nil {
			r.t.Fatal(err)
		}
	}
	b, err := r.root.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.roots[r.root.Signed.Version] = b
	r.files[strconv.FormatInt(r.root.Signed.Version, 10)+".root.json"] = b
}

// RootJSON is the pinned root: version 1.
func (r *Repo) RootJSON() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.roots[1]
}

// SetTimestampKey re-signs the timestamp with k, a key the root may not
// list (a repository taken over without the root keys).
func (r *Repo) SetTimestampKey(k ed25519.PrivateKey) {
	r.keys[metadata.TIMESTAMP] = k
	r.PublishTimestamp()
}

// setTarget publishes new content for trusted_root.json with new
// targets, snapshot and timestamp versions.
func (r *Repo) SetTarget(content []byte) {
	tf, err := metadata.TargetFile().FromBytes(target, content, "sha256")
	if err != nil {
		r.t.Fatal(err)
	}
	r.targets.Signed.Targets[target] = tf
	r.targets.Signed.Version++
	r.mu.Lock()
	r.files["targets/"+hex.EncodeToString(tf.Hashes["sha256"])+"."+target] = content
	r.mu.Unlock()
	r.publishTop()
}

// publishTop re-signs targets, snapshot and timestamp (the latter two with
// new versions).
func (r *Repo) publishTop() {
	r.targets.ClearSignatures()
	if _, err := r.targets.Sign(r.signer(r.keys[metadata.TARGETS])); err != nil {
		r.t.Fatal(err)
	}
	tb, err := r.targets.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.snapshot.Signed.Meta["targets.json"] = metadata.MetaFile(r.targets.Signed.Version)
	r.snapshot.Signed.Version++
	r.snapshot.ClearSignatures()
	if _, err := r.snapshot.Sign(r.signer(r.keys[metadata.SNAPSHOT])); err != nil {
		r.t.Fatal(err)
	}
	sb, err := r.snapshot.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.files[strconv.FormatInt(r.targets.Signed.Version, 10)+".targets.json"] = tb
	r.files[strconv.FormatInt(r.snapshot.Signed.Version, 10)+".snapshot.json"] = sb
	r.mu.Unlock()
	r.PublishTimestamp()
}

// PublishTimestamp re-signs the timestamp with a new version.
func (r *Repo) PublishTimestamp() {
	r.timestamp.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.snapshot.Signed.Version)
	r.timestamp.Signed.Version++
	r.timestamp.ClearSignatures()
	if _, err := r.timestamp.Sign(r.signer(r.keys[metadata.TIMESTAMP])); err != nil {
		r.t.Fatal(err)
	}
	b, err := r.timestamp.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.files["timestamp.json"] = b
	r.mu.Unlock()
}

// rotateRoot publishes root version N+1 with a new root key and a new
// timestamp key, signed by the old and the new root keys, then re-signs
// the timestamp with its new key.
func (r *Repo) RotateRoot() {
	oldRoot := r.keys[metadata.ROOT]
	for _, role := range []string{metadata.ROOT, metadata.TIMESTAMP} {
		old, err := metadata.KeyFromPublicKey(r.keys[role].Public())
		if err != nil {
			r.t.Fatal(err)
		}
		id, err := old.ID()
		if err != nil {
			r.t.Fatal(err)
		}
		if err := r.root.Signed.RevokeKey(id, role); err != nil {
			r.t.Fatal(err)
		}
		r.keys[role] = NewKey(r.t)
		k, err := metadata.KeyFromPublicKey(r.keys[role].Public())
		if err != nil {
			r.t.Fatal(err)
		}
		if err := r.root.Signed.AddKey(k, role); err != nil {
			r.t.Fatal(err)
		}
	}
	r.root.Signed.Version++
	r.publishRoot(oldRoot, r.keys[metadata.ROOT])
	r.PublishTimestamp()
}

// Files is a copy of what is served; Restore serves such a copy again
// (an earlier state: a rollback).
func (r *Repo) Files() map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]byte, len(r.files))
	for k, v := range r.files {
		out[k] = v
	}
	return out
}

// Restore serves files (from Files) instead of the current state.
func (r *Repo) Restore(files map[string][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files = make(map[string][]byte, len(files))
	for k, v := range files {
		r.files[k] = v
	}
}

// SetFile serves b at path p (no leading slash).
func (r *Repo) SetFile(p string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files[p] = b
}
