package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Defaults of the client-facing limits in ServeConfig.
const (
	// DefaultClientIdleTimeout is how long a client may take no byte of a
	// response before its connection is dropped.
	DefaultClientIdleTimeout = 60 * time.Second
	// DefaultMaxClientConns caps the client connections open at once.
	DefaultMaxClientConns = 4096
	// DefaultMaxHeaderBytes bounds a request's line and headers.
	DefaultMaxHeaderBytes = 64 << 10
)

// ServeConfig says where and how Serve listens.
type ServeConfig struct {
	Addr      string // registry listener, e.g. ":5000"
	AdminAddr string // admin listener (/metrics, /healthz, …); "" disables it
	// TLSCert and TLSKey are PEM files; both empty serves plain HTTP.
	TLSCert, TLSKey string
	// GetCertificate, when set, gives the registry listener's certificate
	// at each handshake instead of TLSCert and TLSKey, so that a renewed
	// certificate is served without a restart.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Grace is how long in-flight pulls may finish after ctx ends (default 30s).
	Grace  time.Duration
	Logger *zap.Logger
	// Ready, when set, is called with the bound registry and admin
	// addresses once both listen (the admin address is "" when disabled).
	Ready func(addr, admin string)

	// ClientIdleTimeout drops a registry connection when the client takes
	// no byte of a response for this long: a blob may take hours, a
	// client that has stopped reading may not. Default
	// DefaultClientIdleTimeout.
	ClientIdleTimeout time.Duration
	// MaxConns caps the registry connections open at once; further
	// clients wait in the listen backlog until one closes. Default
	// DefaultMaxClientConns.
	MaxConns int
	// MaxHeaderBytes bounds a request's line and headers together; past
	// it the client is answered 431. Default DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Sendfile says to which plain-TCP clients files of the verified blob
	// cache are sent with sendfile(2). Default SendfileAuto.
	Sendfile SendfileMode
}

// SendfileMode says when a file of the verified blob cache leaves with
// sendfile(2) rather than copied through a buffer of the proxy's.
type SendfileMode uint8

const (
	// SendfileAuto uses sendfile(2) for clients on another host and
	// copies for clients on a loopback address. With sendfile, the
	// client's own read from its socket is the first touch of the
	// page-cache pages, so a client on the same host (a node-local
	// mirror) that hashes what it reads, as every image and model
	// client does, also pays for reading them from memory on its one
	// core; a copy moves that to the proxy's core and leaves the bytes
	// in a shared cache. A remote client's bytes arrive from its network
	// card either way, so there the copy would only cost the proxy CPU.
	SendfileAuto SendfileMode = iota
	// SendfileAlways uses sendfile(2) for every plain-TCP client: least
	// proxy CPU.
	SendfileAlways
	// SendfileNever copies for every client.
	SendfileNever
)

func (m SendfileMode) String() string {
	switch m {
	case SendfileAuto:
		return "auto"
	case SendfileAlways:
		return "always"
	case SendfileNever:
		return "never"
	}
	return fmt.Sprintf("SendfileMode(%d)", uint8(m))
}

// ParseSendfileMode reads "auto", "always" or "never".
func ParseSendfileMode(s string) (SendfileMode, error) {
	switch s {
	case "auto":
		return SendfileAuto, nil
	case "always":
		return SendfileAlways, nil
	case "never":
		return SendfileNever, nil
	}
	return 0, fmt.Errorf("sendfile mode %q: want auto, always or never", s)
}

// sendfileTo says whether a client at remote is sent files with
// sendfile(2) under mode m.
func (m SendfileMode) sendfileTo(remote net.Addr) bool {
	switch m {
	case SendfileAlways:
		return true
	case SendfileNever:
		return false
	}
	ta, ok := remote.(*net.TCPAddr)
	return !ok || !ta.IP.IsLoopback()
}

