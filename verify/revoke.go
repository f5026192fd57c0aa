package verify

import "fmt"

// SignerRevocations says which signers have been revoked since the policy
// was compiled: a key whose private half leaked, a workflow identity that
// signed what it should not have. The engine treats a revoked signer as if
// no authority accepted it, so the threshold is decided again on the
// signers that remain.
type SignerRevocations interface {
	// SignerRevoked returns why s may no longer count; "" and false when
	// it may. s is a signer that verified: Kind "key" with KeyID set, or
	// "keyless" with Identity and Issuer set.
	SignerRevoked(s Signer) (reason string, revoked bool)
}

// revokedSigner is the refusal of a verified signer that s.Revoked names.
func revokedSigner(s Subject, signer Signer) error {
	if s.Revoked == nil {
		return nil
	}
	reason, ok := s.Revoked.SignerRevoked(signer)
	if !ok {
		return nil
	}
	if signer.Kind == "keyless" {
		return fmt.Errorf("certificate identity %q (issuer %q) of authority %q is %s", signer.Identity, signer.Issuer, signer.Authority, reason)
	}
	return fmt.Errorf("key %s (sha256 %s) of authority %q is %s", signer.Key, signer.KeyID, signer.Authority, reason)
}
