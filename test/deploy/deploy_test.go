package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// deployDir is deploy/ of the repository.
var deployDir = filepath.Join("..", "..", "deploy")

// objects is one rendered kustomization, decoded.
type objects struct {
	yaml            []byte
	namespaces      []corev1.Namespace
	configMaps      []corev1.ConfigMap
	serviceAccounts []corev1.ServiceAccount
	services        []corev1.Service
	deployments     []appsv1.Deployment
	daemonSets      []appsv1.DaemonSet
	pdbs            []policyv1.PodDisruptionBudget
	netpols         []networkingv1.NetworkPolicy
	serviceMonitors []monitoringv1.ServiceMonitor
}

func render(t *testing.T, root, dir string) *objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode(out)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return objs
}

// reporter is the part of testing.T the checks use, so that a test can run
// them on a broken copy of the manifests and see them fail.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// decode splits a multi-document stream and decodes each document strictly
// into the type its apiVersion and kind name. A kind this test does not
// know is an error, so a new manifest cannot escape validation.
func decode(stream []byte) (*objects, error) {
	o := &objects{yaml: stream}
	for i, doc := range bytes.Split(stream, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		var err error
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Namespace":
			o.namespaces, err = appendStrict(o.namespaces, doc)
		case "v1 ConfigMap":
			o.configMaps, err = appendStrict(o.configMaps, doc)
		case "v1 ServiceAccount":
			o.serviceAccounts, err = appendStrict(o.serviceAccounts, doc)
		case "v1 Service":
			o.services, err = appendStrict(o.services, doc)
		case "apps/v1 Deployment":
			o.deployments, err = appendStrict(o.deployments, doc)
		case "apps/v1 DaemonSet":
			o.daemonSets, err = appendStrict(o.daemonSets, doc)
		case "policy/v1 PodDisruptionBudget":
			o.pdbs, err = appendStrict(o.pdbs, doc)
		case "networking.k8s.io/v1 NetworkPolicy":
			o.netpols, err = appendStrict(o.netpols, doc)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			o.serviceMonitors, err = appendStrict(o.serviceMonitors, doc)
		default:
			err = fmt.Errorf("unexpected %s %s", tm.APIVersion, tm.Kind)
		}
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i, tm.Kind, err)
		}
	}
	return o, nil
}

func appendStrict[T any](list []T, doc []byte) ([]T, error) {
	var v T
	if err := yaml.UnmarshalStrict(doc, &v); err != nil {
		return list, err
	}
	return append(list, v), nil
}

func TestStrictDecodeRejectsUnknownFields(t *testing.T) {
	// The guard the rest of this file relies on: a misspelt field fails.
	doc := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 1\n"
	if _, err := decode([]byte(doc)); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Fatalf("decode accepted an unknown field: %v", err)
	}
	if _, err := decode([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")); err == nil {
		t.Fatal("decode accepted a kind it does not validate")
	}
}

func TestBase(t *testing.T) {
	checkBase(t, render(t, deployDir, "base"), deployDir)
}

