package idemhttp

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// The type URIs of the problems the middleware answers with (RFC 9457). Each
// leads to its own documentation.
const (
	// ProblemKeyRequired (400): a request of a covered method has no key
	// header (with Options.Key, no key in it), and Options.Required is set.
	ProblemKeyRequired = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemKeyRequired"
	// ProblemKeyInvalid (400): the key header is malformed (not a quoted
	// Structured Field string nor a bare token), sent on more than one
	// line, or a list (a comma outside quotes: what several lines merged
	// into one look like), or the key is empty, longer than
	// Options.MaxKeyLength, or not printable ASCII. With Options.Key: the
	// function returned an error (JSONKey's for a body that is not JSON, or
	// a member that is not a string...), whose message the detail carries,
	// or a key longer than Options.MaxKeyLength or not printable ASCII.
	ProblemKeyInvalid = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemKeyInvalid"
	// ProblemBodyTooLarge (413): the request body is longer than
	// Options.MaxRequestBody.
	ProblemBodyTooLarge = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemBodyTooLarge"
	// ProblemBodyUnreadable (400): reading the request body failed.
	ProblemBodyUnreadable = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemBodyUnreadable"
	// ProblemFingerprint (400): Options.Fingerprint returned an error; the
	// detail is its message.
	ProblemFingerprint = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemFingerprint"
	// ProblemKeyMismatch (422): the key was used before, or is in use, for
	// a request with a different fingerprint.
	ProblemKeyMismatch = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemKeyMismatch"
	// ProblemInFlight (409, with Retry-After: 1): a request with the same
	// key is still being processed. Retry later with the same key.
	ProblemInFlight = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemInFlight"
	// ProblemOutcomeUnknown (409): a request with the key was being
	// processed when the server stopped (idem.ErrInterrupted); whether its
	// effect happened is unknown, so the handler does not run again. The
	// key answers so until an operator reconciles it and forgets it (see
	// EngineKey), or it expires.
	ProblemOutcomeUnknown = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemOutcomeUnknown"
	// ProblemUnavailable (503, with Retry-After: 5): the engine is closed
	// (the server is shutting down), or was opened read-only.
	ProblemUnavailable = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemUnavailable"
	// ProblemInternal (500): the engine failed (a storage error, a stored
	// response that cannot be decoded), the server's configuration does not
	// fit the request (its scope and key are too long together for the
	// engine's MaxKeySize), or the handler of a concurrent request with the
	// key, whose response this request waited for, panicked. The error is
	// logged (Options.Logger).
	ProblemInternal = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemInternal"
)

// problemTitles are the problem types' short summaries.
var problemTitles = map[string]string{
	ProblemKeyRequired:    "Idempotency key required",
	ProblemKeyInvalid:     "Invalid idempotency key",
	ProblemBodyTooLarge:   "Request body too large",
	ProblemBodyUnreadable: "Request body unreadable",
	ProblemFingerprint:    "Request fingerprint failed",
	ProblemKeyMismatch:    "Idempotency key reused for a different request",
	ProblemInFlight:       "Request with this idempotency key in progress",
	ProblemOutcomeUnknown: "Outcome of the request with this idempotency key unknown",
	ProblemUnavailable:    "Idempotency store unavailable",
	ProblemInternal:       "Idempotency store error",

	// The admin handler's (admin.go).
	ProblemAdminBadRequest:     "Bad admin request",
	ProblemAdminForbidden:      "Admin request refused",
	ProblemAdminNoEndpoint:     "No such admin endpoint",
	ProblemAdminNoRecord:       "No record for this key",
	ProblemAdminNotInterrupted: "Key not interrupted",
}

// problem is an RFC 9457 problem details object.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// writeProblem answers with a problem of type typ, as
// application/problem+json. retryAfter, if not 0, is sent as Retry-After in
// seconds.
func writeProblem(w http.ResponseWriter, status int, typ, detail string, retryAfter int) {
	b, _ := json.Marshal(problem{Type: typ, Title: problemTitles[typ], Status: status, Detail: detail})
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	w.WriteHeader(status)
	w.Write(b)
}
