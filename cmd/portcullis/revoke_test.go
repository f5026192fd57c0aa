package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/proxy"
)

// fileKeyID is the revocation form of the PEM public key at path.
func fileKeyID(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// eventually polls get until it answers want; it fails only when that
// never happens within a generous bound, so it asserts no latency.
func eventually(t *testing.T, what string, want int, get func() (int, string)) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := get()
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d %s, want %d", what, code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeRevocations(t *testing.T) {
	s := newSignedSetup(t, "revocations: {file: revocations.json, state_file: state/revocations.json}\nrefresh_ahead: {concurrency: 2}\n")
	dir := filepath.Dir(s.cfgPath)
	revFile := filepath.Join(dir, "revocations.json")
	if err := os.WriteFile(revFile, []byte(`{"revocations": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, b string) { addrs <- [2]string{a, b} })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatal(err)
	}
	call := func(method, url, body string) (int, string) {
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pull := func() (int, string) { return call(http.MethodGet, "http://"+a[0]+"/v2/app/signed/manifests/v1", "") }
	if c, b := pull(); c != http.StatusOK {
		t.Fatalf("signed manifest: %d %s", c, b)
	}

	// The signing key revoked in the watched file, written in place.
	key := fileKeyID(t, filepath.Join(dir, "release.pub"))
	if err := os.WriteFile(revFile, []byte(`{"revocations": [{"key": "`+key+`", "reason": "key leaked", "by": "sec-team"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	body := eventually(t, "pull after the key was revoked in the file", http.StatusForbidden, pull)
	if !strings.Contains(body, "revoked by sec-team: key leaked") {
		t.Fatalf("denial does not name the revocation: %s", body)
	}
	if c, b := call(http.MethodGet, "http://"+a[1]+"/v1/revocations", ""); c != http.StatusOK || !strings.Contains(b, `"source":"file"`) {
		t.Fatalf("GET /v1/revocations: %d %s", c, b)
	}
	if err := os.WriteFile(revFile, []byte(`{"revocations": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pull after the file entry was removed", http.StatusOK, pull)

	// Through the API, persisted to the state file.
	c, b := call(http.MethodPost, "http://"+a[1]+"/v1/revocations",
		`{"digest": "`+s.signed.DigestStr()+`", "reason": "bad build", "by": "alice"}`)
	if c != http.StatusCreated {
		t.Fatalf("POST: %d %s", c, b)
	}
	if c, b := pull(); c != http.StatusForbidden || !strings.Contains(b, "revoked by alice: bad build") {
		t.Fatalf("pull after POST: %d %s", c, b)
	}
	list, err := readRevocationState(filepath.Join(dir, "state", "revocations.json"), 10)
	if err != nil || len(list) != 1 || list[0].Digest != s.signed.DigestStr() || list[0].By != "alice" {
		t.Fatalf("state file = %+v (%v)", list, err)
	}
	if c, b := call(http.MethodDelete, "http://"+a[1]+"/v1/revocations?id=digest:"+s.signed.DigestStr(), ""); c != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", c, b)
	}
	if c, b := pull(); c != http.StatusOK {
		t.Fatalf("pull after DELETE: %d %s", c, b)
	}
	if list, err := readRevocationState(filepath.Join(dir, "state", "revocations.json"), 10); err != nil || len(list) != 0 {
		t.Fatalf("state file after DELETE = %+v (%v)", list, err)
	}
}

// TestRevocationWatcherSymlinkSwap: a Kubernetes config map replaces its
// files by swapping the ..data symlink; the watcher sees the new list.
func TestRevocationWatcherSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	write := func(version, content string) {
		if err := os.Mkdir(filepath.Join(dir, version), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, version, "revocations.json"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	swap := func(version string) {
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("..v1", `{"revocations": []}`)
	swap("..v1")
	if err := os.Symlink(filepath.Join("..data", "revocations.json"), filepath.Join(dir, "revocations.json")); err != nil {
		t.Fatal(err)
	}
	revs := proxy.NewRevocations(0, nil)
	w, err := newRevocationWatcher(filepath.Join(dir, "revocations.json"), 100, revs, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	applied := make(chan struct{}, 4)
	w.applied = func() { applied <- struct{}{} }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.run(ctx)

	write("..v2", `{"revocations": [{"boundary": "prod", "reason": "r", "by": "ops"}]}`)
	swap("..v2")
	select {
	case <-applied:
	case <-time.After(15 * time.Second):
		t.Fatal("the swapped file was never applied")
	}
	if l := revs.List(); len(l) != 1 || l[0].Boundary != "prod" || l[0].Source != proxy.RevocationFromFile {
		t.Fatalf("list = %+v", l)
	}
}

func TestRevocationFileRequiredAtStart(t *testing.T) {
	revs := proxy.NewRevocations(0, nil)
	if _, err := newRevocationWatcher(filepath.Join(t.TempDir(), "absent.json"), 10, revs, zap.NewNop()); err == nil {
		t.Fatal("a missing revocation file was accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"revocations": [{"digest": "x", "reason": "r", "by": "a"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newRevocationWatcher(bad, 10, revs, zap.NewNop()); err == nil {
		t.Fatal("an invalid revocation file was accepted")
	}
}

// TestRevocationFileBrokenKeepsList: a file that no longer parses, or is
// gone, lifts nothing.
func TestRevocationFileBrokenKeepsList(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revocations.json")
	if err := os.WriteFile(path, []byte(`{"revocations": [{"boundary": "prod", "reason": "r", "by": "ops"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	revs := proxy.NewRevocations(0, nil)
	w, err := newRevocationWatcher(path, 10, revs, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer w.fsw.Close()
	if err := os.WriteFile(path, []byte(`{"revocations": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.load(); err == nil {
		t.Fatal("a broken file was applied")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := w.load(); err == nil {
		t.Fatal("a missing file was applied")
	}
	if l := revs.List(); len(l) != 1 {
		t.Fatalf("list = %+v, want the entry to stay in force", l)
	}
}
