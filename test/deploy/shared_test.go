package deploy

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

func TestSharedOverlay(t *testing.T) {
	checkShared(t, render(t, deployDir, "overlays/shared"), deployDir)
}

// checkShared checks deploy/overlays/shared: several proxy replicas whose
// config sets shared.redis to the Redis it renders, with the password from
// a Secret, and a Redis only the proxies reach.
func checkShared(t reporter, o *objects, root string) {
	t.Helper()
	var proxy, redis *appsv1.Deployment
	for i := range o.deployments {
		switch o.deployments[i].Name {
		case "portcullis":
			proxy = &o.deployments[i]
		case "portcullis-redis":
			redis = &o.deployments[i]
		}
	}
	if proxy == nil || redis == nil || len(o.deployments) != 2 {
		t.Errorf("overlays/shared renders %d deployments; want the proxy and portcullis-redis", len(o.deployments))
		return
	}
	if proxy.Spec.Replicas == nil || *proxy.Spec.Replicas < 2 {
		t.Errorf("proxy replicas = %v; the shared overlay exists to run several", proxy.Spec.Replicas)
	}
	if len(o.pdbs) != 1 || o.pdbs[0].Spec.MinAvailable == nil || proxy.Spec.Replicas == nil ||
		o.pdbs[0].Spec.MinAvailable.IntValue() >= int(*proxy.Spec.Replicas) {
		t.Errorf("PDB minAvailable does not let a drain take one of the %v replicas", proxy.Spec.Replicas)
	}
	proxyLabels := labels.Set(proxy.Spec.Template.Labels)
	redisLabels := labels.Set(redis.Spec.Template.Labels)
	if sel, err := metav1LabelSelector(proxy.Spec.Selector); err != nil || sel.Matches(redisLabels) {
		t.Errorf("the proxy Deployment's selector %v also selects the Redis pods", proxy.Spec.Selector)
	}

	// The config the proxies read sets shared.redis to the rendered
	// Service, with the password from the environment.
	var cfg struct {
		Shared struct {
			Redis struct {
				Addr        string `json:"addr"`
				PasswordEnv string `json:"password_env"`
			} `json:"redis"`
		} `json:"shared"`
	}
	var cm *corev1.ConfigMap
	for _, v := range proxy.Spec.Template.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ConfigMap != nil && cm == nil {
				if c := findConfigMap(o, s.ConfigMap.Name); c != nil && c.Data["portcullis.yaml"] != "" {
					cm = c
				}
			}
		}
	}
	if cm == nil {
		t.Errorf("the proxy mounts no ConfigMap with portcullis.yaml")
		return
	}
	if err := yaml.Unmarshal([]byte(cm.Data["portcullis.yaml"]), &cfg); err != nil {
		t.Errorf("portcullis.yaml: %v", err)
		return
	}
	rc := cfg.Shared.Redis
	host, port, _ := strings.Cut(rc.Addr, ":")
	svc := slices.IndexFunc(o.services, func(s corev1.Service) bool { return s.Name == host })
	if svc < 0 {
		t.Errorf("shared.redis.addr %q names no rendered Service", rc.Addr)
	} else {
		s := o.services[svc]
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(redisLabels) || labels.SelectorFromSet(s.Spec.Selector).Matches(proxyLabels) {
			t.Errorf("Service %s selects %v, not only the Redis pods", s.Name, s.Spec.Selector)
		}
		if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 6379 && port == "6379" }) {
			t.Errorf("shared.redis.addr %q is not a port of Service %s", rc.Addr, s.Name)
		}
	}
	c := proxy.Spec.Template.Spec.Containers[0]
	if rc.PasswordEnv == "" || !secretEnv(c, rc.PasswordEnv, "portcullis-redis") {
		t.Errorf("shared.redis.password_env %q is not set from the Secret portcullis-redis", rc.PasswordEnv)
	}
	rcont := redis.Spec.Template.Spec.Containers
	if len(rcont) != 1 {
		t.Errorf("redis has %d containers, want 1", len(rcont))
		return
	}
	if !secretEnv(rcont[0], "REDIS_PASSWORD", "portcullis-redis") || !hasArgPair(rcont[0].Args, "--requirepass", "$(REDIS_PASSWORD)") {
		t.Errorf("redis args %v: want --requirepass $(REDIS_PASSWORD) from the Secret portcullis-redis", rcont[0].Args)
	}
	checkLockedDown(t, redis.Spec.Template.Spec.SecurityContext, rcont[0], true)

	// The overlay's config is the base's plus shared: nothing else drifts.
	checkSameConfigBut(t, filepath.Join(root, "base", "config", "portcullis.yaml"),
		filepath.Join(root, "overlays", "shared", "config", "portcullis.yaml"), "shared")

	var redisNP, proxyNP *networkingv1.NetworkPolicy
	for i := range o.netpols {
		np := &o.netpols[i]
		sel, err := metav1LabelSelector(&np.Spec.PodSelector)
		if err != nil {
			t.Errorf("network policy %s: %v", np.Name, err)
			continue
		}
		if sel.Matches(redisLabels) {
			redisNP = np
		}
		if sel.Matches(proxyLabels) {
			proxyNP = np
		}
	}
	if redisNP == nil || proxyNP == nil {
		t.Errorf("network policies do not select both the proxy and Redis pods")
		return
	}
	checkRedisPolicy(t, *redisNP, proxyLabels)
	reaches := false
	for _, r := range proxyNP.Spec.Egress {
		if !slices.ContainsFunc(r.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port != nil && p.Port.IntValue() == 6379 }) {
			continue
		}
		for _, to := range r.To {
			if to.PodSelector != nil {
				if sel, err := metav1LabelSelector(to.PodSelector); err == nil && sel.Matches(redisLabels) {
					reaches = true
				}
			}
		}
	}
	if !reaches {
		t.Errorf("the proxy's network policy allows no egress to the Redis pods on 6379")
	}
}

