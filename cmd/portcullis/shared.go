package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/cache/shared"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// withShared, when shared.redis is set, adds the options that share
// verdicts, blob gating and index coverage with the other replicas through
// Redis, serve the shared-state metrics with the proxy's and show an
// outage in /readyz. stop closes the client. Redis being down at start is
// not an error: the replica works alone until it is reachable.
func withShared(cfg *config.Config, logger *zap.Logger, extra []proxy.Option) (opts []proxy.Option, stop func(), err error) {
	rc := cfg.Shared.Redis
	if rc == nil {
		return extra, func() {}, nil
	}
	rdb, err := sharedClient(cfg, os.LookupEnv)
	if err != nil {
		return nil, nil, err
	}
	stop = func() { _ = rdb.Close() }
	guard := shared.NewGuard(logger.Named("shared"), nil, rc.Timeout.D())
	l1, err := cache.NewVerdicts(cfg.Cache.Verdicts, cfg.Cache.AllowTTL.D(), cfg.Cache.DenyTTL.D())
	if err != nil {
		stop()
		return nil, nil, err
	}
	verdicts, err := shared.NewVerdicts(l1, rdb, guard, shared.VerdictsOptions{
		KeyPrefix: rc.KeyPrefix, AllowTTL: cfg.Cache.AllowTTL.D(), DenyTTL: cfg.Cache.DenyTTL.D(),
		Size: cfg.Cache.Verdicts, MaxValueBytes: int(rc.MaxValueBytes),
	})
	if err != nil {
		stop()
		return nil, nil, err
	}
	// The local manifest cache given by serve is replaced by one with
	// Redis behind it: a verdict read from Redis then comes with its
	// manifest's bytes, not an upstream fetch of them.
	localManifests, err := cache.NewManifests(int64(cfg.Cache.ManifestMiB) << 20)
	if err != nil {
		stop()
		return nil, nil, err
	}
	manifests, err := shared.NewManifests(localManifests, rdb, guard, shared.ManifestsOptions{
		KeyPrefix: rc.KeyPrefix, TTL: max(cfg.Cache.AllowTTL.D(), time.Minute), MaxValueBytes: int(rc.MaxValueBytes),
	})
	if err != nil {
		stop()
		return nil, nil, err
	}
	if err := verdicts.ReadBytesWith(manifests); err != nil {
		stop()
		return nil, nil, err
	}
	gating, err := shared.NewGating(rdb, rc.KeyPrefix, guard)
	if err != nil {
		stop()
		return nil, nil, err
	}
	host, _ := os.Hostname()
	leases, err := shared.NewLeases(rdb, guard, shared.LeasesOptions{KeyPrefix: rc.KeyPrefix, Replica: host})
	if err != nil {
		stop()
		return nil, nil, err
	}
	bus, err := shared.NewBus(rdb, guard, shared.BusOptions{KeyPrefix: rc.KeyPrefix, Replica: shared.ReplicaID(),
		MaxValueBytes: int(rc.MaxValueBytes), MaxEntries: cfg.Revocations.MaxEntries, Logger: logger.Named("shared")})
	if err != nil {
		stop()
		return nil, nil, err
	}
	stop = func() { bus.Close(); _ = rdb.Close() }
	logger.Info("shared state: redis", sharedTopology(rc), zap.Bool("tls", rc.TLS), zap.Int("db", rc.DB),
		zap.String("key_prefix", rc.KeyPrefix), zap.Bool("acl_user", rc.Username != ""), zap.Duration("timeout", rc.Timeout.D()))
	if !rc.TLS {
		logger.Info("shared state: redis connection is not encrypted; keep redis on a network only the proxies reach")
	}
	return append(extra,
		proxy.WithVerdictCache(verdicts),
		proxy.WithManifestCache(manifests),
		proxy.WithSharedState(gating),
		proxy.WithBroadcast(bus),
		proxy.WithSharedFlight(leases),
		proxy.WithCollectors(guard),
		proxy.WithReadinessDetail(guard.Detail),
	), stop, nil
}

// sharedClient builds the Redis client, reading the password from the
// environment. Errors name the variable, never its value.
func sharedClient(cfg *config.Config, lookupEnv func(string) (string, bool)) (redis.UniversalClient, error) {
	rc := cfg.Shared.Redis
	o := shared.ClientOptions{Addr: rc.Addr, Username: rc.Username, DB: rc.DB, Timeout: rc.Timeout.D()}
	password := func(path, env string) (string, error) {
		if env == "" {
			return "", nil
		}
		pw, ok := lookupEnv(env)
		if !ok || pw == "" {
			return "", fmt.Errorf("%s: environment variable %s is not set", path, env)
		}
		return pw, nil
	}
	var err error
	if o.Password, err = password("shared.redis.password_env", rc.PasswordEnv); err != nil {
		return nil, err
	}
	if sn := rc.Sentinel; sn != nil {
		o.Sentinel = &shared.SentinelOptions{Master: sn.Master, Addrs: sn.Addrs, Username: sn.Username}
		if o.Sentinel.Password, err = password("shared.redis.sentinel.password_env", sn.PasswordEnv); err != nil {
			return nil, err
		}
	}
	if rc.Cluster != nil {
		o.Cluster = &shared.ClusterOptions{Addrs: rc.Cluster.Addrs}
	}
	if rc.TLS {
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: rc.ServerName}
		if rc.CAFile != "" {
			pem, err := os.ReadFile(cfg.Resolve(rc.CAFile))
			if err != nil {
				return nil, fmt.Errorf("shared.redis.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("shared.redis.ca_file: %s holds no PEM certificate", cfg.Resolve(rc.CAFile))
			}
			o.TLS.RootCAs = pool
		}
	}
	return shared.NewClient(o)
}

// sharedTopology names the Redis servers for the start log.
func sharedTopology(rc *config.SharedRedis) zap.Field {
	switch {
	case rc.Sentinel != nil:
		return zap.Dict("sentinel", zap.String("master", rc.Sentinel.Master), zap.Strings("addrs", rc.Sentinel.Addrs))
	case rc.Cluster != nil:
		return zap.Strings("cluster", rc.Cluster.Addrs)
	}
	return zap.String("addr", rc.Addr)
}
