package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateClients(t *testing.T) {
	t.Parallel()
	const withAuth = "  - {name: hub, url: \"https://a.example\", auth: {token_env: T}}\n"
	const tlsOn = "tls: {cert: c.pem, key: k.pem}\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"credentials without clients", doc(withAuth, "", "", ""), "upstreams[0].auth: anyone who can reach the proxy would pull with these credentials"},
		{"credentials with anonymous", doc(withAuth, "", "", "clients: {anonymous: true}\n"), ""},
		{"credentials with htpasswd", doc(withAuth, "", "", "clients: {htpasswd: h, access: [{clients: [\"*\"]}]}\n"), ""},
		{"htpasswd without access", doc("", "", "", "clients: {htpasswd: h}\n"), "clients.access: is required"},
		{"credentials with an empty clients", doc(withAuth, "", "", "clients: {anonymous: false}\n"), "clients: no client could pull"},
		{"no credentials, no clients", doc("", "", "", ""), ""},
		{"mtls without tls", doc("", "", "", "clients:\n  mtls: {ca: ca.pem}\n  access: [{certificates: {dns: [\"*.example.com\"]}}]\n"), "clients.mtls: client certificates need tls"},
		{"mtls without ca", doc("", "", "", tlsOn+"clients:\n  mtls: {}\n  access: [{certificates: {dns: [\"*.example.com\"]}}]\n"), "clients.mtls.ca: is required"},
		{"mtls without certificate access", doc("", "", "", tlsOn+"clients:\n  mtls: {ca: ca.pem}\n  access: [{clients: [a]}]\n"), "no access entry names certificates"},
		{"mtls ok", doc("", "", "", tlsOn+"clients:\n  mtls: {ca: ca.pem, required: true}\n  access: [{certificates: {dns: [\"*.example.com\"], uri: [\"spiffe://x/*\"], email: [\"*@x\"]}}]\n"), ""},
		{"certificates without mtls", doc("", "", "", "clients:\n  tokens: t\n  access: [{certificates: {dns: [a]}}]\n"), "clients.access[0].certificates: needs clients.mtls"},
		{"empty certificates", doc("", "", "", tlsOn+"clients:\n  mtls: {ca: ca.pem}\n  access: [{certificates: {}}, {certificates: {dns: [a]}}]\n"), "clients.access[0].certificates: names no subject alternative name"},
		{"access naming nobody", doc("", "", "", "clients:\n  tokens: t\n  access: [{upstreams: [docker.io]}]\n"), "clients.access[0]: names no client"},
		{"access unknown upstream", doc("", "", "", "clients:\n  tokens: t\n  access: [{clients: [a], upstreams: [quay.io]}]\n"), `clients.access[0].upstreams[0]: no upstream is named "quay.io"`},
		{"access bad repository glob", doc("", "", "", "clients:\n  tokens: t\n  access: [{clients: [a], repositories: [\"a**\"]}]\n"), "clients.access[0].repositories[0]"},
		{"access bad client pattern", doc("", "", "", "clients:\n  tokens: t\n  access: [{clients: [\"[\"]}]\n"), "clients.access[0].clients[0]"},
		{"bcrypt min cost", doc("", "", "", "clients: {htpasswd: h, bcrypt_min_cost: 3}\n"), "clients.bcrypt_min_cost: must be within 4..31"},
		{"bcrypt max below min", doc("", "", "", "clients: {htpasswd: h, bcrypt_min_cost: 12, bcrypt_max_cost: 11}\n"), "clients.bcrypt_max_cost: must not be below"},
		{"password checks negative", doc("", "", "", "clients: {htpasswd: h, password_checks: -1}\n"), "clients.password_checks: must not be negative"},
		{"cache ttl too long", doc("", "", "", "clients: {htpasswd: h, credential_cache_ttl: 2h}\n"), "clients.credential_cache_ttl"},
		{"unknown key", doc("", "", "", "clients: {htpasswd: h, password: x}\n"), "password"},
		{"admin auth without tokens", doc("", "", "", "admin_auth: {}\n"), "admin_auth.tokens: is required"},
		{"admin auth ok", doc("", "", "", "admin_auth: {tokens: t}\n"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tc.yaml), "p.yaml")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse failed:\n%v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error\n%v\ndoes not contain\n%s", err, tc.want)
			}
		})
	}
}

func TestClientsDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", "", "clients: {htpasswd: h, access: [{clients: [a]}]}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Clients.BcryptMinCost != DefaultBcryptMinCost || c.Clients.BcryptMaxCost != DefaultBcryptMaxCost || c.Clients.CredentialCacheTTL.D() != DefaultCredentialCacheTTL {
		t.Errorf("defaults not applied: %+v", c.Clients)
	}
}

func TestCheckClientFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tokens"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse([]byte(doc("", "", "", "tls: {cert: c.pem, key: k.pem}\nclients:\n  htpasswd: htpasswd\n  tokens: tokens\n  mtls: {ca: ca.pem}\n  access: [{certificates: {dns: [a]}}]\nadmin_auth: {tokens: admin}\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.Path = filepath.Join(dir, "p.yaml")
	err = c.CheckFiles()
	for _, k := range []string{"clients.htpasswd", "clients.mtls.ca", "admin_auth.tokens"} {
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("CheckFiles = %v, want %s reported", err, k)
		}
	}
	if strings.Contains(err.Error(), "clients.tokens") {
		t.Errorf("existing tokens file reported: %v", err)
	}
}
