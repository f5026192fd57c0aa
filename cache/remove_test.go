package cache_test

import (
	"testing"
	"time"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/verify"
)

func TestVerdictsRemove(t *testing.T) {
	t.Parallel()
	c, err := cache.NewVerdicts(10, time.Hour, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	signer := verify.Signer{Authority: "release", Kind: "key", Key: "release.pub", KeyID: "ab", Evidence: "sigstore-bundle"}
	c.Add("a", verify.Verdict{Allowed: true, Boundary: "prod", Digest: "sha256:aa", Signers: []verify.Signer{signer}})
	c.Add("b", verify.Verdict{Allowed: true, Boundary: "prod", Digest: "sha256:bb"})
	c.Add("c", verify.Verdict{Allowed: false, Boundary: "dev", Digest: "sha256:cc"})
	c.Remove("c")
	if _, ok := c.Get("c"); ok {
		t.Fatal("removed verdict still cached")
	}
	n := c.RemoveFunc(func(v verify.Verdict) bool {
		return len(v.Signers) > 0 && v.Signers[0].KeyID == "ab"
	})
	if n != 1 {
		t.Fatalf("RemoveFunc removed %d, want 1", n)
	}
	if _, ok := c.Get("a"); ok {
		t.Fatal("matching verdict still cached")
	}
	if v, ok := c.Get("b"); !ok || v.Digest != "sha256:bb" {
		t.Fatal("non-matching verdict was removed")
	}
}
