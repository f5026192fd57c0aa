package blobs

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Errors of Create: the blob is not cached, and the caller serves it
// without the cache.
var (
	ErrTooLarge = errors.New("blob is larger than the cache")
	ErrNoSpace  = errors.New("no room in the cache")
)

// Options bound a Store.
type Options struct {
	// MaxBytes bounds the bytes of cached files. Required (> 0).
	MaxBytes int64
	// MinFreeBytes is the free space the cache leaves on its file
	// system: files are evicted, or a new one refused, rather than go
	// below it. 0 checks nothing.
	MinFreeBytes int64
	// FreeSpace reports the bytes available to the proxy on the file
	// system holding dir. Default: statfs (on Linux; elsewhere free space
	// is not checked).
	FreeSpace func(dir string) (int64, error)
	// ClaimStep is how much room a Writer takes at a time, evicting for
	// it, as its bytes arrive. Default: DefaultClaimStep.
	ClaimStep int64
}

// DefaultClaimStep is the room a Writer claims at a time: evictions
// follow the bytes that arrive, so a fetch abandoned early costs the
// cache about what it downloaded, not the blob's declared size.
const DefaultClaimStep = 32 << 20

// Stats are counts since Open and the current size.
type Stats struct {
	Files int
	Bytes int64
	// Reserved is the space held by running Writers: what they claimed
	// so far, counted against MaxBytes.
	Reserved int64
	// EvictedSize and EvictedFree count files evicted to stay within
	// MaxBytes and above MinFreeBytes.
	EvictedSize, EvictedFree int64
	// Rejected counts files removed at Open: partial files, files whose
	// name is not a digest, and files whose content is not their digest.
	Rejected int64
	// Refused counts Writers refused for want of room.
	Refused int64
}

// Store is a verified blob cache in one directory. See the package
// documentation.
type Store struct {
	dir  string
	opts Options

	mu      sync.Mutex
	entries map[string]*list.Element // key → element holding *entry
	lru     *list.List               // front: most recently used
	bytes   int64
	// Running Writers, summed: declared is their blobs' sizes, which
	// must fit in MaxBytes together; claimed is the room they hold,
	// counted against MaxBytes; unwritten and pending are declared and
	// claimed bytes not yet on disk as of each Writer's last claim, for
	// the free-space checks (they run ahead by less than a step).
	declared, claimed, unwritten, pending int64

	evictedSize, evictedFree, rejected, refused atomic.Int64

	scanned chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup
}

type entry struct {
	key  string
	path string
	size int64
}

