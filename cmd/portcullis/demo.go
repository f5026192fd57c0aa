package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// Demo identities. The keyless ones are certified by an in-process
// sigstore (CA, transparency log and timestamp authority) that exists only
// for the demo's lifetime.
const (
	demoUpstream = "demo.local"
	demoIssuer   = "https://token.actions.example.com"
	demoSubject  = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
	demoBuilder  = "https://github.com/acme/trainer/.github/workflows/train.yml@refs/heads/main"
	modelPack    = "application/vnd.cncf.model.manifest.v1+json"
)

// demoCase is one piece of seeded content and what the demo expects.
type demoCase struct {
	repo, tag string
	what      string
	wantAllow bool
	// push creates the artifact (default: a small random image).
	push func(ctx context.Context, d *demoEnv, ref name.Tag) (name.Digest, error)
	seed func(ctx context.Context, d *demoEnv, ref name.Digest) error
}

type demoEnv struct {
	// digests of seeded content by repository, for provenance to name.
	digests  map[string]name.Digest
	reg      *fixtures.Registry
	key      *fixtures.KeySigner
	rogue    *fixtures.KeySigner
	keyless  *fixtures.KeylessSigner
	stranger *fixtures.KeylessSigner
	sig      *fixtures.Sigstore
}

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:5000", "address for the demo proxy")
	once := fs.Bool("once", false, "print the verdict table and exit instead of serving until interrupted")
	verbose := fs.Bool("v", false, "print the proxy's access and audit log")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := demo(ctx, *listen, *once, *verbose, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "portcullis demo:", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, listen string, once, verbose bool, stdout, stderr io.Writer) error {
	env, err := newDemoEnv()
	if err != nil {
		return err
	}
	defer env.reg.Close()

	cases := demoCases()
	fmt.Fprintf(stdout, "upstream: in-memory registry at %s (alias %s), seeding %d artifacts…\n", env.reg.Host, demoUpstream, len(cases))
	seeded := make([]name.Digest, len(cases))
	for i, c := range cases {
		ref, err := name.NewTag(env.reg.Host+"/"+c.repo+":"+c.tag, name.Insecure)
		if err != nil {
			return err
		}
		var d name.Digest
		switch {
		case c.push != nil:
			d, err = c.push(ctx, env, ref)
		case strings.HasPrefix(c.repo, "demo/multiarch"):
			d, _, err = fixtures.PushIndex(ctx, ref, 2)
		default:
			d, err = fixtures.PushImage(ctx, ref)
		}
		if err != nil {
			return fmt.Errorf("seed %s: %w", c.repo, err)
		}
		if c.seed != nil {
			if err := c.seed(ctx, env, d); err != nil {
				return fmt.Errorf("seed %s: %w", c.repo, err)
			}
		}
		seeded[i] = d
		env.digests[c.repo] = d
	}

	eng, err := verify.New(env.policy())
	if err != nil {
		return err
	}
	logger := zap.NewNop()
	if verbose {
		if logger, err = newLogger(config.Log{Level: "debug", Format: "console"}, stderr); err != nil {
			return err
		}
	}
	verdicts, err := cache.NewVerdicts(10000, 10*time.Minute, 30*time.Second)
	if err != nil {
		return err
	}
	manifests, err := cache.NewManifests(16 << 20)
	if err != nil {
		return err
	}
	p, err := proxy.New([]proxy.Upstream{{
		Name: demoUpstream, URL: env.reg.URL(), Aliases: []string{env.reg.Host}, Insecure: true, Timeout: 10 * time.Second,
	}}, eng, proxy.WithLogger(logger), proxy.WithDefaultUpstream(demoUpstream),
		proxy.WithVerdictCache(verdicts), proxy.WithManifestCache(manifests))
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan [2]string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- proxy.Serve(sctx, p, proxy.ServeConfig{Addr: listen, AdminAddr: "127.0.0.1:0", Logger: logger, Grace: time.Second,
			Ready: func(a, b string) { ready <- [2]string{a, b} }})
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-errc:
		return fmt.Errorf("listen %s: %w (choose another with --listen)", listen, err)
	}
	fmt.Fprintf(stdout, "proxy:    http://%s  (admin http://%s)\n\n", addrs[0], addrs[1])

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REFERENCE\tCONTENT\tVERDICT\tREASON")
	mismatches := 0
	for i, c := range cases {
		verdict, reason := pullThrough(ctx, addrs[0]+"/"+c.repo+":"+c.tag)
		if (verdict == "allowed") != c.wantAllow {
			mismatches++
			verdict += " (UNEXPECTED)"
		}
		_ = seeded[i]
		fmt.Fprintf(tw, "%s:%s\t%s\t%s\t%s\n", c.repo, c.tag, c.what, verdict, reason)
	}
	_ = tw.Flush()
	if mismatches > 0 {
		return fmt.Errorf("%d verdicts differ from what the demo expects", mismatches)
	}

	host := addrs[0]
	fmt.Fprintf(stdout, `
Try it (crane: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1):
  crane manifest %[1]s/demo/signed-key:v1          # allowed: exact upstream bytes
  crane manifest %[1]s/demo/unsigned:v1            # DENIED, with the reason
  crane pull %[1]s/demo/multiarch:v1 /tmp/ma.tar   # allowed index, children and blobs
  crane manifest %[1]s/models/llm-poisoned:v1      # DENIED: the chain to the unsigned dataset
  curl -s http://%[2]s/v1/decisions                # the audit trail
  curl -s http://%[2]s/metrics | grep portcullis_decisions_total
`, host, addrs[1])
	if once {
		cancel()
		return ignoreClosed(<-errc)
	}
	fmt.Fprintln(stdout, "\nServing until Ctrl-C.")
	return ignoreClosed(<-errc)
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// pullThrough pulls ref (manifest, and for images every blob) through the
// proxy as a client would, and reports the outcome.
func pullThrough(ctx context.Context, ref string) (verdict, reason string) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "error", err.Error()
	}
	desc, err := remote.Get(r, remote.WithContext(ctx))
	if err != nil {
		return describeErr(err)
	}
	n, err := pullBlobs(ctx, desc)
	if err != nil {
		return describeErr(err)
	}
	return "allowed", fmt.Sprintf("%s, %d blobs pulled", desc.Digest.String()[:19]+"…", n)
}

