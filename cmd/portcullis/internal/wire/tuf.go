package wire

import (
	"errors"
	"fmt"
	"strings"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/tufroot"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
)

// TrustedRoots holds the trusted roots kept through TUF. It is one per
// process because every command compiles the policy through Policy, which
// takes only the configuration; a reload finds the roots already there.
var TrustedRoots = tufroot.NewRegistry(nil)

// maxTUFRootBytes bounds the pinned root.json (go-tuf's own limit for a
// root).
const maxTUFRootBytes = 512_000

// tufFileKey names a TUF-kept root among the trust files of the
// fingerprint: its identity changes when the root rotates or stops being
// usable, so that verdicts decided under the old one are not reused.
func tufFileKey(trust string) string { return "tuf:" + trust }

// loadTUF gives a trust entry the root its TUF repository vouches for
// now. A root that cannot be had is not an error here: the entry's
// keyless authorities then trust nothing, and the boundaries that
// cannot decide without them deny with the reason (refuseWithoutRoot).
func (l *loader) loadTUF(t config.Trust) error {
	b, err := l.read(t.TUF.Root, maxTUFRootBytes)
	if err != nil {
		return fmt.Errorf("trust %s: trusted_root.tuf.root: %w", t.Name, err)
	}
	if err := tufroot.CheckRoot(b); err != nil {
		return fmt.Errorf("trust %s: trusted_root.tuf.root %s: %w", t.Name, t.TUF.Root, err)
	}
	src := TrustedRoots.Open(tufroot.Spec{
		Trust: t.Name, URL: t.TUF.URL, Root: b,
		CacheDir: l.cfg.TUFCacheDir(t.Name, t.TUF),
		Refresh:  t.TUF.Refresh.D(), Timeout: t.TUF.Timeout.D(),
		MaxHeaderBytes: l.cfg.Limits.UpstreamHeaderBytes.Int64(),
	})
	tm, id, err := src.Material()
	l.roots[t.Name] = tm
	l.files[tufFileKey(t.Name)] = id
	if err != nil {
		if l.unavailable == nil {
			l.unavailable = map[string]tufUnavailable{}
		}
		u := tufUnavailable{summary: err.Error(), detail: err.Error()}
		var ue *tufroot.Unavailable
		if errors.As(err, &ue) {
			u.summary = ue.Summary
		}
		l.unavailable[t.Name] = u
	}
	return nil
}

// tufUnavailable is why a trust entry has no usable root: summary for the
// denial clients read, detail (repository, failure) for the operator.
type tufUnavailable struct{ summary, detail string }

// refuseWithoutRoot makes an enforcing boundary deny, naming the trust
// entry and why, when the authorities whose trusted root is unavailable
// leave it fewer than its threshold. Those authorities verify nothing
// either way; this only puts the reason in the denial. A boundary that
// can still reach its threshold keeps working with the rest, and a warn
// boundary keeps serving (its would-deny names the failed verification).
func (l *loader) refuseWithoutRoot(vb *verify.Boundary) {
	if len(l.unavailable) == 0 || vb.Mode != verify.ModeEnforce {
		return
	}
	usable := 0
	var why, detail []string
	seen := map[string]bool{}
	for _, a := range vb.Authorities {
		if a.Keyless != nil {
			if u, bad := l.unavailable[a.Keyless.TrustName]; bad {
				if !seen[a.Keyless.TrustName] {
					seen[a.Keyless.TrustName] = true
					why = append(why, fmt.Sprintf("trust %q: %s", a.Keyless.TrustName, u.summary))
					detail = append(detail, fmt.Sprintf("trust %q: %s", a.Keyless.TrustName, u.detail))
				}
				continue
			}
		}
		usable++
	}
	if len(why) > 0 && usable < vb.Threshold {
		// Clients read Refused in the denial; the repository and the
		// failure are for the operator (logs, admin API).
		vb.Refused = strings.Join(why, "; ") + "; keyless signatures under it cannot be verified, so this boundary denies"
		vb.Problems = append(vb.Problems, detail...)
	}
}
