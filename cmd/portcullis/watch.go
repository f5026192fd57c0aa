package main

import (
	"context"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
)

// startWatches starts re-verifying cfg's watched references on p until
// ctx ends. A reference that does not parse or route refuses the start.
func startWatches(ctx context.Context, cfg *config.Config, p *proxy.Proxy, logger *zap.Logger) error {
	if len(cfg.Watch) == 0 {
		return nil
	}
	watches := make([]proxy.Watch, 0, len(cfg.Watch))
	refs := make([]string, 0, len(cfg.Watch))
	for _, w := range cfg.Watch {
		watches = append(watches, proxy.Watch{Ref: w.Ref, Every: w.Every.D(), StaleAfter: w.StaleAfter.D()})
		refs = append(refs, w.Ref)
	}
	w, err := p.NewWatcher(watches, proxy.WithWatchConcurrency(cfg.Limits.WatchConcurrency))
	if err != nil {
		return err
	}
	logger.Info("watching references", zap.Strings("refs", refs), zap.Int("concurrency", cfg.Limits.WatchConcurrency))
	go w.Run(ctx)
	return nil
}
