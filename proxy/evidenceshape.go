package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
)

// Evidence is served unsigned, and a media type is a label: what makes
// the bytes of a manifest served as evidence necessarily evidence is that
// they parse as the format their media type names. checkEvidenceShape is
// that parse. It is strict where a loader would be lenient: a document of
// an evidence format carries only that format's top-level fields, so that
// a model file, a tokenizer or a dataset shard is refused whatever label
// it was given (weights and pickles are not JSON; a tokenizer's JSON is not
// an in-toto statement). What the fields hold is not checked: a verifier
// checks the signatures, and a loader of another format rejects them.

// Top-level fields of the evidence formats (the JSON ones), per their
// specifications: anything else is not that format.
var (
	inTotoStatementKeys = formatKeys("_type", "subject", "predicateType", "predicate")
	dsseKeys            = formatKeys("payload", "payloadType", "signatures")
	bundleKeys          = formatKeys("mediaType", "verificationMaterial", "messageSignature", "dsseEnvelope")
	simpleSigningKeys   = formatKeys("critical", "optional")
	jwsKeys             = formatKeys("payload", "protected", "header", "signature", "signatures")
	// SPDX 2.x JSON (and the JSON-LD form of SPDX 3).
	spdxKeys = formatKeys("spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "creationInfo",
		"externalDocumentRefs", "hasExtractedLicensingInfos", "annotations", "comment", "documentDescribes",
		"packages", "files", "snippets", "relationships", "revieweds", "$schema", "@context", "@graph")
	cycloneDXKeys = formatKeys("bomFormat", "specVersion", "serialNumber", "version", "metadata", "components",
		"services", "externalReferences", "dependencies", "compositions", "properties", "vulnerabilities",
		"annotations", "formulation", "declarations", "definitions", "signature", "$schema")
	syftKeys    = formatKeys("artifacts", "artifactRelationships", "files", "secrets", "source", "distro", "descriptor", "schema")
	openVEXKeys = formatKeys("@context", "@id", "author", "role", "timestamp", "last_updated", "version", "tooling", "statements")
	// An OCI image configuration, which cosign's .sig and .att manifests
	// and images carry.
	imageConfigKeys = formatKeys("created", "author", "architecture", "os", "os.version", "os.features", "variant",
		"config", "rootfs", "history", "container", "container_config", "docker_version", "id", "parent",
		"comment", "throwaway", "size")
)

func formatKeys(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// errNoShape says no evidence format is known for a media type: such
// bytes cannot be told from anything else, so they are not served as
// evidence.
var errNoShape = errors.New("no evidence format is known for this media type")

// checkEvidenceShape reports whether b, a blob of a manifest served as
// evidence, is a document of the format its media type mt names. config
// says b is the manifest's config, whose media type may be the manifest's
// artifact type rather than a format.
func checkEvidenceShape(mt string, config bool, b []byte) error {
	mt = strings.ToLower(strings.TrimSpace(strings.Split(mt, ";")[0]))
	switch {
	case config && (mt == "application/vnd.oci.image.config.v1+json" || mt == "application/vnd.docker.container.image.v1+json"):
		return jsonObject(b, imageConfigKeys, nil)
	case config || mt == "application/vnd.oci.empty.v1+json":
		// An artifact's config is the empty descriptor's {} (whatever
		// artifact type it is labelled with): data belongs in layers.
		return emptyObject(b)
	case strings.HasPrefix(mt, "application/vnd.dev.sigstore.bundle"):
		return sigstoreBundle(b)
	case mt == "application/vnd.dev.cosign.simplesigning.v1+json",
		strings.HasPrefix(mt, "application/vnd.dev.cosign.artifact.sig"):
		return jsonObject(b, simpleSigningKeys, func(m map[string]jsonField) error {
			return objectField(m, "critical")
		})
	case strings.HasPrefix(mt, "application/vnd.dev.cosign.artifact.sbom"):
		return sbomJSON(b)
	case mt == "application/vnd.dsse.envelope.v1+json":
		return dsseEnvelope(b)
	case strings.HasPrefix(mt, "application/vnd.in-toto") && strings.HasSuffix(mt, "+jsonl"):
		return inTotoLines(b)
	case strings.HasPrefix(mt, "application/vnd.in-toto"):
		// A statement, or one in a DSSE envelope (.dsse media types).
		if err := inTotoStatement(b); err != nil {
			if dsseEnvelope(b) == nil {
				return nil
			}
			return err
		}
		return nil
	case strings.HasPrefix(mt, "text/spdx"):
		return spdxTagValue(b)
	case strings.HasPrefix(mt, "application/spdx"), strings.HasPrefix(mt, "application/vnd.spdx"):
		return spdxJSON(b)
	case strings.HasPrefix(mt, "application/vnd.cyclonedx"):
		if strings.HasSuffix(mt, "+xml") || (!strings.HasSuffix(mt, "+json") && !startsLikeJSON(b)) {
			return cycloneDXXML(b)
		}
		return cycloneDXJSON(b)
	case mt == "application/vnd.syft+json":
		return syftJSON(b)
	case strings.HasPrefix(mt, "application/vnd.openvex"), strings.HasPrefix(mt, "application/openvex"):
		return jsonObject(b, openVEXKeys, func(m map[string]jsonField) error {
			return stringWithPrefix(m, "@context", "https://openvex.dev/ns")
		})
	case mt == "application/jose+json":
		return jsonObject(b, jwsKeys, func(m map[string]jsonField) error {
			return stringField(m, "payload")
		})
	case mt == "application/cose":
		return coseSign1(b)
	}
	return errNoShape
}

// jsonObject parses b as one JSON object whose keys are all in allowed,
// then runs check on it.
func jsonObject(b []byte, allowed map[string]bool, check func(map[string]jsonField) error) error {
	var m map[string]jsonField
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	if m == nil {
		return errors.New("not a JSON object: null")
	}
	for k := range m {
		if !allowed[k] {
			return fmt.Errorf("field %q is not one of this format's", truncate(k, 64))
		}
	}
	if check == nil {
		return nil
	}
	return check(m)
}

func emptyObject(b []byte) error {
	var m map[string]jsonField
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return errors.New("not the empty JSON object {}")
	}
	if len(m) > 0 {
		return errors.New("not the empty JSON object {}: an artifact's config holds no data")
	}
	return nil
}

