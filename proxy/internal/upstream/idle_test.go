package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// stallingServer sends the first part of every body, then nothing until
// the client goes away; gone is closed when it does.
func stallingServer(t *testing.T, part []byte, total int) (srv *httptest.Server, gone chan struct{}) {
	t.Helper()
	gone = make(chan struct{}, 16)
	release := make(chan struct{})
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(total))
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(part)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			gone <- struct{}{}
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv, gone
}

func TestStalledBodyIsDropped(t *testing.T) {
	t.Parallel()
	part := []byte(`{"schemaVersion":2,`)
	srv, gone := stallingServer(t, part, 1000)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true, IdleTimeout: 100 * time.Millisecond})
	d := sha256Hash([]byte("x"))

	calls := map[string]func() error{
		"blob stream": func() error {
			resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, 1000, nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.Copy(io.Discard, resp.Body)
			return err
		},
		"blob read": func() error { _, err := c.Blob(context.Background(), "app", d, 1<<20); return err },
		"manifest": func() error {
			_, err := c.GetManifest(context.Background(), "app", "sha256:"+d.Hex, nil)
			return err
		},
		"pass-through": func() error {
			resp, err := c.Get(context.Background(), "app", "tags/list", nil, nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.ReadAll(resp.Body)
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			err := call()
			if !errors.Is(err, ErrUpstreamStalled) {
				t.Fatalf("err = %v, want ErrUpstreamStalled", err)
			}
			if !IsTransient(err) {
				t.Error("a stall is not reported as transient")
			}
			// The request is aborted, not left hanging at the upstream.
			select {
			case <-gone:
			case <-time.After(10 * time.Second):
				t.Fatal("the stalled request was not cancelled")
			}
		})
	}
}

// An upstream that sends slowly but never stops for IdleTimeout is not
// cut, however long the whole body takes; neither is a body whose reader
// pauses (a slow client on the other side) longer than IdleTimeout.
func TestSlowBodyIsNotCut(t *testing.T) {
	t.Parallel()
	const (
		idle  = 400 * time.Millisecond
		step  = 20 * time.Millisecond
		steps = 40 // 800 ms in all, twice the idle timeout
	)
	content := bytes.Repeat([]byte("s"), steps)
	d := sha256Hash(content)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.WriteHeader(http.StatusOK)
		if r.URL.Query().Get("pause") != "" {
			_, _ = w.Write(content)
			return
		}
		for i := range content {
			_, _ = w.Write(content[i : i+1])
			w.(http.Flusher).Flush()
			time.Sleep(step)
		}
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, Config{URL: srv.URL, Insecure: true, IdleTimeout: idle})

	resp, err := c.OpenBlob(context.Background(), http.MethodGet, "app", d, int64(len(content)), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("steady body: read %d bytes, %v", len(got), err)
	}

	resp, err = c.Get(context.Background(), "app", "tags/list", map[string][]string{"pause": {"1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * idle)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || len(first)+len(rest) != len(content) {
		t.Fatalf("paused reader: %d bytes, %v", len(first)+len(rest), err)
	}
}
