package wire

import (
	"crypto/elliptic"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

func TestSummaries(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	plain, pub, err := cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cosignKey, cosignPub, err := cryptoutils.GeneratePEMEncodedECDSAKeyPair(elliptic.P256(), func(bool) ([]byte, error) { return []byte(secretValue), nil })
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "plain.key", plain)
	writeFile(t, dir, "cosign.key", cosignKey)
	cfgWith := func(s *config.Summaries) *config.Config {
		return &config.Config{Path: filepath.Join(dir, "portcullis.yaml"), Summaries: s}
	}

	if o, s, err := summaries(cfgWith(nil), envMap(nil)); o != nil || s != nil || err != nil {
		t.Errorf("without summaries: %v %v %v", o, s, err)
	}
	for name, tc := range map[string]struct {
		s   config.Summaries
		env map[string]string
		pub []byte
	}{
		"pkcs8":                  {config.Summaries{Key: "plain.key"}, nil, pub},
		"cosign key":             {config.Summaries{Key: "cosign.key", PasswordEnv: "KEY_PW"}, map[string]string{"KEY_PW": secretValue}, cosignPub},
		"options passed through": {config.Summaries{Key: "plain.key", VerifierID: "https://x.example", PolicyURI: "urn:x", CacheSize: 3}, nil, pub},
	} {
		o, s, err := summaries(cfgWith(&tc.s), envMap(tc.env))
		if err != nil || o == nil || s == nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got, _ := s.PublicKeyPEM(); string(got) != string(tc.pub) {
			t.Errorf("%s: public key %s, want %s", name, got, tc.pub)
		}
	}
	for name, tc := range map[string]struct {
		s    config.Summaries
		env  map[string]string
		want string
	}{
		"missing file":        {config.Summaries{Key: "nope.key"}, nil, "summaries.key"},
		"password env unset":  {config.Summaries{Key: "cosign.key", PasswordEnv: "KEY_PW"}, nil, "KEY_PW is not set"},
		"wrong password":      {config.Summaries{Key: "cosign.key", PasswordEnv: "KEY_PW"}, map[string]string{"KEY_PW": "wrong"}, "summaries.key"},
		"encrypted, no env":   {config.Summaries{Key: "cosign.key"}, nil, "needs a password"},
		"invalid verifier id": {config.Summaries{Key: "plain.key", VerifierID: "relative"}, nil, "verifier id"},
	} {
		_, _, err := summaries(cfgWith(&tc.s), envMap(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), secretValue) {
			t.Errorf("%s: the error prints the password", name)
		}
	}
}
