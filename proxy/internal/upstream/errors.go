package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/portcullis-oci/portcullis/verify"
)

var (
	// ErrDigestMismatch means the upstream sent bytes that do not hash to
	// the digest they were requested or announced by.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrTooLarge means the upstream's answer exceeds the applicable size
	// limit. It wraps verify.ErrTooLarge, so an evidence blob longer than
	// its descriptor is rejected evidence rather than a failed
	// verification.
	ErrTooLarge = fmt.Errorf("upstream content exceeds size limit: %w", verify.ErrTooLarge)
	// ErrInvalidResponse means the upstream's answer could not be parsed or
	// contradicts itself.
	ErrInvalidResponse = errors.New("invalid upstream response")
	// ErrUnexpectedPartial means the upstream answered 206 Partial Content
	// to a request that asked for the whole blob. It comes wrapped together
	// with ErrInvalidResponse.
	ErrUnexpectedPartial = errors.New("partial content to a request without Range")
	// ErrUpstreamStalled means the upstream sent no byte of a response body
	// for Config.IdleTimeout while it was being read; the request was
	// aborted. A caller relaying the body must abort its own stream.
	ErrUpstreamStalled = errors.New("upstream stalled")
	// ErrConnLimit means a request gave up waiting for a connection while
	// all Config.MaxConns connections to the host were busy.
	ErrConnLimit = errors.New("all upstream connections busy")
	// ErrHeadersTooLarge means an answer's status line and headers were
	// larger than Config.MaxHeaderBytes; the connection was dropped
	// unread.
	ErrHeadersTooLarge = errors.New("upstream response headers too large")
)

// headersTooLarge recognises net/http's refusal of response headers past
// Transport.MaxResponseHeaderBytes, over HTTP/1 and HTTP/2. net/http
// gives it no type of its own.
func headersTooLarge(err error) bool {
	s := err.Error()
	return strings.Contains(s, "server response headers exceeded") ||
		strings.Contains(s, "response header list larger than advertised limit")
}

// maxErrorBody bounds how much of an error answer is kept.
const maxErrorBody = 64 << 10

// keptErrorHeaders are the headers of an error answer worth relaying or
// logging; everything else (cookies, tracing, storage signatures) is dropped.
var keptErrorHeaders = []string{
	"Content-Type",
	"WWW-Authenticate",
	"Docker-Distribution-API-Version",
	"Retry-After",
	// A 416 says which range would have been satisfiable.
	"Content-Range",
}

// Error is an upstream's non-2xx answer, kept so the proxy can pass its
// status and diagnostics on. Body is at most 64 KiB.
type Error struct {
	// Upstream is the configured name of the upstream that answered.
	Upstream string
	Status   int
	// Header holds only Content-Type, WWW-Authenticate,
	// Docker-Distribution-API-Version, Retry-After and Content-Range.
	Header http.Header
	Body   []byte
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %d %s", e.Upstream, e.Status, http.StatusText(e.Status))
	if code, msg, more := e.firstDiagnostic(); code != "" {
		fmt.Fprintf(&b, ": %s", sanitize(code, 64))
		if msg != "" {
			fmt.Fprintf(&b, ": %s", sanitize(msg, 256))
		}
		if more > 0 {
			fmt.Fprintf(&b, " (and %d more)", more)
		}
	}
	return b.String()
}

// Is makes a 404, or a 4xx whose diagnostics all say the content is
// unknown, match verify.ErrNotFound.
func (e *Error) Is(target error) bool {
	if target != verify.ErrNotFound {
		return false
	}
	if e.Status == http.StatusNotFound {
		return true
	}
	if e.Status < 400 || e.Status >= 500 {
		return false
	}
	codes := e.codes()
	if len(codes) == 0 {
		return false
	}
	for _, c := range codes {
		switch c {
		case "MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN":
		default:
			return false
		}
	}
	return true
}

type errorEnvelope struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

func (e *Error) envelope() (errorEnvelope, bool) {
	var env errorEnvelope
	if len(e.Body) == 0 || json.Unmarshal(e.Body, &env) != nil {
		return env, false
	}
	return env, len(env.Errors) > 0
}

func (e *Error) codes() []string {
	env, ok := e.envelope()
	if !ok {
		return nil
	}
	codes := make([]string, 0, len(env.Errors))
	for _, x := range env.Errors {
		codes = append(codes, x.Code)
	}
	return codes
}

func (e *Error) firstDiagnostic() (code, message string, more int) {
	env, ok := e.envelope()
	if !ok {
		return "", "", 0
	}
	return env.Errors[0].Code, env.Errors[0].Message, len(env.Errors) - 1
}

// sanitize keeps upstream-controlled text printable and short, so it cannot
// forge log lines or flood them.
func sanitize(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= n {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		b.WriteRune(r)
	}
	return b.String()
}

// newError builds an *Error from a non-2xx response and closes its body.
func newError(name string, resp *http.Response) *Error {
	defer resp.Body.Close()
	e := &Error{Upstream: name, Status: resp.StatusCode, Header: http.Header{}}
	for _, k := range keptErrorHeaders {
		if v := resp.Header.Values(k); len(v) > 0 {
			e.Header[k] = append([]string(nil), v...)
		}
	}
	// A read error only means less diagnostics; the status is the answer.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if len(body) > 0 {
		e.Body = body
	}
	return e
}

// IsTransient reports whether err is a failure to reach or hear from the
// upstream (connection refused, DNS, timeout, 5xx, 429) rather than an
// answer about the content.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	// Content and configuration problems do not go away by retrying, even
	// when they surface through a network error type.
	if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrInvalidResponse) ||
		errors.Is(err, ErrRedirectRefused) {
		return false
	}
	if errors.Is(err, ErrUpstreamStalled) || errors.Is(err, ErrConnLimit) {
		return true
	}
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) {
		return false
	}

	var ue *Error
	if errors.As(err, &ue) {
		return statusTransient(ue.Status)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return statusTransient(te.StatusCode)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	if errors.As(err, &dnsErr) || errors.As(err, &opErr) {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		// net/http reports a connection closed before any answer as EOF.
		errors.Is(err, io.EOF)
}

func statusTransient(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout
}
