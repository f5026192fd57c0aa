package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"

// maxManifest bounds a manifest body read.
const maxManifest = 4 << 20

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		log.Fatal("usage: load herd|nodes [flags]")
	}
	switch os.Args[1] {
	case "herd":
		os.Exit(herd(os.Args[2:]))
	case "nodes":
		os.Exit(nodes(os.Args[2:]))
	default:
		log.Fatalf("load: unknown mode %q (herd, nodes)", os.Args[1])
	}
}

// digestOf is "sha256:<hex>" of b.
func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type result struct {
	status int
	dur    time.Duration
	err    error
}

func herd(args []string) int {
	fs := flag.NewFlagSet("herd", flag.ExitOnError)
	n := fs.Int("n", 300, "clients per target")
	repo := fs.String("repo", "", "repository")
	digest := fs.String("digest", "", "manifest digest (sha256:...)")
	want := fs.String("want", "", "file holding the exact manifest bytes expected (optional; the digest is always checked)")
	timeout := fs.Duration("timeout", 60*time.Second, "per request")
	_ = fs.Parse(args)
	if *repo == "" || !strings.HasPrefix(*digest, "sha256:") || fs.NArg() == 0 || *n < 1 {
		log.Fatal("usage: load herd -n N -repo REPO -digest sha256:... ADDR...")
	}
	var wantBytes []byte
	if *want != "" {
		var err error
		if wantBytes, err = os.ReadFile(*want); err != nil {
			log.Fatal(err)
		}
	}
	targets := fs.Args()
	results := make([][]result, len(targets))
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	for ti, addr := range targets {
		results[ti] = make([]result, *n)
		// One transport per target, with room for every client's own
		// connection: n nodes, n connections.
		c := &http.Client{Timeout: *timeout, Transport: &http.Transport{MaxIdleConnsPerHost: *n, DisableCompression: true}}
		url := "http://" + addr + "/v2/" + *repo + "/manifests/" + *digest
		for i := range *n {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Accept", accept)
				ready.Done()
				<-start
				t0 := time.Now()
				status, err := getManifest(c, req, *digest, wantBytes)
				results[ti][i] = result{status: status, dur: time.Since(t0), err: err}
			}()
		}
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	wall := time.Since(t0)
	failedAll, okAll := 0, 0
	var all []time.Duration
	for ti, addr := range targets {
		ok, failed := 0, 0
		var durs []time.Duration
		shown := 0
		for _, r := range results[ti] {
			durs = append(durs, r.dur)
			if r.err == nil {
				ok++
				continue
			}
			failed++
			if shown < 3 {
				shown++
				log.Printf("load: %s: status %d after %v: %v", addr, r.status, r.dur.Round(time.Millisecond), r.err)
			}
		}
		all = append(all, durs...)
		okAll += ok
		failedAll += failed
		fmt.Printf("target %s ok=%d failed=%d max_ms=%d p50_ms=%d\n", addr, ok, failed, pct(durs, 100), pct(durs, 50))
	}
	fmt.Printf("total ok=%d failed=%d max_ms=%d p50_ms=%d wall_ms=%d\n", okAll, failedAll, pct(all, 100), pct(all, 50), wall.Milliseconds())
	if failedAll > 0 {
		return 1
	}
	return 0
}

// pct is the p-th percentile of ds in milliseconds.
func pct(ds []time.Duration, p int) int64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i].Milliseconds()
}

// getManifest sends req and checks the answer is 200 with bytes hashing
// to digest (and equal to want, if given).
func getManifest(c *http.Client, req *http.Request, digest string, want []byte) (int, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
	}
	if got := digestOf(b); got != digest {
		return resp.StatusCode, fmt.Errorf("body hashes to %s", got)
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != digest {
		return resp.StatusCode, fmt.Errorf("Docker-Content-Digest %q", h)
	}
	if want != nil && !bytes.Equal(b, want) {
		return resp.StatusCode, errors.New("body differs from the expected bytes")
	}
	return resp.StatusCode, nil
}

