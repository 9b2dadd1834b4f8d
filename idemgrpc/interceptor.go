package idemgrpc

import (
	"context"
	"errors"
	"fmt"
	"math"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/flights"
)

// UnaryServerInterceptor returns a unary server interceptor that makes the
// calls of the covered methods (Options.Methods: every unary method by
// default) idempotent by their key (Options.Key: the incoming metadata
// "idempotency-key" by default), with e as the store. A nil opts means the
// defaults. It panics if e is nil or an option is invalid.
//
// Install it with grpc.UnaryInterceptor or grpc.ChainUnaryInterceptor,
// after the interceptors whose work every call needs (authentication, which
// Options.Scope may read; a panic recovery), since the interceptors after it
// run once per key, as the handler does. All the methods of one server
// share its knowledge of the calls in progress; see the package
// documentation's caveats.
func UnaryServerInterceptor(e *idem.Engine, opts *Options) grpc.UnaryServerInterceptor {
	if e == nil {
		panic("idemgrpc: UnaryServerInterceptor called with a nil *idem.Engine")
	}
	c := opts.withDefaults()
	i := &interceptor{e: e, c: c, flights: flights.New(c.Wait)}
	return i.intercept
}

// interceptor is the state behind an interceptor UnaryServerInterceptor
// returns.
type interceptor struct {
	e       *idem.Engine
	c       *Options // with the defaults
	flights *flights.Flights
}

// notStoredError is what fn returns to the engine for an outcome that
// Options.Store refuses: an ordinary error, so the engine releases the key
// and hands the error to the calls waiting for this one, which decode and
// return the outcome.
type notStoredError struct {
	code  codes.Code
	value []byte // the outcome, encoded whole
	// abandoned is set for an error returned after the call's context
	// ended (its client gone, its deadline past): the handler gave up
	// rather than decided, and the calls that waited for it try again
	// rather than take its error, which is not theirs.
	abandoned bool
}

func (e *notStoredError) Error() string {
	return fmt.Sprintf("idemgrpc: the handler returned %v, which is not stored", e.code)
}

// unstorableError is what fn returns to the engine for an outcome that
// cannot be stored (a response that is not a protocol buffers message, or
// does not marshal): the key is released.
type unstorableError struct {
	err error
}

func (e *unstorableError) Error() string { return e.err.Error() }
func (e *unstorableError) Unwrap() error { return e.err }

// intercept implements grpc.UnaryServerInterceptor.
func (i *interceptor) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod
	if i.c.Methods != nil && !i.c.Methods(method) {
		return handler(ctx, req)
	}
	key, err := i.c.Key(ctx, method, req)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, newStatus(codes.InvalidArgument, ReasonKeyInvalid, 0, "idemgrpc: invalid idempotency key: %v", err)
	}
	if key == "" {
		if i.c.Required {
			return nil, newStatus(codes.InvalidArgument, ReasonKeyRequired, 0, "idemgrpc: %s requires an idempotency key", method)
		}
		return handler(ctx, req)
	}
	if err := checkKey(key, i.c.MaxKeyLength); err != nil {
		return nil, newStatus(codes.InvalidArgument, ReasonKeyInvalid, 0, "idemgrpc: invalid idempotency key: %v", err)
	}
	fp, err := i.c.Fingerprint(ctx, method, req)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, newStatus(codes.InvalidArgument, ReasonFingerprint, 0, "idemgrpc: computing the request's fingerprint: %v", err)
	}
	scope := ""
	if i.c.Scope != nil {
		scope = i.c.Scope(ctx)
	}
	return i.serve(ctx, req, method, handler, EngineKey(scope, key), fp)
}

