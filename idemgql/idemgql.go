package idemgql

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/flights"
)

// The directive a client writes on a mutation field to make it idempotent,
// as Shopify's Admin API has it.
const (
	// DirectiveName is the directive's name, without the @.
	DirectiveName = "idempotent"
	// DirectiveSDL declares the directive: paste it into the schema. It is
	// an executable directive (location FIELD): the client writes it in
	// the document, on the mutation field, as in
	//
	//	mutation { inventoryAdjustQuantities(input: {...}) @idempotent(key: "4f5b6ebf-...") { ... } }
	DirectiveSDL = "directive @idempotent(key: String!) on FIELD"
)

// The codes of the errors the extension answers with: a GraphQL error's
// extensions.code, and Error.Code. The first two are Shopify's.
const (
	// CodeConcurrentRequest: a request with the key is still being
	// processed, after Options.Wait. Retry later with the same key.
	CodeConcurrentRequest = "IDEMPOTENCY_CONCURRENT_REQUEST"
	// CodeKeyParameterMismatch: the key was used before for another
	// mutation field, or with other arguments. Use a new key.
	CodeKeyParameterMismatch = "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
	// CodeOutcomeUnknown: a request with the key was running when the
	// server stopped (idem.ErrInterrupted). Whether it took effect is
	// unknown, so the mutation does not run again for the key until an
	// operator has reconciled it and forgotten it (see EngineKey), or the
	// record expires.
	CodeOutcomeUnknown = "IDEMPOTENCY_OUTCOME_UNKNOWN"
	// CodeUnavailable: the engine is closed (the server is shutting down)
	// or read-only. Retry later with the same key.
	CodeUnavailable = "IDEMPOTENCY_UNAVAILABLE"
	// CodeKeyInvalid: the key is empty, longer than Options.MaxKeyLength,
	// not printable ASCII, not a string, or the directive and the key
	// argument carry two different keys. The operation is refused whole.
	CodeKeyInvalid = "IDEMPOTENCY_KEY_INVALID"
	// CodeKeyRequired: a mutation registered with Mutation.Required was
	// called without a key. The operation is refused whole.
	CodeKeyRequired = "IDEMPOTENCY_KEY_REQUIRED"
	// CodeUnsupportedPlacement: @idempotent is on a field that is not a
	// root field of a mutation operation: in a query or a subscription, or
	// nested in a mutation's selection. The operation is refused whole.
	CodeUnsupportedPlacement = "IDEMPOTENCY_UNSUPPORTED_PLACEMENT"
	// CodeUnsupportedMutation: @idempotent is on a mutation field that is
	// not registered in Options.Mutations. The operation is refused whole.
	CodeUnsupportedMutation = "IDEMPOTENCY_UNSUPPORTED_MUTATION"
	// CodeInternal: the engine failed, a stored result does not decode
	// into the registered type, or the server is misconfigured. The error
	// is logged (Options.Logger).
	CodeInternal = "IDEMPOTENCY_INTERNAL_ERROR"
)

// Defaults of Options.
const (
	// DefaultMaxKeyLength is the longest key a client may send, in bytes
	// (Stripe's limit, and idemhttp's).
	DefaultMaxKeyLength = 255
	// DefaultWait is how long a duplicate of a mutation whose resolver is
	// running waits for its result before it gets CodeConcurrentRequest.
	DefaultWait = 5 * time.Second
)

// Options configure the extension. A nil *Options, and every zero field,
// means the default; Mutations has none and must be set. New copies the
// options; it never modifies the caller's.
type Options struct {
	// Mutations registers the idempotent mutations, by field name of the
	// schema's mutation type (not by alias): a Mutation[T] for each, where
	// T is the Go type its resolver returns. A replay decodes the stored
	// result into a T, so the type must be known before the resolver has
	// run in this process. @idempotent on a mutation field that is not
	// registered is refused (CodeUnsupportedMutation), never run
	// unprotected. Validate checks every entry against the schema, and
	// against the generated resolver's Go type where it can. Required: an
	// extension without registrations fails Validate.
	Mutations map[string]Field

	// Scope returns what the server knows of the client (an account, a
	// tenant, from ctx's values): keys of different scopes never collide.
	// The engine key combines it with the client's key without ambiguity
	// (see EngineKey). ctx is the mutation field's context. If nil, every
	// client shares one scope: "".
	Scope func(ctx context.Context) string

	// Wait is how long a mutation waits for the result of a mutation with
	// the same key and fingerprint whose resolver is running, to replay
	// it; after Wait, it gets CodeConcurrentRequest. If 0, DefaultWait
	// (5 s). Negative does not wait: CodeConcurrentRequest at once, as
	// Shopify answers. Waiting needs an engine opened without
	// idem.Options.NoWait: with it, the engine refuses at once.
	Wait time.Duration

	// MaxKeyLength is the longest key accepted, in bytes; a longer one is
	// refused with CodeKeyInvalid. The engine key (see EngineKey) adds a
	// prefix and the scope, and must fit in the engine's MaxKeySize (512
	// bytes by default): one that does not is the server's configuration
	// error, logged, and the mutation gets CodeInternal. If 0,
	// DefaultMaxKeyLength (255); negative makes New panic.
	MaxKeyLength int

	// Logger receives the errors the client sees only as CodeInternal,
	// and results that could not be stored after their resolver ran. If
	// nil, slog.Default().
	Logger *slog.Logger
}

