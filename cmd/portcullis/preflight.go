package main

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/portcullis-oci/portcullis/config"
	"github.com/portcullis-oci/portcullis/verify"
)

// preflight finds, in one pass, the problems that parsing the file cannot
// see: files that cannot be opened, environment variables named by *_env
// keys that are not set, and attestation conditions that do not compile.
// Serve would stop at the first of them; config check reports them all.
func preflight(cfg *config.Config, lookupEnv func(string) (string, bool)) []config.Problem {
	var ps []config.Problem
	if err := cfg.CheckFiles(); err != nil {
		if ve := (*config.ValidationError)(nil); errors.As(err, &ve) {
			ps = append(ps, ve.Problems...)
		} else {
			ps = append(ps, cfg.ProblemAt("", "%v", err))
		}
	}
	// Every key named *_env is walked, so that keys added later are
	// checked without being listed here. Only absence is reported: whether
	// an empty value is acceptable depends on the key.
	envKeys(reflect.ValueOf(cfg).Elem(), "", func(path, name string) {
		if _, ok := lookupEnv(name); !ok {
			ps = append(ps, cfg.ProblemAt(path, "environment variable %s is not set", name))
		}
	})
	for i, b := range cfg.Boundaries {
		for j, a := range b.Attestations {
			if a.Condition == "" {
				continue
			}
			if err := verify.CheckCondition(a.Condition); err != nil {
				path := fmt.Sprintf("boundaries[%d].attestations[%d].condition", i, j)
				ps = append(ps, cfg.ProblemAt(path, "CEL: %s", strings.ReplaceAll(err.Error(), "\n", " ")))
			}
		}
	}
	return ps
}

// envKeys calls visit with the key path and value of every non-empty string
// field whose YAML key ends in "_env".
func envKeys(v reflect.Value, path string, visit func(path, name string)) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			envKeys(v.Elem(), path, visit)
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			envKeys(v.Index(i), fmt.Sprintf("%s[%d]", path, i), visit)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			fv := v.Field(i)
			switch {
			case name == "-":
				continue
			case name == "" && strings.Contains(opts, "inline"):
				envKeys(fv, path, visit)
				continue
			case name == "":
				continue
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			if strings.HasSuffix(name, "_env") {
				for fv.Kind() == reflect.Pointer && !fv.IsNil() {
					fv = fv.Elem()
				}
				if fv.Kind() == reflect.String && fv.String() != "" {
					visit(p, fv.String())
				}
				continue
			}
			envKeys(fv, p, visit)
		}
	}
}
