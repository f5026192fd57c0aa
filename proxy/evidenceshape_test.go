package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/portcullis-oci/portcullis/test/fixtures"
)

// Documents of each evidence format, as the tools that write them do.
const (
	shapeStatement     = `{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"x","digest":{"sha256":"ab"}}],"predicateType":"https://slsa.dev/provenance/v1","predicate":{}}`
	shapeDSSE          = `{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"keyid":"","sig":"MEUC"}]}`
	shapeBundle        = `{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"k"}},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[]}}`
	shapeSimpleSigning = `{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}`
	shapeSPDX          = `{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT","name":"x","packages":[]}`
	shapeCycloneDX     = `{"bomFormat":"CycloneDX","specVersion":"1.5","version":1,"components":[]}`
	shapeCycloneDXXML  = `<?xml version="1.0"?><bom xmlns="http://cyclonedx.org/schema/bom/1.5" version="1"><components/></bom>`
	shapeSyft          = `{"artifacts":[],"source":{},"distro":{},"descriptor":{"name":"syft"},"schema":{}}`
	shapeOpenVEX       = `{"@context":"https://openvex.dev/ns/v0.2.0","@id":"x","author":"a","timestamp":"t","version":1,"statements":[]}`
	shapeJWS           = `{"payload":"e30","protected":"e30","header":{"x5c":[]},"signature":"c2ln"}`
	shapeSPDXTagValue  = "SPDXVersion: SPDX-2.3\nDataLicense: CC0-1.0\n# a comment\n\nDocumentComment: <text>one\ntwo: not a tag\n</text>\nPackageName: x\n"
	shapeSyftTagValue  = "SPDXVersion: SPDX-2.3\nDataLicense: CC0-1.0\nSPDXID: SPDXRef-DOCUMENT\nDocumentName: app\n" +
		"DocumentNamespace: https://example.com/app-1\nCreator: Organization: Example\nCreator: Tool: syft-1.0.0\n" +
		"CreatorComment: <text>made\nby a test</text>\nCreated: 2026-01-01T00:00:00Z\n\n##### Package: zlib\n\n" +
		"PackageName: zlib\nSPDXID: SPDXRef-Package-zlib\nPackageVersion: 1.3\nPackageSupplier: Organization: Example\n" +
		"PackageDownloadLocation: NOASSERTION\nFilesAnalyzed: false\nPackageChecksum: SHA256: ab\n" +
		"PackageLicenseConcluded: NOASSERTION\nPackageLicenseDeclared: Zlib\nPackageCopyrightText: NOASSERTION\n" +
		"PackageSummary: <text>one line</text>\nPrimaryPackagePurpose: LIBRARY\n" +
		"ExternalRef: PACKAGE-MANAGER purl pkg:deb/debian/zlib@1.3\n\n##### File: /etc/x\n\nFileName: /etc/x\n" +
		"SPDXID: SPDXRef-File-x\nFileChecksum: SHA1: ab\nLicenseConcluded: NOASSERTION\n\n" +
		"Relationship: SPDXRef-DOCUMENT DESCRIBES SPDXRef-Package-zlib\n\nLicenseID: LicenseRef-1\n" +
		"ExtractedText: <text>Permission is granted\nto anyone</text>\nLicenseName: Example\n"
	shapeImageConfig = `{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["sha256:ab"]},"config":{}}`
	// What a loader might be handed under an evidence label.
	shapeTokenizer = `{"version":"1.0","truncation":null,"added_tokens":[],"model":{"type":"BPE","vocab":{}}}`
	shapeWeights   = "\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"
	shapeMerges    = "#version: 0.2\nĠ t\nĠ a\n"
)

// statementTyped is a statement whose _type, quotes included, takes n
// bytes: an in-toto Statement URI padded with a fragment.
func statementTyped(n int) string {
	typ := "https://in-toto.io/Statement/v1#"
	typ += strings.Repeat("x", n-2-len(typ))
	return strings.Replace(shapeStatement, `"https://in-toto.io/Statement/v1"`, `"`+typ+`"`, 1)
}

