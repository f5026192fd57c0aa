package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// reloadDebounce is how long the watched files must stay quiet before a
// change is reloaded: an editor's save or a Kubernetes volume update is
// several events, and a half-written file must not be read.
const reloadDebounce = 500 * time.Millisecond

// maxHashedFileBytes bounds what is read of a restart-only file to notice
// that its contents changed.
const maxHashedFileBytes = 16 << 20

// Keys a reload applies live: the policy (trust, boundaries, unmatched) is
// a new engine, the evidence limits are the engine's options, and the TLS
// pair is read at each handshake. Every other key, including any added
// later, waits for a restart: reporting too much as needing a restart is
// safe, applying half of a setting is not.
var (
	liveKeys = map[string]bool{"trust": true, "boundaries": true, "boundaries_dir": true, "unmatched": true,
		// Credentials and grants apply live (Proxy.SetClientAuth); what
		// the listeners were built with is reported by apply.
		"clients": true, "admin_auth": true}
	liveLimitKeys = map[string]bool{"evidence_bytes": true, "signature_bytes": true, "attestation_bytes": true,
		"max_evidence": true, "predicate_depth": true, "lineage_concurrency": true}
)

// reloadOutcome is what one reload did.
type reloadOutcome struct {
	trigger string   // "signal" or "file"
	result  string   // proxy.ReloadSuccess, ReloadFailure or ReloadRestartRequired
	errs    []string // why a failed reload was refused
	restart []string // keys whose change waits for a restart
}

// reloader re-reads the configuration on SIGHUP or when a watched file
// changes and applies what can change live. A configuration is validated
// completely (parsed, its files checked, the policy compiled, the TLS pair
// loaded) before any of it is applied; a refused one leaves the running
// configuration as it was.
type reloader struct {
	path     string
	p        *proxy.Proxy
	log      *zap.Logger
	debounce time.Duration
	// observe, when set, is told every outcome (tests).
	observe func(reloadOutcome)

	mu sync.Mutex // one reload at a time
	// started is what the process was built from: a restart-only key is
	// compared with it, so that undoing a change clears the report.
	started *config.Config
	// current is the configuration whose live part is in effect.
	current *config.Config
	// fingerprint is the policy in effect.
	fingerprint string
	// hashes of the restart-only files at start (CA bundles, docker
	// configs, the summaries key, client credentials): a change of
	// contents needs a restart as much as a change of path does.
	hashes map[string]string
	certs  *certStore // nil without TLS

	// w and ws watch the files; nil when watching is not possible.
	w  *fsnotify.Watcher
	ws *watchSet
}

func newReloader(cfg *config.Config, fingerprint string, p *proxy.Proxy, logger *zap.Logger) (*reloader, error) {
	r := &reloader{path: cfg.Path, p: p, log: logger, debounce: reloadDebounce, started: cfg, current: cfg, fingerprint: fingerprint}
	r.hashes = restartFileHashes(cfg)
	if cfg.TLS != nil {
		c, err := loadCertificate(cfg)
		if err != nil {
			return nil, err
		}
		r.certs = &certStore{}
		r.certs.cert.Store(c)
	}
	return r, nil
}

// reload reads the configuration file again and applies it.
func (r *reloader) reload(trigger string) reloadOutcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.apply(trigger)
	switch out.result {
	case proxy.ReloadFailure:
		r.log.Error("configuration reload refused: the previous configuration keeps serving",
			zap.String("file", r.path), zap.String("trigger", trigger), zap.Strings("errors", out.errs))
		r.p.Emit(proxy.Event{
			Kind:    proxy.EventReloadFailed,
			Message: fmt.Sprintf("reload of %s refused (%d problems); the previous configuration keeps serving", r.path, len(out.errs)),
			Details: map[string]string{"file": r.path, "trigger": trigger, "errors": strings.Join(out.errs, "\n")},
		})
	case proxy.ReloadRestartRequired:
		r.log.Warn("configuration changes need a restart; the rest of the configuration is in effect",
			zap.String("file", r.path), zap.String("trigger", trigger), zap.Strings("keys", out.restart))
	}
	r.p.RecordReload(out.result, len(out.restart) > 0)
	if out.result != proxy.ReloadFailure && trigger != "peer" {
		r.p.BroadcastReload(r.fingerprint)
	}
	if r.observe != nil {
		r.observe(out)
	}
	return out
}