// Serve runs p on the registry listener and its admin handler on the admin
// listener until ctx ends, then marks p draining (so /readyz fails and load
// balancers stop sending) and shuts both down gracefully.
func Serve(ctx context.Context, p *Proxy, sc ServeConfig) error {
	log := sc.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if sc.Grace <= 0 {
		sc.Grace = 30 * time.Second
	}
	if sc.ClientIdleTimeout < 0 || sc.MaxConns < 0 || sc.MaxHeaderBytes < 0 {
		return errors.New("negative client idle timeout, connection limit or header limit")
	}
	if sc.Sendfile > SendfileNever {
		return fmt.Errorf("unknown sendfile mode %d", sc.Sendfile)
	}
	sc.ClientIdleTimeout = cmp.Or(sc.ClientIdleTimeout, DefaultClientIdleTimeout)
	sc.MaxConns = cmp.Or(sc.MaxConns, DefaultMaxClientConns)
	sc.MaxHeaderBytes = cmp.Or(sc.MaxHeaderBytes, DefaultMaxHeaderBytes)
	tcpLn, err := net.Listen("tcp", sc.Addr)
	if err != nil {
		return err
	}
	// The cap and the idle deadline sit under TLS, on the TCP connection,
	// so they hold for the handshake and every byte after it.
	cl := newClientListener(tcpLn, sc.MaxConns, sc.ClientIdleTimeout, p.metrics, log)
	cl.tick = progressTick(p.opts.clientStallGrace)
	cl.sendfile = sc.Sendfile
	var regLn net.Listener = cl
	if sc.GetCertificate != nil || sc.TLSCert != "" || sc.TLSKey != "" {
		tc := &tls.Config{GetCertificate: sc.GetCertificate, MinVersion: tls.VersionTLS12}
		if sc.GetCertificate == nil {
			cert, err := tls.LoadX509KeyPair(sc.TLSCert, sc.TLSKey)
			if err != nil {
				_ = regLn.Close()
				return fmt.Errorf("tls: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		p.clientAuth.Load().configureTLS(tc)
		regLn = tls.NewListener(regLn, tc)
	} else if p.clientAuth.Load().wantsClientCerts() {
		_ = regLn.Close()
		return errors.New("client certificates need TLS on the registry listener")
	}
	// Blobs can be gigabytes, so there is no overall write timeout; slow
	// clients are bounded by the header, read and idle timeouts, and a
	// client that stops reading by the per-write idle deadline of its
	// connection. The request line counts toward MaxHeaderBytes, so it
	// also bounds the URL.
	reg := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    sc.MaxHeaderBytes,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
		// A blob stream finds its client's connection here, so that a
		// pull waiting for a stream connection can drop a stalled one.
		ConnContext: withClientConn,
	}
	servers := []*http.Server{reg}
	errc := make(chan error, 2)
	go func() { errc <- reg.Serve(regLn) }()
	go p.RunRefreshAhead(ctx)
	log.Info("serving", zap.String("listen", regLn.Addr().String()), zap.Bool("tls", sc.TLSCert != "" || sc.GetCertificate != nil),
		zap.Duration("client_idle_timeout", sc.ClientIdleTimeout), zap.Int("max_client_conns", sc.MaxConns),
		zap.Int("max_header_bytes", sc.MaxHeaderBytes), zap.Duration("client_stall_grace", p.opts.clientStallGrace))

	adminAddr := ""
	if sc.AdminAddr != "" {
		admLn, err := net.Listen("tcp", sc.AdminAddr)
		if err != nil {
			_ = reg.Close()
			return err
		}
		adm := &http.Server{
			Handler:           p.AdminHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
		}
		servers = append(servers, adm)
		go func() { errc <- adm.Serve(admLn) }()
		adminAddr = admLn.Addr().String()
		log.Info("admin", zap.String("listen", adminAddr))
	}
	if sc.Ready != nil {
		sc.Ready(regLn.Addr().String(), adminAddr)
	}

	select {
	case err := <-errc:
		for _, s := range servers {
			_ = s.Close()
		}
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", zap.Duration("grace", sc.Grace))
	p.SetDraining(true)
	sctx, cancel := context.WithTimeout(context.Background(), sc.Grace)
	defer cancel()
	var errs []error
	for _, s := range servers {
		if err := s.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// clientListener caps the connections open at once and gives each one an
// idle write deadline. At the cap, Accept waits for a connection to close
// (new clients queue in the kernel's backlog) rather than refusing them:
// a refused pull makes containerd and CRI-O fall back to the next mirror
// or the registry itself, around the proxy.
type clientListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	idle      time.Duration
	// tick, when set, is how often a blocked write checks whether the
	// client took anything, so stalledFor is accurate to about a tick.
	tick time.Duration
	// sendfile decides, per connection, whether cached files leave with
	// sendfile(2).
	sendfile SendfileMode
	metrics  *metrics
	log      *zap.Logger
	fullLog  logGate
}

func newClientListener(l net.Listener, maxConns int, idle time.Duration, m *metrics, log *zap.Logger) *clientListener {
	return &clientListener{
		Listener: l,
		slots:    make(chan struct{}, maxConns),
		done:     make(chan struct{}),
		idle:     idle,
		metrics:  m,
		log:      log,
	}
}

func (l *clientListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		l.metrics.clientConnsLimited.Inc()
		if l.fullLog.allow(time.Now(), time.Minute) {
			l.log.Warn("client connection limit reached: new connections wait until one closes",
				zap.Int("max_client_conns", cap(l.slots)))
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	l.metrics.clientConns.Inc()
	return &clientConn{Conn: c, l: l, sendfile: l.sendfile.sendfileTo(c.RemoteAddr())}, nil
}

func (l *clientListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// clientConn is one client connection under the listener's cap. Every
// write runs under a deadline of the idle timeout, renewed whenever the
// client takes some of it: a client reading slowly is served however long
// the response, one that takes nothing for the whole timeout is dropped.
type clientConn struct {
	net.Conn
	l *clientListener
	// sendfile is whether files leave with sendfile(2) (SendfileMode).
	sendfile  bool
	closeOnce sync.Once
	stalled   atomic.Bool
	dropped   atomic.Bool
	written   atomic.Int64
	// blockedSince is when the write in progress last made progress
	// (unix nanoseconds), 0 when no write is in progress.
	blockedSince atomic.Int64
	// writeDeadline is the write deadline set on Conn (unix nanoseconds),
	// 0 for none.
	writeDeadline atomic.Int64
}

// SetWriteDeadline and SetDeadline keep writeDeadline true whoever sets
// the deadline (net/http may).
func (c *clientConn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.Store(deadlineNanos(t))
	return c.Conn.SetWriteDeadline(t)
}

func (c *clientConn) SetDeadline(t time.Time) error {
	c.writeDeadline.Store(deadlineNanos(t))
	return c.Conn.SetDeadline(t)
}

func deadlineNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// renewWriteDeadline sets the deadline of a write that wants one at
// deadline, unless the one already set ends at most there and at least
// halfway from now to there: then it is kept. Setting a deadline adds a
// runtime timer, which can wake the thread waiting in the network poller:
// once per response on a warm connection, that was most of what a small
// answer cost beyond net/http's own. A write that a kept deadline cuts off
// early loops like one cut off at a tick, with a deadline of its own.
func (c *clientConn) renewWriteDeadline(now, deadline time.Time) error {
	cur, want := c.writeDeadline.Load(), deadline.UnixNano()
	if cur != 0 && cur <= want && cur >= now.UnixNano()+(want-now.UnixNano())/2 {
		return nil
	}
	return c.SetWriteDeadline(deadline)
}

func (c *clientConn) Write(b []byte) (int, error) {
	total := 0
	now := time.Now()
	last := now
	c.blockedSince.Store(last.UnixNano())
	defer c.blockedSince.Store(0)
	for {
		// A write to a client that reads returns only once all of b is
		// sent, so progress within it is seen only when a deadline
		// interrupts it: every tick, or at the idle timeout.
		deadline := last.Add(c.l.idle)
		if c.l.tick > 0 {
			deadline = minTime(deadline, now.Add(c.l.tick))
		}
		if err := c.renewWriteDeadline(now, deadline); err != nil {
			return total, err
		}
		n, err := c.Conn.Write(b[total:])
		total += n
		c.written.Add(int64(n))
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return total, err
		}
		now = time.Now()
		if n > 0 {
			// The client took part of it: a new deadline for the rest.
			last = now
			c.blockedSince.Store(now.UnixNano())
			continue
		}
		if now.Sub(last) >= c.l.idle {
			c.noteStall()
			return total, err
		}
	}
}

// sendfileChunk is how much one sendfile(2) call may send: the deadline
// is renewed between chunks, as between the writes of a stream.
const sendfileChunk = 4 << 20

// ReadFrom lets net/http send a file from the verified blob cache with
// sendfile(2) instead of copying it through user space, under the same
// idle deadline as Write: renewed whenever the client takes some of it,
// the connection dropped when it takes nothing for the idle timeout.
// Anything but a file (or a file under one io.LimitedReader, as
// http.ServeContent passes it) on a plain TCP connection goes through
// Write.
func (c *clientConn) ReadFrom(r io.Reader) (int64, error) {
	lr, f := sendfileSource(r)
	tc, ok := c.Conn.(*net.TCPConn)
	if f == nil || !ok {
		return io.Copy(writerOnly{c}, r)
	}
	if !c.sendfile {
		// Through Write, under its deadline; a small buffer stays in
		// the core's cache between the read and the write.
		bp := fileCopyPool.Get().(*[]byte)
		defer fileCopyPool.Put(bp)
		return io.CopyBuffer(writerOnly{c}, readerOnly{r}, *bp)
	}
	var total int64
	last := time.Now()
	c.blockedSince.Store(last.UnixNano())
	defer c.blockedSince.Store(0)
	for lr == nil || lr.N > 0 {
		deadline := last.Add(c.l.idle)
		if c.l.tick > 0 {
			deadline = minTime(deadline, time.Now().Add(c.l.tick))
		}
		if err := c.SetWriteDeadline(deadline); err != nil {
			return total, err
		}
		chunk := int64(sendfileChunk)
		if lr != nil {
			chunk = min(chunk, lr.N)
		}
		n, err := tc.ReadFrom(&io.LimitedReader{R: f, N: chunk})
		total += n
		c.written.Add(n)
		c.l.metrics.sendfileBytes.Add(float64(n))
		if lr != nil {
			lr.N -= n
		}
		now := time.Now()
		if n > 0 {
			last = now
			c.blockedSince.Store(now.UnixNano())
		}
		switch {
		case err == nil && n < chunk:
			return total, nil // end of the file
		case err == nil:
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return total, err
		case n == 0 && now.Sub(last) >= c.l.idle:
			c.noteStall()
			return total, err
		}
	}
	return total, nil
}

// sendfileSource is the file under r when r is one (lr nil) or a single
// io.LimitedReader over one.
func sendfileSource(r io.Reader) (lr *io.LimitedReader, f *os.File) {
	if l, ok := r.(*io.LimitedReader); ok {
		lr, r = l, l.R
	}
	f, _ = r.(*os.File)
	return lr, f
}

// writerOnly hides a writer's ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// readerOnly hides a reader's WriteTo (an *os.File's would splice).
type readerOnly struct{ io.Reader }

// fileCopyBuffer is what a cached file is copied with when it does not
// leave with sendfile(2): 64, 128 and 256 KiB served a client on the
// same host that hashes what it reads no faster (BENCHMARKS.md).
const fileCopyBuffer = 32 << 10

var fileCopyPool = sync.Pool{New: func() any { b := make([]byte, fileCopyBuffer); return &b }}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// stalledFor is how long the write in progress has sent nothing, 0 when
// none is in progress.
func (c *clientConn) stalledFor(now time.Time) time.Duration {
	since := c.blockedSince.Load()
	if since == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, since)), 0)
}

// bytesWritten is what the connection has sent so far.
func (c *clientConn) bytesWritten() int64 { return c.written.Load() }

// drop closes the connection, failing a write blocked on it at once. It
// reports whether this call closed it.
func (c *clientConn) drop() bool {
	if !c.dropped.CompareAndSwap(false, true) {
		return false
	}
	_ = c.Close()
	return true
}

type clientConnKey struct{}

// withClientConn puts a registry connection's *clientConn, under TLS or
// not, into the context of its requests.
func withClientConn(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if cc, ok := c.(*clientConn); ok {
		return context.WithValue(ctx, clientConnKey{}, cc)
	}
	return ctx
}

// clientConnFrom is the connection a request arrived on; nil when it was
// not accepted by Serve (handler tests).
func clientConnFrom(ctx context.Context) *clientConn {
	cc, _ := ctx.Value(clientConnKey{}).(*clientConn)
	return cc
}

// noteStall counts a stalled client once per connection. The handler
// that was writing logs what it was serving.
func (c *clientConn) noteStall() {
	if c.stalled.CompareAndSwap(false, true) {
		c.l.metrics.clientStalled.Inc()
		c.l.log.Debug("client stalled: connection dropped", zap.String("client", c.RemoteAddr().String()),
			zap.Int64("bytes", c.written.Load()), zap.Duration("client_idle_timeout", c.l.idle))
	}
}

// CloseWrite keeps net/http's half-close (used before closing a
// connection whose request body was not read) working through the
// wrapper.
func (c *clientConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.l.metrics.clientConns.Dec()
		<-c.l.slots
	})
	return err
}

// logGate lets an event that can repeat at a high rate be logged at most
// once per interval.
type logGate struct{ last atomic.Int64 }

func (g *logGate) allow(now time.Time, every time.Duration) bool {
	last := g.last.Load()
	if last != 0 && now.UnixNano()-last < int64(every) {
		return false
	}
	return g.last.CompareAndSwap(last, now.UnixNano())
}
