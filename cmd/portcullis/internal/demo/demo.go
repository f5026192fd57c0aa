package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap"

	"github.com/portcullis-oci/portcullis/cache"
	"github.com/portcullis-oci/portcullis/proxy"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

// Options configures Run.
type Options struct {
	// Listen is the demo proxy's address; port 0 picks a free one.
	Listen string
	// Once prints the verdict table and returns instead of serving until
	// ctx ends.
	Once bool
	// Logger receives the proxy's access and audit log (default: none).
	Logger *zap.Logger
	Stdout io.Writer
}

// Run seeds the in-process upstream, puts a proxy in front of it, pulls
// every seeded reference through the proxy and prints the verdicts. It
// fails when a verdict differs from what the seeded content should get.
func Run(ctx context.Context, o Options) error {
	logger := o.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	stdout := o.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	env, err := newEnv()
	if err != nil {
		return err
	}
	defer env.reg.Close()

	cases := seedCases()
	fmt.Fprintf(stdout, "upstream: in-memory registry at %s (alias %s), seeding %d artifacts…\n", env.reg.Host, upstreamName, len(cases))
	if err := env.seed(ctx, cases); err != nil {
		return err
	}

	eng, err := verify.New(env.policy())
	if err != nil {
		return fmt.Errorf("failed to compile the demo policy: %w", err)
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
		Name: upstreamName, URL: env.reg.URL(), Aliases: []string{env.reg.Host}, Insecure: true, Timeout: 10 * time.Second,
	}}, eng, proxy.WithLogger(logger), proxy.WithDefaultUpstream(upstreamName),
		proxy.WithVerdictCache(verdicts), proxy.WithManifestCache(manifests))
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan [2]string, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- proxy.Serve(sctx, p, proxy.ServeConfig{Addr: o.Listen, AdminAddr: "127.0.0.1:0", Logger: logger, Grace: time.Second,
			Ready: func(a, b string) { ready <- [2]string{a, b} }})
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-errc:
		return fmt.Errorf("failed to listen on %s: %w (choose another with --listen)", o.Listen, err)
	}
	fmt.Fprintf(stdout, "proxy:    http://%s  (admin http://%s)\n\n", addrs[0], addrs[1])

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REFERENCE\tCONTENT\tVERDICT\tREASON")
	mismatches := 0
	for _, c := range cases {
		verdict, reason := pullThrough(ctx, addrs[0]+"/"+c.repo+":"+c.tag)
		if (verdict == "allowed") != c.wantAllow {
			mismatches++
			verdict += " (UNEXPECTED)"
		}
		fmt.Fprintf(tw, "%s:%s\t%s\t%s\t%s\n", c.repo, c.tag, c.what, verdict, reason)
	}
	_ = tw.Flush()
	if mismatches > 0 {
		cancel()
		<-errc
		return fmt.Errorf("%d verdicts differ from what the demo expects", mismatches)
	}

	fmt.Fprintf(stdout, `
Try it (crane: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1):
  crane manifest %[1]s/demo/signed-key:v1          # allowed: exact upstream bytes
  crane manifest %[1]s/demo/unsigned:v1            # DENIED, with the reason
  crane pull %[1]s/demo/multiarch:v1 /tmp/ma.tar   # allowed index, children and blobs
  crane manifest %[1]s/models/llm-poisoned:v1      # DENIED: the chain to the unsigned dataset
  curl -s http://%[2]s/v1/decisions                # the audit trail
  curl -s http://%[2]s/metrics | grep portcullis_decisions_total
`, addrs[0], addrs[1])
	if o.Once {
		cancel()
		return ignoreCanceled(<-errc)
	}
	fmt.Fprintln(stdout, "\nServing until Ctrl-C.")
	return ignoreCanceled(<-errc)
}

func ignoreCanceled(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// seed pushes every case's content to the in-process upstream, in order,
// so that later cases (models) can name earlier ones (datasets) by digest.
func (e *env) seed(ctx context.Context, cases []seedCase) error {
	for _, c := range cases {
		ref, err := name.NewTag(e.reg.Host+"/"+c.repo+":"+c.tag, name.Insecure)
		if err != nil {
			return err
		}
		var d name.Digest
		switch {
		case c.push != nil:
			d, err = c.push(ctx, e, ref)
		case c.index:
			d, _, err = fixtures.PushIndex(ctx, ref, 2)
		default:
			d, err = fixtures.PushImage(ctx, ref)
		}
		if err != nil {
			return fmt.Errorf("failed to seed %s: %w", c.repo, err)
		}
		if c.sign != nil {
			if err := c.sign(ctx, e, d); err != nil {
				return fmt.Errorf("failed to sign %s: %w", c.repo, err)
			}
		}
		e.digests[c.repo] = d
	}
	return nil
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
	n, err := pullBlobs(desc)
	if err != nil {
		return describeErr(err)
	}
	return "allowed", fmt.Sprintf("%s, %d blobs pulled", desc.Digest.String()[:19]+"…", n)
}

func pullBlobs(desc *remote.Descriptor) (int, error) {
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
