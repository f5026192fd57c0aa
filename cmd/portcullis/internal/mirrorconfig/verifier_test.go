package mirrorconfig

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/nodeverifier"
)

func TestContainerdVerifier(t *testing.T) {
	t.Parallel()
	files, err := ContainerdVerifier(VerifierOptions{AdminURL: "https://portcullis-admin.internal:9090", CAFile: "/etc/portcullis/admin-ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("files: %d", len(files))
	}
	doc := parseTOML(t, files[ContainerdConfigPath])
	plugin := doc.tables[`plugins`+"\x00"+`io.containerd.image-verifier.v1.bindir`]
	if plugin == nil || plugin["bin_dir"] != DefaultVerifierBinDir || plugin["max_verifiers"] != 10 || plugin["per_verifier_timeout"] != "10s" {
		t.Fatalf("config.toml fragment: %v", doc)
	}
	cfg, err := nodeverifier.ParseConfig(files[nodeverifier.DefaultConfigPath])
	if err != nil {
		t.Fatalf("generated settings refused: %v\n%s", err, files[nodeverifier.DefaultConfigPath])
	}
	if cfg.AdminURL != "https://portcullis-admin.internal:9090" || cfg.CAFile != "/etc/portcullis/admin-ca.pem" ||
		cfg.TokenFile != DefaultVerifierToken || cfg.FailOpen || cfg.TimeoutDuration() != 8*time.Second {
		t.Fatalf("settings: %+v", cfg)
	}
	script := string(files[DefaultVerifierBinDir+"/portcullis"])
	if !strings.HasPrefix(script, "#!/bin/sh\n") ||
		!strings.Contains(script, `exec '/usr/local/bin/portcullis' node-verifier --config '/etc/portcullis/node-verifier.yaml' "$@"`) {
		t.Fatalf("wrapper:\n%s", script)
	}

	// The verifier's timeout stays below containerd's.
	files, err = ContainerdVerifier(VerifierOptions{AdminURL: "http://127.0.0.1:9090", Timeout: 3 * time.Second, TokenFile: "-"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = nodeverifier.ParseConfig(files[nodeverifier.DefaultConfigPath])
	if err != nil || cfg.TimeoutDuration() >= 3*time.Second || cfg.TokenFile != "" {
		t.Fatalf("3s: %+v %v", cfg, err)
	}
}

func TestContainerdVerifierRejectsBadInput(t *testing.T) {
	t.Parallel()
	for _, o := range []VerifierOptions{
		{},
		{AdminURL: "http://proxy.internal:9090"}, // plain http off loopback
		{AdminURL: "https://proxy.internal\nfail_open: true"},
		{AdminURL: "https://proxy.internal", Binary: "/usr/bin/x'; rm -rf /; '"},
		{AdminURL: "https://proxy.internal", Binary: "portcullis"},
		{AdminURL: "https://proxy.internal", BinDir: "/opt/../bin"},
		{AdminURL: "https://proxy.internal", TokenFile: "/etc/t\"\nfail_open: true"},
		{AdminURL: "https://proxy.internal", ConfigPath: DefaultVerifierBinDir + "/settings.yaml"},
		{AdminURL: "https://proxy.internal", Timeout: time.Second},
		{AdminURL: "http://127.0.0.1:9090", CAFile: "/ca.pem"},
	} {
		if files, err := ContainerdVerifier(o); err == nil {
			t.Errorf("%+v accepted:\n%s", o, files[nodeverifier.DefaultConfigPath])
		}
	}
}

func TestRunContainerdVerifier(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if err := Run([]string{"containerd", "--verifier", "http://127.0.0.1:9090", "--verifier-timeout", "20s"}, &stdout, &stderr); err != nil {
		t.Fatalf("verifier only: %v", err)
	}
	out := stdout.String()
	for _, want := range []string{"# " + ContainerdConfigPath + "\n", `per_verifier_timeout = "20s"`, "timeout: 18s", "# " + DefaultVerifierBinDir + "/portcullis\n#!/bin/sh\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hosts.toml") {
		t.Fatalf("hosts files without registries:\n%s", out)
	}
	stdout.Reset()
	if err := Run([]string{"containerd", "--proxy", "http://portcullis:5000", "--verifier", "http://127.0.0.1:9090", "docker.io"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "# docker.io/hosts.toml") || !strings.Contains(stdout.String(), "image-verifier.v1.bindir") {
		t.Fatalf("both:\n%s", stdout.String())
	}
	if err := Run([]string{"crio", "--proxy", "http://portcullis:5000", "--verifier", "http://127.0.0.1:9090", "docker.io=hub"}, &stdout, &stderr); err == nil {
		t.Fatal("--verifier accepted for crio")
	}
	if err := Run([]string{"containerd", "docker.io"}, &stdout, &stderr); err == nil {
		t.Fatal("registries without --proxy accepted")
	}
}

// FuzzContainerdVerifier: whatever is accepted is written as given, and
// nothing in it adds a setting, a table or a command.
func FuzzContainerdVerifier(f *testing.F) {
	f.Add("https://proxy.internal:9090", "/etc/t", "/opt/bin", "/usr/bin/portcullis")
	f.Add("http://127.0.0.1:9090/x", "/etc/t\nfail_open: true", "/opt/bin", "/p")
	f.Add("https://a\"b", "-", "/opt/b'in", "/p;rm")
	f.Fuzz(func(t *testing.T, admin, token, binDir, binary string) {
		files, err := ContainerdVerifier(VerifierOptions{AdminURL: admin, TokenFile: token, BinDir: binDir, Binary: binary})
		if err != nil {
			return
		}
		cfg, err := nodeverifier.ParseConfig(files[nodeverifier.DefaultConfigPath])
		if err != nil {
			t.Fatalf("generated settings refused: %v", err)
		}
		wantToken := token
		if token == "-" {
			wantToken = ""
		}
		if cfg.AdminURL != admin || cfg.TokenFile != wantToken || cfg.FailOpen || cfg.InsecurePlainHTTP || cfg.CAFile != "" {
			t.Fatalf("settings differ from the options: %+v", cfg)
		}
		doc := parseTOML(t, files[ContainerdConfigPath])
		if len(doc.tables) != 1 || len(doc.top) != 0 || doc.tables["plugins\x00io.containerd.image-verifier.v1.bindir"]["bin_dir"] != binDir {
			t.Fatalf("fragment: %v", doc)
		}
		script := string(files[binDir+"/portcullis"])
		lines := strings.Split(strings.TrimSuffix(script, "\n"), "\n")
		for _, l := range lines[:len(lines)-1] {
			if !strings.HasPrefix(l, "#") {
				t.Fatalf("wrapper has a command besides exec:\n%s", script)
			}
		}
		if want := "exec '" + binary + "' node-verifier --config '" + nodeverifier.DefaultConfigPath + "' \"$@\""; lines[len(lines)-1] != want {
			t.Fatalf("wrapper:\n%s", script)
		}
	})
}
