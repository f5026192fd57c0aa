package harness

import (
	"fmt"
	"strings"
)

// Config is the Portcullis configuration a harness runs: loopback
// listeners, insecure (plain HTTP, loopback) upstreams of which the first
// is the default, one key as the only trust, the given boundaries and a
// catch-all boundary that requires a signature by that key. Verdict and
// manifest caches keep their production defaults.
type Config struct {
	Port, AdminPort int // StartPortcullis picks both
	Upstreams       []Upstream
	// Key names the authority (Key) and its trust entry (Key-key), a
	// public key read from cosign.pub beside the configuration.
	Key        string
	Boundaries []Boundary // placed before the catch-all
}

// Upstream is one configured upstream registry.
type Upstream struct {
	Name    string
	URL     string
	Aliases []string
}

// Boundary is a rule that requires a signature by the key and, as asked,
// more.
type Boundary struct {
	Name         string
	Upstream     string // an upstream name or "*"
	Repositories []string
	// Provenance requires SLSA v1 provenance attested by the key.
	Provenance bool
	// LineageDepth, when positive, requires every provenance dependency
	// to verify, that many levels down.
	LineageDepth int
}

// YAML renders the configuration.
func (c Config) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: \"127.0.0.1:%d\"\nadmin: \"127.0.0.1:%d\"\nupstreams:\n", c.Port, c.AdminPort)
	for _, u := range c.Upstreams {
		fmt.Fprintf(&b, "  - name: %s\n", u.Name)
		if len(u.Aliases) > 0 {
			fmt.Fprintf(&b, "    aliases: [%s]\n", quoted(u.Aliases))
		}
		fmt.Fprintf(&b, "    url: %q\n    insecure: true\n", u.URL)
	}
	if len(c.Upstreams) > 0 {
		fmt.Fprintf(&b, "default_upstream: %s\n", c.Upstreams[0].Name)
	}
	fmt.Fprintf(&b, "trust:\n  - name: %s-key\n    keys: [cosign.pub]\nboundaries:\n", c.Key)
	for _, r := range append(c.Boundaries, Boundary{Name: "everything", Upstream: "*", Repositories: []string{"**"}}) {
		fmt.Fprintf(&b, "  - name: %s\n    match: {upstream: %q, repositories: [%s]}\n    mode: enforce\n", r.Name, r.Upstream, quoted(r.Repositories))
		fmt.Fprintf(&b, "    signatures:\n      threshold: 1\n      authorities:\n        - {name: %s, key: %s-key}\n", c.Key, c.Key)
		if r.Provenance {
			fmt.Fprintf(&b, "    attestations:\n      - name: provenance\n        predicate_type: \"https://slsa.dev/provenance/v1\"\n        authorities: [%s]\n", c.Key)
		}
		if r.LineageDepth > 0 {
			fmt.Fprintf(&b, "    lineage: {depth: %d, require: [\"*\"]}\n", r.LineageDepth)
		}
	}
	b.WriteString("unmatched: deny\nlog: {level: warn, format: json}\n")
	return b.String()
}

func quoted(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// DistributionConfig is a configuration for distribution's registry
// (docker-registry serve) on 127.0.0.1:port with its content under root;
// remote, when set, puts it in pull-through proxy mode.
func DistributionConfig(root string, port int, remote string) string {
	s := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: "127.0.0.1:%d"
`, root, port)
	if remote != "" {
		s += fmt.Sprintf("proxy:\n  remoteurl: %q\n", remote)
	}
	return s
}
