package verify

// Predicate types Portcullis knows by name (DESIGN.md §4). Rules may name
// any predicate type; these only get readable names in verdicts.
const (
	PredicateSLSAProvenanceV1  = "https://slsa.dev/provenance/v1"
	PredicateSLSAProvenanceV02 = "https://slsa.dev/provenance/v0.2"
	PredicateSLSAVSAV1         = "https://slsa.dev/verification_summary/v1"
	PredicateSPDX              = "https://spdx.dev/Document"
	PredicateCycloneDX         = "https://cyclonedx.org/bom"
	PredicateOpenVEX           = "https://openvex.dev/ns"
	PredicateCosignSign        = "https://sigstore.dev/cosign/sign/v1"
	PredicateModelSigning      = "https://model_signing/signature/v1.0"
)

// In-toto statement types accepted in attestations. cosign attest writes
// v0.1 (v2.6.5 and v3.1.3 alike); newer signers write v1. The two differ
// only in how strictly fields are specified, not in what they mean here.
const (
	StatementV01 = "https://in-toto.io/Statement/v0.1"
	StatementV1  = "https://in-toto.io/Statement/v1"
)

// KnownPredicates maps known predicate type URIs to short names.
var KnownPredicates = map[string]string{
	PredicateSLSAProvenanceV1:  "SLSA provenance v1",
	PredicateSLSAProvenanceV02: "SLSA provenance v0.2",
	PredicateSLSAVSAV1:         "SLSA verification summary v1",
	PredicateSPDX:              "SPDX SBOM",
	PredicateCycloneDX:         "CycloneDX SBOM",
	PredicateOpenVEX:           "OpenVEX",
	PredicateCosignSign:        "cosign signature",
	PredicateModelSigning:      "OpenSSF model signature",
}

// PredicateName returns the short name of a known predicate type, else the
// URI itself.
func PredicateName(uri string) string {
	if n, ok := KnownPredicates[uri]; ok {
		return n
	}
	return uri
}

func isProvenance(predicateType string) bool {
	return predicateType == PredicateSLSAProvenanceV1 || predicateType == PredicateSLSAProvenanceV02
}
