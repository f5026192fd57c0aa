package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// VerdictClientOptions configure NewVerdictClient.
type VerdictClientOptions struct {
	// AdminURL is the proxy's admin listener, http(s)://host[:port][/prefix].
	AdminURL string
	// Token is sent as "Authorization: Bearer"; empty sends none.
	Token string
	// RootCAsPEM, when set, are the only roots an https admin listener's
	// certificate may chain to. Default: the system roots.
	RootCAsPEM []byte
	// Timeout bounds connecting and the TLS handshake; the caller's
	// context bounds the whole question. Required.
	Timeout time.Duration
	// MaxResponseBytes bounds the answer read. Required.
	MaxResponseBytes int64
}

// VerdictClient asks a proxy's verdict API (GET /v1/verdicts/...). It is
// the node side of the API: it never follows a redirect, never goes through
// an HTTP(S)_PROXY (which would see the token), reads the answer through a
// limit and parses it strictly.
type VerdictClient struct {
	base     *url.URL
	token    string
	client   *http.Client
	maxBytes int64
}

// UnreachableError says no connection to the admin listener could be
// opened: its name did not resolve, or dialling it failed or timed out. A
// failure after the connection was opened (TLS, a slow or broken answer)
// is never an UnreachableError.
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return "cannot be reached: " + e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// ErrVerdictTooLarge: the answer is larger than MaxResponseBytes.
var ErrVerdictTooLarge = errors.New("answer larger than the configured maximum")

// NewVerdictClient checks o and builds the client.
func NewVerdictClient(o VerdictClientOptions) (*VerdictClient, error) {
	u, err := url.Parse(o.AdminURL)
	if err != nil {
		return nil, fmt.Errorf("admin URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("admin URL %q: want http(s)://host[:port][/path]", o.AdminURL)
	}
	if o.Timeout <= 0 || o.MaxResponseBytes <= 0 {
		return nil, errors.New("a timeout and a response limit are required")
	}
	if strings.ContainsAny(o.Token, "\r\n") {
		return nil, errors.New("the token must be one line")
	}
	u.Path, u.RawPath = strings.TrimSuffix(u.Path, "/"), ""
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(o.RootCAsPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(o.RootCAsPEM) {
			return nil, errors.New("no PEM certificate among the roots")
		}
		tlsConf.RootCAs = pool
	}
	return &VerdictClient{
		base:     u,
		token:    o.Token,
		maxBytes: o.MaxResponseBytes,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: o.Timeout}).DialContext,
				TLSClientConfig:     tlsConf,
				TLSHandshakeTimeout: o.Timeout,
				DisableKeepAlives:   true,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// Ask asks for the verdict of registry/repo@digest. It returns the status
// and, for the statuses the API answers with a verdict (200, 403, 400),
// the answer, parsed strictly: one object, no unknown field. An answer
// with any other status is returned without being parsed.
func (c *VerdictClient) Ask(ctx context.Context, registry, repo, digest string) (int, VerdictAnswer, error) {
	u := *c.base
	u.Path += VerdictsPath + registry + "/" + repo + "@" + digest
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, VerdictAnswer{}, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "portcullis-node-verifier")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if unreachable(err) {
			return 0, VerdictAnswer{}, &UnreachableError{Err: err}
		}
		return 0, VerdictAnswer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBytes+1))
	if err != nil {
		return resp.StatusCode, VerdictAnswer{}, fmt.Errorf("failed to read the answer: %w", err)
	}
	if int64(len(body)) > c.maxBytes {
		return resp.StatusCode, VerdictAnswer{}, ErrVerdictTooLarge
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusForbidden, http.StatusBadRequest:
	default:
		return resp.StatusCode, VerdictAnswer{}, nil
	}
	a, err := parseVerdictAnswer(body)
	if err != nil {
		return resp.StatusCode, VerdictAnswer{}, fmt.Errorf("not a verdict answer: %w", err)
	}
	return resp.StatusCode, a, nil
}

// AdminURL is the admin URL asked, without credentials, for messages.
func (c *VerdictClient) AdminURL() string { return c.base.Redacted() }

func parseVerdictAnswer(body []byte) (VerdictAnswer, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var a VerdictAnswer
	if err := dec.Decode(&a); err != nil {
		return VerdictAnswer{}, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return VerdictAnswer{}, errors.New("trailing data after the answer")
	}
	return a, nil
}

// unreachable: the name did not resolve or no connection could be opened.
// Certificate and handshake failures are excluded even though they happen
// while connecting: someone else answering is not "unreachable".
func unreachable(err error) bool {
	var (
		certErr  *tls.CertificateVerificationError
		authErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
	)
	if errors.As(err, &certErr) || errors.As(err, &authErr) || errors.As(err, &hostErr) ||
		errors.As(err, &invalid) || errors.As(err, &recErr) || errors.As(err, &alertErr) {
		return false
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}
