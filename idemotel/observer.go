package idemotel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkv/idem"
)

// Observer is an idem.Observer that traces Do calls: a span per call, an
// event on it per store request, and a child span for fn (see the package
// documentation). Make one with NewObserver; it is safe for concurrent use,
// and one Observer may serve several engines.
//
// Its methods are called by the engine; a program has no need to call them.
// Each finds the call's span in the context it is given, where DoStart (or
// FnStart) put it, so an Observer keeps no state per call.
type Observer struct {
	tracer    trace.Tracer
	recordKey bool
	attrs     []attribute.KeyValue    // Options.Attributes
	spanOpts  []trace.SpanStartOption // made once: options cost allocations
}

var _ idem.Observer = (*Observer)(nil)

// DoStart starts the call's span, idem.Do, as a child of the span in ctx if
// there is one, and returns ctx with it.
func (o *Observer) DoStart(ctx context.Context, key string) context.Context {
	ctx, span := o.tracer.Start(ctx, DoSpanName, o.spanOpts...)
	if !span.IsRecording() {
		return ctx // attributes would cost allocations for nothing
	}
	attrs := make([]attribute.KeyValue, 0, 2+len(o.attrs))
	attrs = append(attrs, AttrKeyLength.Int(len(key)))
	if o.recordKey {
		attrs = append(attrs, AttrKey.String(key))
	}
	span.SetAttributes(append(attrs, o.attrs...)...)
	return ctx
}

// StoreDone adds an idem.store event to the call's span, at the end of the
// request: its kind, its duration and its error, if any.
func (o *Observer) StoreDone(ctx context.Context, op idem.StoreOp, took time.Duration, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 2, 4)
	attrs[0] = AttrStoreOp.String(op.String())
	attrs[1] = AttrStoreDuration.Float64(took.Seconds())
	if err != nil {
		typ, msg := describe(err)
		attrs = append(attrs, typ, attrErrorMessage.String(msg))
	}
	span.AddEvent(StoreEventName, trace.WithAttributes(attrs...))
}

// FnStart starts fn's span, idem.fn, as a child of the call's, and returns
// fn's context with it: the spans that fn starts are its children.
func (o *Observer) FnStart(ctx context.Context) context.Context {
	ctx, _ = o.tracer.Start(ctx, FnSpanName, o.spanOpts...)
	return ctx
}

// FnEnd ends fn's span, with the status Error if fn returned an error (a
// Permanent one too: fn's work failed) or panicked.
func (o *Observer) FnEnd(ctx context.Context, took time.Duration, err error) {
	span := trace.SpanFromContext(ctx)
	if err != nil && span.IsRecording() {
		typ, msg := describe(err)
		span.SetAttributes(typ)
		span.SetStatus(codes.Error, msg)
	}
	span.End()
}

// DoEnd sets the outcome's attributes on the call's span and ends it, with
// the status Error if the call failed (see callFailed).
func (o *Observer) DoEnd(ctx context.Context, info idem.DoInfo) {
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		attrs := make([]attribute.KeyValue, 2, 4)
		attrs[0] = AttrOutcome.String(info.Outcome.String())
		attrs[1] = AttrReplayed.Bool(info.Replayed)
		if info.Waited > 0 {
			attrs = append(attrs, AttrWaitDuration.Float64(info.Waited.Seconds()))
		}
		failed := callFailed(info)
		var msg string
		if failed {
			var typ attribute.KeyValue
			typ, msg = describe(info.Err)
			attrs = append(attrs, typ)
		}
		span.SetAttributes(attrs...)
		if failed {
			span.SetStatus(codes.Error, msg)
		}
	}
	span.End()
}

// callFailed reports whether the call that ended with info failed, for its
// span's status: whether Do returned an error other than the answers that
// idem gives about the key, ErrInFlight (conflict), ErrFingerprintMismatch
// (mismatch) and ErrInterrupted (interrupted). Those say that the engine
// worked, as an HTTP server's 409 or 422 does, and the request was a
// duplicate, a reused key or one to reconcile: its caller's matter, marked
// by idem.outcome, not a fault of the service. Every other error is: fn's
// (failed, or shared by a call that waited for it), the engine's or its
// store's (error), and a stored Permanent error of fn's, replayed or not,
// since the caller gets an error in place of the operation's result.
func callFailed(info idem.DoInfo) bool {
	switch info.Outcome {
	case idem.OutcomeConflict, idem.OutcomeMismatch, idem.OutcomeInterrupted:
		return false
	case idem.OutcomeFailed, idem.OutcomeError:
		return true
	}
	return info.Err != nil
}

// describe returns err's error.type attribute and its message, for a span's
// status or an event. A panic in a method of err (Error, Is, As) is caught,
// as fmt catches one, and described: the Observer must not turn an error
// that the engine handles into a panic that reaches Do's caller (and, after
// fn ran, leaves the key interrupted).
func describe(err error) (typ attribute.KeyValue, msg string) {
	if err == nil {
		return semconv.ErrorTypeOther, ""
	}
	method := "Is or As"
	defer func() {
		if r := recover(); r != nil {
			if typ.Key == "" {
				typ = semconv.ErrorTypeOther
			}
			msg = fmt.Sprintf("%%!v(PANIC=%s method: %v)", method, r)
		}
	}()
	typ = errorType(err)
	method = "Error"
	return typ, err.Error()
}

// errorType returns err's error.type attribute: the name of the idem or
// context error it is, if it is one that a caller branches on, else the
// name of its Go type (semconv.ErrorType): values of low cardinality, as the
// semantic conventions ask.
func errorType(err error) attribute.KeyValue {
	// A stored outcome first, whatever its cause.
	var perm *idem.PermanentError
	if errors.As(err, &perm) {
		return semconv.ErrorTypeKey.String("idem.PermanentError")
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return semconv.ErrorTypeKey.String(s.name)
		}
	}
	return semconv.ErrorType(err)
}

// sentinels are the errors that errorType names, by their Go names.
var sentinels = []struct {
	err  error
	name string
}{
	{idem.ErrFnPanicked, "idem.ErrFnPanicked"},
	{idem.ErrTooLarge, "idem.ErrTooLarge"},
	{idem.ErrCorrupt, "idem.ErrCorrupt"},
	{idem.ErrClosed, "idem.ErrClosed"},
	{context.Canceled, "context.Canceled"},
	{context.DeadlineExceeded, "context.DeadlineExceeded"},
}
