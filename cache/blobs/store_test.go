package blobs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func digestOf(b []byte) v1.Hash {
	h := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h[:])}
}

func open(t *testing.T, dir string, o Options) *Store {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	select {
	case <-s.Scanned():
	case <-time.After(10 * time.Second):
		t.Fatal("scan did not finish")
	}
	return s
}

func put(t *testing.T, s *Store, upstream string, b []byte) v1.Hash {
	t.Helper()
	d := digestOf(b)
	w, err := s.Create(upstream, d, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return d
}

func read(t *testing.T, s *Store, upstream string, d v1.Hash) ([]byte, bool) {
	t.Helper()
	f, _, ok := s.Get(upstream, d)
	if !ok {
		return nil, false
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b, true
}

func TestPerUpstreamAndRebuild(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20})
	blob := []byte("layer bytes")
	d := put(t, s, "docker.io", blob)
	if got, ok := read(t, s, "docker.io", d); !ok || !bytes.Equal(got, blob) {
		t.Fatalf("Get = %q, %v", got, ok)
	}
	// The same digest from another upstream is not this file.
	if _, ok := read(t, s, "ghcr.io", d); ok {
		t.Fatal("a blob cached for docker.io was found for ghcr.io")
	}
	s.Close()

	s2 := open(t, dir, Options{MaxBytes: 1 << 20})
	if got, ok := read(t, s2, "docker.io", d); !ok || !bytes.Equal(got, blob) {
		t.Fatalf("after restart Get = %q, %v", got, ok)
	}
	if st := s2.Stats(); st.Files != 1 || st.Bytes != int64(len(blob)) || st.Rejected != 0 {
		t.Errorf("stats after restart = %+v", st)
	}
}

// A file whose content is not the digest its path names, a file whose
// name is no digest and partial files are removed at Open and never
// served.
func TestOpenRejectsUnverifiedFiles(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20})
	good := put(t, s, "docker.io", []byte("good"))
	s.Close()

	planted := digestOf([]byte("what the name says"))
	plantedPath := filepath.Join(dir, "blobs", upstreamDir("docker.io"), "sha256", planted.Hex)
	if err := os.WriteFile(plantedPath, []byte("something else!!!!"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Right size, wrong bytes: only a re-hash tells.
	sameSize := []byte("what the name sayz")
	sameSizePath := filepath.Join(dir, "blobs", upstreamDir("docker.io"), "sha256", digestOf([]byte("what the name says!")).Hex)
	if err := os.WriteFile(sameSizePath, append(sameSize, '!'), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "blobs", upstreamDir("docker.io"), "sha256", "not-a-digest")
	if err := os.WriteFile(junk, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(dir, "tmp", "blob-123")
	if err := os.WriteFile(partial, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	s2 := open(t, dir, Options{MaxBytes: 1 << 20})
	if _, ok := read(t, s2, "docker.io", planted); ok {
		t.Fatal("a planted file whose content is not its digest was served")
	}
	if _, ok := read(t, s2, "docker.io", digestOf([]byte("what the name says!"))); ok {
		t.Fatal("a planted file of the right size but wrong content was served")
	}
	for _, p := range []string{plantedPath, sameSizePath, junk, partial} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Open: %v", p, err)
		}
	}
	if _, ok := read(t, s2, "docker.io", good); !ok {
		t.Error("the verified file was lost")
	}
	if st := s2.Stats(); st.Rejected != 4 || st.Files != 1 {
		t.Errorf("stats = %+v, want 4 rejected, 1 file", st)
	}
}

// A file changed after it was indexed (size) is dropped, not served.
func TestGetChecksSize(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 1 << 20})
	d := put(t, s, "docker.io", []byte("original"))
	p := filepath.Join(dir, "blobs", upstreamDir("docker.io"), "sha256", d.Hex)
	if err := os.WriteFile(p, []byte("original and more"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := read(t, s, "docker.io", d); ok {
		t.Fatal("a file whose size changed was served")
	}
	if st := s.Stats(); st.Files != 0 || st.Bytes != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestEvictionBySize(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 100})
	a := put(t, s, "u", bytes.Repeat([]byte("a"), 40))
	b := put(t, s, "u", bytes.Repeat([]byte("b"), 40))
	read(t, s, "u", a) // a is now the most recently used
	c := put(t, s, "u", bytes.Repeat([]byte("c"), 40))
	if _, ok := read(t, s, "u", b); ok {
		t.Error("the least recently used file survived")
	}
	for _, d := range []v1.Hash{a, c} {
		if _, ok := read(t, s, "u", d); !ok {
			t.Errorf("%s evicted", d)
		}
	}
	if st := s.Stats(); st.Bytes != 80 || st.EvictedSize != 1 {
		t.Errorf("stats = %+v", st)
	}
	if _, err := s.Create("u", digestOf([]byte("big")), 101); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Create beyond the cache = %v, want ErrTooLarge", err)
	}
}

