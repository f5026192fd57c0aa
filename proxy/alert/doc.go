// Package alert delivers the proxy's events (denials, would-be denials,
// failures to decide, drift, revocation hits, reload failures, watches) to
// HTTP receivers: a generic JSON webhook, a CloudEvents 1.0 receiver (HTTP
// binary content mode) or a Slack-compatible incoming webhook.
//
// What it guarantees: Emit never blocks serving. Each sink has a bounded
// queue drained by one goroutine; an event that finds the queue full is
// dropped and counted, never waited for. Delivery is at most MaxAttempts
// POSTs per event with exponential backoff and jitter; each attempt has its
// own timeout. Repeats of the same kind, digest and boundary within the
// dedup window are sent once and the rest counted.
//
// What it trusts: the receiver URLs and headers are operator configuration.
// They may carry secrets (a Slack URL's path is its credential), so neither
// is ever logged or put into an error. Redirects are followed only within
// the receiver's own scheme and host. Event contents come from clients and
// upstreams (repository names, reasons): they are JSON-encoded, and escaped
// for Slack so that a repository name cannot mention a channel or forge a
// link.
package alert
