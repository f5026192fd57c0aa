package hostile

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Stall is a set of connections that each asked for one resource and
// never read the answer.
type Stall struct {
	conns []net.Conn
}

// OpenStalls dials host n times and sends one GET of path on each, then
// reads nothing. The client's receive buffer is made small (rcvbuf bytes,
// 0 keeps the system default) so the server, not the client's kernel,
// ends up holding what it could not send.
func OpenStalls(ctx context.Context, host, path string, n, rcvbuf int) (*Stall, error) {
	s := &Stall{}
	d := net.Dialer{Timeout: 5 * time.Second}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: portcullis-stall\r\n\r\n", path, host)
	for range n {
		c, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("failed to open stalled connection %d: %w", len(s.conns)+1, err)
		}
		if tc, ok := c.(*net.TCPConn); ok && rcvbuf > 0 {
			_ = tc.SetReadBuffer(rcvbuf)
		}
		s.conns = append(s.conns, c)
		if _, err := c.Write([]byte(req)); err != nil {
			s.Close()
			return nil, fmt.Errorf("failed to send stalled request: %w", err)
		}
	}
	return s, nil
}

// Len is the number of stalled connections.
func (s *Stall) Len() int { return len(s.conns) }

// Statuses reads, only now, the status line each connection was sent
// (a connection the server dropped counts as "closed") so a measurement
// can prove the stalled requests really were allowed streams.
func (s *Stall) Statuses(timeout time.Duration) map[string]int {
	out := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range s.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(timeout))
			line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
			k := "closed"
			if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(f[0], "HTTP/") {
				k = f[1]
			} else if err != nil && isTimeout(err) {
				k = "no answer"
			}
			mu.Lock()
			out[k]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Close closes every connection.
func (s *Stall) Close() {
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.conns = nil
}
