package idemgrpc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/idemkv/idem"
)

// Defaults of Options.
const (
	// DefaultMetadataKey is the incoming metadata key that carries the
	// idempotency key: the IETF draft's header name, in the lower case that
	// gRPC metadata keys have.
	DefaultMetadataKey = "idempotency-key"
	// DefaultMaxKeyLength is the longest key a client may send, in bytes
	// (Stripe's limit, and idemhttp's default).
	DefaultMaxKeyLength = 255
	// DefaultMaxStoredSize is the largest encoded outcome stored, in bytes:
	// the engine's default MaxValueSize.
	DefaultMaxStoredSize = idem.DefaultMaxValueSize
	// DefaultWait is how long a duplicate of a call whose handler is
	// running waits for that handler's outcome before it gets Aborted, as
	// idemhttp's DefaultWait.
	DefaultWait = 5 * time.Second
)

// minStoredSize is the smallest MaxStoredSize accepted: room for the record
// of a response too large to store, with some to spare.
const minStoredSize = 64

// Options configure the interceptor. A nil *Options, and every zero field,
// means the default. UnaryServerInterceptor copies the options; it never
// modifies the caller's.
type Options struct {
	// Key returns the idempotency key of a call of a covered method, or ""
	// if it has none: the call then passes straight through to the handler
	// (or fails with InvalidArgument, with Required). method is the full
	// method name, "/package.Service/Method"; req is the decoded request.
	// Every non-empty key is then checked (1 to MaxKeyLength bytes of
	// printable ASCII). An error that carries a gRPC status is returned to
	// the client as it is; any other fails the call with InvalidArgument
	// and the error's message. If nil, MetadataKey(DefaultMetadataKey): the
	// incoming metadata "idempotency-key". FieldKey reads a field of the
	// request instead, such as AIP-155's request_id.
	Key func(ctx context.Context, method string, req any) (string, error)

	// Methods reports whether the unary method with the full name method
	// ("/package.Service/Method") is covered: the calls of other methods
	// pass straight through to the handler, key or not. If nil, every
	// unary method is covered.
	Methods func(method string) bool

	// Required makes a call of a covered method without a key fail with
	// InvalidArgument (ReasonKeyRequired). Default false: such a call
	// passes straight through to the handler.
	Required bool

	// MaxKeyLength is the longest key accepted, in bytes; a longer one
	// fails with InvalidArgument (ReasonKeyInvalid). The engine key (see
	// EngineKey) adds a prefix and the scope, and must fit in the engine's
	// MaxKeySize (512 bytes by default): one that does not is the server's
	// configuration error, logged, and the call fails with Internal. If 0,
	// DefaultMaxKeyLength (255); negative makes UnaryServerInterceptor
	// panic.
	MaxKeyLength int

	// Scope returns what the server knows of the client (an account, a
	// tenant, read from ctx where an authentication interceptor put it):
	// keys of different scopes never collide. The engine key combines it
	// with the client's key without ambiguity (see EngineKey). If nil,
	// every client shares one scope: "".
	Scope func(ctx context.Context) string

	// Fingerprint computes the fingerprint of a call with a key: a call
	// that reuses a key with another fingerprint fails with
	// FailedPrecondition (ReasonKeyMismatch). An error that carries a gRPC
	// status is returned to the client as it is; any other fails the call
	// with InvalidArgument (ReasonFingerprint), and the handler does not
	// run. If nil, RequestFingerprint: SHA-256 over the full method name
	// and the request, marshalled deterministically.
	Fingerprint func(ctx context.Context, method string, req any) ([]byte, error)

	// Store reports whether an outcome with the status code is stored and
	// replayed (codes.OK for a response). An outcome it refuses releases
	// the key: the next call with the key runs the handler again, so the
	// handler must not have committed anything it cannot redo when it
	// returns such a code. If nil, DefaultStore.
	Store func(code codes.Code) bool

	// MaxStoredSize is the largest encoded outcome stored, in bytes: the
	// response message and its type's name, or the status, plus a few
	// bytes of framing. A response over it is stored as a record that it
	// was too large: the client that ran the handler gets the whole
	// response, and retries fail with FailedPrecondition
	// (ReasonResponseNotStored); the handler does not run again. A status
	// over it is stored without its details (and, if still over it, with
	// its message cut). It must not be above the engine's
	// Options.MaxValueSize: the engine would refuse the record after the
	// handler ran, the key would be released and the next call would run
	// the handler again. If 0, DefaultMaxStoredSize (1 MiB, the engine's
	// default MaxValueSize); negative or below 64 makes
	// UnaryServerInterceptor panic.
	MaxStoredSize int

	// Wait is how long a call waits for the outcome of a call with the
	// same key and fingerprint whose handler is running, to replay it;
	// after Wait, it fails with Aborted (ReasonConcurrentRequest). If 0,
	// DefaultWait (5 s). Negative does not wait: the call fails with
	// Aborted at once. Waiting needs an engine opened without
	// Options.NoWait: with it, the engine refuses at once, and so does the
	// interceptor. A call never waits past its own deadline.
	Wait time.Duration

	// Types resolves the full name of a stored response's message type to
	// the type a replay builds and unmarshals into. If nil,
	// protoregistry.GlobalTypes, where every generated message type
	// registers itself; a service whose responses are dynamic messages
	// (dynamicpb) gives a registry that has their types.
	Types protoregistry.MessageTypeResolver

	// Logger receives the errors that the client only sees as Internal or
	// Unavailable, and outcomes the engine could not store after the
	// handler ran. If nil, slog.Default().
	Logger *slog.Logger
}