// Open opens (creating it if needed) the cache in dir: it removes
// temporary files left by an earlier run and starts re-hashing the files
// it finds; each enters the index once its content matched its name.
func Open(dir string, o Options) (*Store, error) {
	if o.MaxBytes <= 0 {
		return nil, errors.New("blob cache: max bytes must be positive")
	}
	if o.MinFreeBytes < 0 {
		return nil, errors.New("blob cache: negative min free bytes")
	}
	if o.FreeSpace == nil {
		o.FreeSpace = freeSpace
	}
	if o.ClaimStep <= 0 {
		o.ClaimStep = DefaultClaimStep
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	s := &Store{
		dir: abs, opts: o, entries: map[string]*list.Element{}, lru: list.New(),
		scanned: make(chan struct{}), stop: make(chan struct{}),
	}
	if err := os.MkdirAll(s.blobsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	// Partial files of an earlier run: their bytes were never checked to
	// the end.
	tmp := s.tmpDir()
	if olds, err := os.ReadDir(tmp); err == nil {
		for _, e := range olds {
			if os.RemoveAll(filepath.Join(tmp, e.Name())) == nil {
				s.rejected.Add(1)
			}
		}
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	found, err := s.list()
	if err != nil {
		return nil, fmt.Errorf("blob cache: reading %s: %w", s.blobsDir(), err)
	}
	s.wg.Add(1)
	go s.scan(found)
	return s, nil
}

func (s *Store) blobsDir() string { return filepath.Join(s.dir, "blobs") }
func (s *Store) tmpDir() string   { return filepath.Join(s.dir, "tmp") }

// upstreamDir names an upstream's directory by a hash of its name, so
// no upstream name can reach outside the cache or collide with another.
func upstreamDir(upstream string) string {
	h := sha256.Sum256([]byte(upstream))
	return hex.EncodeToString(h[:16])
}

func (s *Store) key(upstream string, d v1.Hash) string {
	return upstreamDir(upstream) + "/" + d.Algorithm + "/" + d.Hex
}

func (s *Store) path(key string) string { return filepath.Join(s.blobsDir(), filepath.FromSlash(key)) }

type found struct {
	key, path string
	digest    v1.Hash
	size      int64
	mtime     int64
}

// list walks blobs/<upstream>/<algorithm>/<hex>, removing anything that
// cannot be a blob, oldest first.
func (s *Store) list() ([]found, error) {
	var out []found
	root := s.blobsDir()
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		depth := 0
		if rel != "." {
			depth = len(splitPath(rel))
		}
		if e.IsDir() {
			if depth > 2 {
				s.reject(p)
				return filepath.SkipDir
			}
			return nil
		}
		parts := splitPath(rel)
		if depth != 3 || !e.Type().IsRegular() {
			s.reject(p)
			return nil
		}
		d, err := v1.NewHash(parts[1] + ":" + parts[2])
		if err != nil || len(parts[0]) != 32 || d.Algorithm != "sha256" {
			s.reject(p)
			return nil
		}
		info, err := e.Info()
		if err != nil {
			s.reject(p)
			return nil
		}
		out = append(out, found{key: parts[0] + "/" + parts[1] + "/" + parts[2], path: p, digest: d,
			size: info.Size(), mtime: info.ModTime().UnixNano()})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].mtime < out[j].mtime })
	return out, err
}

func splitPath(rel string) []string {
	var parts []string
	for rel != "" && rel != "." {
		dir, file := filepath.Split(rel)
		parts = append([]string{file}, parts...)
		rel = filepath.Clean(dir)
		if dir == "" {
			break
		}
	}
	return parts
}

func (s *Store) reject(p string) {
	if os.RemoveAll(p) == nil {
		s.rejected.Add(1)
	}
}

// scan re-hashes the files found at Open, oldest first, and indexes those
// whose content is their digest.
func (s *Store) scan(files []found) {
	defer s.wg.Done()
	defer close(s.scanned)
	for _, f := range files {
		select {
		case <-s.stop:
			return
		default:
		}
		if !matches(f.path, f.digest, f.size) {
			s.reject(f.path)
			continue
		}
		s.mu.Lock()
		if _, ok := s.entries[f.key]; !ok {
			s.entries[f.key] = s.lru.PushFront(&entry{key: f.key, path: f.path, size: f.size})
			s.bytes += f.size
			s.evictLocked(0)
		}
		s.mu.Unlock()
	}
}

// matches reports whether the file at p is size bytes hashing to d.
func matches(p string, d v1.Hash, size int64) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return err == nil && n == size && hex.EncodeToString(h.Sum(nil)) == d.Hex
}

// Scanned is closed once the files found at Open have all been checked.
func (s *Store) Scanned() <-chan struct{} { return s.scanned }

// Close stops the scan of files found at Open. Files handed out stay
// open; the store must not be used after.
func (s *Store) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
	return nil
}

// Get opens the cached blob digest of upstream and marks it recently
// used. The caller closes the file. A file whose size is no longer the
// size it was indexed with is dropped from the index and is a miss.
func (s *Store) Get(upstream string, d v1.Hash) (*os.File, int64, bool) {
	k := s.key(upstream, d)
	s.mu.Lock()
	el, ok := s.entries[k]
	if !ok {
		s.mu.Unlock()
		return nil, 0, false
	}
	e := el.Value.(*entry)
	s.lru.MoveToFront(el)
	s.mu.Unlock()
	f, err := os.Open(e.path)
	if err == nil {
		if info, serr := f.Stat(); serr == nil && info.Mode().IsRegular() && info.Size() == e.size {
			return f, e.size, true
		}
		f.Close()
	}
	s.mu.Lock()
	if cur, ok := s.entries[k]; ok && cur == el {
		s.removeLocked(el)
		_ = os.Remove(e.path)
	}
	s.mu.Unlock()
	return nil, 0, false
}

