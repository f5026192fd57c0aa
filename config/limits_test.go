package config

import (
	"strings"
	"testing"
)

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	good := map[string]int64{
		"0": 0, "1024": 1024, "7B": 7, "64KiB": 64 << 10, "16MiB": 16 << 20, "2GiB": 2 << 30, " 4 MiB ": 4 << 20,
	}
	for in, want := range good {
		got, err := ParseByteSize(in)
		if err != nil || got.Int64() != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "16MB", "16mb", "-1", "1.5MiB", "16 M", "0x10", "9223372036854775807GiB"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want error", in, got)
		}
	}
	for _, v := range []ByteSize{1, 1024, 64 << 10, 16 << 20, 3 << 30, 1025} {
		back, err := ParseByteSize(v.String())
		if err != nil || back != v {
			t.Errorf("%d -> %q -> %d, %v", v, v.String(), back, err)
		}
	}
}

func TestLimitsDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", "", "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := c.Limits
	if l.EvidenceBytes != DefaultEvidenceBytes || l.SignatureBytes != DefaultSignatureBytes || l.AttestationBytes != DefaultAttestationBytes ||
		l.MaxEvidence != DefaultMaxEvidence || l.PredicateDepth != DefaultPredicateDepth || l.ClientConnections != DefaultClientConnections ||
		l.ClientIdleTimeout.D() != DefaultClientIdleTimeout || l.HeaderBytes != DefaultHeaderBytes || l.UpstreamHeaderBytes != DefaultUpstreamHeaderBytes ||
		l.StreamBufferBytes != DefaultStreamBufferBytes || l.ServedEvidenceBytes != DefaultServedEvidenceBytes || l.VerifyQueueWait.D() != DefaultVerifyQueueWait ||
		l.ClientStallGrace == nil || l.ClientStallGrace.D() != DefaultClientStallGrace {
		t.Errorf("defaults not applied: %+v", l)
	}
	if (Limits{}).StallGrace() != DefaultClientStallGrace {
		t.Errorf("StallGrace of unset limits = %v", (Limits{}).StallGrace())
	}
	// 0 turns early drops off; it must not be replaced by the default.
	c, err = Parse([]byte(doc("", "", "", "limits: {client_stall_grace: 0s}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if g := c.Limits.StallGrace(); g != 0 {
		t.Errorf("client_stall_grace: 0s parsed as %v", g)
	}
	if c.UpstreamIdleTimeout.D() != DefaultUpstreamIdleTimeout || c.MaxConnsPerUpstream != DefaultMaxConnsPerUpstream {
		t.Errorf("upstream defaults not applied: %v %d", c.UpstreamIdleTimeout, c.MaxConnsPerUpstream)
	}
	if run, q := l.VerificationSlots(3); run != 12 || q != 96 {
		t.Errorf("VerificationSlots(3) = %d, %d; want 12, 96", run, q)
	}
	l.Verifications, l.VerifyQueue = 5, 2
	if run, q := l.VerificationSlots(3); run != 5 || q != 2 {
		t.Errorf("explicit VerificationSlots = %d, %d", run, q)
	}
}

func TestLimitsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		extra, want string // want "" means valid
	}{
		{"limits: {evidence_bytes: 32MiB, signature_bytes: 512KiB, attestation_bytes: 8MiB}\n", ""},
		{"limits: {served_evidence_bytes: 1MiB}\n", ""},
		{"limits: {served_evidence_bytes: 64MB}\n", `invalid size "64MB"`},
		{"limits: {evidence_bytes: 16MB}\n", `invalid size "16MB"`},
		{"limits: {evidence_bytes: -5}\n", `invalid size "-5"`},
		{"limits: {evidence_bytes: 1MiB}\n", "limits.attestation_bytes: 4MiB is larger than evidence_bytes (1MiB)"},
		{"limits: {signature_bytes: 32MiB}\n", "limits.signature_bytes: 32MiB is larger than evidence_bytes (16MiB)"},
		{"limits: {header_bytes: 100}\n", "limits.header_bytes: must be at least 4KiB"},
		{"limits: {verifications: -1}\n", "limits.verifications: must not be negative"},
		{"limits: {verify_queue: -1}\n", "limits.verify_queue: must not be negative"},
		{"limits: {max_evidence: -1}\n", "limits.max_evidence: must be positive"},
		{"limits: {predicate_depth: -1}\n", "limits.predicate_depth: must be positive"},
		{"limits: {client_connections: -1}\n", "limits.client_connections: must be positive"},
		{"limits: {client_idle_timeout: -1s}\n", "limits.client_idle_timeout: must be positive"},
		{"limits: {client_stall_grace: -1s}\n", "limits.client_stall_grace: must not be negative"},
		{"limits: {client_stall_grace: 2s}\n", ""},
		{"limits: {verify_queue_wait: -1s}\n", "limits.verify_queue_wait: must be positive"},
		{"limits: {bogus: 1}\n", "bogus"},
		{"upstream_idle_timeout: -1s\n", "upstream_idle_timeout: must be positive"},
		{"max_conns_per_upstream: -1\n", "max_conns_per_upstream: must be positive"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(doc("", "", "", tc.extra)), "p.yaml")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.extra, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.extra, err, tc.want)
		}
	}
}

func TestUpstreamRedirectHosts(t *testing.T) {
	t.Parallel()
	up := func(extra string) string {
		return "  - name: r.example\n    url: https://r.example\n" + extra
	}
	tests := []struct {
		extra, want string
	}{
		{"    redirect_hosts: [storage.example.com, \"storage.example.com:8443\", \"*.blob.example.com\"]\n    max_conns: 8\n", ""},
		{"    redirect_hosts: [\"https://storage.example.com\"]\n", `redirect_hosts[0]: redirect host "https://storage.example.com"`},
		{"    redirect_hosts: [\"*\"]\n", `redirect_hosts[0]: redirect host "*"`},
		{"    redirect_hosts: [\"Storage.example.com\"]\n", "must be a lowercase host"},
		{"    redirect_hosts: [\"s.example.com:0\"]\n", "invalid port"},
		{"    max_conns: -1\n", "upstreams[0].max_conns: must not be negative"},
	}
	for _, tc := range tests {
		_, err := Parse([]byte(doc(up(tc.extra), "", "", "")), "p.yaml")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.extra, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want %q", tc.extra, err, tc.want)
		}
	}
}