// image is a signed image a node pulls: REPO:TAG whose manifest is DIGEST.
type image struct{ repo, tag, digest string }

type images []image

func (is *images) String() string { return fmt.Sprint(len(*is), " images") }

func (is *images) Set(s string) error {
	ref, digest, ok := strings.Cut(s, "@")
	i := strings.LastIndex(ref, ":")
	if !ok || i < 0 || !strings.HasPrefix(digest, "sha256:") {
		return fmt.Errorf("%q: want REPO:TAG@sha256:<hex>", s)
	}
	*is = append(*is, image{repo: ref[:i], tag: ref[i+1:], digest: digest})
	return nil
}

type strs []string

func (s *strs) String() string     { return strings.Join(*s, ",") }
func (s *strs) Set(v string) error { *s = append(*s, v); return nil }

// counts are one phase's outcomes.
type counts struct {
	Pulls          int // signed pulls that got every byte right
	Failed         int // signed pulls that did not, retries included
	Requests       int
	Retries        int // 503s retried
	S503           int // 503s seen on signed content
	S503NoRetry    int // 503s without a Retry-After header (any content)
	Signed403      int // signed content answered 403
	OtherFail      int // signed content answered anything else (or bytes wrong)
	Fresh          int // pulls of -fresh images among Pulls
	Unsigned       int // unsigned manifest or blob requests
	Unsigned403    int
	Unsigned503    int
	UnsignedServed int // unsigned content answered 200: must stay 0
	UnsignedOther  int // a manifest not answered 403, a blob neither 403 nor 503
}

func (c *counts) add(o counts) {
	c.Pulls += o.Pulls
	c.Failed += o.Failed
	c.Requests += o.Requests
	c.Retries += o.Retries
	c.S503 += o.S503
	c.S503NoRetry += o.S503NoRetry
	c.Signed403 += o.Signed403
	c.OtherFail += o.OtherFail
	c.Fresh += o.Fresh
	c.Unsigned += o.Unsigned
	c.Unsigned403 += o.Unsigned403
	c.Unsigned503 += o.Unsigned503
	c.UnsignedServed += o.UnsignedServed
	c.UnsignedOther += o.UnsignedOther
}

func (c counts) String() string {
	return fmt.Sprintf("pulls=%d failed=%d requests=%d retries=%d s503=%d s503_no_retry_after=%d signed_403=%d other_fail=%d fresh=%d unsigned=%d unsigned_403=%d unsigned_503=%d unsigned_served=%d unsigned_other=%d",
		c.Pulls, c.Failed, c.Requests, c.Retries, c.S503, c.S503NoRetry, c.Signed403, c.OtherFail, c.Fresh,
		c.Unsigned, c.Unsigned403, c.Unsigned503, c.UnsignedServed, c.UnsignedOther)
}

// tally files counts by phase.
type tally struct {
	mu     sync.Mutex
	order  []string
	phases map[string]*counts
	logged int
}

func (t *tally) add(phase string, c counts) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.phases[phase]
	if !ok {
		p = &counts{}
		t.phases[phase] = p
		t.order = append(t.order, phase)
	}
	p.add(c)
}

// note logs the first failures, not all of them.
func (t *tally) note(format string, a ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.logged < 20 {
		t.logged++
		log.Printf("load: "+format, a...)
	}
}

type node struct {
	id      int
	front   string
	c       *http.Client
	tr      *http.Transport
	retries int
	t       *tally
}

