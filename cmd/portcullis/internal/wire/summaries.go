package wire

import (
	"fmt"
	"os"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/verify/summary"
)

// Summaries loads the summary signing key and returns the proxy option
// that signs and serves verification summaries, and the signer (for its
// public key); nil and nil when the configuration has no summaries
// section.
func Summaries(cfg *config.Config) (proxy.Option, *summary.Signer, error) {
	return summaries(cfg, os.LookupEnv)
}

func summaries(cfg *config.Config, env lookupEnv) (proxy.Option, *summary.Signer, error) {
	sc := cfg.Summaries
	if sc == nil {
		return nil, nil, nil
	}
	path := cfg.Resolve(sc.Key)
	pemBytes, err := readFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("summaries.key: %w", err)
	}
	var password func() ([]byte, error)
	if sc.PasswordEnv != "" {
		// Read once at start, like every other secret; an empty value
		// is a valid password for a cosign key.
		v, ok := env(sc.PasswordEnv)
		if !ok {
			return nil, nil, fmt.Errorf("summaries.password_env: environment variable %s is not set", sc.PasswordEnv)
		}
		password = func() ([]byte, error) { return []byte(v), nil }
	}
	key, err := summary.LoadPrivateKey(pemBytes, password)
	if err != nil {
		return nil, nil, fmt.Errorf("summaries.key %s: %w", path, err)
	}
	var opts []summary.Option
	if sc.VerifierID != "" {
		opts = append(opts, summary.WithVerifierID(sc.VerifierID))
	}
	if sc.PolicyURI != "" {
		opts = append(opts, summary.WithPolicyURI(sc.PolicyURI))
	}
	s, err := summary.NewSigner(key, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("summaries: %w", err)
	}
	return proxy.WithSummaries(s, sc.CacheSize), s, nil
}
