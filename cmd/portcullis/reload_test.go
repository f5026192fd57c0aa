package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/fixtures"
)

// testDebounce keeps the tests quick; the bursts they write are a few
// syscalls long.
const testDebounce = 200 * time.Millisecond

// eventLog is a proxy.EventSink that keeps every event.
type eventLog struct {
	mu     sync.Mutex
	events []proxy.Event
}

func (l *eventLog) Emit(e proxy.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *eventLog) kinds(k proxy.EventKind) []proxy.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []proxy.Event
	for _, e := range l.events {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

// reloadRun is a serving proxy whose reloads the test sees.
type reloadRun struct {
	addr, admin string
	outcomes    chan reloadOutcome
	logs        *observer.ObservedLogs
	events      *eventLog
}

func startReloading(t *testing.T, cfgPath string, hooks reloadHooks) *reloadRun {
	t.Helper()
	cfg, eng, err := loadAll(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	r := &reloadRun{outcomes: make(chan reloadOutcome, 16), logs: logs, events: &eventLog{}}
	if hooks.debounce == 0 {
		hooks.debounce = testDebounce
	}
	hooks.observe = func(o reloadOutcome) { r.outcomes <- o }
	ctx, cancel := context.WithCancel(withReload(context.Background(), hooks))
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.New(core), func(a, b string) { addrs <- [2]string{a, b} }, proxy.WithEventSink(r.events))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	select {
	case a := <-addrs:
		r.addr, r.admin = a[0], a[1]
	case err := <-done:
		t.Fatal(err)
	}
	return r
}

// next waits for the next reload; a reload that never comes fails the test
// instead of hanging it.
func (r *reloadRun) next(t *testing.T) reloadOutcome {
	t.Helper()
	select {
	case o := <-r.outcomes:
		return o
	case <-time.After(30 * time.Second):
		t.Fatal("no reload happened")
		return reloadOutcome{}
	}
}

// quiet fails the test when another reload comes within several debounce
// periods: one burst of changes is one reload.
func (r *reloadRun) quiet(t *testing.T) {
	t.Helper()
	select {
	case o := <-r.outcomes:
		t.Fatalf("a second reload (%+v) for one change", o)
	case <-time.After(5 * testDebounce):
	}
}

func (r *reloadRun) get(t *testing.T, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + r.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (r *reloadRun) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + r.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// writeAtomic replaces p the way editors and config management do.
func writeAtomic(t *testing.T, p string, data []byte) {
	t.Helper()
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

func otherKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := fixtures.NewKeySigner("ecdsa-p256")
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKeyPEM()
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Editing a trust key file swaps the engine: a pull the old key denied is
// allowed by the new one.
func TestReloadKeyFileSwapsEngine(t *testing.T) {
	s := newSignedSetup(t, "")
	keyPath := filepath.Join(filepath.Dir(s.cfgPath), "release.pub")
	good := readFile(t, keyPath)
	writeAtomic(t, keyPath, otherKeyPEM(t))
	r := startReloading(t, s.cfgPath, reloadHooks{})
	if c := r.get(t, "/v2/app/signed/manifests/v1"); c != http.StatusForbidden {
		t.Fatalf("signed under the wrong key: %d, want 403", c)
	}
	writeAtomic(t, keyPath, good)
	if o := r.next(t); o.result != proxy.ReloadSuccess || o.trigger != "file" {
		t.Fatalf("reload %+v, want a success triggered by the file", o)
	}
	if c := r.get(t, "/v2/app/signed/manifests/v1"); c != http.StatusOK {
		t.Fatalf("signed after the key was replaced: %d, want 200", c)
	}
	if m := r.metrics(t); !strings.Contains(m, `portcullis_config_reloads_total{result="success"} 1`) {
		t.Errorf("metrics lack one successful reload:\n%s", grepLines(m, "portcullis_config_"))
	}
}

// A bad configuration is refused whole, with every problem logged, counted
// and sent as an alert event; the old configuration keeps serving.
func TestReloadRefusesBadConfig(t *testing.T) {
	s := newSignedSetup(t, "")
	r := startReloading(t, s.cfgPath, reloadHooks{})
	orig := readFile(t, s.cfgPath)
	// Two problems, and a policy that would deny everything if any of it
	// were applied.
	bad := strings.Replace(string(orig), "app/**", "nothing/**", 1) + "bogus: 1\nunmatched: sometimes\n"
	writeAtomic(t, s.cfgPath, []byte(bad))
	o := r.next(t)
	if o.result != proxy.ReloadFailure {
		t.Fatalf("reload %+v, want a failure", o)
	}
	for _, want := range []string{"bogus", "unmatched"} {
		if !slices.ContainsFunc(o.errs, func(e string) bool { return strings.Contains(e, want) }) {
			t.Errorf("errors %q lack %q", o.errs, want)
		}
	}
	if c := r.get(t, "/v2/app/signed/manifests/v1"); c != http.StatusOK {
		t.Errorf("signed after a refused reload: %d, want 200 (the old configuration)", c)
	}
	entries := r.logs.FilterMessageSnippet("reload refused").All()
	if len(entries) != 1 {
		t.Fatalf("%d refusal log lines, want 1", len(entries))
	}
	logged, _ := entries[0].ContextMap()["errors"].([]any)
	if len(logged) != len(o.errs) || len(logged) < 2 {
		t.Errorf("logged errors %v, want all of %q", logged, o.errs)
	}
	if ev := r.events.kinds(proxy.EventReloadFailed); len(ev) != 1 || !strings.Contains(ev[0].Details["errors"], "bogus") {
		t.Errorf("reload-failed events %+v, want one naming the problems", ev)
	}
	m := r.metrics(t)
	for _, want := range []string{`portcullis_config_reloads_total{result="failure"} 1`, `portcullis_config_reloads_total{result="success"} 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "portcullis_config_"))
		}
	}
	// Fixing the file applies it.
	writeAtomic(t, s.cfgPath, orig)
	if o := r.next(t); o.result != proxy.ReloadSuccess {
		t.Fatalf("reload of the fixed file %+v, want success", o)
	}
}

// A Kubernetes ConfigMap or Secret volume is updated by swapping its
// "..data" symlink to a new timestamped directory: one reload follows.
func TestReloadKubernetesSymlinkSwap(t *testing.T) {
	s := newSignedSetup(t, "")
	src := filepath.Dir(s.cfgPath)
	good := readFile(t, filepath.Join(src, "release.pub"))
	cfgBytes := readFile(t, s.cfgPath)

	vol := t.TempDir()
	version := func(name string, key []byte) {
		d := filepath.Join(vol, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "portcullis.yaml"), cfgBytes, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "release.pub"), key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_00_00_00.1", otherKeyPEM(t))
	for _, l := range [][2]string{
		{"..2026_01_01_00_00_00.1", "..data"},
		{"..data/portcullis.yaml", "portcullis.yaml"},
		{"..data/release.pub", "release.pub"},
	} {
		if err := os.Symlink(l[0], filepath.Join(vol, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	r := startReloading(t, filepath.Join(vol, "portcullis.yaml"), reloadHooks{})
	if c := r.get(t, "/v2/app/signed/manifests/v1"); c != http.StatusForbidden {
		t.Fatalf("signed under the wrong key: %d, want 403", c)
	}

	// What the kubelet's atomic writer does.
	version("..2026_01_01_00_01_00.2", good)
	if err := os.Symlink("..2026_01_01_00_01_00.2", filepath.Join(vol, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(vol, "..2026_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	if o := r.next(t); o.result != proxy.ReloadSuccess {
		t.Fatalf("reload %+v, want success", o)
	}
	r.quiet(t)
	if c := r.get(t, "/v2/app/signed/manifests/v1"); c != http.StatusOK {
		t.Fatalf("signed after the swap: %d, want 200", c)
	}
}

// SIGHUP reloads (and no longer ends the process).
func TestReloadOnSIGHUP(t *testing.T) {
	s := newSignedSetup(t, "")
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// File changes alone would take an hour to be noticed.
	r := startReloading(t, s.cfgPath, reloadHooks{hup: hup, debounce: time.Hour})
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if o := r.next(t); o.result != proxy.ReloadSuccess || o.trigger != "signal" {
		t.Fatalf("reload %+v, want a success triggered by the signal", o)
	}
}

// A change to an upstream cannot apply live: it is reported, counted and
// left alone, while the policy in the same file applies.
func TestReloadUpstreamChangeNeedsRestart(t *testing.T) {
	s := newSignedSetup(t, "")
	r := startReloading(t, s.cfgPath, reloadHooks{})
	orig := string(readFile(t, s.cfgPath))
	next := strings.Replace(orig, "upstreams:\n", fmt.Sprintf("upstreams:\n  - {name: other.local, url: %q, insecure: true}\n", s.reg.URL()), 1)
	next = strings.Replace(next, "app/**", "nothing/**", 1)
	writeAtomic(t, s.cfgPath, []byte(next))
	o := r.next(t)
	if o.result != proxy.ReloadRestartRequired || !slices.Equal(o.restart, []string{"upstreams"}) {
		t.Fatalf("reload %+v, want restart_required naming upstreams", o)
	}
	if c := r.get(t, "/v2/app/signed/manifests/v1?ns=other.local"); c != http.StatusNotFound {
		t.Errorf("the new upstream answers %d, want 404: it is not applied before a restart", c)
	}
	// The boundary moved away from app/**: the new policy is in effect.
	if c := r.get(t, "/v2/app/signed/manifests/v1"); c != http.StatusForbidden {
		t.Errorf("signed under the new policy: %d, want 403", c)
	}
	if len(r.logs.FilterMessageSnippet("need a restart").FilterField(zap.Strings("keys", []string{"upstreams"})).All()) != 1 {
		t.Error("the restart is not logged with the keys")
	}
	m := r.metrics(t)
	for _, want := range []string{`portcullis_config_reloads_total{result="restart_required"} 1`, "portcullis_config_restart_required 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "portcullis_config_"))
		}
	}
	// Undoing the change clears the report.
	writeAtomic(t, s.cfgPath, []byte(orig))
	if o := r.next(t); o.result != proxy.ReloadSuccess {
		t.Fatalf("reload of the original %+v, want success", o)
	}
	if m := r.metrics(t); !strings.Contains(m, "portcullis_config_restart_required 0") {
		t.Errorf("restart still reported after the change was undone:\n%s", grepLines(m, "portcullis_config_"))
	}
}

func TestRestartKeys(t *testing.T) {
	base := func() *config.Config {
		return &config.Config{Listen: ":5000", Limits: config.Limits{MaxEvidence: 64, Verifications: 8},
			Trust: []config.Trust{{Name: "a", Keys: []string{"a.pub"}}}}
	}
	for _, tc := range []struct {
		name   string
		change func(c *config.Config)
		want   []string
	}{
		{"nothing", func(*config.Config) {}, nil},
		{"policy and evidence limits", func(c *config.Config) {
			c.Trust[0].Keys = []string{"b.pub"}
			c.Unmatched = config.UnmatchedInsecureAllow
			c.Limits.MaxEvidence = 8
		}, nil},
		{"tls paths", func(c *config.Config) { c.TLS = &config.TLS{Cert: "c", Key: "k"} }, []string{"tls"}},
		{"listener and verification slots", func(c *config.Config) {
			c.Listen = ":6000"
			c.Limits.Verifications = 2
		}, []string{"limits.verifications", "listen"}},
		{"log and cache", func(c *config.Config) {
			c.Log.Level = "debug"
			c.Cache.Verdicts = 1
		}, []string{"cache", "log"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.change(b)
			got := restartKeys(a, b)
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("restartKeys = %q, want %q", got, tc.want)
			}
		})
	}
	// Both with TLS, other files: applied live.
	a, b := base(), base()
	a.TLS, b.TLS = &config.TLS{Cert: "c1", Key: "k1"}, &config.TLS{Cert: "c2", Key: "k2"}
	if got := restartKeys(a, b); len(got) != 0 {
		t.Errorf("a new TLS pair needs a restart: %q", got)
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A renewed TLS certificate is served from the next handshake on.
func TestReloadTLSCertificate(t *testing.T) {
	s := newSignedSetup(t, "")
	dir := filepath.Dir(s.cfgPath)
	certPath, keyPath, oldPool := selfSigned(t, dir)
	tlsCfg := "tls: {cert: " + filepath.Base(certPath) + ", key: " + filepath.Base(keyPath) + "}\n"
	writeAtomic(t, s.cfgPath, append(readFile(t, s.cfgPath), tlsCfg...))
	r := startReloading(t, s.cfgPath, reloadHooks{})
	get := func(pool *x509.CertPool) error {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		resp, err := client.Get("https://" + r.addr + "/v2/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(oldPool); err != nil {
		t.Fatalf("first certificate: %v", err)
	}
	renewed := t.TempDir()
	newCert, newKey, newPool := selfSigned(t, renewed)
	writeAtomic(t, keyPath, readFile(t, newKey))
	writeAtomic(t, certPath, readFile(t, newCert))
	// A reload between the two writes sees a mismatched pair and is
	// refused; the one after the second write applies.
	for o := r.next(t); o.result != proxy.ReloadSuccess; o = r.next(t) {
		if o.result != proxy.ReloadFailure {
			t.Fatalf("reload %+v", o)
		}
	}
	if err := get(newPool); err != nil {
		t.Fatalf("renewed certificate not served: %v", err)
	}
	if err := get(oldPool); err == nil {
		t.Fatal("the old certificate is still served")
	}
}

// The watch covers the configuration file and every file it names, in
// their directories, and only the names that matter there.
func TestWatchSet(t *testing.T) {
	s := newSignedSetup(t, "")
	dir := filepath.Dir(s.cfgPath)
	certPath, keyPath, _ := selfSigned(t, t.TempDir())
	writeAtomic(t, s.cfgPath, append(readFile(t, s.cfgPath), fmt.Sprintf("tls: {cert: %s, key: %s}\n", certPath, keyPath)...))
	cfg, err := config.Load(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	files := cfg.WatchedFiles()
	for _, want := range []string{s.cfgPath, filepath.Join(dir, "release.pub"), certPath, keyPath} {
		if !slices.Contains(files, want) {
			t.Errorf("WatchedFiles %q lack %s", files, want)
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ws := newWatchSet()
	ws.update(w, zap.NewNop(), cfg)
	for _, tc := range []struct {
		ev   fsnotify.Event
		want bool
	}{
		{fsnotify.Event{Name: s.cfgPath, Op: fsnotify.Create}, true},
		{fsnotify.Event{Name: filepath.Join(dir, "release.pub"), Op: fsnotify.Write}, true},
		{fsnotify.Event{Name: keyPath, Op: fsnotify.Rename}, true},
		{fsnotify.Event{Name: filepath.Join(dir, "..data"), Op: fsnotify.Create}, true},
		{fsnotify.Event{Name: s.cfgPath, Op: fsnotify.Chmod}, false},
		{fsnotify.Event{Name: filepath.Join(dir, "notes.txt"), Op: fsnotify.Write}, false},
		{fsnotify.Event{Name: "/elsewhere/portcullis.yaml", Op: fsnotify.Write}, false},
	} {
		if got := ws.relevant(tc.ev); got != tc.want {
			t.Errorf("relevant(%v) = %v, want %v", tc.ev, got, tc.want)
		}
	}
	if n := len(w.WatchList()); n != 2 {
		t.Errorf("watching %d directories (%q), want 2", n, w.WatchList())
	}
}

// A restart-only file whose contents change (a CA bundle here) needs a
// restart as much as a changed key does; trust material does not.
func TestRestartFileContents(t *testing.T) {
	dir := t.TempDir()
	ca, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "release.pub")
	for _, p := range []string{ca, key} {
		if err := os.WriteFile(p, []byte("one"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &config.Config{Path: filepath.Join(dir, "portcullis.yaml"),
		Upstreams: []config.Upstream{{Name: "a", CAFile: "ca.pem"}},
		Trust:     []config.Trust{{Name: "release", Keys: []string{"release.pub"}}}}
	before := restartFileHashes(cfg)
	if _, ok := before[key]; ok {
		t.Errorf("trust key %s is hashed as restart-only", key)
	}
	for _, p := range []string{ca, key} {
		if err := os.WriteFile(p, []byte("two"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := changedFiles(before, restartFileHashes(cfg)); !slices.Equal(got, []string{ca}) {
		t.Errorf("changed files %q, want only %s", got, ca)
	}
}

// lockedBuffer is an io.Writer the test reads while the server writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) waitFor(t *testing.T, substr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l.mu.Lock()
		s := l.b.String()
		l.mu.Unlock()
		if strings.Contains(s, substr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never showed %q:\n%s", substr, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The command itself: SIGHUP reloads, SIGTERM still stops.
func TestServeCommandReloadsOnSIGHUP(t *testing.T) {
	s := newSignedSetup(t, "")
	var stderr lockedBuffer
	done := make(chan int, 1)
	go func() { done <- runServe([]string{"--config", s.cfgPath}, io.Discard, &stderr) }()
	stderr.waitFor(t, `"msg":"serving"`)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	stderr.waitFor(t, `"trigger":"signal"`)
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve exited %d after SIGTERM, want 0", code)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
}

// A leaked token is revoked by editing the token file: the reload applies
// the new credentials live, the old token is refused and the new one
// pulls, and the admin tokens rotate the same way.
func TestReloadRotatesClientTokens(t *testing.T) {
	s := newSignedSetup(t, clientsConfig)
	dir := filepath.Dir(s.cfgPath)
	writeClientFiles(t, dir, "", "alice:"+proxy.HashToken("leaked")+"\n")
	r := startReloading(t, s.cfgPath, reloadHooks{})
	pull := func(token string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.addr+"/v2/app/signed/manifests/v1", nil)
		req.SetBasicAuth("alice", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	admin := func(token string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+r.admin+"/v1/decisions", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := pull("leaked"); c != http.StatusOK {
		t.Fatalf("pull with the token = %d, want 200", c)
	}
	if c := admin("adm"); c != http.StatusOK {
		t.Fatalf("admin with its token = %d, want 200", c)
	}
	writeAtomic(t, filepath.Join(dir, "tokens"), []byte("alice:"+proxy.HashToken("fresh")+"\n"))
	if o := r.next(t); o.result != proxy.ReloadSuccess {
		t.Fatalf("reload %+v, want a success (credentials apply live)", o)
	}
	if c := pull("leaked"); c != http.StatusUnauthorized {
		t.Errorf("pull with the revoked token = %d, want 401", c)
	}
	if c := pull("fresh"); c != http.StatusOK {
		t.Errorf("pull with the new token = %d, want 200", c)
	}
	writeAtomic(t, filepath.Join(dir, "admin-tokens"), []byte("ops:"+proxy.HashToken("adm2")+"\n"))
	if o := r.next(t); o.result != proxy.ReloadSuccess {
		t.Fatalf("reload %+v, want a success", o)
	}
	if c := admin("adm"); c != http.StatusUnauthorized {
		t.Errorf("admin with the rotated-out token = %d, want 401", c)
	}
	if c := admin("adm2"); c != http.StatusOK {
		t.Errorf("admin with the new token = %d, want 200", c)
	}
	// A token file that does not parse refuses the reload: the credentials
	// in force stay.
	writeAtomic(t, filepath.Join(dir, "tokens"), []byte("not a token line\n"))
	if o := r.next(t); o.result != proxy.ReloadFailure {
		t.Fatalf("reload %+v, want a failure", o)
	}
	if c := pull("fresh"); c != http.StatusOK {
		t.Errorf("pull after a refused reload = %d, want 200 with the credentials in force", c)
	}
}
