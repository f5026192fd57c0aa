package harness

import (
	"net"
	"net/http"
	"time"
)

// NewTransport is keep-alive, never through an environment proxy, and
// uncompressed (lengths and digests are checked on the bytes served). It
// keeps up to idlePerHost idle connections per host, and twice that in
// all, so that a harness's highest concurrency does not redial.
func NewTransport(idlePerHost int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * idlePerHost,
		MaxIdleConnsPerHost: idlePerHost,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}
