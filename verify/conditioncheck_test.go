package verify

import "testing"

func TestCheckCondition(t *testing.T) {
	for src, ok := range map[string]bool{
		`predicate.builder.id.startsWith("https://")`: true,
		`predicate.x +`:            false,
		`"a string"`:               false,
		``:                         false,
		`unknownVariable == 1`:     false,
		`signer.authority == "ci"`: true,
		`size(subject) > 0`:        true,
		`predicateType == 1`:       false,
	} {
		if err := CheckCondition(src); (err == nil) != ok {
			t.Errorf("CheckCondition(%q) = %v, want ok=%v", src, err, ok)
		}
	}
}
