package idem

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// Observer watches an Engine's Do calls: what each one came to, and how long
// its parts took. Metrics and traces are built on it (the idemprom and
// idemotel modules), and neither is built into the engine.
//
// The engine calls its methods from the goroutine of the Do call they
// concern, with no lock held, in this order: DoStart; StoreDone after each
// of the call's requests to the store; FnStart and FnEnd around fn, if the
// call runs it; DoEnd last. They must be safe for concurrent use, and quick:
// they add to the time of every call. A panic in one reaches Do's caller, as
// a panic in fn would, and releases the key; after fn has returned and
// before its outcome is stored, it leaves the key reporting ErrInterrupted,
// since fn's effects happened. An Observer whose DoStart (or FnStart)
// panics gets no DoEnd (or FnEnd) for that call; with Observers, neither
// do the Observers before it in the list.
//
// Options.Observer is nil by default, and then Do calls nothing and reads
// no clock for it.
type Observer interface {
	// DoStart is called when a Do call begins, for each call that
	// Stats.Calls counts (one with valid arguments, on an open, writable
	// engine). The context it returns goes on with the call: every later
	// method gets it, and fn gets what FnStart makes of it. A tracer
	// starts the call's span here; one that has nothing to add returns
	// ctx. key is the engine key, which a tracer should not record unless
	// its user asked for it.
	DoStart(ctx context.Context, key string) context.Context

	// StoreDone is called after each request of the call to the store, with
	// how long it took and its error: nil when the store answered, even if
	// the answer was that the key has no record (a read) or that another
	// call's write came first (a claim or a completion).
	StoreDone(ctx context.Context, op StoreOp, took time.Duration, err error)

	// FnStart is called just before fn runs; the context it returns is
	// fn's. A tracer starts fn's span here, as a child of the call's.
	FnStart(ctx context.Context) context.Context

	// FnEnd is called when fn has returned, with fn's context (as FnStart
	// returned it), how long fn ran and its error. If fn panics or calls
	// runtime.Goexit, FnEnd is called with ErrFnPanicked as fn's error,
	// before the panic goes on.
	FnEnd(ctx context.Context, took time.Duration, err error)

	// DoEnd is called when the call returns, or panics.
	DoEnd(ctx context.Context, info DoInfo)
}

// StoreOp is the kind of a request to the store, for Observer.StoreDone.
type StoreOp uint8

const (
	// StoreRead reads the key's record.
	StoreRead StoreOp = iota
	// StoreClaim writes the in-flight marker that claims the key before fn
	// runs. (Pebble's store writes none under SyncNone.)
	StoreClaim
	// StoreComplete writes fn's outcome.
	StoreComplete
	// StoreRelease deletes the in-flight marker of a call whose fn failed.
	StoreRelease
)

// String returns the operation's name, as "claim": a label for metrics.
func (op StoreOp) String() string {
	switch op {
	case StoreRead:
		return "read"
	case StoreClaim:
		return "claim"
	case StoreComplete:
		return "complete"
	case StoreRelease:
		return "release"
	}
	return "StoreOp(" + strconv.Itoa(int(op)) + ")"
}

// Outcome is what a Do call came to, for Observer.DoEnd.
type Outcome uint8

const (
	// OutcomeExecuted: the call ran fn, and its outcome (a value, or a
	// Permanent error) is stored.
	OutcomeExecuted Outcome = iota
	// OutcomeReplayed: the call was answered with a stored outcome, read
	// from the store or the engine's cache; fn did not run for it.
	OutcomeReplayed
	// OutcomeWaited: the call waited for a concurrent call of the key in
	// this engine and shared its outcome, stored (Result.Replayed) or not
	// (fn's error, which released the key). A shared mismatch, interrupted
	// key or conflict is counted as such.
	OutcomeWaited
	// OutcomeConflict: the call returned ErrInFlight: the key was in
	// flight and the call did not wait (Options.NoWait), or its context
	// ended while it waited.
	OutcomeConflict
	// OutcomeMismatch: the call returned ErrFingerprintMismatch.
	OutcomeMismatch
	// OutcomeInterrupted: the call returned ErrInterrupted.
	OutcomeInterrupted
	// OutcomeFailed: the call ran fn, which returned an error that is not
	// Permanent, or a value (or Permanent error) over MaxValueSize
	// (ErrTooLarge), or panicked: nothing is stored, and the key is free
	// again.
	OutcomeFailed
	// OutcomeError: the call failed without an outcome of fn's: the store
	// failed, the call's context ended before fn ran, or fn's outcome
	// could not be stored (the key then reports ErrInterrupted).
	OutcomeError
)

