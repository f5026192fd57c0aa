package mirrorconfig

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunContainerdStdout(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	// Flags after positional arguments are accepted.
	err := Run([]string{"containerd", "ghcr.io", "--proxy", "http://portcullis:5000", "docker.io"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, stderr.String())
	}
	want, err := Containerd("http://portcullis:5000", []string{"ghcr.io", "docker.io"})
	if err != nil {
		t.Fatal(err)
	}
	expected := "# docker.io/hosts.toml\n" + string(want["docker.io/hosts.toml"]) +
		"\n# ghcr.io/hosts.toml\n" + string(want["ghcr.io/hosts.toml"])
	if stdout.String() != expected {
		t.Fatalf("stdout =\n%s\nwant\n%s", stdout.String(), expected)
	}
}

func TestRunContainerdOut(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// An existing file is replaced.
	if err := os.MkdirAll(filepath.Join(dir, "docker.io"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "docker.io", "hosts.toml"), []byte(`server = "https://registry-1.docker.io"`), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := Run([]string{"containerd", "--proxy=https://portcullis:5000", "--ca", "/etc/ca.pem", "--out", dir, "docker.io", "registry.local:5000"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing with --out", stdout.String())
	}
	want, err := ContainerdWith("https://portcullis:5000", []string{"docker.io", "registry.local:5000"}, ContainerdOptions{CA: "/etc/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	for p, content := range want {
		got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			t.Fatalf("reading %s: %v", p, err)
		}
		if !bytes.Equal(got, content) {
			t.Errorf("%s =\n%s\nwant\n%s", p, got, content)
		}
	}
	// Nothing but the two configuration directories is left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("out dir holds %d entries, want 2", len(entries))
	}
}

func TestRunCRIO(t *testing.T) {
	t.Parallel()
	want, err := CRIO("http://portcullis:5000", []string{"docker.io", "quay.io"})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("stdout", func(t *testing.T) {
		t.Parallel()
		var stdout, stderr bytes.Buffer
		if err := Run([]string{"crio", "--proxy", "http://portcullis:5000", "docker.io", "quay.io"}, &stdout, &stderr); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !bytes.Equal(stdout.Bytes(), want) {
			t.Fatalf("stdout =\n%s\nwant\n%s", stdout.Bytes(), want)
		}
	})
	t.Run("out", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(t.TempDir(), "50-portcullis.conf")
		var stdout, stderr bytes.Buffer
		if err := Run([]string{"crio", "--out", out, "--proxy", "http://portcullis:5000", "--", "docker.io", "quay.io"}, &stdout, &stderr); err != nil {
			t.Fatalf("Run: %v", err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("file =\n%s\nwant\n%s", got, want)
		}
	})
}

func TestRunHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"containerd", "-h"}, {"crio", "--help"}} {
		var stdout, stderr bytes.Buffer
		if err := Run(args, &stdout, &stderr); err != nil {
			t.Errorf("Run(%q) = %v, want nil", args, err)
		}
		if !strings.Contains(stdout.String(), "Usage:") {
			t.Errorf("Run(%q) printed no usage on stdout", args)
		}
	}
}

func TestRunErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no runtime", nil, "missing runtime"},
		{"unknown runtime", []string{"docker", "--proxy", "http://p:5000", "docker.io"}, "unknown runtime"},
		{"missing proxy", []string{"containerd", "docker.io"}, "--proxy is required"},
		{"no registries", []string{"crio", "--proxy", "http://p:5000"}, "at least one registry"},
		{"unknown flag", []string{"crio", "--mirror", "x", "--proxy", "http://p:5000", "docker.io"}, "not defined"},
		{"flag without value", []string{"crio", "docker.io", "--proxy"}, "needs an argument"},
		{"ca with crio", []string{"crio", "--ca", "/ca.pem", "--proxy", "https://p:5000", "docker.io"}, "containerd only"},
		{"proxy with path", []string{"containerd", "--proxy", "http://p:5000/x", "docker.io"}, "path"},
		{"out dir not writable", []string{"crio", "--proxy", "http://p:5000", "--out", "/nonexistent/dir/file.conf", "docker.io"}, "failed to write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := Run(tc.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Run(%q) = %v, want error containing %q", tc.args, err, tc.wantErr)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing on error", stdout.String())
			}
		})
	}
}
