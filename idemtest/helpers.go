package idemtest

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

// hang is how long the suite waits for something that must happen before it
// calls the engine hung: a guard, never a timing assertion.
const hang = 10 * time.Second

var ctx = context.Background()

// counter counts the runs of the fns it makes.
type counter struct {
	runs atomic.Int64
}

// fn returns an fn that counts its run and returns v.
func (c *counter) fn(v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		c.runs.Add(1)
		return []byte(v), nil
	}
}

// blocker is an fn that signals when it starts and returns what it is told
// to once released.
type blocker struct {
	started chan struct{}
	release chan struct{}
	runs    atomic.Int64
	value   []byte
	err     error
	panicV  any
	goexit  bool
	once    sync.Once // closes release
}

// newBlocker returns a blocker whose fn returns v. It is released when t
// ends, if not before: a failed test must not leave fn holding Close (in
// the engine's cleanup, which runs after this one) forever.
func newBlocker(t *testing.T, v string) *blocker {
	b := &blocker{started: make(chan struct{}), release: make(chan struct{}), value: []byte(v)}
	t.Cleanup(b.unblock)
	return b
}

// unblock lets fn return; calling it again does nothing.
func (b *blocker) unblock() {
	b.once.Do(func() { close(b.release) })
}

func (b *blocker) fn(context.Context) ([]byte, error) {
	if b.runs.Add(1) == 1 {
		close(b.started)
	}
	<-b.release
	switch {
	case b.panicV != nil:
		panic(b.panicV)
	case b.goexit:
		runtime.Goexit()
	}
	return b.value, b.err
}

// waitStarted waits for b's fn to start.
func (b *blocker) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-b.started:
	case <-time.After(hang):
		t.Fatal("idemtest: fn did not start")
	}
}

type doResult struct {
	res idem.Result
	err error
}

// goDo calls Do in a goroutine and delivers its outcome on the channel.
func goDo(ctx context.Context, e *idem.Engine, key string, fp []byte, fn func(context.Context) ([]byte, error)) <-chan doResult {
	ch := make(chan doResult, 1)
	go func() {
		res, err := e.Do(ctx, key, fp, fn)
		ch <- doResult{res, err}
	}()
	return ch
}

// waitFor returns the outcome delivered on ch.
func waitFor(t *testing.T, ch <-chan doResult) doResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(hang):
		t.Fatal("idemtest: Do did not return")
		return doResult{}
	}
}

// waitWaits waits until n calls of e have waited for a concurrent call of
// their key (Stats.Waits).
func waitWaits(t *testing.T, e *idem.Engine, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return e.Stats().Waits >= n }, hang, time.Millisecond,
		"idemtest: %d calls did not wait for the running one", n)
}

// panickyError's Error method panics: a Permanent error made of it makes Do
// panic after fn has returned, when the engine reads its message to store
// it. fn's effects have happened but its outcome is not stored, so the key
// must report StateInterrupted: the way to reach that state without a
// crash.
type panickyError struct{}

func (panickyError) Error() string { panic("idemtest: Error method panics") }

// makeInterrupted leaves key interrupted in e: fn ran, and storing its
// outcome failed. It skips the test if the engine keeps no record of a
// running call under the durability in use (idem's SyncNone writes no
// in-flight marker), so that no key can be interrupted without a crash.
func makeInterrupted(t *testing.T, e *idem.Engine, key string, fp []byte) {
	t.Helper()
	if !interrupt(t, e, key, fp) {
		t.Skip("idemtest: no in-flight marker under this durability: a key cannot be interrupted without a crash")
	}
}

// interrupt is makeInterrupted, returning false rather than skipping when
// the key cannot be interrupted: then the key has no record.
func interrupt(t *testing.T, e *idem.Engine, key string, fp []byte) bool {
	t.Helper()
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("idemtest: Do did not panic when the Error method of fn's Permanent error did")
			}
		}()
		e.Do(ctx, key, fp, func(context.Context) ([]byte, error) {
			return nil, idem.Permanent(panickyError{})
		})
	}()
	rec, err := e.Lookup(key)
	if errors.Is(err, idem.ErrNotFound) {
		return false
	}
	require.NoError(t, err)
	require.Equal(t, idem.StateInterrupted, rec.State)
	return true
}

// deadline is a context whose deadline passes when the test says so, so
// that a call sees it pass while it waits, never before.
type deadline struct {
	context.Context
	done    chan struct{}
	expired atomic.Bool
}

func newDeadline() *deadline {
	return &deadline{Context: context.Background(), done: make(chan struct{})}
}

func (d *deadline) Done() <-chan struct{} { return d.done }

func (d *deadline) Err() error {
	if d.expired.Load() {
		return context.DeadlineExceeded
	}
	return nil
}

// expire makes the deadline pass.
func (d *deadline) expire() {
	d.expired.Store(true)
	close(d.done)
}

// keys returns the keys of the records seq yields, failing t on an error.
func keys(t *testing.T, seq func(func(idem.Record, error) bool)) []string {
	t.Helper()
	ks := []string{}
	for r, err := range seq {
		require.NoError(t, err)
		ks = append(ks, r.Key)
	}
	return ks
}

// sharedOutcome checks that every outcome on results, which is closed,
// succeeded with the value want, and returns how many were not replays.
func sharedOutcome(t *testing.T, results <-chan doResult, want string) (fresh int) {
	t.Helper()
	for r := range results {
		require.NoError(t, r.err)
		require.Equal(t, []byte(want), r.res.Value)
		if !r.res.Replayed {
			fresh++
		}
	}
	return fresh
}
