package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// ServeConfig says where and how Serve listens.
type ServeConfig struct {
	Addr      string // registry listener, e.g. ":5000"
	AdminAddr string // admin listener (/metrics, /healthz, …); "" disables it
	// TLSCert and TLSKey are PEM files; both empty serves plain HTTP.
	TLSCert, TLSKey string
	// Grace is how long in-flight pulls may finish after ctx ends (default 30s).
	Grace  time.Duration
	Logger *zap.Logger
	// Ready, when set, is called with the bound registry and admin
	// addresses once both listen (the admin address is "" when disabled).
	Ready func(addr, admin string)
}

// Serve runs p on the registry listener and its admin handler on the admin
// listener until ctx ends, then marks p draining (so /readyz fails and load
// balancers stop sending) and shuts both down gracefully.
func Serve(ctx context.Context, p *Proxy, sc ServeConfig) error {
	log := sc.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if sc.Grace <= 0 {
		sc.Grace = 30 * time.Second
	}
	regLn, err := net.Listen("tcp", sc.Addr)
	if err != nil {
		return err
	}
	if sc.TLSCert != "" || sc.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(sc.TLSCert, sc.TLSKey)
		if err != nil {
			_ = regLn.Close()
			return fmt.Errorf("tls: %w", err)
		}
		regLn = tls.NewListener(regLn, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	// Blobs can be gigabytes, so there is no overall write timeout; slow
	// clients are bounded by the header, read and idle timeouts instead.
	reg := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
	servers := []*http.Server{reg}
	errc := make(chan error, 2)
	go func() { errc <- reg.Serve(regLn) }()
	log.Info("serving", zap.String("listen", regLn.Addr().String()), zap.Bool("tls", sc.TLSCert != ""))

	adminAddr := ""
	if sc.AdminAddr != "" {
		admLn, err := net.Listen("tcp", sc.AdminAddr)
		if err != nil {
			_ = reg.Close()
			return err
		}
		adm := &http.Server{
			Handler:           p.AdminHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
		}
		servers = append(servers, adm)
		go func() { errc <- adm.Serve(admLn) }()
		adminAddr = admLn.Addr().String()
		log.Info("admin", zap.String("listen", adminAddr))
	}
	if sc.Ready != nil {
		sc.Ready(regLn.Addr().String(), adminAddr)
	}

	select {
	case err := <-errc:
		for _, s := range servers {
			_ = s.Close()
		}
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", zap.Duration("grace", sc.Grace))
	p.SetDraining(true)
	sctx, cancel := context.WithTimeout(context.Background(), sc.Grace)
	defer cancel()
	var errs []error
	for _, s := range servers {
		if err := s.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