func nodes(args []string) int {
	fs := flag.NewFlagSet("nodes", flag.ExitOnError)
	front := fs.String("front", "", "address the nodes pull from (host:port)")
	n := fs.Int("nodes", 6, "simulated nodes")
	sourceIPs := fs.Bool("source-ips", true, "connect node i from 127.0.0.(i+2)")
	phaseFile := fs.String("phase-file", "", "file naming the current phase; \"stop\" ends the run")
	maxDur := fs.Duration("max-duration", 2*time.Minute, "end the run after this long whatever the phase file says")
	retries := fs.Int("retries", 0, "times a 503 is retried after its Retry-After")
	pause := fs.Duration("pause", 50*time.Millisecond, "between a node's rounds")
	timeout := fs.Duration("timeout", 30*time.Second, "per request")
	var base, fresh images
	var unsigned, unsignedBlobs strs
	fs.Var(&base, "image", "REPO:TAG@DIGEST pulled from the start (repeatable)")
	fs.Var(&fresh, "fresh", "REPO:TAG@DIGEST pulled once the phase is no longer \"before\" (repeatable)")
	fs.Var(&unsigned, "unsigned", "REPO:TAG of unsigned content: its manifest must never be served (repeatable)")
	fs.Var(&unsignedBlobs, "unsigned-blob", "REPO@DIGEST of an unsigned blob: must never be served (repeatable)")
	_ = fs.Parse(args)
	if *front == "" || *phaseFile == "" || len(base) == 0 || *n < 1 || *n > 200 {
		log.Fatal("usage: load nodes -front ADDR -phase-file FILE -image REPO:TAG@DIGEST... [flags]")
	}
	phase := func() string {
		b, err := os.ReadFile(*phaseFile)
		if err != nil {
			return "before"
		}
		return strings.TrimSpace(string(b))
	}
	t := &tally{phases: map[string]*counts{}}
	deadline := time.Now().Add(*maxDur)
	var wg sync.WaitGroup
	for i := range *n {
		d := &net.Dialer{Timeout: 5 * time.Second}
		if *sourceIPs {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i+2))}
		}
		tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 8, DisableCompression: true}
		nd := &node{id: i, front: *front, c: &http.Client{Timeout: *timeout, Transport: tr}, tr: tr, retries: *retries, t: t}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; ; round++ {
				ph := phase()
				if (ph == "stop" && round > 0) || time.Now().After(deadline) {
					return
				}
				list := slices.Clone(base)
				if ph != "before" {
					list = append(list, fresh...)
				}
				// Nodes start at different images, so the replicas see
				// different requests at once.
				for k := range list {
					im := list[(k+nd.id)%len(list)]
					ph := phase()
					c := nd.pull(im)
					if c.Pulls > 0 && slices.Contains(fresh, im) {
						c.Fresh = 1
					}
					t.add(ph, c)
				}
				for _, u := range unsigned {
					ph := phase()
					t.add(ph, nd.unsigned(u, true))
				}
				for _, u := range unsignedBlobs {
					ph := phase()
					t.add(ph, nd.unsigned(u, false))
				}
				time.Sleep(*pause)
			}
		}()
	}
	wg.Wait()
	var total counts
	for _, ph := range t.order {
		fmt.Printf("phase=%s %s\n", ph, t.phases[ph])
		total.add(*t.phases[ph])
	}
	fmt.Printf("phase=total %s\n", total)
	return 0
}

// errStatus is an answer other than 200 after the retries.
type errStatus struct {
	status int
	body   string
}

func (e *errStatus) Error() string { return fmt.Sprintf("status %d: %.200s", e.status, e.body) }

// do sends method url, retrying a 503 after its Retry-After on a new
// connection; it returns the final 200 response or an error.
func (nd *node) do(c *counts, method, url string, signed bool) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", accept)
		c.Requests++
		resp, err := nd.c.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusOK {
			return resp, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return nil, &errStatus{status: resp.StatusCode, body: string(body)}
		}
		ra, raErr := strconv.Atoi(resp.Header.Get("Retry-After"))
		if raErr != nil || ra < 0 {
			c.S503NoRetry++
			nd.t.note("node %d: %s %s: 503 without a Retry-After", nd.id, method, url)
		}
		if signed {
			c.S503++
		}
		if !signed || attempt >= nd.retries || raErr != nil {
			return nil, &errStatus{status: resp.StatusCode, body: string(body)}
		}
		c.Retries++
		// The proxy closes the connection with a 503 so that the retry
		// may reach another replica: a new connection, as a client gets.
		nd.tr.CloseIdleConnections()
		time.Sleep(time.Duration(min(ra, 2)) * time.Second)
	}
}

