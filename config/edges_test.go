package config

import (
	"fmt"
	"strings"
	"testing"
)

// TestLimitEdges holds each bounded setting to its documented range at
// both ends: the bound itself is accepted, one step past it refused with
// the setting's key path. (A zero alert queue, timeout or attempt count,
// or credential cache TTL, means the default.)
func TestLimitEdges(t *testing.T) {
	t.Parallel()
	alert := func(extra string) string {
		return doc("", "", "", "alerts:\n  - {name: a, type: webhook, url: https://h.example"+extra+"}\n")
	}
	clients := func(extra string) string {
		return doc("", "", "", "clients: {htpasswd: h, access: [{clients: [a]}]"+extra+"}\n")
	}
	example := func(extra string) string { return string(Example) + "\n" + extra + "\n" }
	const tlsOn = "tls: {cert: c.pem, key: k.pem}\n"
	maxGiB := fmt.Sprint(maxBlobCacheGiB)
	for _, tc := range []struct {
		name, yaml string
		want       string // "" means valid
	}{
		{"alert queue 1", alert(", queue: 1"), ""},
		{"alert queue max", alert(fmt.Sprintf(", queue: %d", maxAlertQueue)), ""},
		{"alert queue past max", alert(fmt.Sprintf(", queue: %d", maxAlertQueue+1)), "alerts[0].queue"},
		{"alert timeout max", alert(", timeout: 5m"), ""},
		{"alert timeout past max", alert(", timeout: 5m1s"), "alerts[0].timeout"},
		{"alert timeout negative", alert(", timeout: -1s"), "alerts[0].timeout"},
		{"alert attempts 1", alert(", max_attempts: 1"), ""},
		{"alert attempts max", alert(fmt.Sprintf(", max_attempts: %d", maxAlertAttempts)), ""},
		{"alert attempts past max", alert(fmt.Sprintf(", max_attempts: %d", maxAlertAttempts+1)), "alerts[0].max_attempts"},
		{"alert attempts negative", alert(", max_attempts: -1"), "alerts[0].max_attempts"},
		{"alert dedup window negative", alert(", dedup_window: -1s"), "alerts[0].dedup_window: must not be negative"},
		{"header name of every token range", alert(", headers: [{name: azAZ09, env: T}]"), ""},
		{"header name with a separator", alert(", headers: [{name: \"a:b\", env: T}]"), "is not a header name"},

		{"blob cache max_gib at its maximum", example("blob_cache: {dir: c, max_gib: " + maxGiB + "}"), ""},
		{"blob cache max_gib past its maximum", example("blob_cache: {dir: c, max_gib: " + fmt.Sprint(maxBlobCacheGiB+1) + "}"), "blob_cache.max_gib"},
		{"blob cache max_gib 0", example("blob_cache: {dir: c, max_gib: 0}"), "blob_cache.max_gib"},
		{"blob cache min_free_gib at its maximum", example("blob_cache: {dir: c, max_gib: 1, min_free_gib: " + maxGiB + "}"), ""},
		{"blob cache min_free_gib past its maximum", example("blob_cache: {dir: c, max_gib: 1, min_free_gib: " + fmt.Sprint(maxBlobCacheGiB+1) + "}"), "blob_cache.min_free_gib"},
		{"blob share buffer at 1MiB", example("blob_share: {buffer_bytes: 1MiB, max_bytes: 1MiB}"), ""},
		{"blob share buffer under 1MiB", example("blob_share: {buffer_bytes: 1048575, max_bytes: 1MiB}"), "blob_share.buffer_bytes"},
		{"blob share max under the buffer", example("blob_share: {buffer_bytes: 2MiB, max_bytes: 2097151}"), "blob_share.max_bytes"},

		{"bcrypt costs at their range", clients(fmt.Sprintf(", bcrypt_min_cost: %d, bcrypt_max_cost: %d", bcryptMinCost, bcryptMaxCost)), ""},
		{"bcrypt costs equal", clients(", bcrypt_min_cost: 12, bcrypt_max_cost: 12"), ""},
		{"bcrypt costs both at the top", clients(fmt.Sprintf(", bcrypt_min_cost: %d, bcrypt_max_cost: %d", bcryptMaxCost, bcryptMaxCost)), ""},
		{"bcrypt costs both at the bottom", clients(fmt.Sprintf(", bcrypt_min_cost: %d, bcrypt_max_cost: %d", bcryptMinCost, bcryptMinCost)), ""},
		{"bcrypt min cost past the range", clients(fmt.Sprintf(", bcrypt_min_cost: %d", bcryptMaxCost+1)), "clients.bcrypt_min_cost"},
		{"bcrypt max cost under the range", clients(fmt.Sprintf(", bcrypt_max_cost: %d", bcryptMinCost-1)), "clients.bcrypt_max_cost"},
		{"bcrypt max cost past the range", clients(fmt.Sprintf(", bcrypt_max_cost: %d", bcryptMaxCost+1)), "clients.bcrypt_max_cost"},
		{"credential cache ttl at its maximum", clients(", credential_cache_ttl: 1h"), ""},
		{"credential cache ttl past its maximum", clients(", credential_cache_ttl: 1h0m1s"), "clients.credential_cache_ttl"},
		{"credential cache ttl negative", clients(", credential_cache_ttl: -1s"), "clients.credential_cache_ttl"},
		{"password checks 0", clients(", password_checks: 0"), ""},
		{"sentinel master name of 256 bytes", example("shared: {redis: {sentinel: {master: " + strings.Repeat("m", 256) + ", addrs: ['s:1']}}}"), ""},
		{"sentinel master name of 257 bytes", example("shared: {redis: {sentinel: {master: " + strings.Repeat("m", 257) + ", addrs: ['s:1']}}}"), "shared.redis.sentinel.master"},
		{"redis key prefix of 128 bytes", example("shared: {redis: {addr: 'r:1', key_prefix: " + strings.Repeat("p", 128) + "}}"), ""},
		{"redis key prefix of 129 bytes", example("shared: {redis: {addr: 'r:1', key_prefix: " + strings.Repeat("p", 129) + "}}"), "shared.redis.key_prefix"},
		{"redis timeout at its maximum", example("shared: {redis: {addr: 'r:1', timeout: 10s}}"), ""},
		{"redis timeout past its maximum", example("shared: {redis: {addr: 'r:1', timeout: 10001ms}}"), "shared.redis.timeout"},
		{"redis values at 1KiB", example("shared: {redis: {addr: 'r:1', max_value_bytes: 1KiB}}"), ""},
		{"redis values under 1KiB", example("shared: {redis: {addr: 'r:1', max_value_bytes: 1023}}"), "shared.redis.max_value_bytes"},
		{"redis values at 1MiB", example("shared: {redis: {addr: 'r:1', max_value_bytes: 1MiB}}"), ""},
		{"redis values past 1MiB", example("shared: {redis: {addr: 'r:1', max_value_bytes: 1048577}}"), "shared.redis.max_value_bytes"},
		{"redis cluster at its address limit", example("shared: {redis: {cluster: {addrs: [" + addrs(maxSharedAddrs) + "]}}}"), ""},
		{"redis cluster past its address limit", example("shared: {redis: {cluster: {addrs: [" + addrs(maxSharedAddrs+1) + "]}}}"), "shared.redis.cluster.addrs"},

		{"trace sample ratio 0", example("tracing: {otlp_endpoint: 'https://c.example:4318', sample_ratio: 0}"), ""},
		{"trace sample ratio 1", example("tracing: {otlp_endpoint: 'https://c.example:4318', sample_ratio: 1}"), ""},
		{"trace sample ratio past 1", example("tracing: {otlp_endpoint: 'https://c.example:4318', sample_ratio: 1.01}"), "tracing.sample_ratio"},
		{"trace sample ratio negative", example("tracing: {otlp_endpoint: 'https://c.example:4318', sample_ratio: -0.01}"), "tracing.sample_ratio"},
		{"trace service name of 255 bytes", example("tracing: {otlp_endpoint: 'https://c.example:4318', service_name: " + strings.Repeat("s", 255) + "}"), ""},
		{"trace service name of 256 bytes", example("tracing: {otlp_endpoint: 'https://c.example:4318', service_name: " + strings.Repeat("s", 256) + "}"), "tracing.service_name"},

		{"tuf refresh at its minimum", doc("", "  - name: sig\n    trusted_root:\n      tuf: {url: 'https://t.example', root: root.json, refresh: 1m}\n", tufKeyless, ""), ""},
		{"tuf refresh under its minimum", doc("", "  - name: sig\n    trusted_root:\n      tuf: {url: 'https://t.example', root: root.json, refresh: 59s}\n", tufKeyless, ""), "refresh: must be at least"},
		{"tuf timeout negative", doc("", "  - name: sig\n    trusted_root:\n      tuf: {url: 'https://t.example', root: root.json, timeout: -1s}\n", tufKeyless, ""), "timeout"},

		{"keyless tlog threshold 0", doc("", "", keyless(`trust: root, issuer: "https://i", subject: s, tlog_threshold: 0, timestamp_threshold: 1`), ""), ""},
		{"keyless timestamp threshold 0", doc("", "", keyless(`trust: root, issuer: "https://i", subject: s, tlog_threshold: 1, timestamp_threshold: 0`), ""), ""},
		{"keyless tlog threshold negative", doc("", "", keyless(`trust: root, issuer: "https://i", subject: s, tlog_threshold: -1`), ""), "keyless.tlog_threshold: must not be negative"},
		{"keyless timestamp threshold negative", doc("", "", keyless(`trust: root, issuer: "https://i", subject: s, timestamp_threshold: -1`), ""), "keyless.timestamp_threshold: must not be negative"},
		{"keyless sct threshold 1", doc("", "", keyless(`trust: root, issuer: "https://i", subject: s, sct_threshold: 1`), ""), ""},
		{"watch stale_after equal to every", doc("", "", "", "watch:\n  - {ref: docker.io/acme/app:v1, every: 10m, stale_after: 10m}\n"), ""},
		{"header limit at 4KiB", doc("", "", "", "limits: {header_bytes: 4KiB}\n"), ""},
		{"header limit under 4KiB", doc("", "", "", "limits: {header_bytes: 4095}\n"), "limits.header_bytes"},
		{"upstream header limit at 4KiB", doc("", "", "", "limits: {upstream_header_bytes: 4KiB}\n"), ""},
		{"upstream header limit under 4KiB", doc("", "", "", "limits: {upstream_header_bytes: 4095}\n"), "limits.upstream_header_bytes"},
		{"upstream header limit at 16MiB", doc("", "", "", "limits: {upstream_header_bytes: 16MiB}\n"), ""},
		{"upstream header limit over 16MiB", doc("", "", "", "limits: {upstream_header_bytes: 16777217}\n"), "limits.upstream_header_bytes"},
		{"evidence items equal to the total", doc("", "", "", "limits: {evidence_bytes: 4MiB, signature_bytes: 4MiB, attestation_bytes: 4MiB}\n"), ""},
		{"certificates naming a DNS name and a URI", doc("", "", "", tlsOn+"clients:\n  mtls: {ca: ca.pem}\n  access: [{certificates: {dns: [a.example], uri: [\"spiffe://x/y\"]}}]\n"), ""},
	} {
		_, err := Parse([]byte(tc.yaml), "p.yaml")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one naming %q", tc.name, err, tc.want)
		}
	}
}

// addrs lists n distinct host:port addresses for a YAML flow sequence.
func addrs(n int) string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("'r%d:6379'", i)
	}
	return strings.Join(out, ", ")
}