// String returns the outcome's name, as "executed": a label for metrics and
// traces.
func (o Outcome) String() string {
	switch o {
	case OutcomeExecuted:
		return "executed"
	case OutcomeReplayed:
		return "replayed"
	case OutcomeWaited:
		return "waited"
	case OutcomeConflict:
		return "conflict"
	case OutcomeMismatch:
		return "mismatch"
	case OutcomeInterrupted:
		return "interrupted"
	case OutcomeFailed:
		return "failed"
	case OutcomeError:
		return "error"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// DoInfo is what Observer.DoEnd learns of a finished call.
type DoInfo struct {
	Outcome Outcome
	// Took is how long the call took, from DoStart to DoEnd.
	Took time.Duration
	// Waited is how long of it the call waited for another call of the
	// key to finish: in this engine, or (with a shared store) in another.
	Waited time.Duration
	// Replayed is Result.Replayed.
	Replayed bool
	// Err is the error Do returns, or ErrFnPanicked if the call panics:
	// in fn (Outcome is OutcomeFailed) or elsewhere, in the engine, the
	// store, the Observer or a method of fn's error (OutcomeError).
	Err error
}

// ErrFnPanicked is the error an Observer sees for a call whose fn panicked
// or called runtime.Goexit: FnEnd's, and DoEnd's in DoInfo.Err (DoEnd's
// also for a panic elsewhere in the call). Do's caller never gets it; the
// panic goes on.
var ErrFnPanicked = errors.New("idem: fn panicked or called runtime.Goexit")

// callObs is a Do call's record for its Observer; calls have none (nil)
// when the engine has no Observer.
type callObs struct {
	o     Observer
	ctx   context.Context // the call's context, as DoStart returned it
	start time.Time       // when the call began

	waited time.Duration // time spent waiting for other calls of the key

	fnCtx   context.Context // fn's context, as FnStart returned it
	fnBegan time.Time
	inFn    bool // fn is running: FnEnd is due
	fnPanic bool // fn panicked or called runtime.Goexit
	ran     bool // fn ran in this call
	stored  bool // fn's outcome is stored
	failed  bool // fn's error released the key
	shared  bool // the call shares the outcome of a concurrent call
}

// begin returns the time a store request starts; the zero time without an
// Observer, which reads no clock.
func (co *callObs) begin() time.Time {
	if co == nil {
		return time.Time{}
	}
	return time.Now()
}

// storeDone reports a store request that began at t0. Answers that are not
// failures (no record, a conflict) are reported as nil errors.
func (co *callObs) storeDone(op StoreOp, t0 time.Time, err error) {
	if co == nil {
		return
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrStoreConflict) {
		err = nil
	}
	co.o.StoreDone(co.ctx, op, time.Since(t0), err)
}

// waitedSince adds the time since t0 to the call's waits.
func (co *callObs) waitedSince(t0 time.Time) {
	if co != nil {
		co.waited += time.Since(t0)
	}
}

// fnStart tells the Observer that fn is about to run, and returns fn's
// context.
func (co *callObs) fnStart(ctx context.Context) context.Context {
	if co == nil {
		return ctx
	}
	co.fnCtx = co.o.FnStart(ctx)
	co.ran, co.inFn, co.fnBegan = true, true, time.Now()
	return co.fnCtx
}

// fnEnd tells the Observer that fn has returned err (ErrFnPanicked if it
// panicked), once.
func (co *callObs) fnEnd(err error) {
	if co == nil || !co.inFn {
		return
	}
	co.inFn = false
	co.o.FnEnd(co.fnCtx, time.Since(co.fnBegan), err)
}

// fnPanicked tells the Observer, if fn is running, that it panicked or
// called runtime.Goexit.
func (co *callObs) fnPanicked() {
	if co == nil || !co.inFn {
		return
	}
	co.fnPanic = true
	co.fnEnd(ErrFnPanicked)
}

// outcome classifies the call that returned res and err.
func (co *callObs) outcome(res Result, err error) Outcome {
	switch {
	case co.ran && co.stored:
		return OutcomeExecuted
	case co.ran && co.failed:
		return OutcomeFailed
	case errors.Is(err, ErrFingerprintMismatch):
		return OutcomeMismatch
	case errors.Is(err, ErrInterrupted):
		return OutcomeInterrupted
	case errors.Is(err, ErrInFlight):
		return OutcomeConflict
	case co.shared:
		return OutcomeWaited
	case res.Replayed:
		return OutcomeReplayed
	}
	return OutcomeError
}

// doObserved is Do for an engine with an Observer: do, between DoStart and
// DoEnd.
func (e *Engine) doObserved(ctx context.Context, o Observer, key string, fingerprint []byte, fn func(context.Context) ([]byte, error)) (res Result, err error) {
	co := &callObs{o: o, start: time.Now()}
	co.ctx = o.DoStart(ctx, key)
	returned := false
	defer func() {
		if !returned {
			// fn, or the engine, panicked or called Goexit: the panic
			// goes on once DoEnd has seen it. A panic of fn's releases
			// the key (failed); any other, in the engine, the store, the
			// Observer or a method of fn's error, has no outcome of fn's
			// (error), and leaves the key interrupted if fn ran.
			co.fnPanicked()
			outcome := OutcomeError
			if co.fnPanic {
				outcome = OutcomeFailed
			}
			o.DoEnd(co.ctx, DoInfo{Outcome: outcome, Took: time.Since(co.start), Waited: co.waited, Err: ErrFnPanicked})
		}
	}()
	res, err = e.do(co.ctx, key, fingerprint, fn, co)
	returned = true
	o.DoEnd(co.ctx, DoInfo{Outcome: co.outcome(res, err), Took: time.Since(co.start), Waited: co.waited, Replayed: res.Replayed, Err: err})
	return res, err
}

// Observers returns an Observer that tells each of list, in order: for an
// engine watched by several, metrics and traces say. DoStart and FnStart
// chain the context: each Observer's gets the context the one before it
// returned, and every later method of every Observer gets the context the
// last one returned. A tracer finds its span in it, unless an Observer after
// it put a span of its own there: put at most one tracer in the list, or
// put it last. Nil entries are left out; Observers returns nil if none is
// left, and the Observer itself if one is.
func Observers(list ...Observer) Observer {
	var m multiObserver
	for _, o := range list {
		if o != nil {
			m = append(m, o)
		}
	}
	switch len(m) {
	case 0:
		return nil
	case 1:
		return m[0]
	}
	return m
}

// multiObserver is what Observers returns for several.
type multiObserver []Observer

func (m multiObserver) DoStart(ctx context.Context, key string) context.Context {
	for _, o := range m {
		ctx = o.DoStart(ctx, key)
	}
	return ctx
}

func (m multiObserver) StoreDone(ctx context.Context, op StoreOp, took time.Duration, err error) {
	for _, o := range m {
		o.StoreDone(ctx, op, took, err)
	}
}

func (m multiObserver) FnStart(ctx context.Context) context.Context {
	for _, o := range m {
		ctx = o.FnStart(ctx)
	}
	return ctx
}

func (m multiObserver) FnEnd(ctx context.Context, took time.Duration, err error) {
	for _, o := range m {
		o.FnEnd(ctx, took, err)
	}
}

func (m multiObserver) DoEnd(ctx context.Context, info DoInfo) {
	for _, o := range m {
		o.DoEnd(ctx, info)
	}
}
