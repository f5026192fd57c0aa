package cache_test

import (
	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/proxy"
)

// The proxy declares the interfaces it needs; the cache satisfies them
// without importing the proxy.
var (
	_ proxy.VerdictCache  = (*cache.Verdicts)(nil)
	_ proxy.ManifestCache = (*cache.Manifests)(nil)
)
