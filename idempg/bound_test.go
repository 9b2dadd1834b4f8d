package idempg

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runningBounds returns bounds of timeout whose watchdog does not run by
// itself: the tests call expire with the time they choose.
func runningBounds(timeout time.Duration) *bounds {
	b := newBounds(timeout)
	b.start()
	return b
}

// A call's context ends with context.DeadlineExceeded once the watchdog
// finds it past its deadline, not before; and keeps that error once it
// ends.
func TestBoundExpires(t *testing.T) {
	b := runningBounds(time.Hour)
	begun := time.Now()
	ctx, end := b.bound(context.Background())
	d, ok := ctx.Deadline()
	require.True(t, ok)
	require.WithinRange(t, d, begun.Add(time.Hour), time.Now().Add(time.Hour))
	fired := make(chan struct{})
	context.AfterFunc(ctx, func() { close(fired) }) // as pgx watches a statement's context

	b.expire(d.Add(-time.Nanosecond))
	require.NoError(t, ctx.Err(), "ended before its deadline")
	b.expire(d)
	<-ctx.Done()
	<-fired
	require.Equal(t, context.DeadlineExceeded, ctx.Err())
	require.ErrorIs(t, context.Cause(ctx), context.DeadlineExceeded)
	require.Equal(t, 1, b.inProgress(), "a call expired but not ended is still the watchdog's")
	end()
	require.Equal(t, context.DeadlineExceeded, ctx.Err(), "Err changed when the call ended")
	require.Zero(t, b.inProgress())
}

// A call that ends before its deadline is forgotten by the watchdog, and
// its context's error is context.Canceled, for good.
func TestBoundEndsBeforeDeadline(t *testing.T) {
	b := runningBounds(time.Hour)
	ctx, end := b.bound(context.Background())
	require.Equal(t, 1, b.inProgress())
	end()
	require.Zero(t, b.inProgress())
	require.Equal(t, context.Canceled, ctx.Err())
	b.expire(time.Now().Add(2 * time.Hour))
	require.Equal(t, context.Canceled, ctx.Err())
}

// A caller's context that ends first ends the call with its own error,
// which the watchdog does not change later.
func TestBoundCallerEndsFirst(t *testing.T) {
	b := runningBounds(time.Hour)
	parent, cancel := context.WithCancel(context.Background())
	ctx, end := b.bound(parent)
	cancel()
	<-ctx.Done()
	require.Equal(t, context.Canceled, ctx.Err())
	b.expire(time.Now().Add(2 * time.Hour))
	require.Equal(t, context.Canceled, ctx.Err())
	end()
	require.Equal(t, context.Canceled, ctx.Err())
	require.Zero(t, b.inProgress())
}

// A caller whose deadline comes within the timeout needs no bound: the call
// runs on its context. A later deadline is cut to the call's.
func TestBoundCallerDeadline(t *testing.T) {
	b := runningBounds(time.Minute)
	near, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx, end := b.bound(near)
	require.Same(t, near, ctx)
	end()
	require.Zero(t, b.inProgress())

	far, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	ctx, end = b.bound(far)
	defer end()
	d, ok := ctx.Deadline()
	require.True(t, ok)
	require.WithinDuration(t, time.Now().Add(time.Minute), d, 10*time.Second)
	require.Equal(t, 1, b.inProgress())
}

// Without the watchdog (before start, once it stops), a call is bounded by
// context.WithTimeout.
func TestBoundWithoutWatchdog(t *testing.T) {
	b := newBounds(time.Millisecond)
	ctx, end := b.bound(context.Background())
	defer end()
	_, isBound := ctx.(*boundCtx)
	require.False(t, isBound)
	<-ctx.Done()
	require.Equal(t, context.DeadlineExceeded, ctx.Err())
	require.Zero(t, b.inProgress())
}

// A call's Err asked past its deadline ends the call, before the watchdog
// does: Done is closed, and Err is context.DeadlineExceeded from then on.
func TestBoundErrPastDeadline(t *testing.T) {
	b := runningBounds(time.Millisecond) // no watchdog runs
	ctx, end := b.bound(context.Background())
	defer end()
	d, _ := ctx.Deadline()
	time.Sleep(time.Until(d))
	for time.Now().Before(d) {
		time.Sleep(time.Millisecond)
	}
	require.Equal(t, context.DeadlineExceeded, ctx.Err())
	select {
	case <-ctx.Done():
	default:
		t.Fatal("Err is not nil, and Done is not closed")
	}
	require.Equal(t, context.DeadlineExceeded, ctx.Err())
}