// Create admits a blob of size bytes about to be fetched and returns a
// Writer for it. Nothing is evicted yet: the Writer claims room as its
// bytes arrive. ErrTooLarge and ErrNoSpace mean the blob is not to be
// cached: larger than the cache, more than the running Writers leave of
// it, or more than the file system can hold above MinFreeBytes once
// every cached file is evicted.
func (s *Store) Create(upstream string, d v1.Hash, size int64) (*Writer, error) {
	if size < 0 {
		return nil, errors.New("blob cache: unknown size")
	}
	if size > s.opts.MaxBytes {
		s.refused.Add(1)
		return nil, ErrTooLarge
	}
	s.mu.Lock()
	if !s.admitLocked(size) {
		s.mu.Unlock()
		s.refused.Add(1)
		return nil, ErrNoSpace
	}
	s.declared += size
	s.unwritten += size
	s.mu.Unlock()
	f, err := os.CreateTemp(s.tmpDir(), "blob-*")
	if err != nil {
		s.mu.Lock()
		s.declared -= size
		s.unwritten -= size
		s.mu.Unlock()
		return nil, fmt.Errorf("blob cache: %w", err)
	}
	return &Writer{s: s, f: f, key: s.key(upstream, d), size: size}, nil
}

// admitLocked reports whether a blob of size bytes can be written beside
// the running Writers, were every cached file evicted.
func (s *Store) admitLocked(size int64) bool {
	if s.declared+size > s.opts.MaxBytes {
		return false
	}
	if s.opts.MinFreeBytes == 0 {
		return true
	}
	free, err := s.opts.FreeSpace(s.dir)
	return err == nil && free+s.bytes-s.unwritten-size >= s.opts.MinFreeBytes
}

// evictLocked evicts least recently used files until want more bytes fit
// within MaxBytes and leave MinFreeBytes free. It reports whether they
// fit.
func (s *Store) evictLocked(want int64) bool {
	for s.bytes+s.claimed+want > s.opts.MaxBytes {
		if !s.evictOldestLocked() {
			return false
		}
		s.evictedSize.Add(1)
	}
	if s.opts.MinFreeBytes == 0 {
		return true
	}
	free, err := s.opts.FreeSpace(s.dir)
	if err != nil {
		// Unknown free space: fail towards not writing.
		return want == 0
	}
	// Claimed space not yet written is not yet gone from free.
	for free-s.pending-want < s.opts.MinFreeBytes {
		back := s.lru.Back()
		if back == nil {
			return false
		}
		free += back.Value.(*entry).size
		if !s.evictOldestLocked() {
			return false
		}
		s.evictedFree.Add(1)
	}
	return true
}

func (s *Store) evictOldestLocked() bool {
	back := s.lru.Back()
	if back == nil {
		return false
	}
	e := back.Value.(*entry)
	s.removeLocked(back)
	_ = os.Remove(e.path)
	return true
}

func (s *Store) removeLocked(el *list.Element) {
	e := el.Value.(*entry)
	s.lru.Remove(el)
	delete(s.entries, e.key)
	s.bytes -= e.size
}

// Trim evicts files until the cache is within its bounds again, for a
// file system that filled up from elsewhere.
func (s *Store) Trim() {
	s.mu.Lock()
	s.evictLocked(0)
	s.mu.Unlock()
}

// Stats returns the current counts.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Files: len(s.entries), Bytes: s.bytes, Reserved: s.claimed}
	s.mu.Unlock()
	st.EvictedSize, st.EvictedFree = s.evictedSize.Load(), s.evictedFree.Load()
	st.Rejected, st.Refused = s.rejected.Load(), s.refused.Load()
	return st
}

// Writer writes one blob to a temporary file. Its bytes may be read back
// with ReadAt while it is written, by readers sharing the fetch. Commit or
// Abort ends the write; Close closes the file once no reader needs it.
// Write, Commit and Abort are called from one goroutine.
type Writer struct {
	s       *Store
	f       *os.File
	key     string
	size    int64
	written int64
	// claimed is the room held; synced is written as of the last claim,
	// what the store's unwritten and pending counts assume.
	claimed, synced int64
	done            bool
}

