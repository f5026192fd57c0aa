package main

import (
	"fmt"
	"io"

	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/config"
)

// logRefusedBoundaries logs every problem of a boundary file that could
// not be loaded (a stand-in denies what it matches) or reloaded (its last
// good version keeps deciding), each with its file, line and key path.
func logRefusedBoundaries(cfg *config.Config, logger *zap.Logger) {
	for _, b := range cfg.Boundaries {
		for _, p := range b.Refused {
			logger.Error("boundary file refused: what it matches is denied until it loads",
				zap.String("boundary", b.Name), zap.String("file", p.File), zap.Int("line", p.Line), zap.String("path", p.Path), zap.String("problem", p.Message))
		}
		for _, p := range b.Stale {
			logger.Error("boundary file not reloaded: its last good version keeps deciding",
				zap.String("boundary", b.Name), zap.String("file", p.File), zap.Int("line", p.Line), zap.String("path", p.Path), zap.String("problem", p.Message))
		}
	}
}

// reportRefusedBoundaries prints the problems of boundary files for
// config check and reports whether there were any.
func reportRefusedBoundaries(cfg *config.Config, w io.Writer) bool {
	problems := cfg.RefusedBoundaries()
	for _, p := range problems {
		fmt.Fprintln(w, p.Error())
	}
	return len(problems) > 0
}
