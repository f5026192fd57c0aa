package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/redistest"
)

type replicaAddrs struct{ addr, admin string }

func startReplica(t *testing.T, cfgPath string) replicaAddrs {
	t.Helper()
	cfg, eng, err := loadAll(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan replicaAddrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, eng, zap.NewNop(), func(a, admin string) { addrs <- replicaAddrs{a, admin} })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	select {
	case a := <-addrs:
		return a
	case err := <-done:
		t.Fatal(err)
	}
	return replicaAddrs{}
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestServeSharesThroughRedis: two replicas over one Redis. A manifest
// allowed on one opens its layers on the other; unsigned content is denied
// on both; with Redis gone a new replica still verifies and denies on its
// own and says so in /readyz.
func TestServeSharesThroughRedis(t *testing.T) {
	mr := miniredis.RunT(t)
	s := newSignedSetup(t, "shared: {redis: {addr: '"+mr.Addr()+"', key_prefix: 'test:'}}\n")
	a, b := startReplica(t, s.cfgPath), startReplica(t, s.cfgPath)

	code, body := get(t, "http://"+a.addr+"/v2/app/signed/manifests/"+s.signed.DigestStr())
	if code != http.StatusOK {
		t.Fatalf("signed manifest on A: %d %s", code, body)
	}
	var m struct {
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest: %v", err)
	}
	verdicts := func() int {
		n := 0
		for _, k := range mr.Keys() {
			if strings.HasPrefix(k, "test:v1:verdict:") {
				n++
			}
		}
		return n
	}
	if verdicts() == 0 {
		t.Fatalf("no verdict shared; keys %q", mr.Keys())
	}
	// Blob gating is written through in the background: wait for it.
	layer := "http://" + b.addr + "/v2/app/signed/blobs/" + m.Layers[0].Digest
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body = get(t, layer)
		if code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != http.StatusOK {
		t.Fatalf("layer on B after the manifest on A: %d %s", code, body)
	}
	for _, r := range []replicaAddrs{a, b} {
		if code, body := get(t, "http://"+r.addr+"/v2/app/unsigned/manifests/"+s.unsigned.DigestStr()); code != http.StatusForbidden {
			t.Errorf("unsigned manifest on %s: %d %s", r.addr, code, body)
		}
	}
	if _, body := get(t, "http://"+b.admin+"/metrics"); !strings.Contains(string(body), "portcullis_shared_up 1") {
		t.Error("shared-state metrics not served")
	}

	redistest.Down(t, mr)
	c := startReplica(t, s.cfgPath)
	if code, body := get(t, "http://"+c.addr+"/v2/app/signed/manifests/"+s.signed.DigestStr()); code != http.StatusOK {
		t.Errorf("signed manifest with redis down: %d %s", code, body)
	}
	for range 3 {
		if code, body := get(t, "http://"+c.addr+"/v2/app/unsigned/manifests/"+s.unsigned.DigestStr()); code != http.StatusForbidden {
			t.Errorf("unsigned manifest with redis down: %d %s", code, body)
		}
	}
	code, body = get(t, "http://"+c.admin+"/readyz")
	if code != http.StatusOK || !strings.Contains(string(body), "redis unavailable") {
		t.Errorf("/readyz with redis down = %d %q, want ready with the outage", code, body)
	}
}

func TestSharedClientSecrets(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Shared: config.Shared{Redis: &config.SharedRedis{Addr: "127.0.0.1:1", PasswordEnv: "PORTCULLIS_TEST_REDIS_PW", TLS: true, CAFile: "/nonexistent/ca.pem"}}}
	none := func(string) (string, bool) { return "", false }
	if _, err := sharedClient(cfg, none); err == nil || !strings.Contains(err.Error(), "PORTCULLIS_TEST_REDIS_PW") {
		t.Errorf("unset password variable: %v", err)
	}
	pw := func(string) (string, bool) { return "s3cret", true }
	if _, err := sharedClient(cfg, pw); err == nil || !strings.Contains(err.Error(), "shared.redis.ca_file") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("missing CA file: %v", err)
	}
	cfg.Shared.Redis.CAFile = ""
	rdb, err := sharedClient(cfg, pw)
	if err != nil {
		t.Fatal(err)
	}
	_ = rdb.Close()
}

// TestServeSharesThroughClusterClient: shared.redis.cluster wires the
// cluster client (miniredis answers as a one-node cluster): a manifest
// allowed on one replica opens its layers on the other.
func TestServeSharesThroughClusterClient(t *testing.T) {
	mr := miniredis.RunT(t)
	s := newSignedSetup(t, "shared: {redis: {cluster: {addrs: ['"+mr.Addr()+"']}, key_prefix: 'test:'}}\n")
	a, b := startReplica(t, s.cfgPath), startReplica(t, s.cfgPath)
	code, body := get(t, "http://"+a.addr+"/v2/app/signed/manifests/"+s.signed.DigestStr())
	if code != http.StatusOK {
		t.Fatalf("signed manifest on A: %d %s", code, body)
	}
	var m struct {
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest: %v", err)
	}
	if code, body := get(t, "http://"+b.addr+"/v2/app/signed/blobs/"+m.Layers[0].Digest); code != http.StatusOK {
		t.Fatalf("layer on B after the manifest on A: %d %s", code, body)
	}
	if code, body := get(t, "http://"+b.addr+"/v2/app/unsigned/manifests/"+s.unsigned.DigestStr()); code != http.StatusForbidden {
		t.Errorf("unsigned manifest on B: %d %s", code, body)
	}
}

func TestSharedClientModes(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Shared: config.Shared{Redis: &config.SharedRedis{
		Sentinel:    &config.SharedSentinel{Master: "portcullis", Addrs: []string{"127.0.0.1:1"}, PasswordEnv: "PORTCULLIS_TEST_SENTINEL_PW"},
		PasswordEnv: "PORTCULLIS_TEST_REDIS_PW",
	}}}
	only := func(name string) func(string) (string, bool) {
		return func(k string) (string, bool) { return "pw", k == name }
	}
	if _, err := sharedClient(cfg, only("PORTCULLIS_TEST_REDIS_PW")); err == nil || !strings.Contains(err.Error(), "shared.redis.sentinel.password_env") ||
		!strings.Contains(err.Error(), "PORTCULLIS_TEST_SENTINEL_PW") {
		t.Errorf("unset sentinel password variable: %v", err)
	}
	both := func(string) (string, bool) { return "pw", true }
	rdb, err := sharedClient(cfg, both)
	if err != nil {
		t.Fatal(err)
	}
	if o := rdb.(*redis.Client).Options(); o.Addr != "FailoverClient" || o.Password != "pw" {
		t.Errorf("sentinel: a %T to %q", rdb, o.Addr)
	}
	_ = rdb.Close()
	cfg.Shared.Redis = &config.SharedRedis{Cluster: &config.SharedCluster{Addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}}}
	rdb, err = sharedClient(cfg, both)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Errorf("cluster: a %T", rdb)
	}
	_ = rdb.Close()
}
