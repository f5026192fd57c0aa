package config

import (
	"errors"
	"strings"
	"testing"
)

const (
	defUpstreams = `  - name: docker.io
    url: https://registry-1.docker.io
`
	defTrust = `  - name: k
    keys: [k.pub]
  - name: root
    trusted_root: root.json
`
	defBoundaries = `  - name: all
    signatures:
      authorities:
        - {name: a, key: k}
`
)

// doc assembles a configuration; an empty section takes its default.
func doc(upstreams, trust, boundaries, extra string) string {
	if upstreams == "" {
		upstreams = defUpstreams
	}
	if trust == "" {
		trust = defTrust
	}
	if boundaries == "" {
		boundaries = defBoundaries
	}
	return "upstreams:\n" + upstreams + "trust:\n" + trust + "boundaries:\n" + boundaries + extra
}

// keyless builds a boundary with one keyless authority whose body is kl.
func keyless(kl string) string {
	return `  - name: b
    signatures:
      authorities:
        - name: ci
          keyless: {` + kl + `}
`
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want string // "" means valid
	}{
		// listen, admin, tls
		{"listen not host:port", doc("", "", "", "listen: \"5000\"\n"), `p.yaml:14: listen: "5000" is not host:port`},
		{"listen bad port", doc("", "", "", "listen: \":http\"\n"), `listen: ":http" has an invalid port`},
		{"listen port range", doc("", "", "", "listen: \":70000\"\n"), `listen: ":70000" has an invalid port`},
		{"listen port zero ok", doc("", "", "", "listen: \"127.0.0.1:0\"\n"), ""},
		{"admin bad", doc("", "", "", "admin: localhost\n"), `admin: "localhost" is not host:port`},
		{"tls cert only", doc("", "", "", "tls: {cert: c.pem}\n"), "p.yaml:14: tls: cert and key must both be set"},
		{"tls key only", doc("", "", "", "tls: {key: k.pem}\n"), "tls: cert and key must both be set"},
		{"tls both", doc("", "", "", "tls: {cert: c.pem, key: k.pem}\n"), ""},

		// upstreams
		{"no upstreams", "trust:\n" + defTrust + "boundaries:\n" + defBoundaries, "upstreams: at least one upstream is required"},
		{"upstream name missing", doc("  - url: https://r.example\n", "", "", ""), "p.yaml:2: upstreams[0].name: is required"},
		{"upstream name not a host", doc("  - {name: Docker Hub, url: https://r.example}\n", "", "", ""), `upstreams[0].name: "Docker Hub" must look like a registry host`},
		{"upstream names unique", doc(defUpstreams+"  - {name: docker.io, url: https://b.example}\n", "", "", ""), `p.yaml:4: upstreams[1].name: name "docker.io" already used by upstreams[0]`},
		{"alias used by other upstream", doc(`  - {name: hub, url: https://a.example, aliases: [docker.io]}
  - name: mirror
    url: https://b.example
    aliases:
      - ghcr.io
      - docker.io
`, "", "", ""), `p.yaml:7: upstreams[1].aliases[1]: alias "docker.io" already used by upstreams[0]`},
		{"alias equal to other name", doc(`  - {name: hub, url: https://a.example}
  - {name: b, url: https://b.example, aliases: [hub]}
`, "", "", ""), `upstreams[1].aliases[0]: alias "hub" already used by upstreams[0]`},
		{"alias repeated in one upstream", doc("  - {name: hub, url: https://a.example, aliases: [x.io, x.io]}\n", "", "", ""), `upstreams[0].aliases[1]: alias "x.io" already used by upstreams[0]`},
		{"alias equal to own name ok", doc("  - {name: hub, url: https://a.example, aliases: [hub]}\n", "", "", ""), ""},
		{"alias with scheme", doc("  - {name: hub, url: https://a.example, aliases: [\"https://docker.io\"]}\n", "", "", ""), `upstreams[0].aliases[0]: alias "https://docker.io" must look like a registry host`},
		{"alias with slash", doc("  - {name: hub, url: https://a.example, aliases: [docker.io/library]}\n", "", "", ""), "upstreams[0].aliases[0]: alias"},
		{"alias uppercase", doc("  - {name: hub, url: https://a.example, aliases: [Docker.io]}\n", "", "", ""), "upstreams[0].aliases[0]: alias"},
		{"alias bad port", doc("  - {name: hub, url: https://a.example, aliases: [\"x.io:0\"]}\n", "", "", ""), "upstreams[0].aliases[0]: alias"},
		{"alias with port ok", doc("  - {name: hub, url: https://a.example, aliases: [\"localhost:5000\", \"[::1]:5000\", \"10.0.0.1\"]}\n", "", "", ""), ""},
		{"url missing", doc("  - {name: hub}\n", "", "", ""), "upstreams[0].url: is required"},
		{"url http refused", doc("  - {name: hub, url: \"http://a.example\"}\n", "", "", ""), `upstreams[0].url: "http://a.example" uses plain http; set insecure: true`},
		{"url http insecure ok", doc("  - {name: hub, url: \"http://127.0.0.1:5001\", insecure: true}\n", "", "", ""), ""},
		{"url other scheme", doc("  - {name: hub, url: \"ftp://a.example\"}\n", "", "", ""), "must use https"},
		{"url no scheme", doc("  - {name: hub, url: \"a.example\"}\n", "", "", ""), "must use https"},
		{"url no host", doc("  - {name: hub, url: \"https:///v2\"}\n", "", "", ""), "has no host"},
		{"url path", doc("  - {name: hub, url: \"https://a.example/v2\"}\n", "", "", ""), "must not have a path"},
		{"url slash ok", doc("  - {name: hub, url: \"https://a.example/\"}\n", "", "", ""), ""},
		{"url query", doc("  - {name: hub, url: \"https://a.example?x=1\"}\n", "", "", ""), "must not have a query"},
		{"url userinfo", doc("  - {name: hub, url: \"https://u:secret@a.example\"}\n", "", "", ""), "must not contain credentials"},
		{"url negative timeout", doc("  - {name: hub, url: \"https://a.example\", timeout: -1s}\n", "", "", ""), "upstreams[0].timeout: must not be negative"},
		{"default upstream unknown", doc("", "", "", "default_upstream: quay.io\n"), `p.yaml:14: default_upstream: no upstream is named "quay.io"`},
		{"default upstream ok", doc("", "", "", "default_upstream: docker.io\n"), ""},

		// auth
		{"auth empty", doc("  - {name: hub, url: \"https://a.example\", auth: {}}\n", "", "", ""), "upstreams[0].auth: is empty"},
		{"auth password exclusive", doc("  - {name: hub, url: \"https://a.example\", auth: {username: u, password: p, password_env: P}}\n", "", "", ""), "upstreams[0].auth: password and password_env are exclusive"},
		{"auth username exclusive", doc("  - {name: hub, url: \"https://a.example\", auth: {username: u, username_env: U, password_env: P}}\n", "", "", ""), "username and username_env are exclusive"},
		{"auth password without username", doc("  - {name: hub, url: \"https://a.example\", auth: {password_env: P}}\n", "", "", ""), "a password needs a username"},
		{"auth username without password", doc("  - {name: hub, url: \"https://a.example\", auth: {username: u}}\n", "", "", ""), "a username needs a password"},
		{"auth docker_config exclusive", doc("  - {name: hub, url: \"https://a.example\", auth: {docker_config: c.json, token_env: T}}\n", "", "", ""), "docker_config cannot be combined"},
		{"auth token exclusive with basic", doc("  - {name: hub, url: \"https://a.example\", auth: {token_env: T, username: u, password_env: P}}\n", "", "", ""), "token_env cannot be combined"},
		{"auth bad env name", doc("  - {name: hub, url: \"https://a.example\", auth: {token_env: \"MY-TOKEN\"}}\n", "", "", ""), `upstreams[0].auth.token_env: "MY-TOKEN" is not an environment variable name`},
		{"auth basic ok", doc("  - {name: hub, url: \"https://a.example\", auth: {username_env: U, password_env: P}}\n", "", "", "clients: {anonymous: true}\n"), ""},
		{"auth token ok", doc("  - {name: hub, url: \"https://a.example\", auth: {token_env: T}}\n", "", "", "clients: {anonymous: true}\n"), ""},
		{"auth docker ok", doc("  - {name: hub, url: \"https://a.example\", auth: {docker_config: ~/.docker/config.json}}\n", "", "", "clients: {anonymous: true}\n"), ""},

		// trust
		{"trust names unique", doc("", defTrust+"  - {name: k, keys: [b.pub]}\n", "", ""), `trust[2].name: trust name "k" already used by trust[0]`},
		{"trust name missing", doc("", "  - {keys: [a.pub]}\n", "", ""), "trust[0].name: is required"},
		{"trust both", doc("", "  - {name: k, keys: [a.pub], trusted_root: r.json}\n", "", ""), "trust[0]: set exactly one of keys and trusted_root, not both"},
		{"trust neither", doc("", "  - {name: k}\n", "", ""), "trust[0]: set exactly one of keys and trusted_root"},
		{"trust empty key path", doc("", "  - {name: k, keys: [\"\"]}\n", "", ""), "trust[0].keys[0]: must be a file path"},

		// boundaries
		{"no boundaries", "upstreams:\n" + defUpstreams + "trust:\n" + defTrust, "boundaries: at least one boundary is required"},
		{"no boundaries with insecure-allow", "upstreams:\n" + defUpstreams + "unmatched: insecure-allow\n", ""},
		{"unmatched bad", doc("", "", "", "unmatched: allow\n"), `unmatched: must be "deny" or "insecure-allow", not "allow"`},
		{"boundary names unique", doc("", "", defBoundaries+defBoundaries, ""), `p.yaml:14: boundaries[1].name: boundary name "all" already used by boundaries[0]`},
		{"boundary name missing", doc("", "", "  - signatures: {authorities: [{name: a, key: k}]}\n", ""), "boundaries[0].name: is required"},
		{"match upstream unknown", doc("", "", "  - {name: b, match: {upstream: quay}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), `boundaries[0].match.upstream: no upstream is named "quay"`},
		{"match upstream any", doc("", "", "  - {name: b, match: {upstream: \"*\"}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), ""},
		{"match glob uppercase", doc("", "", "  - {name: b, match: {repositories: [ML/x]}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), `boundaries[0].match.repositories[0]: "ML/x": segments may contain only`},
		{"match glob empty segment", doc("", "", "  - {name: b, match: {repositories: [\"ml//x\"]}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), "empty path segment"},
		{"match glob partial doublestar", doc("", "", "  - {name: b, match: {repositories: [\"ml/a**\"]}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), `"**" must be a whole path segment`},
		{"match glob ok", doc("", "", "  - {name: b, match: {repositories: [\"ml/**\", \"library/*\", \"a/b-*.x_y\"]}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), ""},
		{"match artifact type bad", doc("", "", "  - {name: b, match: {artifact_types: [model]}, signatures: {authorities: [{name: a, key: k}]}}\n", ""), `boundaries[0].match.artifact_types[0]: "model" is not a media type`},
		{"mode bad", doc("", "", "  - {name: b, mode: audit, signatures: {authorities: [{name: a, key: k}]}}\n", ""), `boundaries[0].mode: must be "enforce" or "warn", not "audit"`},
		{"no authorities", doc("", "", "  - {name: b}\n", ""), "p.yaml:10: boundaries[0].signatures.authorities: at least one authority is required"},
		{"empty authorities", doc("", "", "  - {name: b, signatures: {authorities: []}}\n", ""), "boundaries[0].signatures.authorities: at least one authority is required"},
		{"authority names unique", doc("", "", "  - {name: b, signatures: {authorities: [{name: a, key: k}, {name: a, key: k}]}}\n", ""), `boundaries[0].signatures.authorities[1].name: authority name "a" is already used`},
		{"authority name missing", doc("", "", "  - {name: b, signatures: {authorities: [{key: k}]}}\n", ""), "boundaries[0].signatures.authorities[0].name: is required"},
		{"authority neither", doc("", "", "  - {name: b, signatures: {authorities: [{name: a}]}}\n", ""), "boundaries[0].signatures.authorities[0]: set exactly one of key and keyless"},
		{"authority both", doc("", "", "  - {name: b, signatures: {authorities: [{name: a, key: k, keyless: {trust: root, issuer: i, subject: s}}]}}\n", ""), "set exactly one of key and keyless, not both"},
		{"key unknown trust", doc("", "", "  - {name: b, signatures: {authorities: [{name: a, key: nope}]}}\n", ""), `boundaries[0].signatures.authorities[0].key: no trust entry is named "nope"`},
		{"key names a trusted root", doc("", "", "  - {name: b, signatures: {authorities: [{name: a, key: root}]}}\n", ""), `trust entry "root" has no keys`},
		{"threshold too high", doc("", "", "  - {name: b, signatures: {threshold: 2, authorities: [{name: a, key: k}]}}\n", ""), "boundaries[0].signatures.threshold: must be between 1 and the number of authorities (1), not 2"},
		{"threshold negative", doc("", "", "  - {name: b, signatures: {threshold: -1, authorities: [{name: a, key: k}]}}\n", ""), "signatures.threshold: must be between 1"},
		{"threshold two ok", doc("", "", "  - {name: b, signatures: {threshold: 2, authorities: [{name: a, key: k}, {name: c, key: k}]}}\n", ""), ""},

		// keyless
		{"keyless ok", doc("", "", keyless("trust: root, issuer: \"https://i\", subject_regex: \"^x\""), ""), ""},
		{"keyless trust missing", doc("", "", keyless("issuer: i, subject: s"), ""), "boundaries[0].signatures.authorities[0].keyless.trust: is required"},
		{"keyless trust unknown", doc("", "", keyless("trust: nope, issuer: i, subject: s"), ""), `keyless.trust: no trust entry is named "nope"`},
		{"keyless trust has keys", doc("", "", keyless("trust: k, issuer: i, subject: s"), ""), `keyless.trust: trust entry "k" has no trusted_root`},
		{"keyless no issuer", doc("", "", keyless("trust: root, subject: s"), ""), "keyless: one of issuer and issuer_regex is required"},
		{"keyless both issuers", doc("", "", keyless("trust: root, issuer: i, issuer_regex: i, subject: s"), ""), "keyless: issuer and issuer_regex are exclusive"},
		{"keyless no subject", doc("", "", keyless("trust: root, issuer: i"), ""), "keyless: one of subject and subject_regex is required"},
		{"keyless both subjects", doc("", "", keyless("trust: root, issuer: i, subject: s, subject_regex: s"), ""), "keyless: subject and subject_regex are exclusive"},
		{"keyless bad regex", doc("", "", keyless("trust: root, issuer_regex: \"(\", subject: s"), ""), "keyless.issuer_regex: invalid regular expression"},
		{"keyless bad subject regex", doc("", "", keyless("trust: root, issuer: i, subject_regex: \"[a\""), ""), "keyless.subject_regex: invalid regular expression"},
		{"keyless negative tlog", doc("", "", keyless("trust: root, issuer: i, subject: s, tlog_threshold: -1"), ""), "keyless.tlog_threshold: must not be negative"},
		{"keyless no observer", doc("", "", keyless("trust: root, issuer: i, subject: s, tlog_threshold: 0, timestamp_threshold: 0"), ""), "cannot both be 0"},
		{"keyless negative sct", doc("", "", keyless("trust: root, issuer: i, subject: s, sct_threshold: -1"), ""), "sct_threshold: must be at least 1, not -1"},
		{"keyless zero sct", doc("", "", keyless("trust: root, issuer: i, subject: s, sct_threshold: 0"), ""),
			"p.yaml:14: boundaries[0].signatures.authorities[0].keyless.sct_threshold: must be at least 1, not 0; use insecure_skip_sct: true to accept certificates without certificate-transparency proof"},
		{"keyless skip sct", doc("", "", keyless("trust: root, issuer: i, subject: s, insecure_skip_sct: true"), ""), ""},

		// attestations
		{"attestation ok", doc("", "", defBoundaries+`    attestations:
      - {name: prov, predicate_type: "https://slsa.dev/provenance/v1", authorities: [a], max_age: 1h, condition: "true"}
`, ""), ""},
		{"attestation names unique", doc("", "", defBoundaries+`    attestations:
      - {name: prov, predicate_type: "https://slsa.dev/provenance/v1", authorities: [a]}
      - {name: prov, predicate_type: "https://spdx.dev/Document", authorities: [a]}
`, ""), `p.yaml:16: boundaries[0].attestations[1].name: attestation name "prov" is already used`},
		{"attestation predicate relative", doc("", "", defBoundaries+`    attestations:
      - {name: prov, predicate_type: "slsa/provenance", authorities: [a]}
`, ""), `attestations[0].predicate_type: "slsa/provenance" must be an absolute URI`},
		{"attestation predicate missing", doc("", "", defBoundaries+`    attestations:
      - {name: prov, authorities: [a]}
`, ""), `attestations[0].predicate_type: "" must be an absolute URI`},
		{"attestation no authorities", doc("", "", defBoundaries+`    attestations:
      - {name: prov, predicate_type: "https://slsa.dev/provenance/v1"}
`, ""), "attestations[0].authorities: at least one authority is required"},
		{"attestation unknown authority", doc("", "", defBoundaries+`    attestations:
      - {name: prov, predicate_type: "https://slsa.dev/provenance/v1", authorities: [a, zz]}
`, ""), `boundaries[0].attestations[0].authorities[1]: no authority named "zz"`},
		{"attestation negative max_age", doc("", "", defBoundaries+`    attestations:
      - {name: prov, predicate_type: "https://slsa.dev/provenance/v1", authorities: [a], max_age: -1h}
`, ""), "attestations[0].max_age: must not be negative"},

		// lineage
		{"lineage ok", doc("", "", defBoundaries+"    lineage: {depth: 10, require: [\"dataset*\"]}\n", ""), ""},
		{"lineage depth zero", doc("", "", defBoundaries+"    lineage: {require: [\"dataset*\"]}\n", ""), "boundaries[0].lineage.depth: must be between 1 and 10, not 0"},
		{"lineage depth high", doc("", "", defBoundaries+"    lineage: {depth: 11}\n", ""), "lineage.depth: must be between 1 and 10, not 11"},
		{"lineage empty require", doc("", "", defBoundaries+"    lineage: {depth: 1, require: [\"\"]}\n", ""), "boundaries[0].lineage.require[0]: must not be empty"},
		{"lineage bad require glob", doc("", "", defBoundaries+"    lineage: {depth: 1, require: [\"data[\"]}\n", ""), `boundaries[0].lineage.require[0]: invalid glob "data["`},
		{"lineage ignore ok", doc("", "", defBoundaries+"    lineage: {depth: 1, require: [\"dataset*\"], ignore: [\"tokenizer\", \"cache-*\"]}\n", ""), ""},
		{"lineage empty ignore", doc("", "", defBoundaries+"    lineage: {depth: 1, ignore: [\" \"]}\n", ""), "boundaries[0].lineage.ignore[0]: must not be empty"},
		{"lineage bad ignore glob", doc("", "", defBoundaries+"    lineage: {depth: 1, ignore: [\"x\", \"[\"]}\n", ""), `boundaries[0].lineage.ignore[1]: invalid glob "["`},
		{"lineage glob required and ignored", doc("", "", defBoundaries+"    lineage: {depth: 1, require: [\"dataset*\"], ignore: [\"dataset*\"]}\n", ""), `boundaries[0].lineage.ignore[0]: "dataset*" is also in lineage.require`},
		{"lineage ignore unknown key", doc("", "", defBoundaries+"    lineage: {depth: 1, ignored: [x]}\n", ""), "ignored"},
		{"attestation select newest", doc("", "", defBoundaries+`    attestations:
      - {name: scan, predicate_type: "https://example.com/scan/v1", authorities: [a], select: newest}
`, ""), ""},
		{"attestation select any", doc("", "", defBoundaries+`    attestations:
      - {name: scan, predicate_type: "https://example.com/scan/v1", authorities: [a], select: any}
`, ""), ""},
		{"attestation select unknown", doc("", "", defBoundaries+`    attestations:
      - {name: scan, predicate_type: "https://example.com/scan/v1", authorities: [a], select: oldest}
`, ""), `boundaries[0].attestations[0].select: must be "newest" or "any", not "oldest"`},

		// cache, timeouts, log
		{"cache verdicts negative", doc("", "", "", "cache: {verdicts: -1}\n"), "cache.verdicts: must be positive"},
		{"cache manifest negative", doc("", "", "", "cache: {manifest_mib: -1}\n"), "cache.manifest_mib: must be positive"},
		{"cache allow_ttl negative", doc("", "", "", "cache: {allow_ttl: -1s}\n"), "cache.allow_ttl: must be positive"},
		{"cache deny_ttl negative", doc("", "", "", "cache: {deny_ttl: -1s}\n"), "cache.deny_ttl: must be positive"},
		{"cache tag_ttl negative", doc("", "", "", "cache: {tag_ttl: -1s}\n"), "cache.tag_ttl: must not be negative"},
		{"upstream_timeout negative", doc("", "", "", "upstream_timeout: -1s\n"), "upstream_timeout: must be positive"},
		{"verify_timeout negative", doc("", "", "", "verify_timeout: -1s\n"), "verify_timeout: must be positive"},
		{"log level", doc("", "", "", "log: {level: trace}\n"), `log.level: must be one of debug, info, warn, error, not "trace"`},
		{"log format", doc("", "", "", "log: {format: text}\n"), `log.format: must be json or console, not "text"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte(tc.yaml), "p.yaml")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse failed:\n%v", err)
				}
				if err := c.Validate(); err != nil {
					t.Fatalf("accepted config does not re-validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error\n%v\ndoes not contain\n%s", err, tc.want)
			}
		})
	}
}

func TestValidateCollectsEverything(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte(`listen: nope
upstreams:
  - {name: a, url: "http://a.example"}
  - {name: a, url: "https://b.example"}
boundaries:
  - {name: b}
cache: {verdicts: -5}
`), "p.yaml")
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse = %v, want *ValidationError", err)
	}
	want := []string{
		`p.yaml:1: listen: "nope" is not host:port`,
		`p.yaml:3: upstreams[0].url: "http://a.example" uses plain http`,
		`p.yaml:4: upstreams[1].name: name "a" already used by upstreams[0]`,
		`p.yaml:6: boundaries[0].signatures.authorities: at least one authority is required`,
		`p.yaml:7: cache.verdicts: must be positive`,
	}
	if len(ve.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ve.Problems), len(want), err)
	}
	for i, w := range want {
		if got := ve.Problems[i].Error(); !strings.HasPrefix(got, w) {
			t.Errorf("problem %d = %q, want prefix %q", i, got, w)
		}
	}
	// Each problem is reachable through errors.As for callers that want
	// the structured form.
	var p Problem
	if !errors.As(err, &p) || p.Path != "listen" || p.Line != 1 {
		t.Errorf("errors.As(Problem) = %+v", p)
	}
}

func TestValidateProgrammatic(t *testing.T) {
	t.Parallel()
	c := &Config{
		Upstreams:  []Upstream{{Name: "r.example", URL: "https://r.example"}},
		Trust:      []Trust{{Name: "k", Keys: []string{"k.pub"}}},
		Boundaries: []Boundary{{Name: "b", Signatures: Signatures{Authorities: []Authority{{Name: "a", Key: "k"}}}}},
	}
	if err := c.Validate(); err == nil {
		t.Fatal("Validate without defaults succeeded; zero listen and cache sizes must be refused")
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate after SetDefaults: %v", err)
	}
	if c.Admin != DefaultAdmin {
		t.Errorf("Admin = %q", c.Admin)
	}
	c.Boundaries[0].Signatures.Authorities = nil
	if err := c.Validate(); err == nil || err.Error() != "boundaries[0].signatures.authorities: at least one authority is required" {
		t.Errorf("Validate = %v", err)
	}
}

func TestLineageIgnoreWarning(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", defBoundaries+"    lineage: {depth: 2, require: [\"dataset*\"], ignore: [\"tokenizer\", \"cache-*\"]}\n", "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings(), "\n")
	if !strings.Contains(w, `boundary "all": lineage.ignore tokenizer, cache-*: OCI inputs with these names are not verified`) {
		t.Errorf("warnings\n%s\nlack the ignored lineage inputs", w)
	}
	c, err = Parse([]byte(doc("", "", defBoundaries+"    lineage: {depth: 2, require: [\"dataset*\"]}\n", "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("a lineage rule without ignore warns: %q", w)
	}
}

func TestWarnings(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(`upstreams:
  - {name: lab, url: "http://127.0.0.1:5001", insecure: true}
  - {name: hub, url: "https://h.example", auth: {username: u, password: hunter2}}
trust: [{name: k, keys: [k.pub]}, {name: root, trusted_root: root.json}]
boundaries:
  - {name: w, mode: warn, signatures: {authorities: [{name: a, key: k}, {name: nosct, keyless: {trust: root, issuer: i, subject: s, insecure_skip_sct: true}}]}}
  - {name: e, signatures: {authorities: [{name: a, key: k}]}}
unmatched: insecure-allow
insecure_disable_blob_gating: true
clients: {anonymous: true}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings(), "\n")
	for _, s := range []string{`upstream "lab": insecure: true`, `upstream "hub": auth.password`, "unmatched: insecure-allow", "insecure_disable_blob_gating", `boundary "w": mode warn`, `authority "nosct": insecure_skip_sct: true`} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings\n%s\nlack %q", w, s)
		}
	}
	if strings.Contains(w, `boundary "e"`) || strings.Contains(w, "hunter2") {
		t.Errorf("warnings mention an enforcing boundary or a secret:\n%s", w)
	}
	if n := len(c.Warnings()); n != 6 {
		t.Errorf("got %d warnings, want 6", n)
	}
}

// An identity regex that is not anchored at both ends accepts identities
// that merely contain a match, e.g. a repository whose name starts with
// the expected one.
func TestIdentityRegexWarnings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr     string
		anchored bool
	}{
		{`^https://github\.com/acme/app/\.github/workflows/release\.yml@refs/heads/main$`, true},
		{`\Ahttps://github\.com/acme/.+\z`, true},
		{`^https://github\.com/acme/(app|lib)/.+$`, true},
		{`(^a$)|^b$`, true},
		{`^(?:a|b)$`, true},
		{`^https://github\.com/acme/`, false},
		{`https://github\.com/acme/app$`, false},
		{`github\.com/acme`, false},
		{`^a$|b`, false},
		{`^a|b$`, false},
		{`(?m)^a$`, false},
		{`^a\$`, false},
		{``, false},
	}
	for _, tc := range tests {
		if got := anchored(tc.expr); got != tc.anchored {
			t.Errorf("anchored(%q) = %v, want %v", tc.expr, got, tc.anchored)
		}
	}

	c, err := Parse([]byte(doc("", "", keyless(`trust: root, issuer_regex: "^https://token\\.actions\\.githubusercontent\\.com$", subject_regex: "^https://github\\.com/acme/"`), "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w := c.Warnings()
	if len(w) != 1 || w[0] != `boundary "b" authority "ci": subject_regex "^https://github\\.com/acme/" is not anchored as ^…$: it also accepts identities that only contain a match` {
		t.Errorf("warnings = %q, want one for the unanchored subject_regex", w)
	}
	c, err = Parse([]byte(doc("", "", keyless(`trust: root, issuer_regex: "token\\.actions", subject: s`), "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], `issuer_regex "token\\.actions" is not anchored`) {
		t.Errorf("warnings = %q, want one for the unanchored issuer_regex", w)
	}
}
