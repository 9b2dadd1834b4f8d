package idemotel_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemotel"
)

// A new key: the Do span, with fn's span as its child; the outcome's
// attributes; the store's requests as events; the key's length, not the key.
func TestNewKey(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	const key = "order-1001"
	res, err := e.Do(context.Background(), key, []byte("fp"), value("receipt"))
	require.NoError(t, err)
	require.False(t, res.Replayed)

	spans := tr.ended()
	require.Len(t, spans, 2)
	fn, do := spans[0], spans[1] // fn's span ends first
	require.Equal(t, idemotel.FnSpanName, fn.Name())
	require.Equal(t, idemotel.DoSpanName, do.Name())

	// do is a root (the caller had no span); fn is its child.
	require.False(t, do.Parent().IsValid())
	require.Equal(t, do.SpanContext().TraceID(), fn.SpanContext().TraceID())
	require.Equal(t, do.SpanContext().SpanID(), fn.Parent().SpanID())
	require.False(t, fn.StartTime().Before(do.StartTime()))
	require.False(t, fn.EndTime().After(do.EndTime()))

	for _, s := range spans {
		require.Equal(t, trace.SpanKindInternal, s.SpanKind())
		require.Equal(t, codes.Unset, s.Status().Code, s.Name())
		require.Equal(t, idemotel.ScopeName, s.InstrumentationScope().Name)
	}
	a := attrs(do)
	require.Equal(t, "executed", a[idemotel.AttrOutcome].AsString())
	require.False(t, a[idemotel.AttrReplayed].AsBool())
	require.Equal(t, int64(len(key)), a[idemotel.AttrKeyLength].AsInt64())
	require.NotContains(t, a, idemotel.AttrKey)
	require.NotContains(t, a, idemotel.AttrWaitDuration)
	require.NotContains(t, a, attribute.Key("error.type"))
	require.Empty(t, fn.Attributes())
	requireNoKey(t, spans, key)

	// The read is skipped once the key filter knows that the key is new.
	require.Regexp(t, `^(read )?claim complete$`, storeOps(t, do))
	require.Empty(t, fn.Events())
}

// Options.RecordKey records the key; Options.Attributes go on every Do span.
func TestRecordKeyAndAttributes(t *testing.T) {
	tr := newTracing(t)
	extra := []attribute.KeyValue{attribute.String("idem.engine", "payments")}
	e := open(t, &idem.Options{Observer: tr.observer(&idemotel.Options{RecordKey: true, Attributes: extra})})
	extra[0] = attribute.String("idem.engine", "changed") // NewObserver copied it
	for range 2 {
		_, err := e.Do(context.Background(), "order-1001", nil, value("v"))
		require.NoError(t, err)
	}
	dos := tr.named(idemotel.DoSpanName)
	require.Len(t, dos, 2)
	for _, do := range dos {
		a := attrs(do)
		require.Equal(t, "order-1001", a[idemotel.AttrKey].AsString())
		require.Equal(t, int64(10), a[idemotel.AttrKeyLength].AsInt64())
		require.Equal(t, "payments", a["idem.engine"].AsString())
	}
	require.Empty(t, attrs(tr.named(idemotel.FnSpanName)[0]))
}

// A replay: one span, no fn span, idem.replayed true; the key's record is
// read from the store until the engine caches it.
func TestReplay(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	ctx := context.Background()
	_, err := e.Do(ctx, "k", nil, value("v"))
	require.NoError(t, err)
	for i := range 3 {
		res, err := e.Do(ctx, "k", nil, func(context.Context) ([]byte, error) {
			t.Error("fn ran for a replay")
			return nil, nil
		})
		require.NoError(t, err)
		require.True(t, res.Replayed)
		spans := tr.ended()
		require.Len(t, spans, 3+i)
		do := spans[len(spans)-1]
		require.Equal(t, idemotel.DoSpanName, do.Name())
		a := attrs(do)
		require.Equal(t, "replayed", a[idemotel.AttrOutcome].AsString())
		require.True(t, a[idemotel.AttrReplayed].AsBool())
		require.Equal(t, codes.Unset, do.Status().Code)
		require.Regexp(t, `^(read)?$`, storeOps(t, do))
	}
	require.Len(t, tr.named(idemotel.FnSpanName), 1)
	// The third replay is answered from the engine's cache.
	dos := tr.named(idemotel.DoSpanName)
	require.Equal(t, "", storeOps(t, dos[len(dos)-1]))
}

