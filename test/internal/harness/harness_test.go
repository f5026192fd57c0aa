package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/config"
)

// listenArg makes the test binary, started as a subprocess, serve 200 on
// the loopback port that follows it: a child that really owns its
// listener.
const listenArg = "harness-test-listen"

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == listenArg {
		ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("listening")
		srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), ReadHeaderTimeout: 5 * time.Second}
		_ = srv.Serve(ln)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// startListener runs this test binary as a child that serves on port.
func startListener(t *testing.T, c *Cleanup, dir string, port int) *Proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(c, dir, "listener", exe, listenArg, strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCleanupRunsOnceNewestFirst(t *testing.T) {
	t.Parallel()
	var c Cleanup
	var order []int
	c.Add(func() { order = append(order, 1) })
	c.Add(func() { order = append(order, 2) })
	c.Run()
	c.Run()
	if !slices.Equal(order, []int{2, 1}) {
		t.Errorf("order = %v, want [2 1]", order)
	}
	// A step registered after teardown runs at once.
	c.Add(func() { order = append(order, 3) })
	if !slices.Equal(order, []int{2, 1, 3}) {
		t.Errorf("late step did not run: %v", order)
	}
}

// TestGuardCleansUpAndRepanics: a panic in a guarded goroutine tears
// everything down and still reaches the runtime.
func TestGuardCleansUpAndRepanics(t *testing.T) {
	t.Parallel()
	var c Cleanup
	ran := false
	c.Add(func() { ran = true })
	var got any
	func() {
		defer func() { got = recover() }()
		defer c.Guard()
		panic("boom")
	}()
	if !ran {
		t.Error("the panic did not run the cleanup")
	}
	if got != "boom" {
		t.Errorf("recovered %v, want the original panic", got)
	}
	// Without a panic, Guard leaves the cleanup to the normal exit.
	var quiet Cleanup
	quiet.Add(func() { t.Error("Guard ran the cleanup without a panic") })
	func() { defer quiet.Guard() }()
}

// TestOwnsPort: a port is attributed only to the process that listens on
// it; a port nobody listens on is refused.
func TestOwnsPort(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := OwnsPort(os.Getpid(), port); err != nil {
		t.Errorf("own listener: %v", err)
	}
	// pid 1 does not hold this process's socket.
	if err := OwnsPort(1, port); err == nil {
		t.Error("another process credited with this process's listener")
	}
	ln.Close()
	if err := OwnsPort(os.Getpid(), port); err == nil {
		t.Error("closed listener still owned")
	}
}

// TestWaitReadyChecksOwnership: a ready answer counts only when it comes
// from the started process's own listener.
func TestWaitReadyChecksOwnership(t *testing.T) {
	t.Parallel()
	var c Cleanup
	t.Cleanup(c.Run)
	dir := t.TempDir()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := startListener(t, &c, dir, port)
	ctx := context.Background()
	client := &http.Client{Transport: NewTransport(4)}
	if err := p.WaitReady(ctx, client, fmt.Sprintf("http://127.0.0.1:%d/", port), port); err != nil {
		t.Fatalf("own listener: %v", err)
	}
	// Another process (this one) answers on a port the child does not
	// hold: the child must not be credited with it.
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer other.Close()
	otherPort := other.Listener.Addr().(*net.TCPAddr).Port
	err = p.WaitReady(ctx, client, other.URL, otherPort)
	if err == nil || !strings.Contains(err.Error(), "held by another process") {
		t.Errorf("answer from another process accepted as ready: %v", err)
	}
	c.Run()
	if p.Alive() {
		t.Error("Run left the process running")
	}
}

// TestWaitReadyProcessExits: a process that dies before it answers fails
// the wait at once, with its output in the error.
func TestWaitReadyProcessExits(t *testing.T) {
	t.Parallel()
	var c Cleanup
	t.Cleanup(c.Run)
	p, err := Start(&c, t.TempDir(), "dies", "sh", "-c", "echo no config found; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	err = p.WaitReady(context.Background(), &http.Client{Transport: NewTransport(1)}, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), "no config found") {
		t.Errorf("err = %v", err)
	}
	if p.Alive() || p.Err() == nil {
		t.Errorf("alive %v, exit %v", p.Alive(), p.Err())
	}
}

// TestRestartAppendsLog: a restart keeps the crashed run's output; a
// fresh start under the same name does not.
func TestRestartAppendsLog(t *testing.T) {
	t.Parallel()
	var c Cleanup
	t.Cleanup(c.Run)
	dir := t.TempDir()
	logged := func(p *Proc, n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(p.LogTail(), "started") != n {
			if time.Now().After(deadline) {
				t.Fatalf("log %q, want %d starts", p.LogTail(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	argv := []string{"sh", "-c", "echo started; exec sleep 60"}
	p, err := Start(&c, dir, "svc", argv...)
	if err != nil {
		t.Fatal(err)
	}
	logged(p, 1)
	p.Kill()
	if p.Alive() {
		t.Fatal("alive after Kill")
	}
	if p, err = p.Restart(); err != nil {
		t.Fatal(err)
	}
	logged(p, 2)
	p.Stop()
	if p, err = Start(&c, dir, "svc", argv...); err != nil {
		t.Fatal(err)
	}
	logged(p, 1)
	c.Run()
	if p.Alive() {
		t.Error("Run left the restarted process running")
	}
}

// TestConfigLoads: the rendered configuration is one Portcullis accepts,
// with the boundaries in order before the catch-all and the rules asked
// for.
func TestConfigLoads(t *testing.T) {
	t.Parallel()
	c := Config{
		Port: 5001, AdminPort: 5002,
		Upstreams: []Upstream{{Name: "origin", URL: "http://127.0.0.1:5000", Aliases: []string{"a.example"}}, {Name: "tarpit", URL: "http://127.0.0.1:5003"}},
		Key:       "k",
		Boundaries: []Boundary{
			{Name: "lineage", Upstream: "origin", Repositories: []string{"m", "d"}, Provenance: true, LineageDepth: 3},
			{Name: "attested", Upstream: "*", Repositories: []string{"p"}, Provenance: true},
		},
	}
	cfg, err := config.Parse([]byte(c.YAML()), "harness.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, c.YAML())
	}
	if cfg.DefaultUpstream != "origin" || len(cfg.Upstreams) != 2 || !slices.Equal(cfg.Upstreams[0].Aliases, []string{"a.example"}) {
		t.Errorf("upstreams = %+v, default %q", cfg.Upstreams, cfg.DefaultUpstream)
	}
	var names []string
	for _, b := range cfg.Boundaries {
		names = append(names, b.Name)
	}
	if !slices.Equal(names, []string{"lineage", "attested", "everything"}) {
		t.Fatalf("boundaries = %v", names)
	}
	l, a, e := cfg.Boundaries[0], cfg.Boundaries[1], cfg.Boundaries[2]
	if l.Lineage == nil || l.Lineage.Depth != 3 || len(l.Attestations) != 1 {
		t.Errorf("lineage boundary = %+v", l)
	}
	if a.Lineage != nil || len(a.Attestations) != 1 || a.Attestations[0].PredicateType != "https://slsa.dev/provenance/v1" {
		t.Errorf("attested boundary = %+v", a)
	}
	if len(e.Attestations) != 0 || !slices.Equal(e.Match.Repositories, []string{"**"}) {
		t.Errorf("catch-all = %+v", e)
	}
}

func TestCountsAndDuration(t *testing.T) {
	t.Parallel()
	if got := CountsText(map[string]int{"503": 2, "no answer": 5, "403": 2}); got != "no answer ×5, 403 ×2, 503 ×2" {
		t.Errorf("CountsText = %q", got)
	}
	if got := CountsText(nil); got != "none" {
		t.Errorf("CountsText(nil) = %q", got)
	}
	for d, want := range map[time.Duration]string{
		0:                       "–",
		1500 * time.Nanosecond:  "2 µs",
		2345 * time.Microsecond: "2.35 ms",
		150 * time.Millisecond:  "150.0 ms",
		1500 * time.Millisecond: "1.50 s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%v) = %q, want %q", d, got, want)
		}
	}
}
