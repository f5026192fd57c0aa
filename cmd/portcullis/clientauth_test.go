package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/portcullis-oci/portcullis/proxy"
)

func TestTokenHash(t *testing.T) {
	var out, errb bytes.Buffer
	// sha256("abc"); the trailing newline is not part of the token.
	if code := runToken([]string{"hash"}, strings.NewReader("abc\n"), &out, &errb); code != 0 ||
		out.String() != "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n" {
		t.Errorf("token hash: code %d, out %q, err %q", code, out.String(), errb.String())
	}
	if code := runToken([]string{"hash"}, strings.NewReader("\n"), io.Discard, io.Discard); code != 2 {
		t.Errorf("empty token: code %d", code)
	}
	if code := runToken([]string{"hash", "secret-on-the-command-line"}, strings.NewReader(""), io.Discard, io.Discard); code != 2 {
		t.Errorf("token as argument: code %d", code)
	}
}

const clientsConfig = `clients:
  htpasswd: htpasswd
  tokens: tokens
  bcrypt_min_cost: 4
  access: [{clients: [alice], repositories: ["app/**"]}]
admin_auth: {tokens: admin-tokens}
`

func writeClientFiles(t *testing.T, dir, htpasswd, tokens string) {
	t.Helper()
	for name, body := range map[string]string{"htpasswd": htpasswd, "tokens": tokens, "admin-tokens": "ops:" + proxy.HashToken("adm") + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConfigCheckClientFiles(t *testing.T) {
	s := newSignedSetup(t, clientsConfig)
	dir := filepath.Dir(s.cfgPath)
	good, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, htpasswd, tokens, want string }{
		{"bcrypt", "alice:" + string(good) + "\n", "ci:" + proxy.HashToken("t") + "\n", ""},
		{"md5 htpasswd", "alice:$apr1$abcdefgh$0123456789abcdefghijkl\n", "", "only bcrypt"},
		{"plain token", "", "ci:the-token\n", "clients.tokens"},
	} {
		writeClientFiles(t, dir, tc.htpasswd, tc.tokens)
		code, _, stderr := runCmd("config", "check", s.cfgPath)
		if tc.want == "" && code != 0 || tc.want != "" && (code != 1 || !strings.Contains(stderr, tc.want)) {
			t.Errorf("%s: code %d, stderr %q", tc.name, code, stderr)
		}
	}
}

// TestServeClientAuth runs serve with client and admin authentication.
func TestServeClientAuth(t *testing.T) {
	s := newSignedSetup(t, clientsConfig)
	good, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	writeClientFiles(t, filepath.Dir(s.cfgPath), "alice:"+string(good)+"\n", "")
	cfg, eng, err := loadAll(s.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, b string) { addrs <- [2]string{a, b} })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			t.Error("serve did not return after cancel")
		}
	})
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		t.Fatal(err)
	}
	get := func(url string, hdr ...string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		if len(hdr) == 1 {
			req.SetBasicAuth("alice", hdr[0])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	manifest := "http://" + a[0] + "/v2/app/signed/manifests/v1"
	if c, _ := get(manifest); c != http.StatusUnauthorized {
		t.Errorf("without credentials: %d", c)
	}
	if c, _ := get(manifest, "wrong"); c != http.StatusUnauthorized {
		t.Errorf("wrong password: %d", c)
	}
	if c, _ := get(manifest, "pw"); c != http.StatusOK {
		t.Errorf("alice: %d", c)
	}
	if c, _ := get("http://"+a[1]+"/healthz", "Authorization", ""); c != http.StatusOK {
		t.Errorf("healthz: %d", c)
	}
	if c, _ := get("http://"+a[1]+"/v1/decisions", "Authorization", ""); c != http.StatusUnauthorized {
		t.Errorf("decisions without token: %d", c)
	}
	c, body := get("http://"+a[1]+"/v1/decisions", "Authorization", "Bearer adm")
	var ds struct{ Decisions []proxy.Decision }
	if c != http.StatusOK || json.Unmarshal(body, &ds) != nil || len(ds.Decisions) == 0 || ds.Decisions[0].Principal != "password:alice" {
		t.Errorf("decisions with token: %d %s", c, body)
	}
}

func TestTokenHtpasswd(t *testing.T) {
	var out bytes.Buffer
	if code := runToken([]string{"htpasswd", "alice"}, strings.NewReader("s3cret\n"), &out, io.Discard); code != 0 {
		t.Fatalf("code %d", code)
	}
	users, err := proxy.ParseHtpasswd(&out)
	if err != nil {
		t.Fatal(err)
	}
	if cost, _ := bcrypt.Cost(users["alice"]); cost != 10 || bcrypt.CompareHashAndPassword(users["alice"], []byte("s3cret")) != nil {
		t.Errorf("htpasswd line does not check: cost %d", cost)
	}
	if code := runToken([]string{"htpasswd", "al:ice"}, strings.NewReader("pw\n"), io.Discard, io.Discard); code != 2 {
		t.Errorf("user name with a colon: code %d", code)
	}
}