// Concurrent duplicates: one call runs fn and has fn's span; the others
// wait for it, and their spans say for how long.
func TestConcurrentDuplicates(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	const n = 8
	var runs atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
				runs.Add(1)
				<-release
				return []byte("v"), nil
			})
			require.NoError(t, err)
		}()
	}
	require.Eventually(t, func() bool { return e.Stats().Waits == n-1 }, 10*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	require.Equal(t, int32(1), runs.Load())

	fns := tr.named(idemotel.FnSpanName)
	require.Len(t, fns, 1)
	outcomes := map[string]int{}
	for _, do := range tr.named(idemotel.DoSpanName) {
		a := attrs(do)
		outcome := a[idemotel.AttrOutcome].AsString()
		outcomes[outcome]++
		require.Equal(t, codes.Unset, do.Status().Code)
		switch outcome {
		case "executed":
			require.Equal(t, do.SpanContext().SpanID(), fns[0].Parent().SpanID())
		case "waited":
			require.True(t, a[idemotel.AttrReplayed].AsBool())
			require.Positive(t, a[idemotel.AttrWaitDuration].AsFloat64())
			require.Empty(t, storeOps(t, do))
		}
	}
	require.Equal(t, map[string]int{"executed": 1, "waited": n - 1}, outcomes)
}

// A reused key with another fingerprint: the caller's matter, not a fault,
// so the span's status stays unset.
func TestMismatch(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	_, err := e.Do(context.Background(), "k", []byte("a"), value("v"))
	require.NoError(t, err)
	_, err = e.Do(context.Background(), "k", []byte("b"), value("w"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)

	spans := tr.ended()
	require.Len(t, spans, 3)
	do := spans[2]
	a := attrs(do)
	require.Equal(t, "mismatch", a[idemotel.AttrOutcome].AsString())
	require.False(t, a[idemotel.AttrReplayed].AsBool())
	require.NotContains(t, a, attribute.Key("error.type"))
	require.Equal(t, codes.Unset, do.Status().Code)
}

// A duplicate under NoWait while fn runs: a conflict, with no fn span and
// the status unset.
func TestNoWaitConflict(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil), NoWait: true})
	running, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
			close(running)
			<-release
			return []byte("v"), nil
		})
		done <- err
	}()
	<-running
	_, err := e.Do(context.Background(), "k", nil, value("w"))
	require.ErrorIs(t, err, idem.ErrInFlight)
	close(release)
	require.NoError(t, <-done)

	dos := tr.named(idemotel.DoSpanName)
	require.Len(t, dos, 2)
	conflict := dos[0] // it ended while the other call's fn ran
	a := attrs(conflict)
	require.Equal(t, "conflict", a[idemotel.AttrOutcome].AsString())
	require.Equal(t, codes.Unset, conflict.Status().Code)
	require.Empty(t, storeOps(t, conflict))
	require.Equal(t, "executed", attrs(dos[1])[idemotel.AttrOutcome].AsString())
	require.Len(t, tr.named(idemotel.FnSpanName), 1)
}

// A key left in flight by a crash is interrupted: the caller's to
// reconcile, so the status stays unset.
func TestInterrupted(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e, err := idem.Open("db", &idem.Options{FS: fs, SweepInterval: -1})
	require.NoError(t, err)
	running, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
			close(running)
			<-release
			return nil, nil
		})
	}()
	<-running
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	close(release)
	<-done
	require.NoError(t, e.Close())

	tr := newTracing(t)
	e2, err := idem.Open("db", &idem.Options{FS: crashed, SweepInterval: -1, Observer: tr.observer(nil)})
	require.NoError(t, err)
	defer e2.Close()
	_, err = e2.Do(context.Background(), "k", nil, value("v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
	spans := tr.ended()
	require.Len(t, spans, 1)
	require.Equal(t, "interrupted", attrs(spans[0])[idemotel.AttrOutcome].AsString())
	require.Equal(t, codes.Unset, spans[0].Status().Code)
	require.Equal(t, "read", storeOps(t, spans[0]))
}

// fn's error: both spans have the status Error, with the error's message
// and type.
func TestFailingFn(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	errBoom := errors.New("boom")
	_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return nil, errBoom })
	require.ErrorIs(t, err, errBoom)

	spans := tr.ended()
	require.Len(t, spans, 2)
	fn, do := spans[0], spans[1]
	for _, s := range spans {
		require.Equal(t, sdktrace.Status{Code: codes.Error, Description: "boom"}, s.Status(), s.Name())
		require.Equal(t, "*errors.errorString", attrs(s)["error.type"].AsString(), s.Name())
	}
	require.Equal(t, "failed", attrs(do)[idemotel.AttrOutcome].AsString())
	require.Equal(t, do.SpanContext().SpanID(), fn.Parent().SpanID())
	// The key was released: its marker deleted.
	require.Regexp(t, `^(read )?claim release$`, storeOps(t, do))
}