// jsonField is a top-level field's value, parsed but not kept: its kind
// (the first byte: '"', '{', '[', a digit…) and, when small, its bytes.
// Keeping every value would double the memory a large SBOM's check holds.
type jsonField struct {
	kind  byte
	small []byte
}

// maxKeptField bounds the value kept for prefix checks (a _type, a
// mediaType, an @context): longer ones are not those.
const maxKeptField = 4 << 10

func (f *jsonField) UnmarshalJSON(b []byte) error {
	f.kind = b[0]
	if len(b) <= maxKeptField {
		f.small = bytes.Clone(b)
	}
	return nil
}

func stringField(m map[string]jsonField, k string) error {
	if f, ok := m[k]; !ok || f.kind != '"' {
		return fmt.Errorf("field %q is not a string", k)
	}
	return nil
}

func stringWithPrefix(m map[string]jsonField, k, prefix string) error {
	var s string
	if f, ok := m[k]; !ok || f.kind != '"' || f.small == nil || json.Unmarshal(f.small, &s) != nil || !strings.HasPrefix(s, prefix) {
		return fmt.Errorf("field %q does not start with %q", k, prefix)
	}
	return nil
}

func objectField(m map[string]jsonField, k string) error {
	if f, ok := m[k]; !ok || f.kind != '{' {
		return fmt.Errorf("field %q is not an object", k)
	}
	return nil
}

func inTotoStatement(b []byte) error {
	return jsonObject(b, inTotoStatementKeys, func(m map[string]jsonField) error {
		return stringWithPrefix(m, "_type", "https://in-toto.io/Statement/")
	})
}

// inTotoLines is an attestation bundle of JSON Lines: every line a DSSE
// envelope or a sigstore bundle, at least one.
func inTotoLines(b []byte) error {
	seen := false
	for i, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if dsseEnvelope(line) != nil && sigstoreBundle(line) != nil {
			return fmt.Errorf("line %d is neither a DSSE envelope nor a sigstore bundle", i+1)
		}
		seen = true
	}
	if !seen {
		return errors.New("no line")
	}
	return nil
}

func sigstoreBundle(b []byte) error {
	return jsonObject(b, bundleKeys, func(m map[string]jsonField) error {
		return stringWithPrefix(m, "mediaType", "application/vnd.dev.sigstore.bundle")
	})
}

func dsseEnvelope(b []byte) error {
	return jsonObject(b, dsseKeys, func(m map[string]jsonField) error {
		if err := stringField(m, "payloadType"); err != nil {
			return err
		}
		return stringField(m, "payload")
	})
}

func spdxJSON(b []byte) error {
	return jsonObject(b, spdxKeys, func(m map[string]jsonField) error {
		if _, ok := m["spdxVersion"]; ok {
			return stringWithPrefix(m, "spdxVersion", "SPDX-")
		}
		if _, ok := m["@context"]; ok {
			return nil // SPDX 3 JSON-LD
		}
		return errors.New(`neither "spdxVersion" nor "@context"`)
	})
}

func cycloneDXJSON(b []byte) error {
	return jsonObject(b, cycloneDXKeys, func(m map[string]jsonField) error {
		if f := m["bomFormat"]; string(f.small) != `"CycloneDX"` {
			return errors.New(`field "bomFormat" is not "CycloneDX"`)
		}
		return nil
	})
}

func syftJSON(b []byte) error {
	return jsonObject(b, syftKeys, func(m map[string]jsonField) error {
		_, descriptor := m["descriptor"]
		_, artifacts := m["artifacts"]
		if !descriptor && !artifacts {
			return errors.New(`neither "artifacts" nor "descriptor"`)
		}
		return nil
	})
}

