package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ReadyTimeout bounds the wait for a started process to answer: long
// enough for a registry restarted after SIGKILL on a busy machine.
const ReadyTimeout = 60 * time.Second

// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// FreePort reserves an ephemeral loopback port for a subprocess that
// cannot report the port it bound. The window between Close and the
// child's bind is tiny and only other local processes could take it;
// WaitReady checks that none did.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Proc is a subprocess whose output goes to dir/name.log.
type Proc struct {
	name    string
	dir     string
	argv    []string
	cleanup *Cleanup
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// Start runs argv in dir with its output in a new dir/name.log and
// registers its Stop with c.
func Start(c *Cleanup, dir, name string, argv ...string) (*Proc, error) {
	return start(c, dir, name, argv, os.O_TRUNC)
}

// Restart runs p's program again under the same name, appending to its
// log, so the output of the run that crashed stays readable. p itself is
// not stopped first.
func (p *Proc) Restart() (*Proc, error) {
	return start(p.cleanup, p.dir, p.name, p.argv, os.O_APPEND)
}

func start(c *Cleanup, dir, name string, argv []string, mode int) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|mode, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	// If the harness is killed outright (SIGKILL), the kernel still takes
	// its children down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("failed to start %s: %w", name, err)
	}
	p := &Proc{name: name, dir: dir, argv: argv, cleanup: c, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	c.Add(p.Stop)
	return p, nil
}

// Name is the name the process was started under.
func (p *Proc) Name() string { return p.name }

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited is closed once the process has exited and Err is set.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is how the process ended; read it only after Exited is closed.
func (p *Proc) Err() error { return p.waitErr }

// Alive reports whether the process has not exited yet.
func (p *Proc) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop asks the process to terminate and kills it if it does not within
// a few seconds. It signals only this process, by pid.
func (p *Proc) Stop() {
	if !p.Alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Kill is SIGKILL to this process only, a crash rather than a shutdown,
// and waits until it has exited.
func (p *Proc) Kill() {
	if !p.Alive() {
		return
	}
	p.KillNow()
	<-p.exited
}

// KillNow sends SIGKILL to this process only and returns at once; for a
// watchdog that must not block on the exit it causes.
func (p *Proc) KillNow() { _ = p.cmd.Process.Kill() }

// LogTail is the end of the process's output, for error messages.
func (p *Proc) LogTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// WaitReady polls url until it answers 200, then checks that the process
// itself listens on every one of ports. It fails when the process exits
// first or ReadyTimeout passes.
func (p *Proc) WaitReady(ctx context.Context, client *http.Client, url string, ports ...int) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p.owns(ports)
			}
			last = fmt.Errorf("%s answered %d", url, resp.StatusCode)
		} else {
			last = err
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before it was ready (%v): %s", p.name, p.waitErr, p.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w: %s", p.name, last, p.LogTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Proc) owns(ports []int) error {
	for _, port := range ports {
		if err := OwnsPort(p.Pid(), port); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return nil
}

// OwnsPort reports an error unless pid itself holds a listening TCP
// socket on port. A free port picked by the harness could be taken by
// another process between the pick and the child's bind; a ready answer
// on it would then measure the wrong process.
func OwnsPort(pid, port int) error {
	inodes := map[string]bool{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(fs) < 10 || fs[3] != "0A" {
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && int(p) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return fmt.Errorf("nothing listens on port %d", port)
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("failed to list descriptors of %d: %w", pid, err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && inodes[l] {
			return nil
		}
	}
	return fmt.Errorf("port %d is held by another process than %d", port, pid)
}
