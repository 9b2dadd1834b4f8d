package idempg

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Bounding store calls by Options.Timeout.
//
// Every store call (Get, Create, Update, Delete, Scan, Alive, the mark of a
// Watch) ends within Options.Timeout, retries included. context.WithTimeout
// would give each call a timer of its own, and a timer that is the
// runtime's earliest wakes the thread sleeping in the network poller to
// rearm it: in BenchmarkPG, a SELECT with such a context (replay/floor-
// timeout) ran at 0.84 of the same SELECT without, at one caller, 13 µs
// more per call. So the store ends its calls itself: each call's context
// is a plain cancelable one, and one goroutine, the watchdog, ticks every
// Timeout/16 (at most once a millisecond) and cancels the calls that have
// run for Timeout. A call's context also ends when its Err is asked past
// the deadline, as the store's retry loops ask before each retry. It ends
// with context.DeadlineExceeded, as context.WithTimeout's would.
//
// A caller whose own deadline comes within Timeout needs no bound: its call
// runs on its context as it is.
//
// The watchdog runs from the store's start to its Close, when it stops
// taking calls (a call begun then is bounded by context.WithTimeout) and
// goes on until the calls it holds have ended. (The engine makes no call
// once Close has begun.)

// boundShards is the number of the watchdog's sets of calls: calls that
// begin and end at once mostly take different locks.
const boundShards = 8

// bounds is the watchdog's state: the calls in progress.
type bounds struct {
	timeout time.Duration
	tick    time.Duration
	next    atomic.Uint32 // the shard of the next call
	shards  [boundShards]boundShard
}

type boundShard struct {
	mu      sync.Mutex
	calls   map[*boundCtx]struct{}
	stopped bool     // the watchdog does not take calls: before start, after stop
	_       [40]byte // a cache line each
}

// newBounds returns the bounds of calls of timeout, whose watchdog takes no
// calls until start.
func newBounds(timeout time.Duration) *bounds {
	b := &bounds{timeout: timeout, tick: max(timeout/16, time.Millisecond)}
	for i := range b.shards {
		b.shards[i].calls = make(map[*boundCtx]struct{})
		b.shards[i].stopped = true
	}
	return b
}

// noCancel is the CancelFunc of a call that needed no bound.
func noCancel() {}

// bound returns the context of a call that begins now, bounded by the
// timeout, and the func that ends the call, which the caller must call.
func (b *bounds) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	now := time.Now()
	if d, ok := ctx.Deadline(); ok && d.Sub(now) <= b.timeout {
		return ctx, noCancel
	}
	inner, cancel := context.WithCancelCause(ctx)
	c := &boundCtx{Context: inner, parent: ctx, cancel: cancel, deadline: now.Add(b.timeout)}
	c.shard = &b.shards[b.next.Add(1)%boundShards]
	c.shard.mu.Lock()
	if c.shard.stopped {
		c.shard.mu.Unlock()
		cancel(nil)
		return context.WithTimeout(ctx, b.timeout)
	}
	c.shard.calls[c] = struct{}{}
	c.shard.mu.Unlock()
	return c, c.end
}

// start makes the watchdog take calls; run must run.
func (b *bounds) start() { b.setStopped(false) }

func (b *bounds) setStopped(stopped bool) {
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		sh.stopped = stopped
		sh.mu.Unlock()
	}
}

// run is the watchdog: every tick it ends the calls whose deadline has
// passed. Once stop is closed, it takes no more calls, and returns when
// the calls it holds have ended.
func (b *bounds) run(stop <-chan struct{}) {
	t := time.NewTicker(b.tick)
	defer t.Stop()
	stopping := false
	for {
		select {
		case <-stop:
			stop = nil
			stopping = true
			b.setStopped(true)
		case <-t.C:
		}
		if left := b.expire(time.Now()); left == 0 && stopping {
			return
		}
	}
}

// expire ends the calls whose deadline is not after now, and returns the
// number of calls that have not ended (expired ones included).
func (b *bounds) expire(now time.Time) int {
	left := 0
	var due []*boundCtx
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		left += len(sh.calls)
		for c := range sh.calls {
			if !c.deadline.After(now) && c.Context.Err() == nil {
				due = append(due, c)
			}
		}
		sh.mu.Unlock()
	}
	for _, c := range due {
		c.cancel(errExpired) // (a call that ended meanwhile keeps its error)
	}
	return left
}

// inProgress returns the number of calls that have not ended, for tests.
func (b *bounds) inProgress() int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		n += len(sh.calls)
		sh.mu.Unlock()
	}
	return n
}

// errExpired is the cause with which a call's context is canceled at its
// deadline (see context.Cause); its Err is then context.DeadlineExceeded.
// (A context derived from it, by context.WithCancel for example, reports
// context.Canceled, with errExpired as its cause.)
var errExpired = fmt.Errorf("idempg: the store call ran for Options.Timeout: %w", context.DeadlineExceeded)

// boundCtx is a call's context: a cancelable child of the caller's, which
// is canceled at the call's deadline. Done and Value are the child's: a
// context.AfterFunc on it (pgx watches each statement's context with one)
// is registered on the child, as on any cancelable context, without a
// goroutine.
type boundCtx struct {
	context.Context // context.WithCancelCause(parent)
	parent          context.Context
	cancel          context.CancelCauseFunc
	deadline        time.Time
	shard           *boundShard
}

// Deadline returns the call's deadline, or the caller's if it is earlier.
func (c *boundCtx) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

// Err returns context.DeadlineExceeded if the call was ended at its
// deadline (its child canceled first with errExpired), and otherwise the
// child's error: nil, the caller's context's error, or context.Canceled
// once the call has ended. Asked past the deadline before the watchdog's
// tick, it ends the call itself (closing Done first), so that a call never
// reports that it may go on once its deadline has passed. The child's
// error and cause are set once, together: Err never changes once it is not
// nil.
func (c *boundCtx) Err() error {
	err := c.Context.Err()
	if err == nil {
		if time.Now().Before(c.deadline) {
			return nil
		}
		c.cancel(errExpired)
		err = c.Context.Err()
	}
	if context.Cause(c.Context) == errExpired {
		return context.DeadlineExceeded
	}
	return err
}

// end ends the call: the watchdog forgets it, and its context is canceled.
func (c *boundCtx) end() {
	c.shard.mu.Lock()
	delete(c.shard.calls, c)
	c.shard.mu.Unlock()
	c.cancel(context.Canceled)
}
