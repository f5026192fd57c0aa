package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/verify"
)

// Exit codes of `portcullis verify`.
const (
	exitAllowed   = 0
	exitDenied    = 1
	exitUndecided = 2
)

func runVerify(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (required)")
	asJSON := fs.Bool("json", false, "print the verdict as JSON")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return exitUndecided
	}
	if *cfgPath == "" || len(rest) != 1 {
		fmt.Fprintln(stderr, "usage: portcullis verify REGISTRY/REPOSITORY[:TAG|@DIGEST] --config FILE [--json]")
		return exitUndecided
	}
	ref := rest[0]
	cfg, eng, err := loadAll(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUndecided
	}
	p, err := newProxy(cfg, eng, zap.NewNop())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUndecided
	}
	v, err := p.Explain(context.Background(), ref)
	if err != nil {
		fmt.Fprintf(stderr, "%s: could not decide (fail closed): %v\n", ref, err)
		return exitUndecided
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	} else {
		printVerdict(stdout, ref, v)
	}
	if v.Allowed {
		return exitAllowed
	}
	return exitDenied
}

func printVerdict(w io.Writer, ref string, v verify.Verdict) {
	decision := "DENIED"
	switch {
	case v.Allowed:
		decision = "ALLOWED"
	case v.Served():
		decision = "DENIED (warn mode: would be served)"
	}
	fmt.Fprintf(w, "%s\n  digest:   %s\n  boundary: %s (mode %s)\n  verdict:  %s\n", ref, v.Digest, orDefault(v.Boundary, "(none)"), orDefault(string(v.Mode), "enforce"), decision)
	for _, s := range v.Signers {
		who := s.Key
		if s.Kind == "keyless" || s.Kind == "notation" {
			who = s.Identity + " (issuer " + s.Issuer + ")"
		}
		fmt.Fprintf(w, "  signed:   authority %q, %s %s via %s\n", s.Authority, s.Kind, who, s.Evidence)
	}
	for _, a := range v.Attestations {
		when := ""
		if !a.Time.IsZero() {
			when = ", " + a.Time.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "  attested: rule %q: %s by authority %q%s\n", a.Rule, orDefault(a.Name, a.PredicateType), a.Signer.Authority, when)
	}
	if v.Artifact != "" {
		fmt.Fprintf(w, "  artifact: %s\n", v.Artifact)
	}
	for _, r := range v.Reasons {
		fmt.Fprintf(w, "  reason:   %s\n", r)
	}
	printLineage(w, v.Lineage, 1)
}

func printLineage(w io.Writer, deps []verify.Dependency, depth int) {
	for _, d := range deps {
		state := "not followed"
		if d.Verdict != nil {
			state = "denied"
			if d.Verdict.Allowed {
				state = "allowed"
			}
		}
		fmt.Fprintf(w, "  %s└─ %s %s: %s\n", strings.Repeat("   ", depth-1), d.Name, d.URI, state)
		if d.Verdict != nil {
			for _, r := range d.Verdict.Reasons {
				fmt.Fprintf(w, "  %s   reason: %s\n", strings.Repeat("   ", depth-1), r)
			}
			printLineage(w, d.Verdict.Lineage, depth+1)
		}
	}
}
