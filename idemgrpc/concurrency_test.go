package idemgrpc_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgrpc"
)

// Many concurrent calls with one key: the handler runs once, and every
// other call gets its response, replayed.
func TestConcurrentDuplicates(t *testing.T) {
	const n = 16
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: time.Hour})
	results := make([]<-chan result, n)
	for i := range results {
		results[i] = v.goDo(call{key: "k1", value: "block"})
	}
	receive(t, v.svc.gate.started)
	eventually(t, func() bool { return e.Stats().Waits >= n-1 }, "the duplicates wait")
	v.svc.gate.open()

	replayed := 0
	for _, ch := range results {
		r := receive(t, ch)
		require.NoError(t, r.err)
		require.Equal(t, "block #1", r.value)
		if r.replayed() {
			replayed++
		}
	}
	require.Equal(t, n-1, replayed)
	require.Equal(t, int64(1), v.svc.runs.Load())
}

// Concurrent calls of several keys, each sent several times: one run per
// key, under the race detector.
func TestConcurrentKeys(t *testing.T) {
	const keys, copies = 8, 4
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: time.Hour})
	var wg sync.WaitGroup
	values := make([][]string, keys)
	for k := range keys {
		values[k] = make([]string, copies)
		for c := range copies {
			wg.Go(func() {
				r := v.do(call{key: fmt.Sprint("k", k), value: fmt.Sprint("v", k)})
				if r.err == nil {
					values[k][c] = r.value
				}
			})
		}
	}
	wg.Wait()
	require.Equal(t, int64(keys), v.svc.runs.Load())
	for k := range keys {
		for c := range copies {
			require.Equal(t, values[k][0], values[k][c])
		}
	}
}

// With a negative Options.Wait, a duplicate of a running call is refused at
// once with Aborted; once the first call is done, a retry gets its
// response. A duplicate with another request is a mismatch, running or not.
func TestNoWait(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: -1})
	first := v.goDo(call{key: "k1", value: "block"})
	receive(t, v.svc.gate.started)

	for range 2 {
		r := v.do(call{key: "k1", value: "block"})
		st := requireStatus(t, r.err, codes.Aborted, idemgrpc.ReasonConcurrentRequest)
		require.Contains(t, st.Message(), "still running")
		require.False(t, r.replayed())
	}
	requireStatus(t, v.do(call{key: "k1", value: "other"}).err, codes.FailedPrecondition, idemgrpc.ReasonKeyMismatch)

	v.svc.gate.open()
	requireOK(t, receive(t, first), "block #1", false)
	requireOK(t, v.do(call{key: "k1", value: "block"}), "block #1", true)
	require.Equal(t, int64(1), v.svc.runs.Load())
}

// A duplicate waits Options.Wait for the running handler, then gets
// Aborted; the handler is still running, and its response is replayed
// later.
func TestWaitRunsOut(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: time.Millisecond})
	first := v.goDo(call{key: "k1", value: "block"})
	receive(t, v.svc.gate.started)

	// The gate stays closed, however long this takes: the outcome does not
	// depend on timing.
	st := requireStatus(t, v.do(call{key: "k1", value: "block"}).err, codes.Aborted, idemgrpc.ReasonConcurrentRequest)
	require.Contains(t, st.Message(), "after waiting 1ms")

	v.svc.gate.open()
	requireOK(t, receive(t, first), "block #1", false)
	requireOK(t, v.do(call{key: "k1", value: "block"}), "block #1", true)
}

// A call that waited for an outcome that is not stored gets that outcome,
// not replayed; the next call runs the handler again.
func TestWaiterGetsNotStoredOutcome(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: time.Hour})
	first := v.goDo(call{key: "k1", value: "gate:code:14"})
	receive(t, v.svc.gate.started)
	dup := v.goDo(call{key: "k1", value: "gate:code:14"})
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	v.svc.gate.open()

	requireHandlerCode(t, receive(t, first), codes.Unavailable, false)
	r := receive(t, dup)
	requireHandlerCode(t, r, codes.Unavailable, false)
	require.Len(t, status.Convert(r.err).Details(), 1, "the details are the handler's")
	require.Equal(t, int64(1), v.svc.runs.Load())

	requireHandlerCode(t, v.do(call{key: "k1", value: "gate:code:14"}), codes.Unavailable, false)
	require.Equal(t, int64(2), v.svc.runs.Load())
}

// A handler that gives up because its client went away does not hand its
// error to the call that waited for it: that call runs the handler itself.
func TestAbandonedHandler(t *testing.T) {
	e := openEngine(t, nil)
	v := newEnv(t, e, &idemgrpc.Options{Wait: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := v.goDo(call{key: "k1", value: "abandon", ctx: ctx})
	receive(t, v.svc.gate.started)
	dup := v.goDo(call{key: "k1", value: "abandon"})
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")

	cancel() // the first client goes away; its handler returns Canceled
	require.Equal(t, codes.Canceled, status.Code(receive(t, first).err))
	requireOK(t, receive(t, dup), "abandon #2", false)
	require.Equal(t, int64(2), v.svc.runs.Load())
	requireOK(t, v.do(call{key: "k1", value: "abandon"}), "abandon #2", true)
}

// A duplicate whose own context ends while it waits gets its context's
// code, not Aborted. (Called directly: over the network, the client that
// cancels sees Canceled whatever the server says.)
func TestWaiterContextEnds(t *testing.T) {
	e := openEngine(t, nil)
	icpt := idemgrpc.UnaryServerInterceptor(e, &idemgrpc.Options{
		Key:    func(context.Context, string, any) (string, error) { return "k1", nil },
		Wait:   time.Hour,
		Logger: quietLogger(),
	})
	info := &grpc.UnaryServerInfo{FullMethod: methodEcho}
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	handler := func(context.Context, any) (any, error) {
		close(started)
		<-release
		return wrapperspb.String("done"), nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := icpt(context.Background(), wrapperspb.String("a"), info, handler)
		done <- err
	}()
	receive(t, started)

	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	go func() {
		_, err := icpt(ctx, wrapperspb.String("a"), info, handler)
		waited <- err
	}()
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	cancel()
	require.Equal(t, codes.Canceled, status.Code(receive(t, waited)))

	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	_, err := icpt(dctx, wrapperspb.String("a"), info, handler)
	require.Equal(t, codes.DeadlineExceeded, status.Code(err))

	release <- struct{}{}
	require.NoError(t, receive(t, done))
}

// Two servers on one engine: a duplicate through the other server cannot be
// told to stop waiting, and waits for the first call's outcome; the handler
// still runs once.
func TestTwoServersOneEngine(t *testing.T) {
	e := openEngine(t, &idem.Options{})
	v1 := newEnv(t, e, &idemgrpc.Options{Wait: -1})
	v2 := newEnv(t, e, &idemgrpc.Options{Wait: -1})
	first := v1.goDo(call{key: "k1", value: "block"})
	receive(t, v1.svc.gate.started)
	dup := v2.goDo(call{key: "k1", value: "block"})
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	v1.svc.gate.open()
	requireOK(t, receive(t, first), "block #1", false)
	requireOK(t, receive(t, dup), "block #1", true)
	require.Equal(t, int64(0), v2.svc.runs.Load())
}