func coseSample(t *testing.T, tag uint64, parts int) []byte {
	t.Helper()
	content := []any{[]byte{0xa0}, map[int]any{}, []byte("payload"), []byte("sig")}[:parts]
	b, err := cbor.Marshal(cbor.Tag{Number: tag, Content: content})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCheckEvidenceShape: each format's documents pass under their media
// types, and what is not one (model files, a tokenizer, another format's
// document, extra top-level fields, trailing bytes) does not.
func TestCheckEvidenceShape(t *testing.T) {
	t.Parallel()
	cose := coseSample(t, 18, 4)
	for _, tc := range []struct {
		name, mt string
		config   bool
		b        string
		want     string // "" for a pass, else part of the error
	}{
		{"in-toto statement", fixtures.MediaTypeInToto, false, shapeStatement, ""},
		{"in-toto statement v0.1", fixtures.MediaTypeInToto, false, strings.Replace(shapeStatement, "Statement/v1", "Statement/v0.1", 1), ""},
		{"DSSE under an in-toto type", "application/vnd.in-toto.provenance+dsse", false, shapeDSSE, ""},
		{"DSSE", fixtures.MediaTypeDSSE, false, shapeDSSE, ""},
		{"in-toto JSON Lines", "application/vnd.in-toto.bundle+jsonl", false, shapeDSSE + "\n" + shapeBundle + "\n\n", ""},
		{"bundle v0.3", fixtures.MediaTypeBundleV03, false, shapeBundle, ""},
		{"bundle with parameters", fixtures.MediaTypeBundleV01, false, strings.Replace(shapeBundle, "bundle.v0.3+json", "bundle+json;version=0.1", 1), ""},
		{"simple signing", fixtures.MediaTypeSimpleSigning, false, shapeSimpleSigning, ""},
		{"cosign attached signature", "application/vnd.dev.cosign.artifact.sig.v1+json", false, shapeSimpleSigning, ""},
		{"cosign attached SBOM", "application/vnd.dev.cosign.artifact.sbom.v1+json", false, shapeCycloneDX, ""},
		{"cosign attached SPDX SBOM", "application/vnd.dev.cosign.artifact.sbom.v1+json", false, shapeSPDX, ""},
		{"cosign attached Syft SBOM", "application/vnd.dev.cosign.artifact.sbom.v1+json", false, shapeSyft, ""},
		{"a _type at the length kept", fixtures.MediaTypeInToto, false, statementTyped(maxKeptField), ""},
		{"SPDX JSON", "application/spdx+json", false, shapeSPDX, ""},
		{"SPDX 3 JSON-LD", "application/spdx+json", false, `{"@context":"https://spdx.org/rdf/3.0.1/spdx-context.jsonld","@graph":[]}`, ""},
		{"SPDX tag-value", "text/spdx", false, shapeSPDXTagValue, ""},
		{"SPDX tag-value as syft writes it", "text/spdx", false, shapeSyftTagValue, ""},
		{"SPDX tag-value with a text right after the colon", "text/spdx", false, "SPDXVersion: SPDX-2.3\nDocumentComment:<text>one\nnot a tag\n</text>\n", ""},
		{"CycloneDX JSON", "application/vnd.cyclonedx+json", false, shapeCycloneDX, ""},
		{"CycloneDX XML", "application/vnd.cyclonedx+xml", false, shapeCycloneDXXML, ""},
		{"CycloneDX, cosign's bare type", "application/vnd.cyclonedx", false, shapeCycloneDXXML, ""},
		{"Syft", "application/vnd.syft+json", false, shapeSyft, ""},
		{"OpenVEX", "application/vnd.openvex+json", false, shapeOpenVEX, ""},
		{"notation JWS", fixtures.MediaTypeNotationJWS, false, shapeJWS, ""},
		{"notation COSE", fixtures.MediaTypeNotationCOSE, false, string(cose), ""},
		{"empty config", fixtures.MediaTypeEmpty, true, "{}", ""},
		{"empty config with whitespace", fixtures.MediaTypeEmpty, true, " { }\n", ""},
		{"artifact type as config", "application/vnd.cncf.notary.signature", true, "{}", ""},
		{"image config", "application/vnd.oci.image.config.v1+json", true, shapeImageConfig, ""},
		{"docker image config", "application/vnd.docker.container.image.v1+json", true, shapeImageConfig, ""},

		{"weights as a statement", fixtures.MediaTypeInToto, false, shapeWeights, "not a JSON object"},
		{"tokenizer as a statement", fixtures.MediaTypeInToto, false, shapeTokenizer, `field "`},
		{"statement with one more field", fixtures.MediaTypeInToto, false, strings.Replace(shapeStatement, `"predicate":{}`, `"predicate":{},"model":{}`, 1), `field "model"`},
		{"statement with a field spelt otherwise", fixtures.MediaTypeInToto, false, strings.Replace(shapeStatement, `"_type"`, `"_TYPE"`, 1), `field "_TYPE"`},
		{"statement of another type", fixtures.MediaTypeInToto, false, strings.Replace(shapeStatement, "https://in-toto.io/Statement/v1", "tokenizer", 1), `"_type"`},
		{"statement followed by more", fixtures.MediaTypeInToto, false, shapeStatement + "\n" + shapeTokenizer, "not a JSON object"},
		{"a JSON array", fixtures.MediaTypeInToto, false, "[]", "not a JSON object"},
		{"null", fixtures.MediaTypeDSSE, false, "null", "not a JSON object"},
		{"empty", fixtures.MediaTypeDSSE, false, "", "not a JSON object"},
		{"DSSE without a payload type", fixtures.MediaTypeDSSE, false, `{"payload":"e30=","signatures":[]}`, `"payloadType"`},
		{"a tokenizer among JSON Lines", "application/vnd.in-toto.bundle+jsonl", false, shapeDSSE + "\n" + shapeTokenizer + "\n", "line 2"},
		{"a statement among JSON Lines", "application/vnd.in-toto.bundle+jsonl", false, shapeStatement + "\n", "line 1"},
		{"no JSON Lines", "application/vnd.in-toto.bundle+jsonl", false, "\n \n", "no line"},
		{"DSSE with a number payload", fixtures.MediaTypeDSSE, false, `{"payloadType":"x","payload":1,"signatures":[]}`, `"payload"`},
		{"bundle of another media type", fixtures.MediaTypeBundleV03, false, strings.Replace(shapeBundle, "application/vnd.dev.sigstore.bundle.v0.3+json", "x", 1), `"mediaType"`},
		{"statement as a bundle", fixtures.MediaTypeBundleV03, false, shapeStatement, `field "`},
		{"simple signing without critical", fixtures.MediaTypeSimpleSigning, false, `{"optional":{}}`, `"critical"`},
		{"SPDX without a version", "application/spdx+json", false, `{"name":"x"}`, "spdxVersion"},
		{"SPDX of another version scheme", "application/spdx+json", false, `{"spdxVersion":"2.3"}`, "spdxVersion"},
		{"tokenizer as SPDX", "application/spdx+json", false, shapeTokenizer, `field "`},
		{"merges as SPDX tag-value", "text/spdx", false, shapeMerges, "line 2"},
		{"merges behind an SPDXVersion line", "text/spdx", false, "SPDXVersion: SPDX-2.3\n" + shapeMerges[strings.IndexByte(shapeMerges, '\n')+1:], "line 2"},
		{"tag-value not starting with SPDXVersion", "text/spdx", false, "DocumentName: x\n", "SPDXVersion"},
		{"a YAML model config behind an SPDXVersion line", "text/spdx", false, "SPDXVersion: SPDX-2.3\nmodel_type: llama\nhidden_size: 4096\n", "line 2"},
		{"a tag-value line with a tag SPDX does not have", "text/spdx", false, "SPDXVersion: SPDX-2.3\nWeights: AAAA\n", "line 2"},
		{"tag-value with an open text", "text/spdx", false, "SPDXVersion: SPDX-2.3\nDocumentComment: <text>open\n", "not closed"},
		{"weights as tag-value", "text/spdx", false, shapeWeights, "UTF-8"},
		{"tag-value after a NUL", "text/spdx", false, "\x00SPDXVersion: SPDX-2.3\n", "UTF-8"},
		{"a tokenizer as a cosign attached SBOM", "application/vnd.dev.cosign.artifact.sbom.v1+json", false, shapeTokenizer, "not an SPDX, CycloneDX or Syft"},
		{"nothing under cosign's bare CycloneDX type", "application/vnd.cyclonedx", false, "", "no root element"},
		{"a _type longer than kept", fixtures.MediaTypeInToto, false, statementTyped(maxKeptField + 1), `"_type"`},
		{"CycloneDX of another format", "application/vnd.cyclonedx+json", false, `{"bomFormat":"SPDX"}`, "bomFormat"},
		{"CycloneDX XML of another root", "application/vnd.cyclonedx+xml", false, `<model xmlns="http://cyclonedx.org/schema/bom/1.5"/>`, "<bom>"},
		{"CycloneDX XML without its namespace", "application/vnd.cyclonedx+xml", false, `<bom/>`, "<bom>"},
		{"CycloneDX XML cut short", "application/vnd.cyclonedx+xml", false, shapeCycloneDXXML[:len(shapeCycloneDXXML)-6], "well-formed"},
		{"Syft without artifacts or descriptor", "application/vnd.syft+json", false, `{"source":{}}`, "artifacts"},
		{"OpenVEX of another context", "application/vnd.openvex+json", false, `{"@context":"https://example.com"}`, "@context"},
		{"JWS without a payload", fixtures.MediaTypeNotationJWS, false, `{"protected":"e30","signature":"c2ln"}`, `"payload"`},
		{"COSE of another tag", fixtures.MediaTypeNotationCOSE, false, string(coseSample(t, 98, 4)), "tag 98"},
		{"COSE of three parts", fixtures.MediaTypeNotationCOSE, false, string(coseSample(t, 18, 3)), "four"},
		{"COSE followed by more", fixtures.MediaTypeNotationCOSE, false, string(cose) + "x", "not CBOR"},
		{"weights as COSE", fixtures.MediaTypeNotationCOSE, false, shapeWeights, "not CBOR"},
		{"data in an artifact's config", fixtures.MediaTypeEmpty, true, shapeTokenizer, "holds no data"},
		{"data in a config labelled evidence", fixtures.MediaTypeBundleV03, true, shapeBundle, "holds no data"},
		{"weights as an empty config", fixtures.MediaTypeEmpty, true, shapeWeights, "not the empty JSON object"},
		{"tokenizer as an image config", "application/vnd.oci.image.config.v1+json", true, shapeTokenizer, `field "`},
		{"a custom type no format is known for", "application/vnd.example.attestation+json", false, shapeStatement, "no evidence format is known"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkEvidenceShape(tc.mt, tc.config, []byte(tc.b))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("checkEvidenceShape(%q) = %v, want a pass", tc.mt, err)
			case tc.want != "" && err == nil:
				t.Errorf("checkEvidenceShape(%q) passed, want an error with %q", tc.mt, tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("checkEvidenceShape(%q) = %v, want an error with %q", tc.mt, err, tc.want)
			}
		})
	}
}

