package nodeverifier

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// TestAgainstTheProxy runs the verifier against the proxy's own admin
// handler, with real signatures: the answer it parses strictly is the one
// the proxy writes, and a registry named by host:port, as containerd names
// it, maps to the upstream that serves it.
func TestAgainstTheProxy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg, err := fixtures.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	push := func(tag string) string {
		ref, err := reg.Ref("acme/app:" + tag)
		if err != nil {
			t.Fatal(err)
		}
		d, err := fixtures.PushImage(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if tag == "signed" {
			if _, err := fixtures.AttachBundle(ctx, d, k, fixtures.BundleSpec{}); err != nil {
				t.Fatal(err)
			}
		}
		return d.DigestStr()
	}
	signed, unsigned := push("signed"), push("unsigned")
	eng, err := verify.New(verify.Policy{Boundaries: []verify.Boundary{{
		Name: "images", Repositories: []string{"acme/**"}, Mode: verify.ModeEnforce, Threshold: 1,
		Authorities: []verify.Authority{{Name: "release", Key: &verify.KeyAuthority{
			TrustName: "release", Keys: []verify.NamedKey{{Name: "release.pub", PEM: k.PublicKeyPEM()}},
		}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := proxy.ParseTokenFile(strings.NewReader("node:" + proxy.HashToken(testToken)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New([]proxy.Upstream{{Name: "internal", URL: reg.URL(), Aliases: []string{reg.Host}, Insecure: true}}, eng,
		proxy.WithAdminTokens(tokens))
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(p.AdminHandler())
	t.Cleanup(admin.Close)

	code, out, _ := run(t, admin.URL, "", reg.Host+"/acme/app:signed", signed)
	if code != ExitAccept || !strings.Contains(out, "allow") {
		t.Fatalf("signed: exit %d %q", code, out)
	}
	code, out, _ = run(t, admin.URL, "fail_open: true\n", reg.Host+"/acme/app:unsigned", unsigned)
	if code != ExitReject || !strings.Contains(out, `denied by boundary "images"`) || !strings.Contains(out, "no signatures found") {
		t.Fatalf("unsigned: exit %d %q", code, out)
	}
	// A registry the proxy does not front.
	code, out, _ = run(t, admin.URL, "", "registry.elsewhere.test/acme/app:signed", signed)
	if code != ExitReject || !strings.Contains(out, "unknown registry") {
		t.Fatalf("unknown registry: exit %d %q", code, out)
	}
}
