package deploy

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder collects what the checks report instead of failing the test.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestChecksCatchBrokenManifests breaks a copy of deploy/ one property at a
// time and requires the checks to notice, so that none of them passes
// whatever the manifests say.
func TestChecksCatchBrokenManifests(t *testing.T) {
	for _, m := range []struct {
		file, old, new, want string
	}{
		{"base/deployment.yaml", "replicas: 1", "replicas: 2", "replicas"},
		{"base/deployment.yaml", "type: Recreate", "type: RollingUpdate", "Recreate"},
		{"base/deployment.yaml", "path: /readyz, port: admin", "path: /readyz, port: registry", "probe /readyz"},
		{"base/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "root filesystem is writable"},
		{"base/deployment.yaml", "drop: [ALL]", "drop: [NET_RAW]", "capabilities"},
		{"base/deployment.yaml", "type: RuntimeDefault", "type: Unconfined", "seccomp"},
		{"base/deployment.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "may run as root"},
		{"base/deployment.yaml", "path: keys/cosign.pub", "path: cosign.pub", "does not project"},
		{"base/config/portcullis.yaml", "keys: [keys/cosign.pub]", "keys: [keys/release.pub]", "does not project"},
		{"base/service.yaml", "    app.kubernetes.io/component: proxy\n  ports:", "    app.kubernetes.io/component: other\n  ports:", "service selector"},
		{"base/servicemonitor.yaml", "port: admin", "port: registry", "service monitor endpoints"},
		{"base/networkpolicy.yaml", "        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: monitoring", "        - ipBlock: {cidr: 0.0.0.0/0}", "admin port is open"},
		{"base/networkpolicy.yaml", "{port: 443, protocol: TCP}", "{port: 8443, protocol: TCP}", "port 443"},
		{"node-config/daemonset.yaml", "            - quay.io\n", "            - quay.io\n            - registry.k8s.io\n", "routes registry.k8s.io"},
		{"node-config/daemonset.yaml", "path: /etc/containerd/certs.d", "path: /etc", "hostPath"},
		{"node-config/daemonset.yaml", "image: portcullis\n", "image: busybox\n", "proxy's own image"},
		{"node-config/daemonset.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "privilege escalation"},
		{"overlays/shared/deployment.yaml", "replicas: 3", "replicas: 1", "proxy replicas"},
		{"overlays/shared/poddisruptionbudget.yaml", "minAvailable: 2", "minAvailable: 3", "PDB minAvailable"},
		{"overlays/shared/config/portcullis.yaml", "addr: portcullis-redis:6379", "addr: redis:6379", "names no rendered Service"},
		{"overlays/shared/config/portcullis.yaml", "password_env: REDIS_PASSWORD", "password_env: REDIS_PASS", "password_env"},
		{"overlays/shared/config/portcullis.yaml", "log: {level: info", "log: {level: debug", "keep them in step"},
		{"overlays/shared/kustomization.yaml", "{port: 6379, protocol: TCP}", "{port: 6380, protocol: TCP}", "no egress to the Redis pods"},
		{"redis/deployment.yaml", "- $(REDIS_PASSWORD)", "- \"\"", "--requirepass"},
		{"redis/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "redis: root filesystem is writable"},
		{"redis/networkpolicy.yaml", "        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: portcullis\n              app.kubernetes.io/component: proxy", "        - namespaceSelector: {}", "want the proxy pods only"},
		{"redis/networkpolicy.yaml", "egress: []", "egress: [{}]", "Redis opens no connection"},
	} {
		t.Run(m.file+": "+m.want, func(t *testing.T) {
			root := copyDeploy(t)
			p := filepath.Join(root, filepath.FromSlash(m.file))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), m.old) {
				t.Fatalf("%s no longer contains %q; update this mutation", m.file, m.old)
			}
			if err := os.WriteFile(p, []byte(strings.Replace(string(b), m.old, m.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			r := &recorder{}
			base := render(t, root, "base")
			checkBase(r, base, root)
			checkNodeConfig(r, render(t, root, "node-config"), base)
			checkShared(r, render(t, root, "overlays/shared"), root)
			for _, e := range r.errs {
				if strings.Contains(e, m.want) {
					return
				}
			}
			t.Errorf("replacing %q by %q went unnoticed (want an error containing %q); reported: %q", m.old, m.new, m.want, r.errs)
		})
	}
}

func copyDeploy(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(deployDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(deployDir, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}