// TestDefaultEvidenceTypesHaveShapes: every default evidence type names a
// format checkEvidenceShape knows, so none is refused by default for want
// of one.
func TestDefaultEvidenceTypesHaveShapes(t *testing.T) {
	t.Parallel()
	// One media type each default pattern matches.
	for _, mt := range []string{
		"application/vnd.dev.sigstore.bundle.v0.3+json", fixtures.MediaTypeSimpleSigning,
		"application/vnd.dev.cosign.artifact.sig.v1+json", fixtures.MediaTypeDSSE, fixtures.MediaTypeInToto,
		"application/spdx+json", "text/spdx", "application/vnd.spdx+json", "application/vnd.cyclonedx+json",
		"application/vnd.syft+json", "application/vnd.openvex+json", "application/openvex+json",
		fixtures.MediaTypeNotationJWS, fixtures.MediaTypeNotationCOSE,
	} {
		if !evidenceTypes(DefaultEvidenceTypes).match(mt) {
			t.Errorf("%q matches no default evidence type", mt)
		}
		if err := checkEvidenceShape(mt, false, nil); err == errNoShape {
			t.Errorf("%q: %v", mt, err)
		}
	}
}

// TestEvidenceShapeThroughTheProxy: a manifest shaped as evidence of an
// allowed image is served unsigned, so its bytes must be evidence: what a
// loader pinned to its digest would otherwise be handed (weights, a
// tokenizer, data in a config) is denied, with the reason, and its blobs
// stay closed; real evidence of every format is served, its bytes read
// from the upstream once.
func TestEvidenceShapeThroughTheProxy(t *testing.T) {
	t.Parallel()
	e := newEvidenceEnv(t)
	reg, img, imgDesc := e.reg, e.img, e.imgDesc
	const repo = evidenceRepo
	newProxy := e.proxy
	refused := "evidence of " + img.digest.String() + " is served only when its blobs are documents of the formats their media types name"
	denied := func(t *testing.T, p *Proxy, method, ref, want string) {
		t.Helper()
		e.denied(t, p, method, ref, refused, want)
	}
	notEvidence := func(t *testing.T, p *Proxy, d v1.Hash) {
		t.Helper()
		e.notEvidence(t, p, d, refused)
	}
	blobGets := func(s *spy, from int, d v1.Hash) int {
		n := 0
		for _, r := range s.since(from) {
			if r == "GET /v2/"+repo+"/blobs/"+d.String() {
				n++
			}
		}
		return n
	}

	t.Run("weights dressed as evidence, by digest", func(t *testing.T) {
		p, s := newProxy(t)
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, []byte(shapeWeights), &imgDesc)
		before := s.count()
		want := "its layer " + a.layer.String() + " is not a document of " + fixtures.MediaTypeInToto + ": not a JSON object"
		denied(t, p, http.MethodGet, a.digest.String(), want)
		notEvidence(t, p, a.digest)
		// Again with the denial cached (no bytes in hand), and by HEAD.
		denied(t, p, http.MethodGet, a.digest.String(), want)
		denied(t, p, http.MethodHead, a.digest.String(), "")
		notEvidence(t, p, a.digest)
		if w := do(p, http.MethodGet, blobPath(repo, a.layer)); w.Code != http.StatusForbidden {
			t.Errorf("its layer = %d, want 403", w.Code)
		}
		if n := blobGets(s, before, a.layer); n != 1 {
			t.Errorf("the layer was read from the upstream %d times, want once", n)
		}
		if got := counterValue(t, p, "portcullis_evidence_misshapen_total", nil); got != 1 {
			t.Errorf("evidence_misshapen = %v, want 1 (checked once)", got)
		}
	})

	t.Run("weights dressed as evidence, under cosign's tag", func(t *testing.T) {
		p, _ := newProxy(t)
		tag := sigTag(img.digest, ".att")
		a := reg.pushArtifact(t, repo, tag, "", fixtures.MediaTypeDSSE, []byte(shapeWeights), &imgDesc)
		denied(t, p, http.MethodGet, tag, "not a JSON object")
		notEvidence(t, p, a.digest)
	})

	for _, tc := range []struct {
		name, artifactType, layerType, content, want string
	}{
		{"a tokenizer as a statement", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, shapeTokenizer, "is not one of this format's"},
		{"a statement with one more field", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, strings.Replace(shapeStatement, `"predicate":{}`, `"predicate":{},"weights":"AAAA"`, 1), `weights\" is not one of this format's`},
		{"merges as an SPDX document", "application/spdx+json", "text/spdx", shapeMerges, "line 2"},
		{"weights as a notation signature", "application/vnd.cncf.notary.signature", fixtures.MediaTypeNotationCOSE, shapeWeights, "not CBOR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newProxy(t)
			a := reg.pushArtifact(t, repo, "", tc.artifactType, tc.layerType, []byte(tc.content), &imgDesc)
			denied(t, p, http.MethodGet, a.digest.String(), tc.want)
			notEvidence(t, p, a.digest)
			if w := do(p, http.MethodGet, blobPath(repo, a.layer)); w.Code != http.StatusForbidden {
				t.Errorf("its layer = %d, want 403", w.Code)
			}
		})
	}

	t.Run("data in the config", func(t *testing.T) {
		p, _ := newProxy(t)
		cfg := []byte(shapeTokenizer)
		a := pushWithConfig(t, reg, repo, fixtures.MediaTypeEmpty, cfg, fixtures.MediaTypeInToto, []byte(shapeStatement), imgDesc)
		denied(t, p, http.MethodGet, a.String(), "its config "+sha(cfg).String()+" is not a document of "+fixtures.MediaTypeEmpty)
		if w := do(p, http.MethodGet, blobPath(repo, sha(cfg))); w.Code != http.StatusForbidden {
			t.Errorf("its config = %d, want 403", w.Code)
		}
	})

	t.Run("a custom evidence type no format is known for", func(t *testing.T) {
		const custom = "application/vnd.example.attestation+json"
		p, _ := newProxy(t, WithEvidenceTypes(append([]string{custom}, DefaultEvidenceTypes...)))
		a := reg.pushArtifact(t, repo, "", custom, custom, []byte(shapeStatement), &imgDesc)
		denied(t, p, http.MethodGet, a.digest.String(), "no evidence format is known for this media type")
	})

	t.Run("a well-formed layer of a type not listed as evidence", func(t *testing.T) {
		// The bytes would pass; the operator's list is what leaves them
		// out, and nothing of them is read.
		p, s := newProxy(t, WithEvidenceTypes([]string{"application/vnd.dev.sigstore.bundle*"}))
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, []byte(shapeStatement), &imgDesc)
		before := s.count()
		w := do(p, http.MethodGet, manifestPath(repo, a.digest.String()))
		if w.Code != http.StatusForbidden || strings.Contains(w.Body.String(), refused) {
			t.Fatalf("by digest = %d, want 403 as content, not as misshapen evidence: %s", w.Code, w.Body)
		}
		if n := blobGets(s, before, a.layer); n != 0 {
			t.Errorf("its layer was read %d times, want none", n)
		}
	})

	t.Run("an upstream that lies about a layer", func(t *testing.T) {
		// Other bytes under the layer's digest (a well-formed statement
		// at that) are not the layer: an upstream error, not a decision.
		weights := append([]byte(shapeWeights), strings.Repeat(" ", 200-len(shapeWeights))...)
		a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, weights, &imgDesc)
		lie := statementOfSize(t, len(weights))
		liar := &lyingBlob{rt: http.DefaultTransport.(*http.Transport).Clone(), path: "/v2/" + repo + "/blobs/" + a.layer.String(), body: lie}
		liar.on.Store(true)
		p, _ := newProxy(t, WithTransport(liar))
		w := do(p, http.MethodGet, manifestPath(repo, a.digest.String()))
		if w.Code != http.StatusBadGateway {
			t.Fatalf("with the layer's bytes replaced = %d, want 502: %s", w.Code, w.Body)
		}
		if w := do(p, http.MethodGet, blobPath(repo, a.layer)); w.Code == http.StatusOK {
			t.Errorf("its layer = %d, want it closed", w.Code)
		}
		// The upstream's own bytes, once it stops lying, are what decide.
		liar.on.Store(false)
		denied(t, p, http.MethodGet, a.digest.String(), "not a JSON object")
	})

	t.Run("a layer the upstream does not have", func(t *testing.T) {
		// Not served, and not decided either: an upstream that cannot
		// produce the bytes is a failure, and the next pull checks again.
		p, _ := newProxy(t)
		content := statementOfSize(t, 512)
		raw, err := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1), "artifactType": fixtures.MediaTypeBundleV03,
			"config":  v1.Descriptor{MediaType: fixtures.MediaTypeEmpty, Digest: emptyJSONDigest, Size: 2},
			"layers":  []v1.Descriptor{{MediaType: fixtures.MediaTypeInToto, Digest: sha(content), Size: int64(len(content))}},
			"subject": imgDesc,
		})
		if err != nil {
			t.Fatal(err)
		}
		d := reg.putRaw(t, repo, "", raw)
		if w := do(p, http.MethodGet, manifestPath(repo, d.String())); w.Code == http.StatusOK || w.Code == http.StatusForbidden {
			t.Fatalf("with its layer missing = %d, want an upstream error: %s", w.Code, w.Body)
		}
		r, err := name.NewRepository(reg.host+"/"+repo, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(r, static.NewLayer(content, fixtures.MediaTypeInToto)); err != nil {
			t.Fatal(err)
		}
		if w := do(p, http.MethodGet, manifestPath(repo, d.String())); w.Code != http.StatusOK {
			t.Fatalf("with its layer pushed = %d, want 200: %s", w.Code, w.Body)
		}
	})

	// Real evidence of every format is served as evidence, by digest,
	// and so are its bytes.
	cose := coseSample(t, 18, 4)
	for _, tc := range []struct {
		name, artifactType, layerType string
		content                       []byte
	}{
		{"an in-toto statement", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, []byte(shapeStatement)},
		{"a DSSE envelope", "", fixtures.MediaTypeDSSE, []byte(shapeDSSE)},
		{"a sigstore bundle", fixtures.MediaTypeBundleV03, fixtures.MediaTypeBundleV03, []byte(shapeBundle)},
		{"an SPDX document", "application/spdx+json", "application/spdx+json", []byte(shapeSPDX)},
		{"an SPDX tag-value document", "application/spdx+json", "text/spdx", []byte(shapeSPDXTagValue)},
		{"a CycloneDX XML document", "application/vnd.cyclonedx+xml", "application/vnd.cyclonedx+xml", []byte(shapeCycloneDXXML)},
		{"an OpenVEX document", "application/vnd.openvex+json", "application/vnd.openvex+json", []byte(shapeOpenVEX)},
		{"a notation JWS signature", "application/vnd.cncf.notary.signature", fixtures.MediaTypeNotationJWS, []byte(shapeJWS)},
		{"a notation COSE signature", "application/vnd.cncf.notary.signature", fixtures.MediaTypeNotationCOSE, cose},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, s := newProxy(t)
			a := reg.pushArtifact(t, repo, "", tc.artifactType, tc.layerType, tc.content, &imgDesc)
			before := s.count()
			for range 2 {
				if w := do(p, http.MethodGet, manifestPath(repo, a.digest.String())); w.Code != http.StatusOK {
					t.Fatalf("by digest = %d, want 200 as evidence: %s", w.Code, w.Body)
				}
			}
			if got := lastDecision(t, p, a.digest); got.EvidenceOf != img.digest.String() {
				t.Errorf("decision = %+v, want evidence of the image", got)
			}
			w := do(p, http.MethodGet, blobPath(repo, a.layer))
			if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), tc.content) {
				t.Errorf("its layer = %d, %d bytes, want 200 and the %d bytes pushed", w.Code, w.Body.Len(), len(tc.content))
			}
			// Checked once, and {} is known without a fetch.
			if n := blobGets(s, before, a.layer); n != 2 {
				t.Errorf("the layer was read from the upstream %d times, want twice (the check, then the client)", n)
			}
			if n := blobGets(s, before, emptyJSONDigest); n != 0 {
				t.Errorf("the empty config was read from the upstream %d times, want none", n)
			}
		})
	}
}