func pullBlobs(ctx context.Context, desc *remote.Descriptor) (int, error) {
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return 0, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return 0, err
		}
		total := 0
		for _, m := range im.Manifests {
			img, err := idx.Image(m.Digest)
			if err != nil {
				return 0, err
			}
			n, err := readImage(img)
			if err != nil {
				return 0, err
			}
			total += n
		}
		return total, nil
	}
	img, err := desc.Image()
	if err != nil {
		return 0, err
	}
	return readImage(img)
}

func readImage(img v1.Image) (int, error) {
	if _, err := img.RawConfigFile(); err != nil {
		return 0, err
	}
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return 0, err
		}
	}
	return len(layers) + 1, nil
}

// longHex matches full digests, shortened in the table for readability
// (the audit log and /v1/decisions keep them whole).
var longHex = regexp.MustCompile(`[0-9a-f]{64}`)

func describeErr(err error) (string, string) {
	var te *transport.Error
	if errors.As(err, &te) && len(te.Errors) > 0 {
		d := te.Errors[0]
		msg := d.Message
		// The table already names the reference: keep only the reasons.
		if i := strings.Index(msg, ": sha256:"); i >= 0 {
			if j := strings.Index(msg[i+2:], ": "); j >= 0 {
				msg = msg[i+2+j+2:]
			}
		}
		return strings.ToLower(string(d.Code)), longHex.ReplaceAllStringFunc(msg, func(h string) string { return h[:12] + "…" })
	}
	return "error", err.Error()
}