// serve runs the handler once for key, or answers with the outcome of the
// call that did.
func (i *interceptor) serve(ctx context.Context, req any, method string, handler grpc.UnaryHandler, key string, fp []byte) (any, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := i.flights.Enter(key, fp, cancel)
	defer i.flights.Leave(key, w)

	var (
		ran  bool // the handler ran for this call
		resp any  // and returned this
		herr error
	)
	fn := func(context.Context) ([]byte, error) {
		// The handler runs with the call's context, not the engine's: that
		// one is only this call's patience as a duplicate.
		i.flights.Start(key, w)
		defer i.flights.Stop(key, w)
		ran = true
		resp, herr = handler(ctx, req)
		return i.record(ctx, resp, herr)
	}
	res, err := i.e.Do(wctx, key, fp, fn)
	var notStored *notStoredError
	for !ran && errors.As(err, &notStored) && notStored.abandoned {
		// The handler this call waited for gave up, and the key is free
		// again: this call, whose client is still there, tries again and
		// may run the handler itself.
		res, err = i.e.Do(wctx, key, fp, fn)
	}

	if ran {
		// The client that ran the handler gets its outcome as returned,
		// whatever became of storing it.
		if err != nil && !errors.As(err, &notStored) {
			i.c.Logger.ErrorContext(ctx, "idemgrpc: the handler ran but its outcome could not be stored; a retry will run it again, or report its outcome as unknown",
				"method", method, "key", key, "code", statusOf(herr).Code(), "error", err)
		}
		return resp, herr
	}
	var unstorable *unstorableError
	switch {
	case err == nil:
		d, derr := decode(res.Value, i.c.Types)
		if derr != nil {
			return nil, i.internal(ctx, method, key, fmt.Errorf("decoding the stored outcome: %w", derr))
		}
		if res.Replayed {
			// Only a call with no stream in ctx (a test calling the
			// interceptor directly) makes SetHeader fail: nothing to tell.
			_ = grpc.SetHeader(ctx, metadata.Pairs(HeaderReplayed, "true"))
		}
		if d.err != nil {
			return nil, d.err
		}
		return d.resp, nil
	case errors.As(err, &notStored):
		// This call waited for one whose outcome is not stored (Unavailable,
		// say): it gets that outcome, which is not a replay. The key is free
		// again, so its client's retry runs the handler.
		d, derr := decode(notStored.value, i.c.Types)
		if derr != nil {
			return nil, i.internal(ctx, method, key, derr)
		}
		if d.err != nil {
			return nil, d.err
		}
		return d.resp, nil
	case errors.Is(err, idem.ErrFingerprintMismatch):
		return nil, newStatus(codes.FailedPrecondition, ReasonKeyMismatch, 0,
			"idemgrpc: the idempotency key was used for a call with another method or request")
	case errors.Is(err, idem.ErrInterrupted):
		return nil, newStatus(codes.FailedPrecondition, ReasonOutcomeUnknown, 0,
			"idemgrpc: a call with this idempotency key was running when the server stopped; whether it took effect is unknown, so it will not run again")
	case errors.Is(err, idem.ErrInFlight), wctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		if ctx.Err() != nil {
			// The call's own context ended while it waited: its client
			// has gone, or its deadline passed.
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		msg := "idemgrpc: a call with this idempotency key is still running; retry later with the same key"
		if errors.Is(context.Cause(wctx), flights.ErrWaitedLong) {
			msg = fmt.Sprintf("idemgrpc: a call with this idempotency key is still running after waiting %v; retry later with the same key", i.c.Wait)
		}
		return nil, newStatus(codes.Aborted, ReasonConcurrentRequest, retryInFlight, "%s", msg)
	case errors.Is(err, idem.ErrInvalidKey):
		// The key passed Options.MaxKeyLength: the scope is too long for
		// the engine's MaxKeySize, which is the server's doing.
		return nil, i.internal(ctx, method, key, fmt.Errorf("the engine key is too long for the engine: shorten the scope, lower Options.MaxKeyLength, or raise the engine's MaxKeySize: %w", err))
	case errors.Is(err, idem.ErrTooLarge):
		return nil, i.internal(ctx, method, key, fmt.Errorf("the outcome of the call this one waited for is over the engine's MaxValueSize: lower Options.MaxStoredSize: %w", err))
	case errors.As(err, &unstorable):
		return nil, i.internal(ctx, method, key, fmt.Errorf("the outcome of the call this one waited for could not be stored: %w", err))
	case errors.Is(err, idem.ErrCorrupt):
		return nil, i.internal(ctx, method, key, err)
	case errors.Is(err, idem.ErrClosed):
		return nil, newStatus(codes.Unavailable, ReasonUnavailable, retryUnavailable, "idemgrpc: the idempotency store is closed")
	case errors.Is(err, idem.ErrReadOnly):
		return nil, newStatus(codes.Unavailable, ReasonUnavailable, retryUnavailable, "idemgrpc: the idempotency store is read-only")
	}
	// A storage error, or the handler of the call this one waited for
	// panicked: the key is, or will be, free or decided; a retry finds out.
	i.c.Logger.ErrorContext(ctx, "idemgrpc: engine error", "method", method, "key", key, "error", err)
	return nil, newStatus(codes.Unavailable, ReasonUnavailable, retryUnavailable, "idemgrpc: the idempotency store failed; retry later with the same key")
}

// record returns the stored form of the handler's outcome, or the error
// that tells the engine not to store it.
func (i *interceptor) record(ctx context.Context, resp any, herr error) ([]byte, error) {
	code := codes.OK
	var st *status.Status
	if herr != nil {
		st = statusOf(herr)
		if code = st.Code(); code == codes.OK {
			// An error whose GRPCStatus is OK: gRPC sends OK with no
			// response, which is no outcome to replay.
			return nil, &unstorableError{err: fmt.Errorf("idemgrpc: the handler returned an error with status OK: %w", herr)}
		}
	}
	stored := i.c.Store(code)
	limit := i.c.MaxStoredSize
	if !stored {
		limit = math.MaxInt // for the waiting calls only: whole
	}
	var v []byte
	if st != nil {
		v = encodeStatus(st, limit)
	} else {
		m, ok := resp.(proto.Message)
		if !ok {
			return nil, &unstorableError{err: errNotMessage}
		}
		var err error
		if v, err = encodeResponse(m, limit); err != nil {
			return nil, &unstorableError{err: err}
		}
	}
	if !stored {
		return nil, &notStoredError{code: code, value: v, abandoned: herr != nil && ctx.Err() != nil}
	}
	return v, nil
}

// internal logs err and returns the Internal status.
func (i *interceptor) internal(ctx context.Context, method, key string, err error) error {
	i.c.Logger.ErrorContext(ctx, "idemgrpc: internal error", "method", method, "key", key, "error", err)
	return newStatus(codes.Internal, ReasonInternal, 0, "idemgrpc: the idempotency store cannot serve this call: a server error")
}
