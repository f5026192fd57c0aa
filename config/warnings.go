package config

import "fmt"

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
		for _, a := range b.Signatures.Authorities {
			if a.Keyless != nil && a.Keyless.SCTThreshold != nil && *a.Keyless.SCTThreshold == 0 {
				w = append(w, fmt.Sprintf("boundary %q authority %q: sct_threshold 0: certificates are accepted without certificate-transparency proof", b.Name, a.Name))
			}
		}
	}
	return w
}