func (r *reloader) apply(trigger string) reloadOutcome {
	out := reloadOutcome{trigger: trigger, result: proxy.ReloadFailure}
	cfg, eng, err := loadOver(r.path, r.current)
	if err != nil {
		out.errs = problemList(err)
		return out
	}
	restart := restartKeys(r.started, cfg)
	for _, f := range changedFiles(r.hashes, restartFileHashes(cfg)) {
		restart = append(restart, f+" (contents)")
	}
	// Read before anything applies: a credential file that does not
	// parse refuses the whole reload, and the old credentials keep
	// working.
	auth, admin, err := buildClientAuth(cfg, nil)
	if err != nil {
		out.errs = []string{err.Error()}
		return out
	}
	var cert *tls.Certificate
	if r.certs != nil && cfg.TLS != nil {
		if cert, err = loadCertificate(cfg); err != nil {
			out.errs = []string{err.Error()}
			return out
		}
	}
	before := r.fingerprint
	if err := r.p.SetVerifier(eng); err != nil {
		out.errs = []string{err.Error()}
		return out
	}
	if cert != nil {
		r.certs.cert.Store(cert)
	}
	if err := r.p.SetClientAuth(auth, admin); err != nil {
		restart = append(restart, "clients/admin_auth: authentication turned on or off, or client certificates changed")
	}
	r.current, r.fingerprint = cfg, eng.Fingerprint()
	for _, w := range cfg.Warnings() {
		r.log.Warn("insecure setting in effect", zap.String("setting", w))
	}
	logRefusedBoundaries(cfg, r.log)
	r.log.Info("configuration reloaded", zap.String("file", r.path), zap.String("trigger", trigger),
		zap.String("fingerprint", eng.Fingerprint()), zap.Bool("policy_changed", before != eng.Fingerprint()),
		zap.Int("boundaries", len(cfg.Boundaries)))
	out.restart = restart
	out.result = proxy.ReloadSuccess
	if len(restart) > 0 {
		out.result = proxy.ReloadRestartRequired
	}
	return out
}

// problemList is every problem err reports, one line each.
func problemList(err error) []string {
	var ve *config.ValidationError
	if errors.As(err, &ve) && len(ve.Problems) > 0 {
		out := make([]string, 0, len(ve.Problems))
		for _, p := range ve.Problems {
			out = append(out, p.Error())
		}
		return out
	}
	return []string{err.Error()}
}

// restartKeys names the settings that differ between the configuration
// the process started with and next and cannot change live.
func restartKeys(started, next *config.Config) []string {
	var keys []string
	a, b := reflect.ValueOf(started).Elem(), reflect.ValueOf(next).Elem()
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key := yamlKey(f)
		if key == "" || liveKeys[key] {
			continue
		}
		switch key {
		case "tls":
			// The pair's files are read again; turning TLS on or off
			// changes the listener.
			if (started.TLS == nil) != (next.TLS == nil) {
				keys = append(keys, key)
			}
			continue
		case "limits":
			keys = append(keys, structDiff(key, a.Field(i), b.Field(i), liveLimitKeys)...)
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			keys = append(keys, key)
		}
	}
	return keys
}

// structDiff names the fields of two structs that differ, but for live.
func structDiff(prefix string, a, b reflect.Value, live map[string]bool) []string {
	var keys []string
	t := a.Type()
	for i := range t.NumField() {
		key := yamlKey(t.Field(i))
		if key == "" || live[key] {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			keys = append(keys, prefix+"."+key)
		}
	}
	return keys
}