// pushWithConfig pushes a manifest shaped as evidence of subject whose
// config (of media type configType) holds cfg and whose one layer holds
// content.
func pushWithConfig(t *testing.T, reg *upstreamRegistry, repo, configType string, cfg []byte, layerType string, content []byte, subject v1.Descriptor) v1.Hash {
	t.Helper()
	r, err := name.NewRepository(reg.host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []v1.Layer{static.NewLayer(cfg, types.MediaType(configType)), static.NewLayer(content, types.MediaType(layerType))} {
		if err := remote.WriteLayer(r, l); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1), "artifactType": fixtures.MediaTypeBundleV03,
		"config":  v1.Descriptor{MediaType: types.MediaType(configType), Digest: sha(cfg), Size: int64(len(cfg))},
		"layers":  []v1.Descriptor{{MediaType: types.MediaType(layerType), Digest: sha(content), Size: int64(len(content))}},
		"subject": subject,
	})
	if err != nil {
		t.Fatal(err)
	}
	return reg.putRaw(t, repo, "", raw)
}

// FuzzCheckEvidenceShape: whatever the bytes, the check returns (never
// panics), and what it lets through under a JSON media type is one JSON
// object, so no other payload rides along behind a document.
func FuzzCheckEvidenceShape(f *testing.F) {
	for _, s := range []string{shapeStatement, shapeDSSE, shapeBundle, shapeSimpleSigning, shapeSPDX, shapeCycloneDX,
		shapeCycloneDXXML, shapeSyft, shapeOpenVEX, shapeJWS, shapeSPDXTagValue, shapeImageConfig, shapeTokenizer, shapeWeights, "{}"} {
		f.Add(s, uint8(0))
	}
	types := []string{fixtures.MediaTypeInToto, fixtures.MediaTypeDSSE, fixtures.MediaTypeBundleV03, fixtures.MediaTypeSimpleSigning,
		"application/spdx+json", "text/spdx", "application/vnd.cyclonedx+json", "application/vnd.cyclonedx+xml", "application/vnd.cyclonedx",
		"application/vnd.syft+json", "application/vnd.openvex+json", fixtures.MediaTypeNotationJWS, fixtures.MediaTypeNotationCOSE}
	f.Fuzz(func(t *testing.T, b string, which uint8) {
		config := which&0x80 != 0
		mt := types[int(which&0x7f)%len(types)]
		if config {
			mt = fixtures.MediaTypeEmpty
		}
		if checkEvidenceShape(mt, config, []byte(b)) != nil {
			return
		}
		if strings.HasSuffix(mt, "json") {
			var m map[string]json.RawMessage
			if err := json.Unmarshal([]byte(b), &m); err != nil || m == nil {
				t.Fatalf("%q passed as %s but is not one JSON object: %v", b, mt, err)
			}
			if config && len(m) != 0 {
				t.Fatalf("%q passed as an empty config", b)
			}
		}
	})
}

