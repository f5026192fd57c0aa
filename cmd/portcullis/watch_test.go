package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestServeStartsWatches: serve builds the configured watches, which
// export their series from the start.
func TestServeStartsWatches(t *testing.T) {
	s := newSignedSetup(t, "watch:\n  - {ref: lab.local/app/signed:v1, every: 1h}\n")
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, b string) { addrs <- [2]string{a, b} })
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + a[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `portcullis_watch_last_allowed_timestamp_seconds{ref="lab.local/app/signed:v1"}`; !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}
