package idemgrpc

import (
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// HeaderReplayed is the response header (metadata) set to "true" on a call
// answered with a stored outcome, for which the handler did not run
// (Stripe's Idempotent-Replayed header, in gRPC's lower case).
const HeaderReplayed = "idempotent-replayed"

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail of every
// status the interceptor makes (as opposed to the handler's, which it
// passes on or replays).
const ErrorDomain = "github.com/idemkv/idem/idemgrpc"

// The reasons of the google.rpc.ErrorInfo detail (domain ErrorDomain) of the
// statuses the interceptor makes, for clients to branch on: the status code
// says what to do, the reason says why. None of these statuses is stored:
// the client may retry with the same key.
const (
	// ReasonKeyRequired (InvalidArgument): a call of a covered method has
	// no key, and Options.Required is set.
	ReasonKeyRequired = "IDEMPOTENCY_KEY_REQUIRED"
	// ReasonKeyInvalid (InvalidArgument): the key is empty, longer than
	// Options.MaxKeyLength or not printable ASCII, or its metadata has
	// several values, or Options.Key failed with an error that carries no
	// status.
	ReasonKeyInvalid = "IDEMPOTENCY_KEY_INVALID"
	// ReasonFingerprint (InvalidArgument): Options.Fingerprint failed with
	// an error that carries no status (the default's: a request that does
	// not marshal).
	ReasonFingerprint = "IDEMPOTENCY_FINGERPRINT_FAILED"
	// ReasonKeyMismatch (FailedPrecondition): the key was used before, or
	// is in use, for a call with another fingerprint (another method or
	// request). Shopify's name for it.
	ReasonKeyMismatch = "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
	// ReasonConcurrentRequest (Aborted, with a google.rpc.RetryInfo of 1
	// s): a call with the key is still running after Options.Wait. Retry
	// with the same key. Shopify's name for it.
	ReasonConcurrentRequest = "IDEMPOTENCY_CONCURRENT_REQUEST"
	// ReasonOutcomeUnknown (FailedPrecondition): a call with the key was
	// running when the server stopped (idem.ErrInterrupted); whether its
	// effect happened is unknown, so the handler does not run again. The
	// key answers so until an operator reconciles it and forgets it (see
	// EngineKey), or it expires.
	ReasonOutcomeUnknown = "IDEMPOTENCY_OUTCOME_UNKNOWN"
	// ReasonResponseNotStored (FailedPrecondition): the call with the key
	// ran, but its response was larger than Options.MaxStoredSize and was
	// not kept, so it cannot be replayed; the handler does not run again.
	ReasonResponseNotStored = "IDEMPOTENCY_RESPONSE_NOT_STORED"
	// ReasonUnavailable (Unavailable, with a google.rpc.RetryInfo of 5 s):
	// the engine is closed (the server is shutting down) or read-only, or
	// failed (a storage error), or the handler of the concurrent call
	// whose outcome this call waited for panicked. Retry with the same key.
	// The error is logged (Options.Logger).
	ReasonUnavailable = "IDEMPOTENCY_UNAVAILABLE"
	// ReasonInternal (Internal): the server's configuration does not fit
	// the call (its scope and key are too long together for the engine's
	// MaxKeySize, an outcome is over the engine's MaxValueSize, a response
	// is not a protocol buffers message), or a stored outcome cannot be
	// decoded. The error is logged (Options.Logger).
	ReasonInternal = "IDEMPOTENCY_INTERNAL"
)

// Retry delays of the google.rpc.RetryInfo details, as idemhttp's
// Retry-After.
const (
	retryInFlight    = 1 * time.Second // ReasonConcurrentRequest
	retryUnavailable = 5 * time.Second // ReasonUnavailable: a restart, or a failover
)

// newStatus returns an error with code and the message, made of format and
// args, and a google.rpc.ErrorInfo detail with reason, plus a
// google.rpc.RetryInfo detail if retry is not 0.
func newStatus(code codes.Code, reason string, retry time.Duration, format string, args ...any) error {
	p := &spb.Status{Code: int32(code), Message: fmt.Sprintf(format, args...)}
	if a, err := anypb.New(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		p.Details = append(p.Details, a)
	}
	if retry != 0 {
		if a, err := anypb.New(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
			p.Details = append(p.Details, a)
		}
	}
	return status.ErrorProto(p)
}

// statusOf returns the status of an error of a handler, as gRPC sends it: a
// gRPC status error (or one that wraps it); a context error (or one that
// wraps it) as Canceled or DeadlineExceeded; any other error as Unknown
// with its message.
func statusOf(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	return status.FromContextError(err)
}