// holdBlob is a transport that holds the GET of one blob until released.
type holdBlob struct {
	rt      http.RoundTripper
	path    string
	started chan struct{}
	release chan struct{}
	others  atomic.Int64 // GETs of the other blob watched
	other   string
}

func (h *holdBlob) RoundTrip(r *http.Request) (*http.Response, error) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == h.path:
		close(h.started)
		<-h.release
	case r.Method == http.MethodGet && r.URL.Path == h.other:
		h.others.Add(1)
	}
	return h.rt.RoundTrip(r)
}

// TestEvidenceShapeChecksShareTheBound: the bytes read to check evidence
// are bounded all together by limits.served_evidence_bytes, so a flood of
// evidence fetched by digest holds no more than that; a check that does
// not fit waits for the one in progress.
func TestEvidenceShapeChecksShareTheBound(t *testing.T) {
	t.Parallel()
	e := newEvidenceEnv(t)
	reg, imgDesc := e.reg, e.imgDesc
	const repo = evidenceRepo
	// Two manifests of {} and 600 bytes each: one fits in 1000, two do not.
	a := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, statementOfSize(t, 600), &imgDesc)
	bContent := append([]byte(strings.Replace(shapeStatement, `"name":"x"`, `"name":"y"`, 1)), strings.Repeat(" ", 600-len(shapeStatement))...)
	b := reg.pushArtifact(t, repo, "", fixtures.MediaTypeBundleV03, fixtures.MediaTypeInToto, bContent, &imgDesc)
	hold := &holdBlob{
		rt: http.DefaultTransport.(*http.Transport).Clone(), path: "/v2/" + repo + "/blobs/" + a.layer.String(), started: make(chan struct{}), release: make(chan struct{}),
		other: "/v2/" + repo + "/blobs/" + b.layer.String(),
	}
	p, _ := e.proxy(t, WithServedEvidenceBytes(1000), WithTransport(hold))
	codes := make(chan int, 2)
	go func() { codes <- do(p, http.MethodGet, manifestPath(repo, a.digest.String())).Code }()
	<-hold.started
	go func() { codes <- do(p, http.MethodGet, manifestPath(repo, b.digest.String())).Code }()
	// Absence cannot be awaited: a while is given for the second check to
	// read its blob, which it may only do once the first is done.
	time.Sleep(200 * time.Millisecond)
	if n := hold.others.Load(); n != 0 {
		t.Fatalf("the second check read its blob while the first held the bound (%d GETs)", n)
	}
	close(hold.release)
	for range 2 {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("evidence by digest = %d, want 200", c)
		}
	}
	if n := hold.others.Load(); n != 1 {
		t.Errorf("the second check read its blob %d times, want once", n)
	}
}