func TestEvictionByFreeSpace(t *testing.T) {
	free := int64(1000)
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20, MinFreeBytes: 900,
		FreeSpace: func(string) (int64, error) { return free, nil }})
	a := put(t, s, "u", bytes.Repeat([]byte("a"), 50))
	free -= 50
	// 950 free, 900 to keep: 60 more bytes need a's 50 back, once they
	// arrive.
	w, err := s.Create("u", digestOf([]byte("x")), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := read(t, s, "u", a); !ok {
		t.Error("a file evicted before any byte arrived")
	}
	if _, err := w.Write(make([]byte, 60)); err != nil {
		t.Fatal(err)
	}
	w.Abort()
	w.Close()
	if _, ok := read(t, s, "u", a); ok {
		t.Error("a file survived a free-space shortage")
	}
	if st := s.Stats(); st.EvictedFree != 1 || st.Reserved != 0 {
		t.Errorf("stats = %+v", st)
	}
	free = 100
	if _, err := s.Create("u", digestOf([]byte("y")), 10); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Create below min free = %v, want ErrNoSpace", err)
	}
}

func TestWriterRefusesWrongLength(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20})
	blob := []byte("twelve bytes")
	d := digestOf(blob)
	w, err := s.Create("u", d, int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(append(blob, '!')); err == nil {
		t.Error("a write past the reserved size was accepted")
	}
	if _, err := w.Write(blob[:5]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil {
		t.Error("a short file was committed")
	}
	w.Close()
	if _, ok := read(t, s, "u", d); ok {
		t.Error("a short file was served")
	}
	if st := s.Stats(); st.Reserved != 0 || st.Files != 0 {
		t.Errorf("stats = %+v", st)
	}
	entries, _ := os.ReadDir(s.tmpDir())
	if len(entries) != 0 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// The cache is full at exactly MaxBytes and keeps MinFreeBytes free to
// the byte; space reserved for blobs still being written counts against
// both, so concurrent first pulls cannot overcommit the disk.
func TestReservationsAndEdges(t *testing.T) {
	if _, err := Open(t.TempDir(), Options{}); err == nil {
		t.Error("a cache of 0 bytes opened")
	}
	s := open(t, t.TempDir(), Options{MaxBytes: 100})
	a := put(t, s, "u", bytes.Repeat([]byte("a"), 60))
	b := put(t, s, "u", bytes.Repeat([]byte("b"), 40)) // exactly full
	if _, ok := read(t, s, "u", a); !ok {
		t.Error("a file evicted by one that fits exactly")
	}
	w, err := s.Create("u", digestOf([]byte("whole")), 100) // the whole cache
	if err != nil {
		t.Fatalf("a blob of exactly MaxBytes: %v", err)
	}
	if _, err := w.Write([]byte("w")); err != nil { // claims it all: the step is larger
		t.Fatal(err)
	}
	for _, d := range []v1.Hash{a, b} {
		if _, ok := read(t, s, "u", d); ok {
			t.Errorf("%s kept beside a reservation of the whole cache", d)
		}
	}
	// Nothing is left to evict, and the reservation holds the space.
	if _, err := s.Create("u", digestOf([]byte("more")), 1); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Create beside a reservation of the whole cache = %v, want ErrNoSpace", err)
	}
	w.Abort()
	w.Close()

	free := int64(1000)
	s = open(t, t.TempDir(), Options{MaxBytes: 1 << 20, MinFreeBytes: 900,
		FreeSpace: func(string) (int64, error) { return free, nil }})
	w, err = s.Create("u", digestOf([]byte("first")), 60)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { w.Abort(); w.Close() }()
	// 1000 free, 60 reserved, 900 to keep: 40 more fit, 41 do not.
	if _, err := s.Create("u", digestOf([]byte("over")), 41); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Create past min free counting the reservation = %v, want ErrNoSpace", err)
	}
	w2, err := s.Create("u", digestOf([]byte("fits")), 40)
	if err != nil {
		t.Fatalf("Create down to exactly min free: %v", err)
	}
	w2.Abort()
	w2.Close()
}

// Rebuilt at start, the cache evicts the files written longest ago first.
func TestRebuildKeepsAge(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{MaxBytes: 100})
	older := put(t, s, "u", bytes.Repeat([]byte("o"), 40))
	newer := put(t, s, "u", bytes.Repeat([]byte("n"), 40))
	path := func(d v1.Hash) string { return s.path(s.key("u", d)) }
	s.Close()
	// Written in that order, but within one clock tick: set the times.
	now := time.Now()
	for d, at := range map[v1.Hash]time.Time{older: now.Add(-time.Hour), newer: now} {
		if err := os.Chtimes(path(d), at, at); err != nil {
			t.Fatal(err)
		}
	}
	s = open(t, dir, Options{MaxBytes: 100})
	put(t, s, "u", bytes.Repeat([]byte("x"), 40))
	if _, ok := read(t, s, "u", older); ok {
		t.Error("the older file survived")
	}
	if _, ok := read(t, s, "u", newer); !ok {
		t.Error("the newer file was evicted")
	}
}