// yamlKey is a field's YAML key, its Go name when the tag has none; ""
// for fields that are not read from the file.
func yamlKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch k {
	case "-":
		return ""
	case "":
		return f.Name
	}
	return k
}

// restartFileHashes hashes the files the configuration names that a
// reload does not read again: all but the trust material, the TLS pair
// and the configuration file itself.
func restartFileHashes(cfg *config.Config) map[string]string {
	live := map[string]bool{}
	if cfg.Path != "" {
		live[cfg.Path] = true
	}
	if cfg.TLS != nil {
		live[cfg.Resolve(cfg.TLS.Cert)], live[cfg.Resolve(cfg.TLS.Key)] = true, true
	}
	if c := cfg.Clients; c != nil {
		for _, f := range []string{c.Htpasswd, c.Tokens} {
			if f != "" {
				live[cfg.Resolve(f)] = true
			}
		}
		if c.MTLS != nil && c.MTLS.CA != "" {
			// A changed CA pool is reported by SetClientAuth.
			live[cfg.Resolve(c.MTLS.CA)] = true
		}
	}
	if a := cfg.AdminAuth; a != nil && a.Tokens != "" {
		live[cfg.Resolve(a.Tokens)] = true
	}
	for _, t := range cfg.Trust {
		for _, k := range t.Keys {
			live[cfg.Resolve(k)] = true
		}
		if t.TrustedRoot != "" {
			live[cfg.Resolve(t.TrustedRoot)] = true
		}
		if t.TUF != nil {
			live[cfg.Resolve(t.TUF.Root)] = true
		}
	}
	out := map[string]string{}
	for _, f := range cfg.WatchedFiles() {
		if !live[f] {
			out[f] = hashFile(f)
		}
	}
	return out
}

