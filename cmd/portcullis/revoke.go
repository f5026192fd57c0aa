package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

const (
	// revocationDebounce lets an editor's or a config-map's several writes
	// land before the file is read, well within the second a revocation
	// has to take effect in.
	revocationDebounce = 200 * time.Millisecond
	// revocationPoll re-reads the file even without an event: a missed
	// notification (network file systems) delays a revocation by this
	// much at most.
	revocationPoll = 30 * time.Second
)

// withRevocations adds to extra the revocation list the proxy enforces
// and the refresh-ahead option, from cfg: API entries persisted by an
// earlier run are restored, and the revocation file is read and then
// watched until ctx ends.
func withRevocations(ctx context.Context, cfg *config.Config, logger *zap.Logger, extra []proxy.Option) ([]proxy.Option, error) {
	opts := extra
	if !cfg.RefreshAhead.Disabled && cfg.Cache.AllowTTL.D() > 0 {
		opts = append(opts, proxy.WithRefreshAhead(proxy.RefreshAhead{
			AllowTTL:    cfg.Cache.AllowTTL.D(),
			Concurrency: cfg.RefreshAhead.Concurrency,
			Entries:     cfg.RefreshAhead.Entries,
		}))
	}
	rc := cfg.Revocations
	var persist func([]proxy.Revocation) error
	state := cfg.Resolve(rc.StateFile)
	if state != "" {
		persist = func(list []proxy.Revocation) error { return writeRevocationState(state, list) }
	}
	revs := proxy.NewRevocations(rc.MaxEntries, persist)
	if state != "" {
		list, err := readRevocationState(state, rc.MaxEntries)
		if err != nil {
			return nil, err
		}
		if err := revs.RestoreAPI(list); err != nil {
			return nil, fmt.Errorf("revocations.state_file %s: %w", state, err)
		}
		logger.Info("revocations restored", zap.String("state_file", state), zap.Int("entries", len(list)))
	}
	if rc.File != "" {
		w, err := newRevocationWatcher(cfg.Resolve(rc.File), rc.MaxEntries, revs, logger)
		if err != nil {
			return nil, err
		}
		go w.run(ctx)
	}
	return append(opts, proxy.WithRevocations(revs)), nil
}

// readRevocationState reads the API entries a previous run persisted; an
// absent file is an empty list, one that does not parse stops the start:
// revocations are never silently dropped.
func readRevocationState(path string, maxEntries int) ([]proxy.Revocation, error) {
	b, err := config.ReadLimited(path, int64(maxEntries)*4<<10)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocations.state_file: %w", err)
	}
	var f proxy.RevocationFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("revocations.state_file %s: %w", path, err)
	}
	return f.Revocations, nil
}

// writeRevocationState replaces the state file atomically.
func writeRevocationState(path string, list []proxy.Revocation) error {
	b, err := json.MarshalIndent(proxy.RevocationFile{Revocations: list}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".revocations-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// revocationWatcher keeps the file entries of a revocation list in step
// with the file. It watches the file's directory, not the file: an
// editor's rename or a Kubernetes config map's symlink swap replaces the
// file, and a watch on the old inode would see nothing. Any event in the
// directory schedules a read; the list changes only when the bytes did.
type revocationWatcher struct {
	path string
	max  int
	revs *proxy.Revocations
	log  *zap.Logger
	fsw  *fsnotify.Watcher
	last [32]byte
	// applied, when set, is told after each read that changed the list
	// (tests wait on it).
	applied func()
}

func newRevocationWatcher(path string, maxEntries int, revs *proxy.Revocations, log *zap.Logger) (*revocationWatcher, error) {
	w := &revocationWatcher{path: path, max: maxEntries, revs: revs, log: log}
	// The file must be readable at start: a proxy told to enforce a list
	// it cannot read does not start without it.
	if err := w.load(); err != nil {
		return nil, fmt.Errorf("revocations.file: %w", err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("revocations.file: %w", err)
	}
	if err := fsw.Add(filepath.Dir(path)); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("revocations.file: watch %s: %w", filepath.Dir(path), err)
	}
	w.fsw = fsw
	return w, nil
}

// load reads the file and applies it when it changed. A file that is
// gone, unreadable or invalid leaves the list in force as it was:
// revocations are lifted by editing the file, never by breaking it.
func (w *revocationWatcher) load() error {
	b, err := config.ReadLimited(w.path, int64(w.max)*2<<10)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	if sum == w.last {
		return nil
	}
	list, err := proxy.ParseRevocations(b, w.max, time.Now())
	if err != nil {
		return err
	}
	if err := w.revs.SetFile(list); err != nil {
		return err
	}
	w.last = sum
	w.log.Info("revocation file applied", zap.String("file", w.path), zap.Int("entries", len(list)))
	if w.applied != nil {
		w.applied()
	}
	return nil
}

func (w *revocationWatcher) run(ctx context.Context) {
	defer w.fsw.Close()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	poll := time.NewTicker(revocationPoll)
	defer poll.Stop()
	reload := func() {
		if err := w.load(); err != nil {
			w.log.Error("revocation file not applied; the previous list stays in force", zap.String("file", w.path), zap.Error(err))
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			_ = ev
			debounce.Reset(revocationDebounce)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			w.log.Warn("revocation file watch", zap.Error(err))
			debounce.Reset(revocationDebounce)
		case <-debounce.C:
			reload()
		case <-poll.C:
			reload()
		}
	}
}
