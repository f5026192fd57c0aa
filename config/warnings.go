package config

import (
	"fmt"
	"regexp/syntax"
	"strings"
)

// Warnings lists the escape hatches in effect, each of which weakens what
// the proxy guarantees. The command logs them at start so that none of them
// is silent.
func (c *Config) Warnings() []string {
	var w []string
	for _, u := range c.Upstreams {
		if u.Insecure {
			w = append(w, fmt.Sprintf("upstream %q: insecure: true: plain HTTP or unverified TLS to %s", u.Name, u.URL))
		}
		if u.Auth != nil && u.Auth.Password != "" {
			w = append(w, fmt.Sprintf("upstream %q: auth.password is stored in the configuration file; prefer password_env", u.Name))
		}
	}
	for _, a := range c.Alerts {
		if a.Insecure {
			w = append(w, fmt.Sprintf("alert %q: insecure: true: events (and headers) may be sent over plain HTTP", a.Name))
		}
	}
	if c.Tracing != nil && c.Tracing.Insecure {
		w = append(w, fmt.Sprintf("tracing: insecure: true: spans (repository names, digests, reasons) may be sent over plain HTTP to %s", c.Tracing.OTLPEndpoint))
	}
	if c.Unmatched == UnmatchedInsecureAllow {
		w = append(w, "unmatched: insecure-allow: repositories no boundary matches are served without verification")
	}
	if c.InsecureDisableBlobGating {
		w = append(w, "insecure_disable_blob_gating: true: blobs are served without an allowed manifest referencing them")
	}
	for _, b := range c.Boundaries {
		if b.Mode == ModeWarn {
			w = append(w, fmt.Sprintf("boundary %q: mode warn: content that fails verification is served (the denial is only logged)", b.Name))
		}
		if b.Lineage != nil && len(b.Lineage.Ignore) > 0 {
			w = append(w, fmt.Sprintf("boundary %q: lineage.ignore %s: OCI inputs with these names are not verified (each is named in the verdict)", b.Name, strings.Join(b.Lineage.Ignore, ", ")))
		}
		for _, a := range b.Signatures.Authorities {
			k := a.Keyless
			if k == nil {
				continue
			}
			if k.InsecureSkipSCT {
				w = append(w, fmt.Sprintf("boundary %q authority %q: insecure_skip_sct: true: certificates are accepted without certificate-transparency proof", b.Name, a.Name))
			}
			for _, re := range [...]struct{ key, expr string }{{"issuer_regex", k.IssuerRegex}, {"subject_regex", k.SubjectRegex}} {
				if re.expr != "" && !anchored(re.expr) {
					w = append(w, fmt.Sprintf("boundary %q authority %q: %s %q is not anchored as ^…$: it also accepts identities that only contain a match", b.Name, a.Name, re.key, re.expr))
				}
			}
		}
	}
	return w
}

// anchored reports whether every match of expr spans the whole input: in
// each alternative the expression starts with ^ (or \A) and ends with $
// (or \z). Multi-line ^ and $ match at line breaks, so they do not count.
func anchored(expr string) bool {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return false
	}
	return wholeText(re)
}

func wholeText(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpCapture:
		return wholeText(re.Sub[0])
	case syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !wholeText(sub) {
				return false
			}
		}
		return true
	case syntax.OpConcat:
		n := len(re.Sub)
		return n >= 2 && re.Sub[0].Op == syntax.OpBeginText && re.Sub[n-1].Op == syntax.OpEndText
	}
	return false
}
