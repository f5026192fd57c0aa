package wire

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/test/fixtures"
	"github.com/portcullis-oci/portcullis/verify"
)

const deployMain = `upstreams:
  - name: hub
    url: https://registry.example
trust:
  - name: key-a
    keys: [a.pub]
  - name: key-b
    keys: [b.pub]
unmatched: insecure-allow
boundaries_dir: boundaries.d
`

func deployFile(name, order, repo, mode, trust string) string {
	return "name: " + name + "\nowner: " + name + "@example.com\nversion: \"1\"\norder: " + order + "\nmode: " + mode +
		"\nmatch: {upstream: hub, repositories: [\"" + repo + "\"]}\nsignatures:\n  authorities:\n    - {name: k, key: " + trust + "}\n"
}

type deployEnv struct{ dir string }

func newDeployEnv(t *testing.T) *deployEnv {
	t.Helper()
	e := &deployEnv{dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(e.dir, "boundaries.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a.pub", "b.pub"} {
		e.newKey(t, n)
	}
	e.write(t, "portcullis.yaml", deployMain)
	e.write(t, "boundaries.d/a.yaml", deployFile("team-a", "10", "a/**", "enforce", "key-a"))
	e.write(t, "boundaries.d/b.yaml", deployFile("team-b", "20", "b/**", "warn", "key-b"))
	return e
}

func (e *deployEnv) newKey(t *testing.T, name string) {
	t.Helper()
	k, err := fixtures.NewKeySigner("")
	if err != nil {
		t.Fatal(err)
	}
	e.write(t, name, string(k.PublicKeyPEM()))
}

func (e *deployEnv) write(t *testing.T, name, body string) {
	t.Helper()
	writePolicyFile(t, filepath.Join(e.dir, name), []byte(body))
}

func (e *deployEnv) engine(t *testing.T) *verify.Engine {
	t.Helper()
	cfg, err := config.Load(filepath.Join(e.dir, "portcullis.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Policy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eng, err := verify.New(p, EngineOptions(cfg)...)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// Rolling one team's file from warn to enforce, or replacing the key it
// trusts, changes the fingerprint of that team's repositories only.
func TestBoundaryFileFingerprints(t *testing.T) {
	t.Parallel()
	e := newDeployEnv(t)
	before := e.engine(t)
	infos := before.Boundaries()
	if len(infos) != 2 || infos[1].Name != "team-b" || infos[1].Owner != "team-b@example.com" || infos[1].Version != "1" ||
		*infos[1].Order != 20 || filepath.Base(infos[1].Source) != "b.yaml" || infos[1].Mode != verify.ModeWarn {
		t.Fatalf("boundaries = %+v", infos)
	}

	e.write(t, "boundaries.d/b.yaml", strings.Replace(deployFile("team-b", "20", "b/**", "enforce", "key-b"), `"1"`, `"2"`, 1))
	rolled := e.engine(t)
	if rolled.FingerprintFor("hub", "a/app") != before.FingerprintFor("hub", "a/app") {
		t.Error("team-a's fingerprint changed with team-b's rollout")
	}
	if rolled.FingerprintFor("hub", "b/app") == before.FingerprintFor("hub", "b/app") {
		t.Error("team-b's fingerprint did not change with its rollout")
	}
	if m := rolled.Boundaries()[1].Mode; m != verify.ModeEnforce {
		t.Errorf("team-b mode = %s", m)
	}

	e.newKey(t, "b.pub")
	rekeyed := e.engine(t)
	if rekeyed.FingerprintFor("hub", "a/app") != before.FingerprintFor("hub", "a/app") {
		t.Error("team-a's fingerprint changed with team-b's key")
	}
	if rekeyed.FingerprintFor("hub", "b/app") == rolled.FingerprintFor("hub", "b/app") {
		t.Error("team-b's fingerprint did not change with its key file")
	}
}

// A broken file's repositories are denied, naming the file, and never
// reach unmatched: insecure-allow, while the other team keeps its rules.
func TestBrokenBoundaryFileDeniesItsRepositories(t *testing.T) {
	t.Parallel()
	e := newDeployEnv(t)
	e.write(t, "boundaries.d/b.yaml", deployFile("team-b", "20", "b/**", "warn", "key-b")+"threshold: 1\n")
	eng := e.engine(t)
	h, _ := v1.NewHash("sha256:" + strings.Repeat("b", 64))
	v, err := eng.Verify(context.Background(), verify.Subject{Upstream: "hub", Repository: "b/app", Digest: h}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.Served() || v.Boundary != "team-b" || len(v.Reasons) != 1 || !strings.Contains(v.Reasons[0], `"b.yaml"`) {
		t.Fatalf("verdict = %+v", v)
	}
	// Elsewhere unmatched still applies as configured.
	v, err = eng.Verify(context.Background(), verify.Subject{Upstream: "hub", Repository: "c/app", Digest: h}, nil)
	if err != nil || !v.Allowed {
		t.Fatalf("unmatched verdict = %+v, %v", v, err)
	}
	infos := eng.Boundaries()
	if infos[0].Refused != "" || infos[1].Refused == "" || len(infos[1].Problems) != 1 || !strings.Contains(infos[1].Problems[0], "b.yaml:10: threshold: unknown key") {
		t.Errorf("boundaries = %+v", infos)
	}
}

// A condition that does not compile refuses its file alone.
func TestUncompilableBoundaryFileRefusedAlone(t *testing.T) {
	t.Parallel()
	e := newDeployEnv(t)
	e.write(t, "boundaries.d/b.yaml", deployFile("team-b", "20", "b/**", "warn", "key-b")+
		"attestations:\n  - {name: prov, predicate_type: \"https://slsa.dev/provenance/v1\", authorities: [k], condition: 'predicate.('}\n")
	cfg, err := config.Load(filepath.Join(e.dir, "portcullis.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	RefuseUncompilableBoundaryFiles(cfg)
	ps := cfg.RefusedBoundaries()
	if len(ps) != 1 || ps[0].Line != 11 || ps[0].Path != "attestations[0].condition" || !strings.Contains(ps[0].Message, "CEL") {
		t.Fatalf("problems = %+v", ps)
	}
	if cfg.Boundaries[0].Refused != nil || cfg.Boundaries[1].Refused == nil || cfg.Boundaries[1].Match.Repositories[0] != "b/**" {
		t.Fatalf("boundaries = %+v", cfg.Boundaries)
	}
	if _, err := Policy(cfg); err != nil {
		t.Fatal(err)
	}
}