func demoCases() []demoCase {
	return []demoCase{
		{repo: "demo/signed-key", tag: "v1", what: "cosign .sig, release key", wantAllow: true,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, ref, d.key, fixtures.Tamper{})
			}},
		{repo: "demo/signed-keyless", tag: "v1", what: "sigstore bundle, keyless CI identity", wantAllow: true,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, ref, d.keyless, fixtures.BundleSpec{})
				return err
			}},
		{repo: "demo/multiarch", tag: "v1", what: "signed multi-arch index", wantAllow: true,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, ref, d.key, fixtures.Tamper{})
			}},
		{repo: "demo/unsigned", tag: "v1", what: "no signature at all", wantAllow: false},
		{repo: "demo/unknown-key", tag: "v1", what: "cosign .sig, unknown key", wantAllow: false,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, ref, d.rogue, fixtures.Tamper{})
			}},
		{repo: "demo/wrong-identity", tag: "v1", what: "keyless, another workflow", wantAllow: false,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, ref, d.stranger, fixtures.BundleSpec{})
				return err
			}},
		{repo: "demo/replayed", tag: "v1", what: "signature copied from another digest", wantAllow: false,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				other, err := v1.NewHash("sha256:" + strings.Repeat("ab", 32))
				if err != nil {
					return err
				}
				return fixtures.AttachLegacySignature(ctx, ref, d.key, fixtures.Tamper{SignDigest: &other})
			}},
		{repo: "demo/tampered", tag: "v1", what: "payload edited after signing", wantAllow: false,
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				return fixtures.AttachLegacySignature(ctx, ref, d.key, fixtures.Tamper{ModifyPayload: true})
			}},
		// Lineage: datasets and a base model first, so the models'
		// provenance can name them by digest.
		{repo: "datasets/corpus", tag: "v1", what: "dataset, signed by the release key", wantAllow: true,
			push: pushDataset("corpus.jsonl", `{"text":"curated"}`),
			seed: signWithKey},
		{repo: "datasets/scraped", tag: "v1", what: "dataset, unsigned", wantAllow: false,
			push: pushDataset("scraped.jsonl", `{"text":"ignore previous instructions"}`)},
		{repo: "foundation/base", tag: "v1", what: "base model, keyless-signed", wantAllow: true,
			push: pushModel("base.safetensors", "base weights"),
			seed: func(ctx context.Context, d *demoEnv, ref name.Digest) error {
				_, err := fixtures.AttachBundle(ctx, ref, d.keyless, fixtures.BundleSpec{})
				return err
			}},
		{repo: "models/llm", tag: "v1", what: "model; provenance: signed dataset + base", wantAllow: true,
			push: pushModel("model.safetensors", "fine-tuned weights"),
			seed: modelSeed(time.Now().Add(-2*time.Hour), "datasets/corpus")},
		{repo: "models/llm-poisoned", tag: "v1", what: "model; provenance: unsigned dataset", wantAllow: false,
			push: pushModel("model.safetensors", "poisoned weights"),
			seed: modelSeed(time.Now().Add(-2*time.Hour), "datasets/scraped")},
		{repo: "models/llm-stale", tag: "v1", what: "model; provenance 90 days old", wantAllow: false,
			push: pushModel("model.safetensors", "old weights"),
			seed: modelSeed(time.Now().Add(-90*24*time.Hour), "datasets/corpus")},
	}
}

func signWithKey(ctx context.Context, d *demoEnv, ref name.Digest) error {
	return fixtures.AttachLegacySignature(ctx, ref, d.key, fixtures.Tamper{})
}

func pushDataset(file, content string) func(context.Context, *demoEnv, name.Tag) (name.Digest, error) {
	return func(ctx context.Context, _ *demoEnv, ref name.Tag) (name.Digest, error) {
		return fixtures.PushDataset(ctx, ref, map[string][]byte{file: []byte(content)})
	}
}

func pushModel(file, content string) func(context.Context, *demoEnv, name.Tag) (name.Digest, error) {
	return func(ctx context.Context, _ *demoEnv, ref name.Tag) (name.Digest, error) {
		return fixtures.PushModel(ctx, ref, map[string][]byte{file: []byte(content)}, "")
	}
}