// Field is the registration of one idempotent mutation in
// Options.Mutations: a Mutation[T].
type Field interface {
	spec() *fieldSpec
}

// Mutation registers an idempotent mutation whose resolver returns a T, the
// Go type of the field in the code gqlgen generated (a pointer to the
// payload model, typically: Mutation[*model.InventoryAdjustQuantitiesPayload]).
// T must be a type that msgpack encodes and decodes back to the same value,
// as idem.DoValue documents (gqlgen's models are: structs of exported
// fields, enums as strings, time.Time, which comes back in time.Local: see
// the package documentation's caveats), with no field of an interface type
// that has methods (a GraphQL interface or union): Validate refuses such a
// T.
//
// The client gives the key with @idempotent(key:), and, if KeyArgument is
// set, in that argument.
type Mutation[T any] struct {
	// KeyArgument is the path of the argument that carries the key, as in
	// Shopify's older mutations: its name, then the names of input object
	// fields, dot-separated ("idempotencyKey", "input.idempotencyKey"). It
	// must be of type String or ID; it is left out of the fingerprint. If
	// "", the key comes from @idempotent only.
	KeyArgument string

	// Required refuses a call of the mutation without a key
	// (CodeKeyRequired), as Shopify's API does from its 2026-04 version.
	// Default false: a call without a key runs the resolver as if the
	// extension were not there.
	Required bool

	// UserErrors, if not nil, may report the errors that concern one call
	// of the mutation at run time (CodeConcurrentRequest,
	// CodeKeyParameterMismatch, CodeOutcomeUnknown, CodeUnavailable) in
	// the mutation's payload, as Shopify does in its userErrors list. It
	// gets each of them, and returns the payload and true to report it:
	// the field resolves to the payload, with no GraphQL error, and the
	// payload is not stored. It returns false to decline it (the payload is
	// then ignored): the error is a GraphQL error with extensions.code, as
	// without UserErrors. For a payload whose user error code enum has only
	// Shopify's two values, it must decline the other two codes, which the
	// enum cannot hold. If nil, all four are GraphQL errors.
	UserErrors func(err *Error) (T, bool)
}

// Error is an error of the extension: the Err of the GraphQL error
// (*gqlerror.Error) it answers with, and what Mutation.UserErrors gets.
type Error struct {
	// Code is one of the Code constants: the GraphQL error's
	// extensions.code.
	Code string
	// Message says what happened, for people; the GraphQL error's message.
	Message string
	// Field is the path of the key argument (Mutation.KeyArgument, split
	// at the dots) when the key came from it, as Shopify's userErrors
	// field has it; nil when the key came from @idempotent.
	Field []string
	// Err is the engine's error, if the error comes from one (match it
	// with errors.Is: idem.ErrFingerprintMismatch, idem.ErrInFlight,
	// idem.ErrInterrupted, idem.ErrClosed, ...).
	Err error
}

// Error returns the message, prefixed with the code.
func (e *Error) Error() string { return "idemgql: " + e.Code + ": " + e.Message }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// Extension is the gqlgen handler extension that makes the registered
// mutations idempotent. Install it with the server's Use, and set the
// generated DirectiveRoot's Idempotent to its Directive method (see the
// package documentation). Its methods are safe for concurrent use.
type Extension struct {
	e       *idem.Engine
	c       config
	fields  map[string]*fieldSpec
	flights *flights.Flights

	// schema is the schema Validate accepted; nil until then.
	schema atomic.Pointer[ast.Schema]
}

// Interfaces of gqlgen that Extension implements.
var (
	_ graphql.HandlerExtension        = (*Extension)(nil)
	_ graphql.OperationContextMutator = (*Extension)(nil)
	_ graphql.FieldInterceptor        = (*Extension)(nil)
)