func checkBase(t reporter, o *objects, root string) {
	t.Helper()
	if len(o.deployments) != 1 || len(o.services) != 1 || len(o.pdbs) != 1 || len(o.netpols) != 1 || len(o.serviceMonitors) != 1 || len(o.namespaces) != 1 {
		t.Errorf("base renders %d deployments, %d services, %d PDBs, %d network policies, %d service monitors, %d namespaces; want one each",
			len(o.deployments), len(o.services), len(o.pdbs), len(o.netpols), len(o.serviceMonitors), len(o.namespaces))
		return
	}
	d := o.deployments[0]
	pod := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)

	{
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
			t.Errorf("replicas = %v; gating state is per replica, want 1", d.Spec.Replicas)
		}
		if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("strategy %q; a rolling update runs two replicas at once, want Recreate", d.Spec.Strategy.Type)
		}
		sel, err := metav1LabelSelector(d.Spec.Selector)
		if err != nil || !sel.Matches(podLabels) {
			t.Errorf("deployment selector %v does not select its pods %v", d.Spec.Selector, podLabels)
		}
	}

	if len(pod.Containers) != 1 {
		t.Errorf("%d containers, want 1", len(pod.Containers))
		return
	}
	c := pod.Containers[0]
	portNames := map[string]int32{}
	for _, p := range c.Ports {
		portNames[p.Name] = p.ContainerPort
	}

	{
		for name, probe := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
			if probe == nil || probe.HTTPGet == nil {
				t.Errorf("no HTTP probe for %s", name)
				continue
			}
			if probe.HTTPGet.Path != name || portNames[probe.HTTPGet.Port.String()] != 9090 {
				t.Errorf("probe %s: path %q port %v, want %s on admin (9090)", name, probe.HTTPGet.Path, probe.HTTPGet.Port.String(), name)
			}
		}
		if portNames["registry"] != 5000 {
			t.Errorf("registry port %d, want 5000", portNames["registry"])
		}
	}

	{
		checkLockedDown(t, pod.SecurityContext, c, true)
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("resources %v: want CPU and memory requests and a memory limit", c.Resources)
		}
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Errorf("the service account token is mounted; the proxy never calls the API")
		}
	}

	{
		checkConfigLayout(t, o, pod, c, root)
	}

	{
		svc := o.services[0]
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
			t.Errorf("service selector %v does not select %v", svc.Spec.Selector, podLabels)
		}
		svcPorts := map[string]bool{}
		for _, p := range svc.Spec.Ports {
			svcPorts[p.Name] = true
			if _, ok := portNames[p.TargetPort.String()]; !ok {
				t.Errorf("service port %s targets %q, which the container does not name", p.Name, p.TargetPort.String())
			}
		}
		sm := o.serviceMonitors[0]
		if sel, err := metav1LabelSelector(&sm.Spec.Selector); err != nil || !sel.Matches(labels.Set(svc.Labels)) {
			t.Errorf("service monitor selector %v does not select the service %v", sm.Spec.Selector, svc.Labels)
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || !svcPorts["admin"] {
			t.Errorf("service monitor endpoints %+v: want the service's admin port", sm.Spec.Endpoints)
		}
		pdb := o.pdbs[0]
		if sel, err := metav1LabelSelector(pdb.Spec.Selector); err != nil || !sel.Matches(podLabels) {
			t.Errorf("PDB selector %v does not select %v", pdb.Spec.Selector, podLabels)
		}
		np := o.netpols[0]
		if sel, err := metav1LabelSelector(&np.Spec.PodSelector); err != nil || !sel.Matches(podLabels) {
			t.Errorf("network policy selector %v does not select %v", np.Spec.PodSelector, podLabels)
		}
		checkNetworkPolicy(t, np, portNames)
	}
}

func checkLockedDown(t reporter, psc *corev1.PodSecurityContext, c corev1.Container, nonRoot bool) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("container %s has no security context", c.Name)
		return
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && psc != nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccomp %v, want RuntimeDefault", c.Name, seccomp)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: root filesystem is writable", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: privilege escalation allowed", c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities %v, want drop ALL and add none", c.Name, sc.Capabilities)
	}
	if nonRoot {
		runAsNonRoot := sc.RunAsNonRoot
		if runAsNonRoot == nil && psc != nil {
			runAsNonRoot = psc.RunAsNonRoot
		}
		if runAsNonRoot == nil || !*runAsNonRoot {
			t.Errorf("%s: may run as root", c.Name)
		}
	}
}