// withDefaults returns a copy of o with the defaults filled in; it panics on
// an invalid field.
func (o *Options) withDefaults() *Options {
	c := &Options{}
	if o != nil {
		*c = *o
	}
	switch {
	case c.MaxKeyLength < 0:
		panic(fmt.Sprintf("idemgrpc: Options.MaxKeyLength is negative (%d)", c.MaxKeyLength))
	case c.MaxStoredSize < 0 || c.MaxStoredSize > 0 && c.MaxStoredSize < minStoredSize:
		panic(fmt.Sprintf("idemgrpc: Options.MaxStoredSize %d is below %d", c.MaxStoredSize, minStoredSize))
	}
	if c.Key == nil {
		c.Key = MetadataKey(DefaultMetadataKey)
	}
	if c.MaxKeyLength == 0 {
		c.MaxKeyLength = DefaultMaxKeyLength
	}
	if c.Fingerprint == nil {
		c.Fingerprint = RequestFingerprint
	}
	if c.Store == nil {
		c.Store = DefaultStore
	}
	if c.MaxStoredSize == 0 {
		c.MaxStoredSize = DefaultMaxStoredSize
	}
	if c.Wait == 0 {
		c.Wait = DefaultWait
	}
	if c.Types == nil {
		c.Types = protoregistry.GlobalTypes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// DefaultStore is the default Options.Store. It stores the codes by which
// the service decided the request: OK, and the refusals that depend on the
// request or on the state it met, which a retry of the same request would
// get again (InvalidArgument, NotFound, AlreadyExists, PermissionDenied,
// FailedPrecondition, OutOfRange) — the counterparts of the 2xx and 4xx
// that idemhttp.DefaultStore stores.
//
// It does not store the codes that say the request was not decided, for
// which the status-code guide tells the client to retry: Canceled and
// DeadlineExceeded (the call was given up), ResourceExhausted (a quota or
// rate limit: HTTP's 429), Aborted (a concurrency conflict: retry at a
// higher level), Unauthenticated (credentials to refresh), Unimplemented (a
// server without the method, during a deploy, say); nor those of a server
// fault, after which the request may be retried once the server has
// recovered: Unknown (what a handler's plain Go error becomes), Internal,
// Unavailable and DataLoss, the counterparts of HTTP's 5xx. Nor any code
// gRPC does not define.
func DefaultStore(code codes.Code) bool {
	switch code {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists,
		codes.PermissionDenied, codes.FailedPrecondition, codes.OutOfRange:
		return true
	}
	return false
}