// New returns the extension for gqlgen servers, with e as the store. It
// panics if e is nil or an option is invalid (a negative MaxKeyLength, a
// nil Field, a malformed KeyArgument); what concerns the schema is checked
// by Validate, which the server's Use calls.
func New(e *idem.Engine, opts *Options) *Extension {
	if e == nil {
		panic("idemgql: New called with a nil *idem.Engine")
	}
	c := newConfig(opts)
	x := &Extension{e: e, c: c, fields: make(map[string]*fieldSpec, len(c.Mutations)), flights: flights.New(c.Wait)}
	for name, f := range c.Mutations {
		if f == nil || reflect.ValueOf(f).Kind() == reflect.Pointer && reflect.ValueOf(f).IsNil() {
			panic(fmt.Sprintf("idemgql: Options.Mutations[%q] is nil", name))
		}
		s := f.spec()
		if s.keyArg != "" {
			for _, p := range s.keyPath {
				if p == "" {
					panic(fmt.Sprintf("idemgql: Options.Mutations[%q].KeyArgument %q has an empty part", name, s.keyArg))
				}
			}
		}
		x.fields[name] = s
	}
	return x
}

// ExtensionName implements graphql.HandlerExtension.
func (x *Extension) ExtensionName() string { return "IdemGQL" }

// Validate implements graphql.HandlerExtension: the server's Use calls it,
// and panics with its error. It checks that the schema has a mutation type
// with every registered field, and each KeyArgument path down to a String
// or ID; that it declares @idempotent as DirectiveSDL does (it may leave it
// out only if every registered mutation has a KeyArgument); that the
// generated DirectiveRoot's Idempotent is set, so that @idempotent cannot
// be ignored by a server without the extension; and, for a schema that
// gqlgen generated, that each registered T is the type the resolver
// returns and one that msgpack can decode. An Extension serves one schema:
// Validate refuses a second one.
func (x *Extension) Validate(schema graphql.ExecutableSchema) error {
	return x.validate(schema)
}

// MutateOperationContext implements graphql.OperationContextMutator. It
// checks the whole operation before any field runs: @idempotent only on
// root fields of a mutation operation, each a registered mutation, and the
// keys of the registered mutations valid (and present, if Required). An
// operation that fails refuses whole, with one GraphQL error and no data:
// no mutation of it has run.
func (x *Extension) MutateOperationContext(ctx context.Context, opCtx *graphql.OperationContext) *gqlerror.Error {
	return x.checkOperation(opCtx)
}

// InterceptField implements graphql.FieldInterceptor. A registered
// mutation called with a key runs through the engine: its resolver runs
// once per key (and scope), and every later call with the key and the
// same arguments gets its stored result; see the package documentation.
// Other fields pass straight through.
func (x *Extension) InterceptField(ctx context.Context, next graphql.Resolver) (any, error) {
	return x.interceptField(ctx, next)
}

// Directive is the implementation of @idempotent for the DirectiveRoot
// that gqlgen generates (its field Idempotent): the extension's
// InterceptField does the work, and Directive lets the resolver run only
// under it. Reached without it (a server that did not Use the extension),
// it refuses with CodeInternal, so that @idempotent never runs a resolver
// unprotected.
func (x *Extension) Directive(ctx context.Context, obj any, next graphql.Resolver, key string) (any, error) {
	return x.directive(ctx, next)
}

// EngineKey returns the key under which the extension stores the result of
// a mutation with the client's key in scope (Options.Scope; "" without
// one): "gql:", the scope's length in decimal, a colon, the scope, then the
// key, as "gql:4:acme" + key. The length makes the combination
// unambiguous (scope "a" with key "bc" and scope "ab" with key "c" never
// meet), and the prefix keeps it apart from every key of idemhttp (whose
// keys begin with a digit) on a shared engine. Use it to find a key's
// record with the engine's Lookup, or to Forget a key whose outcome is
// unknown once it has been reconciled.
func EngineKey(scope, key string) string {
	return "gql:" + strconv.Itoa(len(scope)) + ":" + scope + key
}

// fieldSpec is what the extension knows of a registered mutation.
type fieldSpec struct {
	keyArg  string   // Mutation.KeyArgument
	keyPath []string // keyArg split at the dots; nil if ""
	// required is Mutation.Required.
	required bool
	// typ is the T of the Mutation[T].
	typ reflect.Type
	// do runs fn once for key through the engine, with idem.DoValue[T]:
	// it returns fn's value, or the stored one decoded into a T.
	do func(ctx context.Context, e *idem.Engine, key string, fp []byte, fn func() (any, error)) (any, error)
	// userErrors is Mutation.UserErrors, or nil.
	userErrors func(err *Error) (any, bool)
}

func (m Mutation[T]) spec() *fieldSpec {
	s := &fieldSpec{
		keyArg:   m.KeyArgument,
		required: m.Required,
		typ:      reflect.TypeFor[T](),
		do:       doValue[T],
	}
	if m.KeyArgument != "" {
		s.keyPath = strings.Split(m.KeyArgument, ".")
	}
	if f := m.UserErrors; f != nil {
		s.userErrors = func(err *Error) (any, bool) { return f(err) }
	}
	return s
}