// A Writer claims room as its bytes arrive, so a fetch abandoned early
// evicts about what it wrote, not its blob's declared size: first pulls
// of large blobs, dropped at once, cannot flush the cache.
func TestWriterClaimsRoomAsBytesArrive(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 100, ClaimStep: 10})
	var old []v1.Hash
	for _, c := range "abcd" {
		old = append(old, put(t, s, "u", bytes.Repeat([]byte{byte(c)}, 20)))
	}
	w, err := s.Create("u", digestOf([]byte("big")), 90)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Files != 4 || st.Reserved != 0 || st.EvictedSize != 0 {
		t.Fatalf("after Create: %+v, want nothing claimed or evicted", st)
	}
	if _, err := w.Write(make([]byte, 5)); err != nil { // claims 10: 90 of 100
		t.Fatal(err)
	}
	if st := s.Stats(); st.Reserved != 10 || st.EvictedSize != 0 {
		t.Fatalf("after 5 bytes: %+v, want 10 claimed, none evicted", st)
	}
	if _, err := w.Write(make([]byte, 20)); err != nil { // a write past a step claims to its end: 25, evicting a
		t.Fatal(err)
	}
	if st := s.Stats(); st.Reserved != 25 || st.EvictedSize != 1 || st.Bytes != 60 {
		t.Fatalf("after 25 bytes: %+v, want 25 claimed, one file evicted", st)
	}
	w.Abort()
	w.Close()
	if st := s.Stats(); st.Reserved != 0 || st.Files != 3 {
		t.Fatalf("after Abort: %+v, want 3 files and nothing claimed", st)
	}
	if _, ok := read(t, s, "u", old[0]); ok {
		t.Error("the oldest file survived the claim that needed its room")
	}
	for _, d := range old[1:] {
		if _, ok := read(t, s, "u", d); !ok {
			t.Errorf("%s evicted by a fetch abandoned at 25 of 90 bytes", d)
		}
	}

	// Running Writers' declared sizes must fit together: the second is
	// refused at once, without evicting anything.
	w1, err := s.Create("u", digestOf([]byte("one")), 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("u", digestOf([]byte("two")), 41); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Create beyond the running Writers' declared sizes = %v, want ErrNoSpace", err)
	}
	if st := s.Stats(); st.Files != 3 || st.Refused != 1 {
		t.Errorf("after the refusal: %+v", st)
	}
	w1.Abort()
	w1.Close()
}

// A Writer that finds no room for its next bytes (the disk filled from
// elsewhere) fails with ErrNoSpace, counted as a refusal, and gives back
// what it held; nothing of it is indexed.
func TestWriterRefusedMidway(t *testing.T) {
	free := int64(1000)
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20, MinFreeBytes: 900, ClaimStep: 10,
		FreeSpace: func(string) (int64, error) { return free, nil }})
	d := digestOf([]byte("blob"))
	w, err := s.Create("u", d, 50)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	free = 905 // someone else wrote 85 bytes
	if _, err := w.Write(make([]byte, 10)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a write past min free = %v, want ErrNoSpace", err)
	}
	if st := s.Stats(); st.Refused != 1 {
		t.Errorf("refusals = %d, want 1", st.Refused)
	}
	w.Abort()
	w.Close()
	if st := s.Stats(); st.Reserved != 0 || st.Files != 0 {
		t.Errorf("after Abort: %+v", st)
	}
	if _, ok := read(t, s, "u", d); ok {
		t.Error("a refused blob was cached")
	}
	// The declared and claimed counts went back to zero: a blob of the
	// whole room above min free is admitted again.
	free = 1000
	w, err = s.Create("u", d, 100)
	if err != nil {
		t.Fatalf("Create after a refused Writer: %v", err)
	}
	w.Abort()
	w.Close()
}

