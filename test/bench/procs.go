package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cleaner runs registered undo steps once, newest first. It is shared by the
// normal exit path, the signal handler and panic recovery, so whichever
// comes first tears everything down; the others wait until it has finished
// before they may exit.
type cleaner struct {
	mu    sync.Mutex
	steps []func()
	done  bool
	once  sync.Once
}

func (c *cleaner) add(f func()) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		// Registered after teardown began (a racing start): undo at once.
		f()
		return
	}
	c.steps = append(c.steps, f)
	c.mu.Unlock()
}

func (c *cleaner) run() {
	c.once.Do(func() {
		c.mu.Lock()
		steps := c.steps
		c.steps, c.done = nil, true
		c.mu.Unlock()
		for i := len(steps) - 1; i >= 0; i-- {
			steps[i]()
		}
	})
}

// teardown is the process-wide cleaner: there is exactly one set of
// subprocesses and one temp dir to remove, whichever way the program ends.
var teardown = &cleaner{}

// guard is deferred at the top of every goroutine the bench starts: a panic
// anywhere must still kill the subprocesses and remove the temp dir before
// the process dies.
func (c *cleaner) guard() {
	if r := recover(); r != nil {
		c.run()
		panic(r)
	}
}

// freePort reserves an ephemeral loopback port for a subprocess that cannot
// report the port it bound. The window between Close and the child's bind
// is tiny and only other local processes could take it.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// proc is a subprocess whose output goes to a log file in the temp dir.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

func startProc(dir, name string, argv ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	// If the bench is killed outright (SIGKILL), the kernel still takes its
	// children down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	teardown.add(p.stop)
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop asks the process to terminate and kills it if it does not within a
// few seconds. It signals only this process, by pid.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// logTail is the end of the process's output, for error messages.
func (p *proc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// waitHTTP polls url until it answers want, the process exits, or the
// deadline passes.
func (p *proc) waitHTTP(ctx context.Context, client *http.Client, url string, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return nil
			}
			last = fmt.Errorf("%s answered %d", url, resp.StatusCode)
		} else {
			last = err
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before it was ready (%v): %s", p.name, p.waitErr, p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v: %s", p.name, last, p.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// memStatus is the resident set of a process, from /proc/<pid>/status.
type memStatus struct {
	RSS, HWM int64 // bytes
}

func readMem(pid int) (memStatus, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, err
	}
	var m memStatus
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return memStatus{}, fmt.Errorf("unexpected %s line %q", k, sc.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return memStatus{}, err
		}
		*dst = n << 10
	}
	if m.RSS == 0 || m.HWM == 0 {
		return memStatus{}, errors.New("VmRSS/VmHWM missing from /proc status")
	}
	return m, nil
}

// resetPeak makes VmHWM restart from the current RSS (Linux ≥ 4.0), so a
// peak measured afterwards belongs to the phase that follows.
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat.
var clockTicks = func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}()

// procCPU is the user+system CPU a process (all its threads) has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields are counted
	// from the closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state is field 3, so utime (14) and stime (15) are at
	// indexes 11 and 12.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / time.Duration(clockTicks), nil
}