// A context.AfterFunc on a call's context, as pgx puts on every
// statement's, starts no goroutine, and runs when the call ends at its
// deadline.
func TestBoundAfterFunc(t *testing.T) {
	b := runningBounds(time.Hour)
	const n = 1000
	before := runtime.NumGoroutine()
	var ran atomic.Int32
	var ctxs []context.Context
	for range n {
		ctx, end := b.bound(context.Background())
		defer end()
		context.AfterFunc(ctx, func() { ran.Add(1) })
		ctxs = append(ctxs, ctx)
	}
	// Goroutines of the runtime or of other tests may come and go: not
	// one per call.
	require.Less(t, runtime.NumGoroutine()-before, n/10, "goroutines started by AfterFunc")
	b.expire(time.Now().Add(2 * time.Hour))
	for _, ctx := range ctxs {
		<-ctx.Done()
	}
	require.Eventually(t, func() bool { return ran.Load() == n }, time.Minute, time.Millisecond)
}

// The watchdog ends a call that runs past its deadline, by itself.
func TestBoundWatchdog(t *testing.T) {
	b := runningBounds(20 * time.Millisecond)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); b.run(stop) }()
	defer func() { close(stop); wg.Wait() }()
	begun := time.Now()
	ctx, end := b.bound(context.Background())
	defer end()
	<-ctx.Done()
	require.GreaterOrEqual(t, time.Since(begun), 20*time.Millisecond, "ended before the timeout")
	require.Equal(t, context.DeadlineExceeded, ctx.Err())
}

// Calls begin and end from many goroutines while the watchdog expires
// some, and a reader of each call's context waits for it to end: each
// context ends once, with the error it keeps (context.DeadlineExceeded for
// every call that outlived its deadline), and the watchdog forgets every
// call that ended. (Run with -race.)
func TestBoundConcurrent(t *testing.T) {
	b := runningBounds(time.Millisecond)
	stop := make(chan struct{})
	var wd sync.WaitGroup
	wd.Add(1)
	go func() {
		defer wd.Done()
		for {
			select {
			case <-stop:
				return
			default:
				b.expire(time.Now())
				runtime.Gosched()
			}
		}
	}()
	var wg sync.WaitGroup
	var expired atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				ctx, end := b.bound(context.Background())
				read := make(chan error, 1)
				go func() {
					<-ctx.Done()
					e1, e2 := ctx.Err(), ctx.Err()
					if e1 == nil || e1 != e2 {
						e1 = fmt.Errorf("Err %v, then %v, after Done", e1, e2)
					}
					read <- e1
				}()
				if i%2 == 0 {
					d, _ := ctx.Deadline()
					for !time.Now().After(d) {
						time.Sleep(time.Millisecond)
					}
					if err := ctx.Err(); err != context.DeadlineExceeded {
						t.Errorf("call %d, past its deadline: Err %v", i, err)
					}
				}
				end()
				err := ctx.Err()
				if err != context.Canceled && err != context.DeadlineExceeded {
					t.Errorf("call %d ended with %v", i, err)
				}
				if err == context.DeadlineExceeded {
					expired.Add(1)
				}
				if r := <-read; r != err {
					t.Errorf("call %d: the reader saw %v, the caller %v", i, r, err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	wd.Wait()
	require.Zero(t, b.inProgress())
	require.GreaterOrEqual(t, expired.Load(), int64(8*150))
}

// Once stopped, the watchdog takes no more calls (they are bounded by
// context.WithTimeout), and returns only when the calls it holds have
// ended, having ended those that reached their deadline.
func TestBoundStop(t *testing.T) {
	b := runningBounds(50 * time.Millisecond)
	stop := make(chan struct{})
	done := make(chan struct{})
	held, end := b.bound(context.Background())
	go func() { defer close(done); b.run(stop) }()
	close(stop)
	<-held.Done() // ended by the watchdog, still running for it
	require.Equal(t, context.DeadlineExceeded, held.Err())
	select {
	case <-done:
		t.Fatal("the watchdog returned with a call in progress")
	default:
	}
	later, endLater := b.bound(context.Background())
	_, isBound := later.(*boundCtx)
	require.False(t, isBound, "a call begun after stop")
	endLater()
	end()
	<-done
	require.Zero(t, b.inProgress())
}