// checkConfigLayout reads the config the base ships and checks that every
// file it names by relative path is projected at that path under the
// directory the container's --config points into, from a ConfigMap or
// Secret that has that key.
func checkConfigLayout(t reporter, o *objects, pod corev1.PodSpec, c corev1.Container, root string) {
	t.Helper()
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) {
		t.Errorf("args %v name no --config", c.Args)
		return
	}
	cfgPath := c.Args[i+1]
	cfgDir := filepath.Dir(cfgPath)
	projected := map[string]string{} // path in cfgDir → "configmap/key" or "secret/key"
	for _, m := range c.VolumeMounts {
		if m.MountPath != cfgDir {
			continue
		}
		vi := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if vi < 0 || pod.Volumes[vi].Projected == nil {
			t.Errorf("volume %s mounted at %s is not a projected volume", m.Name, cfgDir)
			return
		}
		for _, s := range pod.Volumes[vi].Projected.Sources {
			switch {
			case s.ConfigMap != nil:
				cm := findConfigMap(o, s.ConfigMap.Name)
				if cm == nil {
					t.Errorf("projected ConfigMap %s is not rendered", s.ConfigMap.Name)
					continue
				}
				for _, it := range s.ConfigMap.Items {
					if _, ok := cm.Data[it.Key]; !ok {
						t.Errorf("ConfigMap %s has no key %s", cm.Name, it.Key)
					}
					projected[it.Path] = "configmap/" + it.Key
				}
			case s.Secret != nil:
				for _, it := range s.Secret.Items {
					projected[it.Path] = "secret/" + it.Key
				}
			}
		}
	}
	if projected[filepath.Base(cfgPath)] == "" {
		t.Errorf("%s is not projected into %s (have %v)", filepath.Base(cfgPath), cfgDir, projected)
		return
	}

	raw, err := os.ReadFile(filepath.Join(root, "base", "config", filepath.Base(cfgPath)))
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	var cfg struct {
		TLS *struct {
			Cert string `json:"cert"`
			Key  string `json:"key"`
		} `json:"tls"`
		Trust []struct {
			Keys        []string `json:"keys"`
			TrustedRoot string   `json:"trusted_root"`
		} `json:"trust"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Errorf("%v", err)
		return
	}
	var named []string
	for _, tr := range cfg.Trust {
		named = append(named, tr.Keys...)
		if tr.TrustedRoot != "" {
			named = append(named, tr.TrustedRoot)
		}
	}
	if cfg.TLS != nil {
		named = append(named, cfg.TLS.Cert, cfg.TLS.Key)
	}
	if len(named) == 0 {
		t.Errorf("the base config names no key files; nothing to check")
	}
	for _, p := range named {
		if filepath.IsAbs(p) {
			t.Errorf("config names %s by absolute path; the manifests assume paths relative to %s", p, cfgDir)
		} else if projected[filepath.Clean(p)] == "" {
			t.Errorf("config names %s, which the volume does not project into %s (have %v)", p, cfgDir, projected)
		}
	}
}

func findConfigMap(o *objects, name string) *corev1.ConfigMap {
	for i := range o.configMaps {
		if o.configMaps[i].Name == name {
			return &o.configMaps[i]
		}
	}
	return nil
}

func checkNetworkPolicy(t reporter, np networkingv1.NetworkPolicy, portNames map[string]int32) {
	t.Helper()
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("policy types %v: want Ingress and Egress", np.Spec.PolicyTypes)
	}
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port == nil {
				t.Errorf("an ingress rule admits every port")
				continue
			}
			if _, ok := portNames[p.Port.String()]; !ok {
				t.Errorf("ingress port %s is not a named container port", p.Port.String())
			}
			if p.Port.String() == "admin" {
				for _, f := range r.From {
					if f.IPBlock != nil || f.NamespaceSelector == nil || len(f.NamespaceSelector.MatchLabels) == 0 {
						t.Errorf("the admin port is open to %+v; want the monitoring namespace only", f)
					}
				}
			}
		}
	}
	egressPorts := map[int32]bool{}
	for _, r := range np.Spec.Egress {
		if len(r.Ports) == 0 {
			t.Errorf("an egress rule allows every port")
		}
		for _, p := range r.Ports {
			egressPorts[p.Port.IntVal] = true
		}
	}
	for _, want := range []int32{443, 53} {
		if !egressPorts[want] {
			t.Errorf("egress does not allow port %d", want)
		}
	}
}

func TestNodeConfig(t *testing.T) {
	checkNodeConfig(t, render(t, deployDir, "node-config"), render(t, deployDir, "base"))
}

func checkNodeConfig(t reporter, o, base *objects) {
	t.Helper()
	if len(o.daemonSets) != 1 || len(base.deployments) != 1 {
		t.Errorf("%d DaemonSets and %d proxy Deployments, want 1 and 1", len(o.daemonSets), len(base.deployments))
		return
	}
	ds := o.daemonSets[0]
	pod := ds.Spec.Template.Spec
	if sel, err := metav1LabelSelector(ds.Spec.Selector); err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not select its pods", ds.Spec.Selector)
	}
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Errorf("%d init containers and %d containers, want 1 and 1", len(pod.InitContainers), len(pod.Containers))
		return
	}
	ic := pod.InitContainers[0]
	proxyImage := base.deployments[0].Spec.Template.Spec.Containers[0].Image
	if ic.Image != proxyImage {
		t.Errorf("init container image %s; want the proxy's own image %s", ic.Image, proxyImage)
	}
	if len(ic.Args) < 3 || ic.Args[0] != "mirror-config" || ic.Args[1] != "containerd" {
		t.Errorf("init container args %v; want mirror-config containerd …", ic.Args)
		return
	}
	checkLockedDown(t, pod.SecurityContext, ic, false)
	checkLockedDown(t, pod.SecurityContext, pod.Containers[0], true)

	// The registries handed to mirror-config: the positional arguments.
	var registries []string
	var out string
	for i := 2; i < len(ic.Args); i++ {
		a := ic.Args[i]
		if strings.HasPrefix(a, "--") {
			if a == "--out" && i+1 < len(ic.Args) {
				out = ic.Args[i+1]
			}
			i++
			continue
		}
		registries = append(registries, a)
	}
	if len(registries) == 0 {
		t.Errorf("mirror-config is given no registry")
	}
	// Images that must come up without the proxy: its own, the pause image
	// the node-config pod runs, and the system images on registry.k8s.io.
	bootstrap := []string{"registry.k8s.io", registryOf(proxyImage), registryOf(pod.Containers[0].Image)}
	for _, r := range registries {
		if slices.Contains(bootstrap, r) {
			t.Errorf("mirror-config routes %s through the proxy, which needs it to start", r)
		}
	}

	// --out is a mount of the host's containerd certs.d and nothing wider.
	mi := slices.IndexFunc(ic.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == out })
	if out == "" || mi < 0 {
		t.Errorf("--out %q is not a volume mount of the init container", out)
		return
	}
	vi := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == ic.VolumeMounts[mi].Name })
	if vi < 0 || pod.Volumes[vi].HostPath == nil || pod.Volumes[vi].HostPath.Path != "/etc/containerd/certs.d" {
		t.Errorf("--out %s is not a hostPath of /etc/containerd/certs.d", out)
	}
}

// registryOf is the registry host of an image reference, docker.io when
// the reference names none.
func registryOf(image string) string {
	first, _, ok := strings.Cut(image, "/")
	if !ok || !strings.ContainsAny(first, ".:") && first != "localhost" {
		return "docker.io"
	}
	return first
}

// TestKubeconform validates the rendered manifests against the Kubernetes
// JSON schemas when kubeconform is installed and can load them; both are
// downloads a machine without internet access does not have, in which case
// the strict decoding above is the validation.
func TestKubeconform(t *testing.T) {
	bin := os.Getenv("KUBECONFORM")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("kubeconform"); err != nil {
			t.Skip("kubeconform not on PATH and KUBECONFORM not set")
		}
	}
	// A local mirror of the schemas, in kubeconform's -schema-location
	// syntax, for machines that cannot reach the default one.
	schemas := os.Getenv("KUBECONFORM_SCHEMA_LOCATION")
	if schemas == "" {
		schemas = "default"
	}
	for _, dir := range []string{"base", "node-config", "redis", "overlays/shared"} {
		o := render(t, deployDir, dir)
		// The ServiceMonitor is a CRD, outside the Kubernetes schemas; its
		// strict decoding into the operator's Go type stands in.
		cmd := exec.Command(bin, "-strict", "-summary", "-output", "text",
			"-skip", "ServiceMonitor", "-schema-location", schemas, "-")
		cmd.Stdin = bytes.NewReader(o.yaml)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if err == nil {
			continue
		}
		// A resource found invalid is a failure even when the schemas of
		// others could not be fetched; only a run whose every complaint is
		// a missing schema is inconclusive.
		var invalid, unavailable []string
		for _, line := range strings.Split(string(out), "\n") {
			switch {
			case strings.Contains(line, "failed downloading schema"), strings.Contains(line, "could not find schema"):
				unavailable = append(unavailable, line)
			case strings.Contains(line, " is invalid"), strings.Contains(line, "failed validation"):
				invalid = append(invalid, line)
			}
		}
		if len(invalid) == 0 && len(unavailable) > 0 {
			t.Skipf("kubeconform cannot load its schemas here (%d resources): %s", len(unavailable), unavailable[0])
		}
		t.Errorf("kubeconform %s:\n%s", dir, out)
	}
}
