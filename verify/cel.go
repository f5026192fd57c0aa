package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"
)

// Bounds on condition evaluation, so a condition over an attacker-sized
// predicate cannot run for long. The cost limit counts CEL's abstract
// evaluation steps; the interrupt check lets a cancelled context stop
// comprehensions early.
const (
	conditionCostLimit      = 1_000_000
	conditionInterruptEvery = 100
)

// condition is a compiled CEL attestation condition. A cel.Program is safe
// for concurrent use.
type condition struct {
	src string
	prg cel.Program
}

func conditionEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("predicateType", cel.StringType),
		cel.Variable("predicate", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("subject", cel.ListType(cel.DynType)),
		cel.Variable("signer", cel.MapType(cel.StringType, cel.StringType)),
	)
}

func compileCondition(env *cel.Env, src string) (*condition, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("empty expression")
	}
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, iss.Err()
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("result type is %s, not bool", ast.OutputType())
	}
	prg, err := env.Program(ast, cel.CostLimit(conditionCostLimit), cel.InterruptCheckFrequency(conditionInterruptEvery))
	if err != nil {
		return nil, err
	}
	return &condition{src: src, prg: prg}, nil
}

// eval returns the condition's value. Any evaluation failure is an error,
// which the caller turns into a failed rule, never an allow.
func (c *condition) eval(ctx context.Context, st *statement, signer Signer) (bool, error) {
	subjects := make([]any, 0, len(st.Subject))
	for _, s := range st.Subject {
		d := make(map[string]any, len(s.Digest))
		for k, v := range s.Digest {
			d[k] = v
		}
		subjects = append(subjects, map[string]any{"name": s.Name, "digest": d})
	}
	predicate, err := st.object()
	if err != nil {
		return false, err
	}
	out, _, err := c.prg.ContextEval(ctx, map[string]any{
		"predicateType": st.PredicateType,
		"predicate":     predicate,
		"subject":       subjects,
		"signer": map[string]string{
			"authority": signer.Authority,
			"kind":      signer.Kind,
			"identity":  signer.Identity,
			"issuer":    signer.Issuer,
			"key":       signer.Key,
		},
	})
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("result is %s, not bool", out.Type())
	}
	return b, nil
}
