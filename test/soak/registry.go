package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// serveRegistry is the soak's own upstream when docker-registry is not
// installed: go-containerregistry's registry with blobs on disk and every
// accepted manifest PUT appended to a journal that is replayed on start,
// so the process can be killed and restarted without losing content.
func serveRegistry(dir, addr string) error {
	blobs := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return err
	}
	quiet := log.New(io.Discard, "", 0)
	j := &journal{
		path: filepath.Join(dir, "manifests.journal"),
		next: registry.New(registry.Logger(quiet), registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs)), registry.WithReferrersSupport(true)),
	}
	if err := j.replay(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: j, ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	return srv.Serve(ln)
}

type journal struct {
	mu   sync.Mutex
	path string
	next http.Handler
}

type journalEntry struct {
	Path        string `json:"path"`
	ContentType string `json:"content_type"`
	Body        []byte `json:"body"`
}

func (j *journal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/manifests/") {
		j.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		http.Error(w, "failed to read manifest", http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &statusWriter{ResponseWriter: w}
	// Serialised so the journal's order is the order the registry saw.
	j.mu.Lock()
	defer j.mu.Unlock()
	j.next.ServeHTTP(rec, r)
	if rec.status != http.StatusCreated {
		return
	}
	line, err := json.Marshal(journalEntry{Path: r.URL.Path, ContentType: r.Header.Get("Content-Type"), Body: body})
	if err != nil {
		return
	}
	f, err := os.OpenFile(j.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	_, _ = f.Write(append(line, '\n'))
	_ = f.Close()
}

// replay PUTs every journalled manifest again. A torn last line (the
// process was killed while writing it) is skipped: its PUT was never
// acknowledged.
func (j *journal) replay() error {
	f, err := os.Open(j.path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e journalEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue
		}
		req := httptest.NewRequest(http.MethodPut, e.Path, bytes.NewReader(e.Body))
		req.Header.Set("Content-Type", e.ContentType)
		rr := httptest.NewRecorder()
		j.next.ServeHTTP(rr, req)
		if rr.Code != http.StatusCreated {
			return fmt.Errorf("failed to replay %s: %d %s", e.Path, rr.Code, rr.Body.String())
		}
	}
	return sc.Err()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}
