package verify

// WithEvidenceInOrder makes an engine read evidence strictly in order, one
// read at a time, as it did before reading ahead: tests compare its
// verdicts with the default's.
func WithEvidenceInOrder() Option {
	return func(o *options) error {
		o.inOrder = true
		return nil
	}
}