// A Permanent error is stored and replayed: fn's work failed, and every call
// gets the error in place of a result, so each span has the status Error.
func TestPermanentError(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	fn := func(context.Context) ([]byte, error) { return nil, idem.Permanent(errors.New("declined")) }
	for range 2 {
		_, err := e.Do(context.Background(), "k", nil, fn)
		require.EqualError(t, err, "declined")
	}
	spans := tr.ended()
	require.Len(t, spans, 3)
	for i, want := range []string{"", "executed", "replayed"} {
		s := spans[i]
		require.Equal(t, sdktrace.Status{Code: codes.Error, Description: "declined"}, s.Status(), s.Name())
		require.Equal(t, "idem.PermanentError", attrs(s)["error.type"].AsString(), s.Name())
		require.Equal(t, want, attrs(s)[idemotel.AttrOutcome].AsString())
	}
}

// A value above MaxValueSize: fn succeeded, the engine refused its value,
// stored nothing and released the key (outcome failed), and the span says
// why.
func TestValueTooLarge(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil), MaxValueSize: 4})
	_, err := e.Do(context.Background(), "k", nil, value("too long"))
	require.ErrorIs(t, err, idem.ErrTooLarge)
	spans := tr.ended()
	require.Len(t, spans, 2)
	fn, do := spans[0], spans[1]
	require.Equal(t, codes.Unset, fn.Status().Code)
	require.Equal(t, codes.Error, do.Status().Code)
	require.Equal(t, err.Error(), do.Status().Description)
	a := attrs(do)
	require.Equal(t, "failed", a[idemotel.AttrOutcome].AsString())
	require.Equal(t, "idem.ErrTooLarge", a["error.type"].AsString())
}

// A store request that fails is an event with the error's type and
// message. (Pebble's store does not fail on demand, so the engine's calls
// are made here by hand, in the order it makes them.)
func TestStoreErrorEvent(t *testing.T) {
	tr := newTracing(t)
	o := tr.observer(nil)
	errDisk := errors.New("disk on fire")
	ctx := o.DoStart(context.Background(), "k")
	o.StoreDone(ctx, idem.StoreRead, time.Millisecond, errDisk)
	o.DoEnd(ctx, idem.DoInfo{Outcome: idem.OutcomeError, Took: 2 * time.Millisecond, Err: errDisk})

	spans := tr.ended()
	require.Len(t, spans, 1)
	evs := spans[0].Events()
	require.Len(t, evs, 1)
	got := map[attribute.Key]attribute.Value{}
	for _, kv := range evs[0].Attributes {
		got[kv.Key] = kv.Value
	}
	require.Equal(t, "read", got[idemotel.AttrStoreOp].AsString())
	require.Equal(t, 0.001, got[idemotel.AttrStoreDuration].AsFloat64())
	require.Equal(t, "*errors.errorString", got["error.type"].AsString())
	require.Equal(t, "disk on fire", got["error.message"].AsString())
	require.Equal(t, sdktrace.Status{Code: codes.Error, Description: "disk on fire"}, spans[0].Status())
}

// A panicking fn, or one that calls runtime.Goexit: both spans end, with
// the status Error, and the panic reaches the caller.
func TestPanickingFn(t *testing.T) {
	for _, goexit := range []bool{false, true} {
		name := "panic"
		if goexit {
			name = "Goexit"
		}
		t.Run(name, func(t *testing.T) {
			tr := newTracing(t)
			e := open(t, &idem.Options{Observer: tr.observer(nil)})
			done := make(chan any)
			go func() {
				defer func() { done <- recover() }()
				e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
					if goexit {
						runtime.Goexit()
					}
					panic("oops")
				})
			}()
			r := <-done
			if goexit {
				require.Nil(t, r)
			} else {
				require.Equal(t, "oops", r)
			}

			spans := tr.ended()
			require.Len(t, spans, 2)
			require.Len(t, tr.sr.Started(), 2)
			fn, do := spans[0], spans[1]
			require.Equal(t, idemotel.FnSpanName, fn.Name())
			require.Equal(t, do.SpanContext().SpanID(), fn.Parent().SpanID())
			for _, s := range spans {
				require.Equal(t, sdktrace.Status{Code: codes.Error, Description: idem.ErrFnPanicked.Error()}, s.Status(), s.Name())
				require.Equal(t, "idem.ErrFnPanicked", attrs(s)["error.type"].AsString(), s.Name())
			}
			require.Equal(t, "failed", attrs(do)[idemotel.AttrOutcome].AsString())

			// The key is free again.
			_, err := e.Do(context.Background(), "k", nil, value("v"))
			require.NoError(t, err)
		})
	}
}