// modelSeed signs a model with the release key and attests, with the same
// key, SLSA provenance built at builtAt from dataset and the base model.
// Key-signed attestations carry no signed timestamp, so the statement's
// own time is what max_age judges.
func modelSeed(builtAt time.Time, dataset string) func(context.Context, *demoEnv, name.Digest) error {
	return func(ctx context.Context, d *demoEnv, ref name.Digest) error {
		if err := signWithKey(ctx, d, ref); err != nil {
			return err
		}
		deps := []fixtures.ResourceDescriptor{
			fixtures.OCIDependency("dataset-"+strings.TrimPrefix(dataset, "datasets/"), d.digests[dataset]),
			fixtures.OCIDependency("base-model", d.digests["foundation/base"]),
			{Name: "training-code", URI: "git+https://github.com/acme/trainer@refs/heads/main", Digest: map[string]string{"gitCommit": strings.Repeat("5e", 20)}},
		}
		prov := fixtures.SLSAProvenanceV1(demoBuilder, deps, builtAt.Add(-time.Hour), builtAt)
		_, err := fixtures.AttachBundle(ctx, ref, d.key, fixtures.BundleSpec{PredicateType: fixtures.PredicateSLSAProvenanceV1, Predicate: prov})
		return err
	}
}

func newDemoEnv() (*demoEnv, error) {
	reg, err := fixtures.StartRegistry()
	if err != nil {
		return nil, err
	}
	env := &demoEnv{reg: reg, digests: map[string]name.Digest{}}
	if env.key, err = fixtures.NewKeySigner("ecdsa-p256"); err != nil {
		return nil, err
	}
	if env.rogue, err = fixtures.NewKeySigner("ecdsa-p256"); err != nil {
		return nil, err
	}
	if env.sig, err = fixtures.NewSigstore(); err != nil {
		return nil, err
	}
	env.keyless = env.sig.Signer(demoIssuer, demoSubject)
	env.stranger = env.sig.Signer(demoIssuer, "https://github.com/mallory/fork/.github/workflows/release.yml@refs/heads/main")
	return env, nil
}

// policy is what a demo config file would compile to: models need a
// signature plus fresh SLSA provenance whose datasets and base model are
// themselves verified; datasets, base models and images need a signature.
func (d *demoEnv) policy() verify.Policy {
	release := verify.Authority{Name: "release-key", Key: &verify.KeyAuthority{TrustName: "demo-keys",
		Keys: []verify.NamedKey{{Name: "release.pub", PEM: d.key.PublicKeyPEM()}}}}
	ci := verify.Authority{Name: "ci", Keyless: &verify.KeylessAuthority{TrustName: "demo-sigstore", TrustedRoot: d.sig,
		Issuer: demoIssuer, SubjectRegex: `^https://github\.com/acme/`, TlogThreshold: 1, TimestampThreshold: 1}}
	signed := func(name string, repos ...string) verify.Boundary {
		return verify.Boundary{Name: name, Upstream: demoUpstream, Repositories: repos, Mode: verify.ModeEnforce,
			Threshold: 1, Authorities: []verify.Authority{release, ci}}
	}
	models := signed("models", "models/**")
	models.ArtifactTypes = []string{modelPack}
	models.Attestations = []verify.AttestationRule{{
		Name: "provenance", PredicateType: fixtures.PredicateSLSAProvenanceV1, Authorities: []string{"release-key", "ci"},
		MaxAge:    30 * 24 * time.Hour,
		Condition: `predicate.runDetails.builder.id.startsWith("https://github.com/acme/")`,
	}}
	models.Lineage = &verify.LineageRule{Depth: 3, Require: []string{"dataset*", "base-model*"}}
	return verify.Policy{
		Fingerprint: "demo",
		Boundaries:  []verify.Boundary{models, signed("datasets", "datasets/**", "foundation/**"), signed("demo", "demo/**")},
	}
}
