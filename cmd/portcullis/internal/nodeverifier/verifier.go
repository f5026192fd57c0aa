package nodeverifier

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"unicode"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// Exit statuses. containerd accepts a pull on 0 only.
const (
	ExitAccept = 0
	// ExitReject: the proxy denied the digest, or no verdict could be had.
	ExitReject = 1
	// ExitUsage: bad arguments or settings; the pull is rejected too.
	ExitUsage = 2
)

// descriptorMediaType is the only stdin containerd sends today.
const descriptorMediaType = "application/vnd.oci.descriptor.v1+json"

// HTTP statuses of the verdict API; HTTP itself stays in package proxy.
const (
	statusOK           = 200
	statusBadRequest   = 400
	statusUnauthorized = 401
	statusForbidden    = 403
)

const (
	maxStdinBytes  = 1 << 20
	maxReasonBytes = 4096
)

var (
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	// nameRE is what a normalised image name may hold once its tag and
	// digest are cut off; the proxy applies the full grammar.
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._:/-]*$`)
)

// Usage is the command's help text.
const Usage = `Usage (run by containerd's image verifier plugin, not by hand):
  portcullis node-verifier [--config FILE] -name REF -digest DIGEST -stdin-media-type TYPE

Asks the Portcullis admin API (GET /v1/verdicts/<registry>/<repository>@<digest>)
for the verdict of the image containerd is about to pull. The reason is
printed on stdout. Exit status: 0 accept (allow or warn; or, with fail_open,
a proxy that cannot be reached), 1 reject (deny, or no verdict), 2 reject
(bad arguments or settings; also --help, since 0 would accept a pull).

Settings: --config FILE, else $PORTCULLIS_NODE_VERIFIER_CONFIG, else
/etc/portcullis/node-verifier.yaml:
  admin_url: https://portcullis-admin.internal:9090   # required
  token_file: /etc/portcullis/node-verifier.token     # admin token, one line
  ca_file: ""                 # PEM roots for the admin listener; "" = system roots
  timeout: 8s                 # keep below containerd's per_verifier_timeout (10s)
  max_response_bytes: 65536   # larger answers are rejected
  fail_open: false            # true: accept, loudly, while the proxy cannot be reached
  insecure_plain_http: false  # allow http:// to a non-loopback admin_url
`

// Main implements "portcullis node-verifier". getenv is os.Getenv in the
// binary.
func Main(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node-verifier", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	configPath := fs.String("config", "", "")
	name := fs.String("name", "", "")
	digest := fs.String("digest", "", "")
	stdinType := fs.String("stdin-media-type", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// Not 0, unlike other commands' help: 0 would accept a pull.
			fmt.Fprint(stdout, Usage)
			return ExitUsage
		}
		return reject(stdout, ExitUsage, "bad arguments: %v", err)
	}
	if fs.NArg() > 0 {
		return reject(stdout, ExitUsage, "unexpected arguments %q", fs.Args())
	}
	path := *configPath
	if path == "" {
		path = getenv(ConfigEnv)
	}
	if path == "" {
		path = DefaultConfigPath
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		return reject(stdout, ExitUsage, "node-verifier settings: %v", err)
	}
	q, err := newQuestion(*name, *digest, *stdinType, stdin)
	if err != nil {
		return reject(stdout, ExitUsage, "%v", err)
	}
	return ask(context.Background(), cfg, q, stdout, stderr)
}

// question is what containerd asks about.
type question struct {
	name, host, repo, digest string
}

func newQuestion(name, digest, stdinType string, stdin io.Reader) (question, error) {
	if name == "" || digest == "" {
		return question{}, errors.New("-name and -digest are required")
	}
	if !digestRE.MatchString(digest) {
		return question{}, fmt.Errorf("digest %q: only sha256:<64 hex> is accepted", clean(digest, 100))
	}
	// The descriptor containerd writes must be about the digest it names:
	// two answers to "what is pulled" that disagree reject the pull.
	if stdinType != descriptorMediaType {
		return question{}, fmt.Errorf("unsupported -stdin-media-type %q: want %s", clean(stdinType, 100), descriptorMediaType)
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxStdinBytes+1))
	if err != nil {
		return question{}, fmt.Errorf("failed to read the descriptor on stdin: %w", err)
	}
	if len(b) > maxStdinBytes {
		return question{}, fmt.Errorf("descriptor on stdin larger than %d bytes", maxStdinBytes)
	}
	var desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	if err := json.Unmarshal(b, &desc); err != nil {
		return question{}, fmt.Errorf("descriptor on stdin: %w", err)
	}
	if desc.Digest != digest {
		return question{}, fmt.Errorf("descriptor on stdin is about %q, not -digest %s", clean(desc.Digest, 100), digest)
	}
	host, repo, err := splitName(name)
	if err != nil {
		return question{}, err
	}
	return question{name: name, host: host, repo: repo, digest: digest}, nil
}

// splitName turns containerd's image name (host/repository[:tag][@digest],
// or a Docker Hub short name) into the registry host and repository the
// verdict API takes. Docker Hub names are normalised as containerd and the
// mirror path normalise them; library/ is added by the proxy.
func splitName(name string) (host, repo string, err error) {
	n := name
	if i := strings.IndexByte(n, '@'); i >= 0 {
		n = n[:i]
	}
	if i := strings.LastIndexByte(n, ':'); i >= 0 && i > strings.LastIndexByte(n, '/') {
		n = n[:i]
	}
	first, rest, ok := strings.Cut(n, "/")
	if !ok || !(strings.ContainsAny(first, ".:") || first == "localhost") {
		first, rest = "docker.io", n
	}
	host = strings.ToLower(first)
	if host == "index.docker.io" || host == "registry-1.docker.io" {
		host = "docker.io"
	}
	if rest == "" || !nameRE.MatchString(host) || !nameRE.MatchString(rest) || strings.Contains(rest, ":") ||
		strings.Contains(host, "/") || strings.Contains(n, "..") || strings.Contains(n, "//") || strings.HasSuffix(rest, "/") {
		return "", "", fmt.Errorf("image name %q: not a registry/repository name", clean(name, 300))
	}
	return host, rest, nil
}

func ask(ctx context.Context, cfg *Config, q question, stdout, stderr io.Writer) int {
	var (
		token string
		roots []byte
		err   error
	)
	if cfg.TokenFile != "" {
		if token, err = readToken(cfg.TokenFile); err != nil {
			return reject(stdout, ExitUsage, "%v", err)
		}
	}
	if cfg.CAFile != "" {
		if roots, err = config.ReadLimited(cfg.CAFile, maxCABytes); err != nil {
			return reject(stdout, ExitUsage, "ca_file: %v", err)
		}
	}
	client, err := proxy.NewVerdictClient(proxy.VerdictClientOptions{
		AdminURL: cfg.AdminURL, Token: token, RootCAsPEM: roots,
		Timeout: cfg.timeout, MaxResponseBytes: cfg.MaxResponseBytes,
	})
	if err != nil {
		return reject(stdout, ExitUsage, "%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	status, a, err := client.Ask(ctx, q.host, q.repo, q.digest)
	admin := client.AdminURL()
	if err != nil {
		// Errors name the URL, never the header that carries the token.
		fmt.Fprintf(stderr, "portcullis node-verifier: %s: %v\n", q.name, err)
		var ue *proxy.UnreachableError
		switch {
		case errors.As(err, &ue) && cfg.FailOpen:
			fmt.Fprintf(stdout, "portcullis: ACCEPTED WITHOUT VERIFICATION (fail_open: true): the Portcullis admin API at %s cannot be reached: %s\n",
				admin, clean(ue.Err.Error(), maxReasonBytes))
			return ExitAccept
		case errors.As(err, &ue):
			return reject(stdout, ExitReject, "the Portcullis admin API at %s cannot be reached (fail closed): %s", admin, ue.Err.Error())
		case errors.Is(err, proxy.ErrVerdictTooLarge):
			return reject(stdout, ExitReject, "the Portcullis answer is larger than max_response_bytes (%d)", cfg.MaxResponseBytes)
		case status != 0:
			return reject(stdout, ExitReject, "unusable answer from the Portcullis admin API (status %d): %v", status, err)
		default:
			return reject(stdout, ExitReject, "no verdict from the Portcullis admin API at %s: %s", admin, err.Error())
		}
	}
	reason := clean(a.Reason, maxReasonBytes)
	switch {
	case status == statusUnauthorized:
		return reject(stdout, ExitReject, "the Portcullis admin API refused the token (401): check token_file")
	case status != statusOK && status != statusForbidden && status != statusBadRequest:
		return reject(stdout, ExitReject, "unexpected answer from the Portcullis admin API: status %d", status)
	case status == statusOK && (a.Decision == proxy.VerdictAllow || a.Decision == proxy.VerdictWarn) && a.Digest == q.digest:
		fmt.Fprintf(stdout, "portcullis: %s %s: %s\n", a.Decision, q.digest, reason)
		return ExitAccept
	case status != statusOK && a.Decision == proxy.VerdictDeny:
		return reject(stdout, ExitReject, "denied %s: %s", q.digest, reason)
	case a.Digest != q.digest:
		return reject(stdout, ExitReject, "the Portcullis answer is about %q, not %s", clean(a.Digest, 100), q.digest)
	default:
		return reject(stdout, ExitReject, "inconsistent answer from the Portcullis admin API: status %d, decision %q", status, clean(a.Decision, 20))
	}
}

func reject(stdout io.Writer, code int, format string, args ...any) int {
	fmt.Fprintf(stdout, "portcullis: rejected: %s\n", clean(fmt.Sprintf(format, args...), maxReasonBytes))
	return code
}

// clean makes s one printable line of at most n bytes: a reason from the
// proxy or an argument from containerd ends up in logs and terminals.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}
