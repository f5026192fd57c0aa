package config

import (
	"strings"
	"testing"
)

func TestEvidenceTypes(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(doc("", "", "", "")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.EvidenceTypes != nil {
		t.Errorf("absent evidence_types parsed as %v, want nil (the built-in list)", *c.EvidenceTypes)
	}
	c, err = Parse([]byte(doc("", "", "", "evidence_types: []\n")), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.EvidenceTypes == nil || len(*c.EvidenceTypes) != 0 {
		t.Errorf("evidence_types: [] parsed as %v, want an empty list (no evidence)", c.EvidenceTypes)
	}
	c, err = Parse([]byte(doc("", "", "", "evidence_types: [\"application/vnd.dev.sigstore.bundle*\"]\n")), "p.yaml")
	if err != nil || len(*c.EvidenceTypes) != 1 {
		t.Fatalf("a valid pattern: %v", err)
	}
	for _, bad := range []string{`"[bad/x"`, `""`, `"nosubtype"`} {
		_, err := Parse([]byte(doc("", "", "", "evidence_types: ["+bad+"]\n")), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), "evidence_types[0]") {
			t.Errorf("evidence_types [%s]: err = %v, want an error naming evidence_types[0]", bad, err)
		}
	}
}