// checkRedisPolicy: Redis is reached on its port by the proxy pods only,
// and opens no connection itself.
func checkRedisPolicy(t reporter, np networkingv1.NetworkPolicy, proxyLabels labels.Set) {
	t.Helper()
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("redis network policy types %v: want Ingress and Egress", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Egress) != 0 {
		t.Errorf("redis network policy allows egress %+v; Redis opens no connection", np.Spec.Egress)
	}
	if len(np.Spec.Ingress) == 0 {
		t.Errorf("redis network policy admits nothing; the proxies cannot reach it")
	}
	for _, r := range np.Spec.Ingress {
		if len(r.Ports) == 0 || len(r.From) == 0 {
			t.Errorf("redis network policy has a rule open to every port or every peer")
		}
		for _, f := range r.From {
			ok := f.IPBlock == nil && f.NamespaceSelector == nil && f.PodSelector != nil
			if ok {
				sel, err := metav1LabelSelector(f.PodSelector)
				ok = err == nil && sel.Matches(proxyLabels) && !sel.Empty()
			}
			if !ok {
				t.Errorf("redis is reachable from %+v; want the proxy pods only", f)
			}
		}
	}
}

func secretEnv(c corev1.Container, name, secret string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
			e.ValueFrom.SecretKeyRef.Name == secret && (e.ValueFrom.SecretKeyRef.Optional == nil || !*e.ValueFrom.SecretKeyRef.Optional)
	})
}

func hasArgPair(args []string, k, v string) bool {
	i := slices.Index(args, k)
	return i >= 0 && i+1 < len(args) && args[i+1] == v
}

// checkSameConfigBut: the two YAML files are equal once key is removed
// from the second.
func checkSameConfigBut(t reporter, basePath, overlayPath, key string) {
	t.Helper()
	var a, b map[string]any
	for p, m := range map[string]*map[string]any{basePath: &a, overlayPath: &b} {
		raw, err := os.ReadFile(p)
		if err == nil {
			err = yaml.Unmarshal(raw, m)
		}
		if err != nil {
			t.Errorf("%v", err)
			return
		}
	}
	if _, ok := b[key]; !ok {
		t.Errorf("%s sets no %s", overlayPath, key)
	}
	delete(b, key)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("%s differs from %s by more than %s; keep them in step", overlayPath, basePath, key)
	}
}
