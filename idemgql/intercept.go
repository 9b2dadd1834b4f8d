package idemgql

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/flights"
)

// guardKey is the context key under which InterceptField marks the field
// it protects, for Directive.
type guardKey struct{}

// interceptField implements InterceptField.
func (x *Extension) interceptField(ctx context.Context, next graphql.Resolver) (any, error) {
	fc := graphql.GetFieldContext(ctx)
	if fc == nil || fc.Field.Field == nil {
		return next(ctx)
	}
	d := fc.Field.Directives.ForName(DirectiveName)
	s := x.schema.Load()
	var spec *fieldSpec
	if s != nil && s.Mutation != nil && fc.Object == s.Mutation.Name {
		spec = x.fields[fc.Field.Name]
	}
	if d == nil && spec == nil {
		return next(ctx)
	}
	// MutateOperationContext has refused every misplaced @idempotent and
	// every invalid key; these checks are for a field that reaches here
	// another way.
	if s == nil {
		return nil, gqlError(x.notValidated(), nil, nil)
	}
	opCtx := graphql.GetOperationContext(ctx)
	if opCtx.Operation == nil || opCtx.Operation.Operation != ast.Mutation || fc.Object != s.Mutation.Name || len(fc.Path()) != 1 {
		if d == nil {
			return next(ctx) // a registered name on a nested field of the mutation type
		}
		return nil, gqlError(&Error{Code: CodeUnsupportedPlacement,
			Message: fmt.Sprintf("@idempotent is allowed only on a root field of a mutation, and %q is not one.", fc.Field.Alias)}, nil, nil)
	}
	if spec == nil {
		return nil, gqlError(&Error{Code: CodeUnsupportedMutation,
			Message: fmt.Sprintf("The mutation %q does not support @idempotent: the server has not registered it as idempotent.", fc.Field.Name)}, nil, nil)
	}
	key, present, field, kerr := x.callKey(fc.Field.Field, spec, opCtx.Variables)
	switch {
	case kerr != nil:
		return nil, gqlError(kerr, nil, nil)
	case !present && spec.required:
		return nil, gqlError(requiredError(fc.Field.Name, spec), nil, nil)
	case !present:
		return next(ctx) // the client did not ask
	}
	fp, err := fingerprint(s, fc.Field.Field, opCtx.Variables, spec.keyPath)
	if err != nil {
		return nil, x.internal(ctx, err, key)
	}
	scope := ""
	if x.c.Scope != nil {
		scope = x.c.Scope(ctx)
	}
	return x.run(ctx, fc, spec, EngineKey(scope, key), fp, field, next)
}

// storedError is what fn returns to the engine for a resolver's error: an
// ordinary one releases the key, a Permanent one is stored with message as
// its text (the GraphQL message of the resolver's error, without gqlerror's
// location prefix). The engine hands it to the concurrent calls that waited
// for this one too.
type storedError struct {
	err     error // the resolver's error, as it returned it
	message string
	// shared is a copy of err for the calls that waited, made before the
	// call that ran the resolver hands err to gqlgen, which changes it: each
	// of them copies it again, for its own gqlgen.
	shared *gqlerror.Error
}

func (e *storedError) Error() string { return e.message }
func (e *storedError) Unwrap() error { return e.err }

// typeError is the error stored, as Permanent, for a resolver whose value
// is not of the registered type.
type typeError struct {
	field string
	got   any
	spec  *fieldSpec
}

func (e *typeError) Error() string {
	return fmt.Sprintf("idemgql: the resolver of mutation %q returned a %T, not the %v of its registration in Options.Mutations: its result was not stored (a server configuration error)", e.field, e.got, e.spec.typ)
}

