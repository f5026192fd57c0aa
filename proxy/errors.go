package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/portcullis-oci/portcullis/proxy/internal/upstream"
)

// OCI distribution error codes the proxy answers with.
const (
	CodeBlobUnknown      = "BLOB_UNKNOWN"
	CodeDenied           = "DENIED"
	CodeDigestInvalid    = "DIGEST_INVALID"
	CodeManifestInvalid  = "MANIFEST_INVALID"
	CodeManifestUnknown  = "MANIFEST_UNKNOWN"
	CodeNameInvalid      = "NAME_INVALID"
	CodeNameUnknown      = "NAME_UNKNOWN"
	CodeTooManyRequests  = "TOOMANYREQUESTS"
	CodeUnauthorized     = "UNAUTHORIZED"
	CodeUnavailable      = "UNAVAILABLE" // distribution's code for a 503 the client may retry
	CodeUnknown          = "UNKNOWN"
	CodeUnsupported      = "UNSUPPORTED"
	maxEnvelopeErrors    = 16
	errorContentType     = "application/json"
	genericInternalError = "internal error"
)

// Error is an answer to the client in the OCI error envelope. The call site
// chooses the status; Message is shown to the client and must not carry
// internals.
type Error struct {
	Status  int
	Code    string
	Message string
	Detail  any
	// RetryAfter, when positive, is sent as Retry-After (seconds).
	RetryAfter int
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

type envelopeEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

type envelope struct {
	Errors []envelopeEntry `json:"errors"`
}

// MarshalJSON renders e as the OCI error envelope.
func (e *Error) MarshalJSON() ([]byte, error) {
	return json.Marshal(envelope{Errors: []envelopeEntry{{Code: e.Code, Message: e.Message, Detail: e.Detail}}})
}

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// writeError is the only place an error reaches the client. An *Error is
// written as is; an upstream answer whose body is a valid OCI envelope is
// passed on with its status so the client sees the upstream's diagnostics;
// anything else is an internal failure and is reported without detail.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var pe *Error
	var ue *upstream.Error
	switch {
	case errors.As(err, &pe):
	case errors.As(err, &ue) && validEnvelope(ue.Body):
		writeRaw(w, r, ue.Status, ue.Body)
		return
	case errors.As(err, &ue):
		pe = &Error{Status: ue.Status, Code: codeForStatus(ue.Status), Message: fmt.Sprintf("upstream answered %d", ue.Status)}
	default:
		pe = &Error{Status: http.StatusInternalServerError, Code: CodeUnknown, Message: genericInternalError}
	}
	body, merr := json.Marshal(pe)
	if merr != nil {
		// Detail is always built from plain values; this cannot happen
		// unless a caller put something unmarshalable in it.
		pe = &Error{Status: http.StatusInternalServerError, Code: CodeUnknown, Message: genericInternalError}
		body, _ = json.Marshal(pe)
	}
	if pe.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(pe.RetryAfter))
	}
	writeRaw(w, r, pe.Status, body)
}

func writeRaw(w http.ResponseWriter, r *http.Request, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", errorContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// validEnvelope reports whether b is an OCI error envelope with at least one
// coded error and nothing else, so it is safe to relay verbatim.
func validEnvelope(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	var env struct {
		Errors []struct {
			Code    string          `json:"code"`
			Message string          `json:"message"`
			Detail  json.RawMessage `json:"detail"`
		} `json:"errors"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil || dec.More() {
		return false
	}
	if len(env.Errors) == 0 || len(env.Errors) > maxEnvelopeErrors {
		return false
	}
	for _, e := range env.Errors {
		if !isErrorCode(e.Code) {
			return false
		}
	}
	return true
}

// isErrorCode accepts the upper-case, underscore-separated shape of OCI
// error codes; unknown codes are allowed, free text is not.
func isErrorCode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && c != '_' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return CodeUnauthorized
	case http.StatusForbidden:
		return CodeDenied
	case http.StatusTooManyRequests:
		return CodeTooManyRequests
	default:
		return CodeUnknown
	}
}
