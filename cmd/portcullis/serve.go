package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/cmd/portcullis/internal/wire"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/verify"
)

// shutdownGrace is how long in-flight pulls get to finish after SIGTERM.
const shutdownGrace = 30 * time.Second

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (required)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: portcullis serve --config FILE")
		return 2
	}
	// SIGHUP reloads the configuration instead of ending the process; one
	// that arrives while starting is a reload once serving.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, eng, err := loadAll(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	logger, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer func() { _ = logger.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = withReload(ctx, reloadHooks{hup: hup})
	if err := serve(ctx, cfg, eng, logger, nil); err != nil {
		logger.Error("serve failed", zap.Error(err))
		return 1
	}
	return 0
}

// newProxy wires a Proxy from validated config and a compiled engine.
func newProxy(cfg *config.Config, eng *verify.Engine, logger *zap.Logger, extra ...proxy.Option) (*proxy.Proxy, error) {
	ups, err := wire.Upstreams(cfg)
	if err != nil {
		return nil, err
	}
	verdicts, err := cache.NewVerdicts(cfg.Cache.Verdicts, cfg.Cache.AllowTTL.D(), cfg.Cache.DenyTTL.D())
	if err != nil {
		return nil, err
	}
	manifests, err := cache.NewManifests(int64(cfg.Cache.ManifestMiB) << 20)
	if err != nil {
		return nil, err
	}
	opts := []proxy.Option{
		proxy.WithLogger(logger),
		proxy.WithVerdictCache(verdicts),
		proxy.WithManifestCache(manifests),
		// Parsed manifests are bounded as their bytes are: a parsed form
		// is about as large as its manifest.
		proxy.WithParsedManifestBytes(int64(cfg.Cache.ManifestMiB) << 20),
		proxy.WithBlobGating(!cfg.InsecureDisableBlobGating),
		proxy.WithTagTTL(cfg.Cache.TagTTL.D()),
		proxy.WithVerifyTimeout(cfg.VerifyTimeout.D()),
		// An index covers its children exactly as long as its allow
		// verdict is cached.
		proxy.WithCoverageTTL(cfg.Cache.AllowTTL.D()),
		proxy.WithStreamBufferBudget(cfg.Limits.StreamBufferBytes.Int64()),
		proxy.WithClientStallGrace(cfg.Limits.StallGrace()),
		proxy.WithServedEvidenceBytes(cfg.Limits.ServedEvidenceBytes.Int64()),
	}
	running, queued := cfg.Limits.VerificationSlots(runtime.GOMAXPROCS(0))
	opts = append(opts, proxy.WithMaxVerifications(running), proxy.WithVerifyQueue(queued, cfg.Limits.VerifyQueueWait.D()))
	if cfg.DefaultUpstream != "" {
		opts = append(opts, proxy.WithDefaultUpstream(cfg.DefaultUpstream))
	}
	if cfg.EvidenceTypes != nil {
		opts = append(opts, proxy.WithEvidenceTypes(*cfg.EvidenceTypes))
	}
	return proxy.New(ups, eng, append(opts, extra...)...)
}

// serve runs the proxy until ctx ends. ready, when non-nil, is told the
// bound addresses (tests and the demo listen on port 0).
func serve(ctx context.Context, cfg *config.Config, eng *verify.Engine, logger *zap.Logger, ready func(addr, admin string), extra ...proxy.Option) error {
	for _, w := range cfg.Warnings() {
		logger.Warn("insecure setting in effect", zap.String("setting", w))
	}
	logRefusedBoundaries(cfg, logger)
	// Only serve signs summaries: `portcullis verify` needs no key.
	sumOpt, signer, err := wire.Summaries(cfg)
	if err != nil {
		return err
	}
	if sumOpt != nil {
		extra = append([]proxy.Option{sumOpt}, extra...)
		pub, _ := signer.PublicKeyPEM()
		logger.Info("signing verification summaries", zap.String("key", cfg.Resolve(cfg.Summaries.Key)), zap.ByteString("public_key", pub))
	}
	if extra, err = withClientAuth(cfg, logger, extra); err != nil {
		return err
	}
	extra, stopTracing, err := withTracing(cfg, logger, extra)
	if err != nil {
		return err
	}
	defer stopTracing()
	extra, stopAlerts, err := withAlerts(cfg, logger, extra)
	if err != nil {
		return err
	}
	defer stopAlerts()
	extra, stopShared, err := withShared(cfg, logger, extra)
	if err != nil {
		return err
	}
	defer stopShared()
	if extra, err = withBlobCache(ctx, cfg, logger, extra); err != nil {
		return err
	}
	if extra, err = withRevocations(ctx, cfg, logger, extra); err != nil {
		return err
	}
	extra = withTrustedRoots(cfg, logger, extra)
	p, err := newProxy(cfg, eng, logger, extra...)
	if err != nil {
		return err
	}
	logger.Info("policy loaded", zap.String("fingerprint", eng.Fingerprint()), zap.String("version", version),
		zap.Int("upstreams", len(cfg.Upstreams)), zap.Int("boundaries", len(cfg.Boundaries)))
	if err := startWatches(ctx, cfg, p, logger); err != nil {
		return err
	}
	sc, err := serveConfig(cfg)
	if err != nil {
		return err
	}
	sc.Logger, sc.Ready = logger, ready
	if err := startReload(ctx, cfg, eng.Fingerprint(), p, logger, &sc); err != nil {
		return err
	}
	return proxy.Serve(ctx, p, sc)
}

// serveConfig is how the listeners are set up from cfg.
func serveConfig(cfg *config.Config) (proxy.ServeConfig, error) {
	sc := proxy.ServeConfig{Addr: cfg.Listen, AdminAddr: cfg.Admin, Grace: shutdownGrace,
		ClientIdleTimeout: cfg.Limits.ClientIdleTimeout.D(), MaxConns: cfg.Limits.ClientConnections,
		MaxHeaderBytes: int(cfg.Limits.HeaderBytes)}
	if cfg.TLS != nil {
		sc.TLSCert, sc.TLSKey = cfg.Resolve(cfg.TLS.Cert), cfg.Resolve(cfg.TLS.Key)
	}
	if cfg.BlobCache != nil {
		var err error
		if sc.Sendfile, err = proxy.ParseSendfileMode(cfg.BlobCache.Sendfile); err != nil {
			return sc, err
		}
	}
	return sc, nil
}

func newLogger(l config.Log, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(orDefault(l.Level, "info"))
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch orDefault(l.Format, "json") {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("log.format: %q is not json or console", l.Format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
