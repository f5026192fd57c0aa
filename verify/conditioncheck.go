package verify

// CheckCondition compiles a CEL attestation condition exactly as New does,
// so that a configuration checker can report every bad condition in one run
// instead of the first one New stops at.
func CheckCondition(src string) error {
	env, err := conditionEnv()
	if err != nil {
		return err
	}
	_, err = compileCondition(env, src)
	return err
}