func hashFile(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxHashedFileBytes)); err != nil {
		return "unreadable: " + err.Error()
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// changedFiles lists the files of before whose hash differs in after; a
// file only one of them names is a key change, reported by restartKeys.
func changedFiles(before, after map[string]string) []string {
	var out []string
	for f, h := range before {
		if h2, ok := after[f]; ok && h2 != h {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

// certStore holds the registry listener's certificate; a reload replaces
// it and the next handshake uses the new one.
type certStore struct {
	cert atomic.Pointer[tls.Certificate]
}

func (c *certStore) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cert.Load(), nil }

func loadCertificate(cfg *config.Config) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(cfg.Resolve(cfg.TLS.Cert), cfg.Resolve(cfg.TLS.Key))
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &c, nil
}

// run reloads on every value from hup and, debounced, on changes to the
// configuration file, the files it names and the directories it reads,
// until ctx ends. Directories are watched rather than files: an editor
// replaces a file by renaming another over it, and Kubernetes updates a
// ConfigMap or Secret volume by swapping its ..data symlink, which no
// watch on the old file would see.
func (r *reloader) run(ctx context.Context, hup <-chan os.Signal) {
	w, ws := r.w, r.ws
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	after := func(out reloadOutcome) {
		if w == nil {
			return
		}
		r.mu.Lock()
		cfg := r.current
		r.mu.Unlock()
		var tried *config.Config
		if out.result == proxy.ReloadFailure {
			// Watch what the refused file names too, so that
			// providing a missing file is seen.
			tried, _ = config.Load(r.path)
		}
		ws.update(w, r.log, cfg, tried)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			timer.Stop()
			after(r.reload("signal"))
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ws.relevant(ev) {
				timer.Reset(r.debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			r.log.Warn("watching the configuration files", zap.Error(err))
		case <-timer.C:
			after(r.reload("file"))
		}
	}
}

// watchSet is the directories watched and, in each, the names that
// matter; a nil set of names means every name (a directory the
// configuration reads whole).
type watchSet struct {
	dirs map[string]map[string]bool
}

func newWatchSet() *watchSet { return &watchSet{dirs: map[string]map[string]bool{}} }

func (s *watchSet) add(dirs map[string]map[string]bool, dir, name string) {
	names, seen := dirs[dir]
	if seen && names == nil {
		return
	}
	if name == "" {
		dirs[dir] = nil
		return
	}
	if names == nil {
		names = map[string]bool{}
		dirs[dir] = names
	}
	names[name] = true
}

// update watches what cfgs name and stops watching the rest.
func (s *watchSet) update(w *fsnotify.Watcher, log *zap.Logger, cfgs ...*config.Config) {
	next := map[string]map[string]bool{}
	for _, c := range cfgs {
		if c == nil {
			continue
		}
		for _, f := range c.WatchedFiles() {
			f = absPath(f)
			s.add(next, filepath.Dir(f), filepath.Base(f))
			// A symlinked file (a Kubernetes volume) changes when its
			// target does too.
			if real, err := filepath.EvalSymlinks(f); err == nil && real != f {
				s.add(next, filepath.Dir(real), filepath.Base(real))
			}
		}
		for _, d := range c.WatchedDirs() {
			d = absPath(d)
			s.add(next, d, "")
			if real, err := filepath.EvalSymlinks(d); err == nil && real != d {
				s.add(next, real, "")
			}
		}
	}
	for d := range s.dirs {
		if _, keep := next[d]; !keep {
			_ = w.Remove(d)
		}
	}
	for d := range next {
		if err := w.Add(d); err != nil {
			log.Warn("cannot watch a configuration directory", zap.String("dir", d), zap.Error(err))
		}
	}
	s.dirs = next
}

// relevant says whether ev may change what the configuration reads: a
// watched name, or Kubernetes' atomic writer swapping its "..data" link
// (its entries all start with "..").
func (s *watchSet) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	names, ok := s.dirs[filepath.Dir(ev.Name)]
	if !ok {
		return false
	}
	base := filepath.Base(ev.Name)
	return names == nil || names[base] || strings.HasPrefix(base, "..")
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// watch starts watching what the configuration in effect reads, before
// serving starts, so that no change made once serving is missed.
func (r *reloader) watch() {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		r.log.Error("cannot watch the configuration files; reload with SIGHUP", zap.Error(err))
		return
	}
	r.w, r.ws = w, newWatchSet()
	r.ws.update(w, r.log, r.current)
}

// reloadHooks turn reloading on for serve: runServe passes SIGHUP, tests
// a shorter debounce and an observer.
type reloadHooks struct {
	hup      <-chan os.Signal
	debounce time.Duration
	observe  func(reloadOutcome)
}

type reloadHooksKey struct{}

// withReload has serve, run with the returned context, reload its
// configuration; serve without it (tests, the demo) never does.
func withReload(ctx context.Context, h reloadHooks) context.Context {
	return context.WithValue(ctx, reloadHooksKey{}, h)
}

// startReload starts reloading cfg's file for serve, when ctx asks for it,
// and serves the TLS certificate a reload may replace.
func startReload(ctx context.Context, cfg *config.Config, fingerprint string, p *proxy.Proxy, logger *zap.Logger, sc *proxy.ServeConfig) error {
	h, ok := ctx.Value(reloadHooksKey{}).(reloadHooks)
	if !ok || cfg.Path == "" {
		return nil
	}
	r, err := newReloader(cfg, fingerprint, p, logger)
	if err != nil {
		return err
	}
	if h.debounce > 0 {
		r.debounce = h.debounce
	}
	r.observe = h.observe
	if r.certs != nil {
		sc.GetCertificate = r.certs.get
	}
	r.watch()
	p.OnPeerReload(func() { r.reload("peer") })
	go r.run(ctx, h.hup)
	go refreshTrustedRoots(ctx, r)
	return nil
}
