package main

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// maxCAFileBytes bounds the client CA bundle read.
const maxCAFileBytes = 4 << 20

// withClientAuth appends to opts the options that authenticate the
// registry and admin listeners' clients as cfg says. It reads the
// credential files, so a bad hash scheme or cost fails here, at start or
// in `config check` (logger nil: nothing is logged).
func withClientAuth(cfg *config.Config, logger *zap.Logger, opts []proxy.Option) ([]proxy.Option, error) {
	auth, admin, err := buildClientAuth(cfg, logger)
	if err != nil {
		return nil, err
	}
	if admin != nil {
		opts = append(opts, proxy.WithAdminTokens(admin))
	}
	if auth != nil {
		opts = append(opts, proxy.WithClientAuth(auth))
	}
	return opts, nil
}

// buildClientAuth reads what withClientAuth configures; a reload applies
// it with Proxy.SetClientAuth.
func buildClientAuth(cfg *config.Config, logger *zap.Logger) (*proxy.ClientAuth, []proxy.TokenHash, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	var admin []proxy.TokenHash
	if a := cfg.AdminAuth; a != nil {
		tokens, err := readTokens(cfg.Resolve(a.Tokens))
		if err != nil {
			return nil, nil, fmt.Errorf("admin_auth.tokens: %w", err)
		}
		if len(tokens) == 0 {
			return nil, nil, errors.New("admin_auth.tokens: no tokens")
		}
		admin = tokens
		logger.Info("admin listener requires a bearer token", zap.Int("tokens", len(tokens)))
	}
	cl := cfg.Clients
	if cl == nil {
		return nil, admin, nil
	}
	ac := proxy.ClientAuthConfig{
		Anonymous:          cl.Anonymous,
		BcryptMinCost:      cl.BcryptMinCost,
		BcryptMaxCost:      cl.BcryptMaxCost,
		CredentialCacheTTL: cl.CredentialCacheTTL.D(),
		PasswordChecks:     cl.PasswordChecks,
	}
	var err error
	if cl.Htpasswd != "" {
		if ac.Users, err = readHtpasswd(cfg.Resolve(cl.Htpasswd)); err != nil {
			return nil, nil, fmt.Errorf("clients.htpasswd: %w", err)
		}
	}
	if cl.Tokens != "" {
		if ac.Tokens, err = readTokens(cfg.Resolve(cl.Tokens)); err != nil {
			return nil, nil, fmt.Errorf("clients.tokens: %w", err)
		}
	}
	if cl.MTLS != nil {
		if ac.ClientCAs, err = readCAs(cfg.Resolve(cl.MTLS.CA)); err != nil {
			return nil, nil, fmt.Errorf("clients.mtls.ca: %w", err)
		}
		ac.RequireClientCert = cl.MTLS.Required
	}
	for _, a := range cl.Access {
		g := proxy.Grant{Clients: a.Clients, Upstreams: a.Upstreams, Repositories: a.Repositories}
		if c := a.Certificates; c != nil {
			g.DNS, g.URI, g.Email = c.DNS, c.URI, c.Email
		}
		ac.Grants = append(ac.Grants, g)
	}
	auth, err := proxy.NewClientAuth(ac)
	if err != nil {
		return nil, nil, fmt.Errorf("clients: %w", err)
	}
	logger.Info("client authentication", zap.Bool("anonymous", cl.Anonymous), zap.Int("users", len(ac.Users)),
		zap.Int("tokens", len(ac.Tokens)), zap.Bool("mtls", ac.ClientCAs != nil), zap.Int("access", len(ac.Grants)))
	if cfg.TLS == nil && (len(ac.Users) > 0 || len(ac.Tokens) > 0) {
		logger.Warn("client passwords and tokens cross the network in the clear: the registry listener has no tls (fine only behind a TLS-terminating proxy)")
	}
	return auth, admin, nil
}

func readHtpasswd(p string) (map[string][]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return proxy.ParseHtpasswd(f)
}

func readTokens(p string) ([]proxy.TokenHash, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return proxy.ParseTokenFile(f)
}

func readCAs(p string) (*x509.CertPool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCAFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCAFileBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxCAFileBytes)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

const tokenUsage = `usage: portcullis token hash < TOKEN
       portcullis token htpasswd USER < PASSWORD
  hash prints the token file digest of the token read from stdin: put
  "NAME:<digest>" in clients.tokens or admin_auth.tokens. htpasswd prints
  the htpasswd line (bcrypt, cost config.DefaultBcryptMinCost) of USER
  for clients.htpasswd. One line is read; its newline is not part of the
  secret.
`

// runToken implements `portcullis token`. Secrets are read from stdin,
// never from the command line, where other users see them.
func runToken(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	usageErr := func() int { fmt.Fprint(stderr, tokenUsage); return 2 }
	if wantsHelp(args) {
		fmt.Fprint(stdout, tokenUsage)
		return 0
	}
	if len(args) == 0 {
		return usageErr()
	}
	switch {
	case args[0] == "hash" && len(args) == 1:
	case args[0] == "htpasswd" && len(args) == 2:
		if !proxy.ValidClientName(args[1]) {
			fmt.Fprintf(stderr, "portcullis token: %q is not a user name\n", args[1])
			return 2
		}
	default:
		return usageErr()
	}
	line, err := bufio.NewReader(io.LimitReader(stdin, 64<<10)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(stderr, "portcullis token:", err)
		return 1
	}
	secret := strings.TrimRight(line, "\r\n")
	if secret == "" {
		fmt.Fprintln(stderr, "portcullis token: nothing on stdin")
		return 2
	}
	if args[0] == "hash" {
		fmt.Fprintln(stdout, proxy.HashToken(secret))
		return 0
	}
	h, err := bcrypt.GenerateFromPassword([]byte(secret), config.DefaultBcryptMinCost)
	if err != nil {
		// bcrypt refuses passwords longer than 72 bytes.
		fmt.Fprintln(stderr, "portcullis token:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s:%s\n", args[1], h)
	return 0
}

// throwawayTokenLine is a token file line for a random token that is not
// kept: it lets the example configuration load while admitting no one.
func throwawayTokenLine(name string) []byte {
	return []byte(name + ":" + proxy.HashToken(rand.Text()) + "\n")
}
