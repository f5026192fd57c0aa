package mirrorconfig

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestContainerd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, proxy, server string
		registries          []string
		wantPaths           []string
	}{
		{
			name: "http", proxy: "http://portcullis:5000", server: "http://portcullis:5000",
			registries: []string{"docker.io", "ghcr.io", "registry.local:5000"},
			wantPaths:  []string{"docker.io/hosts.toml", "ghcr.io/hosts.toml", "registry.local:5000/hosts.toml"},
		},
		{
			name: "https with trailing slash", proxy: "https://portcullis.internal/", server: "https://portcullis.internal",
			registries: []string{"quay.io"},
			wantPaths:  []string{"quay.io/hosts.toml"},
		},
		{
			name: "docker hub alias and duplicates", proxy: "http://127.0.0.1:5000", server: "http://127.0.0.1:5000",
			registries: []string{"index.docker.io", "docker.io", "ghcr.io", "ghcr.io"},
			wantPaths:  []string{"docker.io/hosts.toml", "ghcr.io/hosts.toml"},
		},
		{
			name: "ipv6 proxy", proxy: "http://[::1]:5000", server: "http://[::1]:5000",
			registries: []string{"10.0.0.7:5000"},
			wantPaths:  []string{"10.0.0.7:5000/hosts.toml"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			files, err := Containerd(tc.proxy, tc.registries)
			if err != nil {
				t.Fatalf("Containerd: %v", err)
			}
			var paths []string
			for p := range files {
				paths = append(paths, p)
			}
			slices.Sort(paths)
			if !slices.Equal(paths, tc.wantPaths) {
				t.Fatalf("paths = %v, want %v", paths, tc.wantPaths)
			}
			for p, content := range files {
				d := parseTOML(t, content)
				if got := d.top["server"]; got != tc.server {
					t.Errorf("%s: server = %v, want %q (the proxy, so there is no fallback)", p, got, tc.server)
				}
				if len(d.top) != 1 {
					t.Errorf("%s: top-level keys %v, want only server", p, d.top)
				}
				if len(d.arrays) != 0 || len(d.tables) != 1 {
					t.Fatalf("%s: want exactly one [host] table, got %v", p, d)
				}
				host, ok := d.tables["host\x00"+tc.server]
				if !ok {
					t.Fatalf("%s: no [host.%q] table: %v", p, tc.server, d)
				}
				if caps := host["capabilities"]; !reflect.DeepEqual(caps, []string{"pull", "resolve"}) {
					t.Errorf("%s: capabilities = %v, want [pull resolve]", p, caps)
				}
				if _, ok := host["ca"]; ok {
					t.Errorf("%s: ca set without the option", p)
				}
				if len(host) != 1 {
					t.Errorf("%s: host keys %v, want only capabilities", p, host)
				}
				if !strings.Contains(string(content), "DENIED answer is final") {
					t.Errorf("%s: the comment does not explain that a denial is final", p)
				}
			}
		})
	}
}

func TestContainerdWithCA(t *testing.T) {
	t.Parallel()
	const ca = `/etc/portcullis/ca "quoted" \ path.pem`
	files, err := ContainerdWith("https://portcullis:5000", []string{"docker.io"}, ContainerdOptions{CA: ca})
	if err != nil {
		t.Fatalf("ContainerdWith: %v", err)
	}
	d := parseTOML(t, files["docker.io/hosts.toml"])
	host := d.tables["host\x00https://portcullis:5000"]
	if got := host["ca"]; got != ca {
		t.Fatalf("ca = %v, want %q", got, ca)
	}

	for _, tc := range []struct{ name, proxy, ca string }{
		{"http proxy", "http://portcullis:5000", "/ca.pem"},
		{"newline", "https://portcullis:5000", "/ca.pem\n[host.\"https://evil\"]"},
		{"invalid utf-8", "https://portcullis:5000", "/ca\xff.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := ContainerdWith(tc.proxy, []string{"docker.io"}, ContainerdOptions{CA: tc.ca}); err == nil {
				t.Fatalf("ContainerdWith(%q, CA %q) succeeded, want error", tc.proxy, tc.ca)
			}
		})
	}
}

func TestCRIO(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, proxy  string
		registries   []string
		wantPrefix   []string
		wantLocation []string
		insecure     bool
	}{
		{
			name: "http", proxy: "http://portcullis:5000", insecure: true,
			registries:   []string{"docker.io", "ghcr.io", "registry.local:5000=registry.local"},
			wantPrefix:   []string{"docker.io", "ghcr.io", "registry.local:5000"},
			wantLocation: []string{"portcullis:5000/docker.io", "portcullis:5000/ghcr.io", "portcullis:5000/registry.local"},
		},
		{
			name: "https", proxy: "https://portcullis.internal",
			registries:   []string{"index.docker.io", "quay.io", "docker.io"},
			wantPrefix:   []string{"docker.io", "quay.io"},
			wantLocation: []string{"portcullis.internal/docker.io", "portcullis.internal/quay.io"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conf, err := CRIO(tc.proxy, tc.registries)
			if err != nil {
				t.Fatalf("CRIO: %v", err)
			}
			d := parseTOML(t, conf)
			if len(d.top) != 0 || len(d.tables) != 0 {
				t.Fatalf("unexpected keys or tables outside [[registry]]: %v", d)
			}
			if len(d.arrays) != 1 {
				t.Fatalf("want only [[registry]] entries (no [[registry.mirror]] fallback), got %v", d)
			}
			regs := d.arrays["registry"]
			if len(regs) != len(tc.wantPrefix) {
				t.Fatalf("%d registries, want %d", len(regs), len(tc.wantPrefix))
			}
			for i, r := range regs {
				want := map[string]any{
					"prefix":   tc.wantPrefix[i],
					"location": tc.wantLocation[i],
					"blocked":  false,
				}
				if tc.insecure {
					want["insecure"] = true
				}
				if !reflect.DeepEqual(r, want) {
					t.Errorf("registry %d = %v, want %v", i, r, want)
				}
			}
			if !strings.Contains(string(conf), "DENIED answer is final") {
				t.Error("the comment does not explain that a denial is final")
			}
		})
	}
}

func TestRejectsBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		proxy      string
		registries []string
	}{
		{"no registries", "http://portcullis:5000", nil},
		{"empty registry", "http://portcullis:5000", []string{""}},
		{"registry with scheme", "http://portcullis:5000", []string{"https://docker.io"}},
		{"registry with path", "http://portcullis:5000", []string{"docker.io/library"}},
		{"registry with leading hyphen", "http://portcullis:5000", []string{"-bad.io"}},
		{"registry with empty label", "http://portcullis:5000", []string{"a..b"}},
		{"registry with quote", "http://portcullis:5000", []string{`evil"]`}},
		{"registry with newline", "http://portcullis:5000", []string{"docker.io\nserver"}},
		{"registry with space", "http://portcullis:5000", []string{"docker .io"}},
		{"registry with bad port", "http://portcullis:5000", []string{"registry:99999"}},
		{"registry with empty port", "http://portcullis:5000", []string{"registry:"}},
		{"registry with port zero", "http://portcullis:5000", []string{"registry:0"}},
		{"registry ipv6", "http://portcullis:5000", []string{"[::1]:5000"}},
		{"one bad among good", "http://portcullis:5000", []string{"docker.io", "bad_host"}},
		{"empty proxy", "", []string{"docker.io"}},
		{"proxy without scheme", "portcullis:5000", []string{"docker.io"}},
		{"proxy ftp", "ftp://portcullis:5000", []string{"docker.io"}},
		{"proxy with path", "http://portcullis:5000/v2", []string{"docker.io"}},
		{"proxy with prefix path", "http://portcullis:5000/docker.io", []string{"docker.io"}},
		{"proxy with query", "http://portcullis:5000?ns=docker.io", []string{"docker.io"}},
		{"proxy with empty query", "http://portcullis:5000?", []string{"docker.io"}},
		{"proxy with fragment", "http://portcullis:5000#x", []string{"docker.io"}},
		{"proxy with user", "http://user:pw@portcullis:5000", []string{"docker.io"}},
		{"proxy without host", "http://", []string{"docker.io"}},
		{"proxy with empty port", "http://portcullis:", []string{"docker.io"}},
		{"proxy with bad port", "http://portcullis:70000", []string{"docker.io"}},
		{"proxy with bad host", "http://port_cullis:5000", []string{"docker.io"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if files, err := Containerd(tc.proxy, tc.registries); err == nil {
				t.Errorf("Containerd(%q, %q) = %d files, want error", tc.proxy, tc.registries, len(files))
			}
			if conf, err := CRIO(tc.proxy, tc.registries); err == nil {
				t.Errorf("CRIO(%q, %q) succeeded, want error:\n%s", tc.proxy, tc.registries, conf)
			}
		})
	}
}

func FuzzGenerators(f *testing.F) {
	f.Add("http://portcullis:5000", "docker.io")
	f.Add("https://[::1]", "registry.local:5000")
	f.Add("http://a/", "index.docker.io")
	f.Fuzz(func(t *testing.T, proxy, registry string) {
		files, err := Containerd(proxy, []string{registry})
		if err != nil {
			// REGISTRY=ALIAS is CRI-O-only syntax.
			if _, err := CRIO(proxy, []string{registry}); err == nil && !strings.Contains(registry, "=") {
				t.Fatalf("CRIO accepted what Containerd refused: %q %q", proxy, registry)
			}
			return
		}
		crioArg := registry
		if strings.Contains(registry, ":") {
			// A port cannot be a location path component: CRI-O needs an alias.
			if _, err := CRIO(proxy, []string{registry}); err == nil {
				t.Fatalf("CRIO accepted a registry with a port and no alias: %q", registry)
			}
			crioArg = registry + "=alias.local"
		}
		conf, err := CRIO(proxy, []string{crioArg})
		if err != nil {
			t.Fatalf("Containerd accepted what CRIO refused: %q %q: %v", proxy, registry, err)
		}
		// Whatever was accepted must parse back to exactly one host
		// section and one registry entry: no argument can add structure.
		for _, content := range files {
			d := parseTOML(t, content)
			if len(d.tables) != 1 || len(d.arrays) != 0 || len(d.top) != 1 {
				t.Fatalf("unexpected structure for %q %q: %v", proxy, registry, d)
			}
		}
		d := parseTOML(t, conf)
		if len(d.arrays["registry"]) != 1 || len(d.arrays) != 1 || len(d.tables) != 0 {
			t.Fatalf("unexpected structure for %q %q: %v", proxy, registry, d)
		}
	})
}