// run runs the mutation fc through the engine, under key with fingerprint fp.
// field is the path of the key argument, if the key came from it.
func (x *Extension) run(ctx context.Context, fc *graphql.FieldContext, spec *fieldSpec, key string, fp []byte, field []string, next graphql.Resolver) (any, error) {
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := x.flights.Enter(key, fp, cancel)
	defer x.flights.Leave(key, w)

	var (
		ran    bool  // the resolver ran for this call
		own    any   // its value, if it returned no error
		ownErr error // its error
	)
	runCtx := context.WithValue(ctx, guardKey{}, fc)
	fn := func() (any, error) {
		// The resolver runs with the field's context, not dctx: dctx is
		// only this call's patience as a duplicate.
		x.flights.Start(key, w)
		defer x.flights.Stop(key, w)
		ran = true
		v, err := next(runCtx)
		if err != nil {
			ownErr = err
			var pe *idem.PermanentError
			if errors.As(err, &pe) {
				return nil, idem.Permanent(&storedError{err: err, message: graphQLMessage(pe.Err)})
			}
			return nil, &storedError{err: err, message: err.Error(), shared: copyError(err)}
		}
		own = v
		if v != nil && !reflect.TypeOf(v).AssignableTo(spec.typ) {
			return nil, idem.Permanent(&typeError{field: fc.Field.Name, got: v, spec: spec})
		}
		return v, nil
	}
	v, err := spec.do(dctx, x.e, key, fp, fn)

	switch {
	case ran && ownErr != nil:
		return nil, ownErr // the resolver's error, as it returned it
	case ran:
		// The resolver ran for this call: its client gets its value,
		// whatever became of storing it.
		if err != nil {
			x.c.Logger.ErrorContext(ctx, "idemgql: the resolver ran but its result could not be stored; a retry will run it again, or report its outcome as unknown",
				"mutation", fc.Field.Name, "key", key, "error", err)
		}
		return own, nil
	case err == nil:
		return v, nil // a replay, or the result of a concurrent call
	}
	var se *storedError
	var pe *idem.PermanentError
	if errors.As(err, &pe) {
		// A stored Permanent error, replayed; or that of a concurrent call.
		var te *typeError
		if errors.As(err, &te) {
			return nil, x.internal(ctx, err, key)
		}
		return nil, &gqlerror.Error{Message: pe.Err.Error(), Err: err}
	}
	if errors.As(err, &se) {
		// The ordinary error of a concurrent call's resolver, which
		// released the key: this call gets it too (a copy of its own:
		// gqlgen fills in each call's path).
		return nil, copyError(se.shared)
	}

	ierr := &Error{Err: err, Field: field}
	switch {
	case errors.Is(err, idem.ErrFingerprintMismatch):
		ierr.Code = CodeKeyParameterMismatch
		ierr.Message = "The idempotency key was used for another mutation, or with other arguments."
	case errors.Is(err, idem.ErrInterrupted):
		ierr.Code = CodeOutcomeUnknown
		ierr.Message = "A request with this idempotency key was being processed when the server stopped; whether it took effect is unknown, so it will not be processed again."
	case errors.Is(err, idem.ErrInFlight), dctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		ierr.Code = CodeConcurrentRequest
		ierr.Message = "A request with this idempotency key is still being processed; retry later."
		if errors.Is(context.Cause(dctx), flights.ErrWaitedLong) {
			ierr.Message = fmt.Sprintf("A request with this idempotency key is still being processed after waiting %v; retry later.", x.c.Wait)
		}
	case errors.Is(err, idem.ErrClosed):
		ierr.Code = CodeUnavailable
		ierr.Message = "The idempotency store is closed; retry later."
	case errors.Is(err, idem.ErrReadOnly):
		ierr.Code = CodeUnavailable
		ierr.Message = "The idempotency store is read-only; retry later."
	case errors.Is(err, idem.ErrInvalidKey):
		// The key passed MaxKeyLength: the scope is too long for the
		// engine's MaxKeySize, which is the server's doing.
		return nil, x.internal(ctx, fmt.Errorf("the engine key is too long for the engine: shorten the scope, lower Options.MaxKeyLength, or raise the engine's MaxKeySize: %w", err), key)
	default:
		return nil, x.internal(ctx, err, key)
	}
	if spec.userErrors != nil {
		if v, ok := spec.userErrors(ierr); ok {
			return v, nil
		}
	}
	return nil, gqlError(ierr, nil, nil)
}

// directive implements Directive.
func (x *Extension) directive(ctx context.Context, next graphql.Resolver) (any, error) {
	if fc := graphql.GetFieldContext(ctx); fc == nil || ctx.Value(guardKey{}) != fc {
		err := errors.New("@idempotent was reached without the idemgql extension: install it with the server's Use (the mutation did not run)")
		x.c.Logger.ErrorContext(ctx, "idemgql: "+err.Error())
		return nil, gqlError(&Error{Code: CodeInternal, Message: "The server cannot process @idempotent (a server configuration error); the mutation did not run."}, nil, nil)
	}
	return next(ctx)
}

// internal logs err and returns the error for CodeInternal.
func (x *Extension) internal(ctx context.Context, err error, key string) error {
	x.c.Logger.ErrorContext(ctx, "idemgql: internal error", "key", key, "error", err)
	return gqlError(&Error{Code: CodeInternal, Err: err,
		Message: "The idempotency store failed; retry later."}, nil, nil)
}

// notValidated is the error of an Extension used before Validate.
func (x *Extension) notValidated() *Error {
	return &Error{Code: CodeInternal, Message: "The idemgql extension was not validated against the schema: install it with the server's Use."}
}

// graphQLMessage returns the message of err as a GraphQL error: that of the
// *gqlerror.Error in its chain, if any, without the location prefix of its
// Error method.
func graphQLMessage(err error) string {
	var g *gqlerror.Error
	if errors.As(err, &g) {
		return g.Message
	}
	return err.Error()
}

// copyError returns a copy of err, a resolver's error, for another call of
// the same field, without a path or locations: gqlgen gives it the call's.
func copyError(err error) *gqlerror.Error {
	var g *gqlerror.Error
	if errors.As(err, &g) {
		return &gqlerror.Error{Message: g.Message, Extensions: maps.Clone(g.Extensions), Rule: g.Rule, Err: g.Err}
	}
	return &gqlerror.Error{Message: err.Error(), Err: err}
}

// doValue is fieldSpec.do for a Mutation[T].
func doValue[T any](ctx context.Context, e *idem.Engine, key string, fp []byte, fn func() (any, error)) (any, error) {
	v, _, err := idem.DoValue(ctx, e, key, fp, func(context.Context) (T, error) {
		var zero T
		r, err := fn()
		if err != nil || r == nil {
			return zero, err
		}
		return r.(T), nil // fn checked the type
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}