// Write appends to the file, claiming room (and evicting for it) a step
// at a time. It refuses bytes past the declared size, and returns
// ErrNoSpace when no room can be claimed: the blob is then not cached.
func (w *Writer) Write(b []byte) (int, error) {
	if w.done {
		return 0, errors.New("blob cache: write after commit or abort")
	}
	end := w.written + int64(len(b))
	if end > w.size {
		return 0, fmt.Errorf("blob cache: more than the %d bytes declared", w.size)
	}
	if end > w.claimed {
		if err := w.claim(end); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(b)
	w.written += int64(n)
	return n, err
}

// claim takes room up to at least end, a step at a time.
func (w *Writer) claim(end int64) error {
	s := w.s
	step := max(s.opts.ClaimStep, end-w.claimed)
	step = min(step, w.size-w.claimed)
	s.mu.Lock()
	defer s.mu.Unlock()
	w.syncLocked()
	if !s.evictLocked(step) {
		s.refused.Add(1)
		return ErrNoSpace
	}
	w.claimed += step
	s.claimed += step
	s.pending += step
	return nil
}

// syncLocked tells the store how much of the claimed room is now on disk.
func (w *Writer) syncLocked() {
	d := w.written - w.synced
	w.synced = w.written
	w.s.unwritten -= d
	w.s.pending -= d
}

// releaseLocked takes the Writer out of the store's running counts.
func (w *Writer) releaseLocked() {
	s := w.s
	w.syncLocked()
	s.declared -= w.size
	s.unwritten -= w.size - w.written
	s.claimed -= w.claimed
	s.pending -= w.claimed - w.written
}

// ReadAt reads the file as written so far.
func (w *Writer) ReadAt(b []byte, off int64) (int, error) { return w.f.ReadAt(b, off) }

// OpenReader opens the file as written so far for one reader, with an
// offset of its own, so that the reader can hand it to sendfile(2). It is
// opened through /proc/self/fd, which still names the file once it has
// been renamed into place or removed; where there is no /proc it fails and
// the reader uses ReadAt.
func (w *Writer) OpenReader() (*os.File, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var f *os.File
	cerr := rc.Control(func(fd uintptr) {
		f, err = os.Open("/proc/self/fd/" + strconv.FormatUint(uint64(fd), 10))
	})
	if cerr != nil {
		return nil, cerr
	}
	return f, err
}

// Commit makes the file the cached blob: the caller has checked its bytes
// against the digest. The file must hold exactly the declared size. It is
// synced before it is renamed into place.
func (w *Writer) Commit() error {
	if w.done {
		return errors.New("blob cache: commit after commit or abort")
	}
	if w.written != w.size {
		w.Abort()
		return fmt.Errorf("blob cache: %d bytes written of %d", w.written, w.size)
	}
	w.done = true
	final := w.s.path(w.key)
	err := w.f.Sync()
	if err == nil {
		err = os.MkdirAll(filepath.Dir(final), 0o700)
	}
	s := w.s
	s.mu.Lock()
	w.releaseLocked()
	// Renamed under the lock, so that evicting an older copy of the same
	// blob cannot remove the new file between its rename and its entry.
	if err == nil {
		err = os.Rename(w.f.Name(), final)
	}
	if err != nil {
		s.mu.Unlock()
		_ = os.Remove(w.f.Name())
		return fmt.Errorf("blob cache: %w", err)
	}
	if old, ok := s.entries[w.key]; ok {
		// The same blob committed twice: the rename replaced the file.
		s.removeLocked(old)
	}
	s.entries[w.key] = s.lru.PushFront(&entry{key: w.key, path: final, size: w.size})
	s.bytes += w.size
	s.evictLocked(0)
	s.mu.Unlock()
	syncDir(filepath.Dir(final))
	return nil
}

// Abort removes the temporary file and gives back its room;
// readers holding it may still finish reading what was written.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	_ = os.Remove(w.f.Name())
	w.s.mu.Lock()
	w.releaseLocked()
	w.s.mu.Unlock()
}

// Close closes the file; call it after Commit or Abort once no reader
// needs it.
func (w *Writer) Close() error { return w.f.Close() }

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