// Two Writers of one blob (pulls in two repositories whose fetches are
// not shared) both commit; the file and its accounting stay right
// whichever wins, and it survives the eviction of the older entry.
func TestCommitTwice(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 100})
	blob := bytes.Repeat([]byte("z"), 30)
	d := digestOf(blob)
	var ws []*Writer
	for range 2 {
		w, err := s.Create("u", d, 30)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(blob); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for _, w := range ws {
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	if st := s.Stats(); st.Files != 1 || st.Bytes != 30 || st.Reserved != 0 {
		t.Errorf("stats = %+v, want one file of 30 bytes", st)
	}
	if b, ok := read(t, s, "u", d); !ok || !bytes.Equal(b, blob) {
		t.Error("the blob committed twice is not served")
	}
}

// The counts a running Writer holds in the store (declared, claimed, and
// what of each is not yet written) go back to zero when it ends, however
// its writes fell across claims, and never exceed what it declared.
func TestWriterCountsReturnToZero(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1000, ClaimStep: 7})
	held := func() [4]int64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return [4]int64{s.declared, s.claimed, s.unwritten, s.pending}
	}
	var ws []*Writer
	for i, n := range []int{3, 29, 64} {
		blob := bytes.Repeat([]byte{byte('a' + i)}, n)
		w, err := s.Create("u", digestOf(blob), int64(n))
		if err != nil {
			t.Fatal(err)
		}
		// Writes of 1, 2, 3... bytes: some within a claim, some across.
		for off, k := 0, 1; off < n; off, k = off+k, k+1 {
			if _, err := w.Write(blob[off:min(off+k, n)]); err != nil {
				t.Fatal(err)
			}
			h := held()
			if h[1] > h[0] || h[2] > h[0] || h[3] > h[1] || h[2] < 0 || h[3] < 0 {
				t.Fatalf("blob %d at %d bytes: declared, claimed, unwritten, pending = %v", i, off+k, h)
			}
		}
		if w.claimed != int64(n) {
			t.Errorf("blob %d: claimed %d of %d bytes written", i, w.claimed, n)
		}
		ws = append(ws, w)
	}
	if err := ws[0].Commit(); err != nil {
		t.Fatal(err)
	}
	ws[1].Abort()
	if err := ws[2].Commit(); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		w.Close()
	}
	if h := held(); h != [4]int64{} {
		t.Errorf("after every Writer ended: declared, claimed, unwritten, pending = %v, want zeros", h)
	}
	if st := s.Stats(); st.Bytes != 3+64 || st.Files != 2 {
		t.Errorf("stats = %+v", st)
	}
}

// Room another Writer claimed but has not written yet is not free: a
// claim counts it, and one that would go below MinFreeBytes once both
// are written is refused.
func TestClaimCountsOtherWritersPendingRoom(t *testing.T) {
	free := int64(1000)
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20, MinFreeBytes: 900, ClaimStep: 10,
		FreeSpace: func(string) (int64, error) { return free, nil }})
	w1, err := s.Create("u", digestOf([]byte("one")), 50)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { w1.Abort(); w1.Close() }()
	w2, err := s.Create("u", digestOf([]byte("two")), 50)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { w2.Abort(); w2.Close() }()
	if _, err := w1.Write([]byte("x")); err != nil { // claims 10, writes 1 (not yet counted)
		t.Fatal(err)
	}
	free = 915 // the disk filled from elsewhere
	// w2's 10 and w1's 10 pending would leave 895.
	if _, err := w2.Write([]byte("y")); !errors.Is(err, ErrNoSpace) {
		t.Errorf("a claim beside another's pending room, below min free = %v, want ErrNoSpace", err)
	}
	free = 920 // exactly 900 left once both are written
	if _, err := w2.Write([]byte("y")); err != nil {
		t.Errorf("a claim down to exactly min free: %v", err)
	}
}

// Zero-byte blobs (the empty layer and config of many images) are cached
// like any other, and a Writer never claims past its declared size.
func TestSmallAndEmptyBlobs(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 100, ClaimStep: 50})
	empty := put(t, s, "u", nil)
	if b, ok := read(t, s, "u", empty); !ok || len(b) != 0 {
		t.Errorf("the empty blob: %q, cached %v", b, ok)
	}
	w, err := s.Create("u", digestOf([]byte("small")), 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("sma")); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Reserved != 5 {
		t.Errorf("a 5-byte blob holds %d bytes, want 5 (the step is capped by the size)", st.Reserved)
	}
	w.Abort()
	w.Close()
}

// Free space that cannot be read is no room: Create and the next claim
// are refused rather than write towards a full disk.
func TestFreeSpaceUnknownRefuses(t *testing.T) {
	var broken bool
	s := open(t, t.TempDir(), Options{MaxBytes: 1 << 20, MinFreeBytes: 1, ClaimStep: 10,
		FreeSpace: func(string) (int64, error) {
			if broken {
				return 0, errors.New("statfs failed")
			}
			return 1 << 30, nil
		}})
	w, err := s.Create("u", digestOf([]byte("blob")), 50)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { w.Abort(); w.Close() }()
	if _, err := w.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	broken = true
	if _, err := w.Write(make([]byte, 10)); !errors.Is(err, ErrNoSpace) {
		t.Errorf("a claim with unknown free space = %v, want ErrNoSpace", err)
	}
	if _, err := s.Create("u", digestOf([]byte("other")), 5); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Create with unknown free space = %v, want ErrNoSpace", err)
	}
}