// pull pulls im as containerd does and checks every digest.
func (nd *node) pull(im image) (c counts) {
	base := "http://" + nd.front + "/v2/" + im.repo
	fail := func(what string, err error) counts {
		c.Failed++
		var es *errStatus
		switch {
		case errors.As(err, &es) && es.status == http.StatusForbidden:
			c.Signed403++
		case errors.As(err, &es) && es.status == http.StatusServiceUnavailable:
			// counted in S503
		default:
			c.OtherFail++
		}
		nd.t.note("node %d: %s %s:%s: %s: %v", nd.id, what, im.repo, im.tag, im.digest, err)
		return c
	}
	resp, err := nd.do(&c, http.MethodHead, base+"/manifests/"+im.tag, true)
	if err != nil {
		return fail("HEAD tag", err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Docker-Content-Digest"); got != im.digest {
		return fail("HEAD tag", fmt.Errorf("resolved to %q", got))
	}
	resp, err = nd.do(&c, http.MethodGet, base+"/manifests/"+im.digest, true)
	if err != nil {
		return fail("GET manifest", err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest))
	resp.Body.Close()
	if err != nil {
		return fail("GET manifest", err)
	}
	if got := digestOf(b); got != im.digest {
		return fail("GET manifest", fmt.Errorf("body hashes to %s", got))
	}
	var m struct {
		Config struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
		} `json:"config"`
		Layers []struct {
			Digest string `json:"digest"`
			Size   int64  `json:"size"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fail("GET manifest", err)
	}
	blobs := append([]struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	}{m.Config}, m.Layers...)
	for _, bl := range blobs {
		resp, err := nd.do(&c, http.MethodGet, base+"/blobs/"+bl.Digest, true)
		if err != nil {
			return fail("GET blob "+bl.Digest, err)
		}
		h := sha256.New()
		// One byte past the declared size is enough to tell it is wrong.
		n, err := io.Copy(h, io.LimitReader(resp.Body, bl.Size+1))
		resp.Body.Close()
		if err != nil {
			return fail("GET blob "+bl.Digest, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != bl.Digest || n != bl.Size {
			return fail("GET blob "+bl.Digest, fmt.Errorf("%d bytes hashing to %s", n, got))
		}
	}
	c.Pulls++
	return c
}

// unsigned asks for unsigned content (a manifest by tag, or a blob by
// REPO@DIGEST) once, without retrying: it must never be served.
func (nd *node) unsigned(ref string, manifest bool) (c counts) {
	c.Unsigned++
	var url string
	if manifest {
		i := strings.LastIndex(ref, ":")
		url = "http://" + nd.front + "/v2/" + ref[:i] + "/manifests/" + ref[i+1:]
	} else {
		repo, digest, _ := strings.Cut(ref, "@")
		url = "http://" + nd.front + "/v2/" + repo + "/blobs/" + digest
	}
	resp, err := nd.do(&c, http.MethodGet, url, false)
	var es *errStatus
	switch {
	case err == nil:
		resp.Body.Close()
		c.UnsignedServed++
		nd.t.note("node %d: unsigned %s SERVED", nd.id, ref)
	case errors.As(err, &es) && es.status == http.StatusForbidden:
		c.Unsigned403++
	case !manifest && errors.As(err, &es) && es.status == http.StatusServiceUnavailable:
		// A blob no manifest opened here, while the shared state cannot
		// be asked: not served, not decided.
		c.Unsigned503++
	default:
		c.UnsignedOther++
		nd.t.note("node %d: unsigned %s: %v", nd.id, ref, err)
	}
	return c
}