// BenchmarkCheckEvidenceShape measures the check on an SBOM of 32 MiB
// (SPDX JSON, a package per 200 bytes), the size of a large image's: what
// the first fetch of such evidence costs the proxy beyond reading it.
func BenchmarkCheckEvidenceShape(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT","name":"x","packages":[`)
	for i := 0; sb.Len() < 32<<20; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"SPDXID":"SPDXRef-Package-%d","name":"package-%d","versionInfo":"1.%d.0","downloadLocation":"NOASSERTION","licenseConcluded":"MIT"}`, i, i, i)
	}
	sb.WriteString(`]}`)
	doc := []byte(sb.String())
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if err := checkEvidenceShape("application/spdx+json", false, doc); err != nil {
			b.Fatal(err)
		}
	}
}

// TestEvidenceShapeReasonIsBounded: what a refusal quotes (a media type,
// a field name) comes from the upstream; the reason kept and sent to
// clients stays short whatever they are.
func TestEvidenceShapeReasonIsBounded(t *testing.T) {
	t.Parallel()
	e := newEvidenceEnv(t)
	p, _ := e.proxy(t)
	longKey := `{"` + strings.Repeat("k", 1<<20) + `":1}`
	mt := fixtures.MediaTypeInToto + strings.Repeat("x", 1<<16)
	a := e.reg.pushArtifact(t, evidenceRepo, "", fixtures.MediaTypeBundleV03, mt, []byte(longKey), &e.imgDesc)
	w := do(p, http.MethodGet, manifestPath(evidenceRepo, a.digest.String()))
	if w.Code != http.StatusForbidden {
		t.Fatalf("by digest = %d, want 403", w.Code)
	}
	if w.Body.Len() > 4<<10 {
		t.Errorf("the denial is %d bytes, want it bounded", w.Body.Len())
	}
	why, _ := p.evidenceShapes.get(a.digest.String())
	if why == "" || len(why) > maxShapeReason+len("…") {
		t.Errorf("the kept reason is %d bytes, want a refusal of at most %d", len(why), maxShapeReason)
	}
}

// lyingBlob answers the GET of one blob, while on, with body instead of
// what the upstream holds.
type lyingBlob struct {
	rt   http.RoundTripper
	path string
	body []byte
	on   atomic.Bool
}

func (l *lyingBlob) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err != nil || !l.on.Load() || r.Method != http.MethodGet || r.URL.Path != l.path {
		return resp, err
	}
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(l.body))
	resp.ContentLength = int64(len(l.body))
	return resp, nil
}