// An error whose Error method panics. The Observer, which calls it for the
// status, describes the panic rather than passing it on: fn's error
// releases the key as it would with no Observer. The engine calls the
// Error method of a Permanent error itself, to store its message: that
// panic reaches the caller, and the spans end all the same (newTracing
// checks that every span ended).
func TestErrorThatPanics(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return nil, panickyError{} })
	require.ErrorAs(t, err, new(panickyError))
	spans := tr.ended()
	require.Len(t, spans, 2)
	for _, s := range spans {
		require.Equal(t, codes.Error, s.Status().Code)
		require.Equal(t, "%!v(PANIC=Error method: Error)", s.Status().Description)
	}
	require.Equal(t, "failed", attrs(spans[1])[idemotel.AttrOutcome].AsString())
	_, err = e.Do(context.Background(), "k", nil, value("v")) // released
	require.NoError(t, err)

	func() {
		defer func() { require.Equal(t, "Error", recover()) }()
		e.Do(context.Background(), "p", nil, func(context.Context) ([]byte, error) {
			return nil, idem.Permanent(panickyError{})
		})
	}()
	require.Len(t, tr.named(idemotel.FnSpanName), 3)
	require.Len(t, tr.named(idemotel.DoSpanName), 3)
}

// panickyError is an error whose Error method panics.
type panickyError struct{}

func (panickyError) Error() string { panic("Error") }

// The spans that fn starts from its context are children of idem.fn; the
// caller's span is the parent of idem.Do.
func TestSpansNest(t *testing.T) {
	tr := newTracing(t)
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	app := tr.tp.Tracer("app")
	ctx, request := app.Start(context.Background(), "request")
	_, err := e.Do(ctx, "k", nil, func(ctx context.Context) ([]byte, error) {
		_, charge := app.Start(ctx, "charge")
		charge.End()
		return []byte("v"), nil
	})
	require.NoError(t, err)
	request.End()

	spans := tr.ended()
	require.Len(t, spans, 4)
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = s
		require.Equal(t, request.SpanContext().TraceID(), s.SpanContext().TraceID(), s.Name())
	}
	for child, parent := range map[string]string{"charge": "idem.fn", "idem.fn": "idem.Do", "idem.Do": "request"} {
		require.Equal(t, byName[parent].SpanContext().SpanID(), byName[child].Parent().SpanID(), "parent of %s", child)
	}
	require.False(t, byName["request"].Parent().IsValid())
}

// A provider that samples nothing records nothing; fn still gets a context
// with the trace's (unsampled) span, and calls go on as usual.
func TestNotSampled(t *testing.T) {
	tr := newTracing(t, sdktrace.NeverSample())
	e := open(t, &idem.Options{Observer: tr.observer(nil)})
	var fnSpan trace.SpanContext
	for range 2 {
		_, err := e.Do(context.Background(), "k", nil, func(ctx context.Context) ([]byte, error) {
			fnSpan = trace.SpanContextFromContext(ctx)
			return []byte("v"), nil
		})
		require.NoError(t, err)
	}
	require.True(t, fnSpan.IsValid())
	require.False(t, fnSpan.IsSampled())
	require.Empty(t, tr.sr.Started())
}

// With no TracerProvider, the global one makes the tracer.
func TestGlobalTracerProvider(t *testing.T) {
	tr := newTracing(t)
	otel.SetTracerProvider(tr.tp)
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()) })
	e := open(t, &idem.Options{Observer: idemotel.NewObserver(nil)})
	_, err := e.Do(context.Background(), "k", nil, value("v"))
	require.NoError(t, err)
	require.Len(t, tr.named(idemotel.DoSpanName), 1)
	require.Len(t, tr.named(idemotel.FnSpanName), 1)
}