// sbomJSON is an SBOM of any of the JSON formats cosign attaches.
func sbomJSON(b []byte) error {
	err := spdxJSON(b)
	if err == nil || cycloneDXJSON(b) == nil || syftJSON(b) == nil {
		return nil
	}
	return fmt.Errorf("not an SPDX, CycloneDX or Syft JSON document: %w", err)
}

func startsLikeJSON(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}

// cycloneDXXML is a well-formed XML document whose root is CycloneDX's
// <bom>.
func cycloneDXXML(b []byte) error {
	dec := xml.NewDecoder(bytes.NewReader(b))
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("not a well-formed XML document: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
			if root != "bom" || !strings.HasPrefix(se.Name.Space, "http://cyclonedx.org/schema/bom") {
				return errors.New("the root element is not CycloneDX's <bom>")
			}
		}
	}
	if root == "" {
		return errors.New("no root element")
	}
	return nil
}

// spdxTags are the tags of SPDX 2.x tag-value documents (document,
// package, file, snippet, other licensing, relationship, annotation and
// review information). A line is held to them so that "key: value" text of
// another kind (a YAML model config under an SPDX label, which a YAML
// loader would read past an SPDXVersion line) is not SPDX.
var spdxTags = formatKeys(
	"SPDXVersion", "DataLicense", "SPDXID", "DocumentName", "DocumentNamespace", "ExternalDocumentRef",
	"LicenseListVersion", "Creator", "Created", "CreatorComment", "DocumentComment",
	"PackageName", "PackageVersion", "PackageFileName", "PackageSupplier", "PackageOriginator",
	"PackageDownloadLocation", "FilesAnalyzed", "PackageVerificationCode", "PackageChecksum", "PackageHomePage",
	"PackageSourceInfo", "PackageLicenseConcluded", "PackageLicenseInfoFromFiles", "PackageLicenseDeclared",
	"PackageLicenseComments", "PackageCopyrightText", "PackageSummary", "PackageDescription", "PackageComment",
	"ExternalRef", "ExternalRefComment", "PackageAttributionText", "PrimaryPackagePurpose", "ReleaseDate",
	"BuiltDate", "ValidUntilDate",
	"FileName", "FileType", "FileChecksum", "LicenseConcluded", "LicenseInfoInFile", "LicenseComments",
	"FileCopyrightText", "ArtifactOfProjectName", "ArtifactOfProjectHomePage", "ArtifactOfProjectURI",
	"FileComment", "FileNotice", "FileContributor", "FileAttributionText", "FileDependency",
	"SnippetSPDXID", "SnippetFromFileSPDXID", "SnippetByteRange", "SnippetLineRange", "SnippetLicenseConcluded",
	"LicenseInfoInSnippet", "SnippetLicenseComments", "SnippetCopyrightText", "SnippetComment", "SnippetName",
	"SnippetAttributionText",
	"LicenseID", "ExtractedText", "LicenseName", "LicenseCrossReference", "LicenseComment",
	"Relationship", "RelationshipComment",
	"Annotator", "AnnotationDate", "AnnotationType", "SPDXREF", "AnnotationComment",
	"Reviewer", "ReviewDate", "ReviewComment",
)

// spdxTagValue is SPDX's tag-value text: every line outside a
// <text>…</text> value is empty, a # comment or "Tag: value" with one of
// SPDX's tags, and the first tag is SPDXVersion.
func spdxTagValue(b []byte) error {
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		return errors.New("not UTF-8 text")
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, len(b)+1)
	inText, first := false, true
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if inText {
			inText = !strings.Contains(line, "</text>")
			continue
		}
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		tag, value, ok := strings.Cut(line, ":")
		if !ok || !spdxTags[tag] {
			return fmt.Errorf("line %d is not \"Tag: value\" with an SPDX tag", n)
		}
		if first && tag != "SPDXVersion" {
			return errors.New("the first tag is not SPDXVersion")
		}
		first = false
		if i := strings.Index(value, "<text>"); i >= 0 && !strings.Contains(value[i:], "</text>") {
			inText = true
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if first {
		return errors.New("no SPDXVersion tag")
	}
	if inText {
		return errors.New("a <text> value is not closed")
	}
	return nil
}

// coseSign1 is a tagged COSE_Sign1 structure (RFC 9052): CBOR tag 18 over
// an array of four, with nothing after it.
func coseSign1(b []byte) error {
	var t cbor.RawTag
	if err := cbor.Unmarshal(b, &t); err != nil {
		return fmt.Errorf("not CBOR: %w", err)
	}
	if t.Number != 18 {
		return fmt.Errorf("CBOR tag %d, not COSE_Sign1's 18", t.Number)
	}
	var parts []cbor.RawMessage
	if err := cbor.Unmarshal(t.Content, &parts); err != nil || len(parts) != 4 {
		return errors.New("not a COSE_Sign1 array of four")
	}
	return nil
}
