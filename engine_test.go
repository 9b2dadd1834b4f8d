package idem_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/testproc"
)

// clock is a clock that tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock {
	return &clock{now: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// open opens an engine on fs (a new MemFS if nil) in dir with o (defaults if
// nil), with the background sweeper off unless o asks for it, and closes it
// when the test ends.
func open(t testing.TB, fs vfs.FS, dir string, o *idem.Options) *idem.Engine {
	t.Helper()
	var opts idem.Options
	if o != nil {
		opts = *o
	}
	if fs == nil {
		fs = vfs.NewMem()
	}
	if opts.FS == nil {
		opts.FS = fs
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	e, err := idem.Open(dir, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// counter is an fn that counts its runs and returns the value v.
type counter struct {
	runs atomic.Int64
}

func (c *counter) fn(v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		c.runs.Add(1)
		return []byte(v), nil
	}
}

// blocker is an fn that signals when it starts and returns what it is told
// to when released.
type blocker struct {
	started chan struct{}
	release chan struct{}
	runs    atomic.Int64
	value   []byte
	err     error
	panicV  any
}

func newBlocker(v string) *blocker {
	return &blocker{started: make(chan struct{}), release: make(chan struct{}), value: []byte(v)}
}

func (b *blocker) fn(context.Context) ([]byte, error) {
	if b.runs.Add(1) == 1 {
		close(b.started)
	}
	<-b.release
	if b.panicV != nil {
		panic(b.panicV)
	}
	return b.value, b.err
}

type doResult struct {
	res idem.Result
	err error
}

// goDo runs Do in a goroutine and delivers its outcome on the channel.
func goDo(ctx context.Context, e *idem.Engine, key string, fp []byte, fn func(context.Context) ([]byte, error)) <-chan doResult {
	ch := make(chan doResult, 1)
	go func() {
		res, err := e.Do(ctx, key, fp, fn)
		ch <- doResult{res, err}
	}()
	return ch
}

// waitFor returns the next outcome on ch, failing the test if none comes in
// a long time (a hang guard, not a timing assertion).
func waitFor(t testing.TB, ch <-chan doResult) doResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("Do did not return")
		return doResult{}
	}
}

func eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, time.Millisecond, msg)
}

func TestFirstCallRunsFnAndStoresItsValue(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour})
	var c counter
	res, err := e.Do(context.Background(), "k", []byte("fp"), c.fn("v1"))
	require.NoError(t, err)
	require.Equal(t, int64(1), c.runs.Load())
	require.Equal(t, []byte("v1"), res.Value)
	require.False(t, res.Replayed)
	require.True(t, res.CreatedAt.Equal(clk.Now()))
	require.True(t, res.ExpiresAt.Equal(clk.Now().Add(time.Hour)))

	rec, err := e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.Record{Key: "k", State: idem.StateCompleted, CreatedAt: res.CreatedAt, ExpiresAt: res.ExpiresAt, Value: []byte("v1")}, rec)
}

func TestRetryReplaysTheStoredValue(t *testing.T) {
	e := open(t, nil, "db", nil)
	var c counter
	first, err := e.Do(context.Background(), "k", []byte("fp"), c.fn("v1"))
	require.NoError(t, err)
	for range 3 {
		res, err := e.Do(context.Background(), "k", []byte("fp"), c.fn("v2"))
		require.NoError(t, err)
		require.True(t, res.Replayed)
		require.Equal(t, []byte("v1"), res.Value)
		require.True(t, res.CreatedAt.Equal(first.CreatedAt))
		require.True(t, res.ExpiresAt.Equal(first.ExpiresAt))
	}
	require.Equal(t, int64(1), c.runs.Load())
}

func TestRetryReplaysAfterRestart(t *testing.T) {
	dir := t.TempDir()
	var c counter
	e, err := idem.Open(dir, &idem.Options{SweepInterval: -1})
	require.NoError(t, err)
	_, err = e.Do(context.Background(), "k", []byte("fp"), c.fn("v1"))
	require.NoError(t, err)
	require.NoError(t, e.Close())

	e, err = idem.Open(dir, &idem.Options{SweepInterval: -1})
	require.NoError(t, err)
	defer e.Close()
	res, err := e.Do(context.Background(), "k", []byte("fp"), c.fn("v2"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, []byte("v1"), res.Value)
	require.Equal(t, int64(1), c.runs.Load())
}

func TestValuesAreOwnedByTheCaller(t *testing.T) {
	e := open(t, nil, "db", nil)
	buf := []byte("original")
	res, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return buf, nil })
	require.NoError(t, err)
	copy(buf, "XXXXXXXX")       // fn's slice, changed after Do returned
	copy(res.Value, "YYYYYYYY") // the same slice, returned to the caller
	res, err = e.Do(context.Background(), "k", nil, (&counter{}).fn("other"))
	require.NoError(t, err)
	require.Equal(t, []byte("original"), res.Value)
	copy(res.Value, "ZZZZZZZZ")
	rec, err := e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, []byte("original"), rec.Value)
}

func TestNilAndEmptyValuesReplayAsReturned(t *testing.T) {
	e := open(t, nil, "db", nil)
	ctx := context.Background()
	_, err := e.Do(ctx, "nil", nil, func(context.Context) ([]byte, error) { return nil, nil })
	require.NoError(t, err)
	_, err = e.Do(ctx, "empty", nil, func(context.Context) ([]byte, error) { return []byte{}, nil })
	require.NoError(t, err)
	res, err := e.Do(ctx, "nil", nil, (&counter{}).fn("x"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Nil(t, res.Value)
	res, err = e.Do(ctx, "empty", nil, (&counter{}).fn("x"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.NotNil(t, res.Value)
	require.Empty(t, res.Value)
}

func TestConcurrentDuplicatesWaitAndShareTheOutcome(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("shared")
	leader := goDo(context.Background(), e, "k", []byte("fp"), b.fn)
	<-b.started

	const n = 16
	var followers []<-chan doResult
	for range n {
		followers = append(followers, goDo(context.Background(), e, "k", []byte("fp"), b.fn))
	}
	eventually(t, func() bool { return e.Stats().Waits == n }, "followers did not wait")
	close(b.release)

	lr := waitFor(t, leader)
	require.NoError(t, lr.err)
	require.False(t, lr.res.Replayed)
	require.Equal(t, []byte("shared"), lr.res.Value)
	var values [][]byte
	for _, f := range followers {
		r := waitFor(t, f)
		require.NoError(t, r.err)
		require.True(t, r.res.Replayed)
		require.Equal(t, []byte("shared"), r.res.Value)
		require.True(t, r.res.CreatedAt.Equal(lr.res.CreatedAt))
		values = append(values, r.res.Value)
	}
	require.Equal(t, int64(1), b.runs.Load())
	// Each caller owns its value.
	values[0][0] = 'X'
	for _, v := range values[1:] {
		require.Equal(t, []byte("shared"), v)
	}
	require.Equal(t, []byte("shared"), lr.res.Value)
	st := e.Stats()
	require.Equal(t, uint64(1), st.Executions)
	require.Equal(t, uint64(n), st.Replays)
}

// handDeadline is a context whose deadline passes when the test closes
// passed.
type handDeadline struct {
	context.Context
	passed chan struct{}
}

func (c *handDeadline) Done() <-chan struct{} { return c.passed }

func (c *handDeadline) Err() error {
	select {
	case <-c.passed:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func TestWaiterWhoseContextEndsGetsErrInFlight(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("v")
	leader := goDo(context.Background(), e, "k", nil, b.fn)
	<-b.started

	ctx, cancel := context.WithCancel(context.Background())
	f := goDo(ctx, e, "k", nil, b.fn)
	eventually(t, func() bool { return e.Stats().Waits == 1 }, "follower did not wait")
	cancel()
	r := waitFor(t, f)
	require.ErrorIs(t, r.err, idem.ErrInFlight)
	require.ErrorIs(t, r.err, context.Canceled)

	// A deadline that passes while the call waits: fired by hand once the
	// call waits (a timer could fire before Do first looks at ctx).
	dl := &handDeadline{Context: context.Background(), passed: make(chan struct{})}
	f = goDo(dl, e, "k", nil, b.fn)
	eventually(t, func() bool { return e.Stats().Waits == 2 }, "follower did not wait")
	close(dl.passed)
	r = waitFor(t, f)
	require.ErrorIs(t, r.err, idem.ErrInFlight)
	require.ErrorIs(t, r.err, context.DeadlineExceeded)

	close(b.release)
	require.NoError(t, waitFor(t, leader).err)
	require.Equal(t, int64(1), b.runs.Load())
}

func TestNoWaitFailsFastWhileFnRuns(t *testing.T) {
	e := open(t, nil, "db", &idem.Options{NoWait: true})
	b := newBlocker("v")
	leader := goDo(context.Background(), e, "k", nil, b.fn)
	<-b.started
	// fn is blocked until release: a follower that waited would hang here.
	r := waitFor(t, goDo(context.Background(), e, "k", nil, b.fn))
	require.ErrorIs(t, r.err, idem.ErrInFlight)
	require.Equal(t, uint64(1), e.Stats().Conflicts)
	close(b.release)
	require.NoError(t, waitFor(t, leader).err)

	// Once stored, a duplicate replays, NoWait or not.
	res, err := e.Do(context.Background(), "k", nil, b.fn)
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, int64(1), b.runs.Load())
}

func TestFingerprintMismatchOnACompletedKey(t *testing.T) {
	e := open(t, nil, "db", nil)
	var c counter
	_, err := e.Do(context.Background(), "k", []byte("payload A"), c.fn("v"))
	require.NoError(t, err)
	_, err = e.Do(context.Background(), "k", []byte("payload B"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	require.Equal(t, int64(1), c.runs.Load())
	require.Equal(t, uint64(1), e.Stats().Mismatches)
	// The record is untouched.
	res, err := e.Do(context.Background(), "k", []byte("payload A"), c.fn("v"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
}

func TestFingerprintMismatchWhileInFlight(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("v")
	leader := goDo(context.Background(), e, "k", []byte("A"), b.fn)
	<-b.started
	r := waitFor(t, goDo(context.Background(), e, "k", []byte("B"), b.fn))
	require.ErrorIs(t, r.err, idem.ErrFingerprintMismatch)
	close(b.release)
	require.NoError(t, waitFor(t, leader).err)
	require.Equal(t, int64(1), b.runs.Load())
}

func TestFingerprintsCompareExactly(t *testing.T) {
	e := open(t, nil, "db", nil)
	ctx := context.Background()
	var c counter
	long := bytes.Repeat([]byte("x"), 100)
	sum := sha256.Sum256(long)
	cases := []struct {
		name       string
		first, use []byte
		match      bool
	}{
		{"nil equals empty", nil, []byte{}, true},
		{"empty equals nil", []byte{}, nil, true},
		{"short equal", []byte("abc"), []byte("abc"), true},
		{"short prefix", []byte("abc"), []byte("ab"), false},
		{"long equal", long, bytes.Clone(long), true},
		{"long differs in last byte", long, append(bytes.Clone(long[:99]), 'y'), false},
		{"long vs its SHA-256", long, sum[:], false},
		{"31 vs 32 bytes", bytes.Repeat([]byte("a"), 31), bytes.Repeat([]byte("a"), 32), false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprint("k", i)
			_, err := e.Do(ctx, key, tc.first, c.fn("v"))
			require.NoError(t, err)
			res, err := e.Do(ctx, key, tc.use, c.fn("v"))
			if tc.match {
				require.NoError(t, err)
				require.True(t, res.Replayed)
			} else {
				require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
			}
		})
	}
	require.Equal(t, int64(len(cases)), c.runs.Load())
}

func TestFnErrorStoresNothingAndReleasesTheKey(t *testing.T) {
	e := open(t, nil, "db", nil)
	errDeclined := errors.New("card declined")
	_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return nil, errDeclined })
	require.ErrorIs(t, err, errDeclined)
	_, err = e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)

	var c counter
	res, err := e.Do(context.Background(), "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(1), c.runs.Load())
}

func TestWaitingDuplicatesGetTheSameError(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("")
	b.err = errors.New("upstream timeout")
	leader := goDo(context.Background(), e, "k", nil, b.fn)
	<-b.started
	f := goDo(context.Background(), e, "k", nil, b.fn)
	eventually(t, func() bool { return e.Stats().Waits == 1 }, "follower did not wait")
	close(b.release)
	require.ErrorIs(t, waitFor(t, leader).err, b.err)
	r := waitFor(t, f)
	require.ErrorIs(t, r.err, b.err)
	require.False(t, r.res.Replayed, "nothing was stored, so nothing replayed")
	require.Equal(t, int64(1), b.runs.Load())
	_, err := e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
}

func TestPermanentErrorIsStoredAndReplayed(t *testing.T) {
	dir := t.TempDir()
	e, err := idem.Open(dir, &idem.Options{SweepInterval: -1})
	require.NoError(t, err)
	errInsufficient := errors.New("insufficient funds")
	var runs int
	fn := func(context.Context) ([]byte, error) {
		runs++
		return nil, idem.Permanent(errInsufficient)
	}
	res, err := e.Do(context.Background(), "k", nil, fn)
	require.ErrorIs(t, err, errInsufficient)
	var perm *idem.PermanentError
	require.ErrorAs(t, err, &perm)
	require.False(t, res.Replayed)
	require.False(t, res.CreatedAt.IsZero())

	check := func(e *idem.Engine) {
		res, err := e.Do(context.Background(), "k", nil, fn)
		require.EqualError(t, err, "insufficient funds")
		require.ErrorAs(t, err, &perm)
		require.True(t, res.Replayed)
		rec, err := e.Lookup("k")
		require.NoError(t, err)
		require.Equal(t, idem.StateFailed, rec.State)
		require.Equal(t, "insufficient funds", rec.Err)
		require.Nil(t, rec.Value)
	}
	check(e)
	require.NoError(t, e.Close())
	e, err = idem.Open(dir, &idem.Options{SweepInterval: -1})
	require.NoError(t, err)
	defer e.Close()
	check(e)
	require.Equal(t, 1, runs)
	require.Nil(t, idem.Permanent(nil))
}

func TestPanicReleasesTheKeyAndReachesTheCaller(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("")
	b.panicV = "boom"
	caught := make(chan any, 1)
	go func() {
		defer func() { caught <- recover() }()
		e.Do(context.Background(), "k", nil, b.fn)
	}()
	<-b.started
	f := goDo(context.Background(), e, "k", nil, b.fn)
	eventually(t, func() bool { return e.Stats().Waits == 1 }, "follower did not wait")
	close(b.release)

	require.Equal(t, "boom", <-caught)
	r := waitFor(t, f)
	require.Error(t, r.err)
	require.Contains(t, r.err.Error(), "panicked")
	require.Contains(t, r.err.Error(), "boom")
	_, err := e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)

	// The engine keeps working, and the key runs fn again.
	var c counter
	res, err := e.Do(context.Background(), "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(1), c.runs.Load())
}

// nilPanicError's Error method calls panic(nil).
type nilPanicError struct{}

func (nilPanicError) Error() string { panic(nil) }

// panic(nil) in fn is a panic, not a Goexit nor a return: the caller gets a
// panic, the waiting duplicates an error saying fn panicked, and the key is
// released. It runs here, where panic(nil) panics with a
// *runtime.PanicNilError, and again in a child process with
// GODEBUG=panicnil=1, where recover returns nil for it as for Goexit.
func TestPanicNilIsAPanic(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("")
	b.panicV = nil
	fn := func(ctx context.Context) ([]byte, error) {
		b.fn(ctx)
		panic(nil)
	}
	caught := make(chan any, 1)
	returned := make(chan bool, 1)
	go func() {
		ok := false
		defer func() {
			returned <- ok
			caught <- recover()
		}()
		e.Do(context.Background(), "k", nil, fn)
		ok = true
	}()
	<-b.started
	f := goDo(context.Background(), e, "k", nil, fn)
	eventually(t, func() bool { return e.Stats().Waits == 1 }, "follower did not wait")
	close(b.release)

	require.False(t, <-returned, "Do returned after fn called panic(nil)")
	var pne *runtime.PanicNilError
	require.ErrorAs(t, (<-caught).(error), &pne)
	r := waitFor(t, f)
	require.ErrorContains(t, r.err, "panicked")
	require.NotContains(t, r.err.Error(), "Goexit")
	var c counter
	res, err := e.Do(context.Background(), "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)

	// The same for a panic(nil) in user code that Do calls after fn
	// returned: here the Error method of a Permanent error. fn's effects
	// happened, so the key reports ErrInterrupted.
	func() {
		defer func() { require.ErrorAs(t, recover().(error), &pne) }()
		e.Do(context.Background(), "after", nil, func(context.Context) ([]byte, error) {
			return nil, idem.Permanent(nilPanicError{})
		})
		t.Error("Do returned after an Error method called panic(nil)")
	}()
	_, err = e.Do(context.Background(), "after", nil, c.fn("v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)

	if os.Getenv("IDEM_TEST_CHILD") == "" {
		cmd := testproc.Command(t, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.timeout=2m")
		cmd.Env = append(os.Environ(), "IDEM_TEST_CHILD=panicnil", "GODEBUG=panicnil=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "with GODEBUG=panicnil=1:\n%s", out)
		require.Contains(t, string(out), "--- PASS: "+t.Name())
	}
}

func TestGoexitInFnReleasesTheKey(t *testing.T) {
	e := open(t, nil, "db", nil)
	b := newBlocker("")
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Do(context.Background(), "k", nil, func(ctx context.Context) ([]byte, error) {
			b.fn(ctx)
			runtime.Goexit()
			return nil, nil
		})
	}()
	<-b.started
	f := goDo(context.Background(), e, "k", nil, b.fn)
	eventually(t, func() bool { return e.Stats().Waits == 1 }, "follower did not wait")
	close(b.release)
	<-done
	r := waitFor(t, f)
	require.ErrorContains(t, r.err, "Goexit")
	var c counter
	_, err := e.Do(context.Background(), "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.Equal(t, int64(1), c.runs.Load())
}

func TestExpiredRecordsAreInvisibleBeforeAnySweep(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour})
	var c counter
	_, err := e.Do(context.Background(), "k", nil, c.fn("v1"))
	require.NoError(t, err)

	clk.Advance(time.Hour - time.Nanosecond)
	res, err := e.Do(context.Background(), "k", nil, c.fn("v2"))
	require.NoError(t, err)
	require.True(t, res.Replayed)

	clk.Advance(time.Nanosecond)
	_, err = e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	res, err = e.Do(context.Background(), "k", nil, c.fn("v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v2"), res.Value)
	require.Equal(t, int64(2), c.runs.Load())
	require.Equal(t, uint64(0), e.Stats().Swept)

	// An expired record does not refuse a different fingerprint either.
	clk.Advance(time.Hour)
	_, err = e.Do(context.Background(), "k", []byte("other"), c.fn("v3"))
	require.NoError(t, err)
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	e := open(t, nil, "db", &idem.Options{MaxKeySize: 8, MaxValueSize: 16})
	var c counter

	for _, key := range []string{"", "123456789"} {
		_, err := e.Do(ctx, key, nil, c.fn("v"))
		require.ErrorIs(t, err, idem.ErrInvalidKey)
		_, err = e.Lookup(key)
		require.ErrorIs(t, err, idem.ErrInvalidKey)
		require.ErrorIs(t, e.Forget(key), idem.ErrInvalidKey)
	}
	_, err := e.Do(ctx, "12345678", nil, c.fn("v"))
	require.NoError(t, err)

	// Too large: nothing stored, key released.
	_, err = e.Do(ctx, "big", nil, c.fn(strings.Repeat("x", 17)))
	require.ErrorIs(t, err, idem.ErrTooLarge)
	_, err = e.Lookup("big")
	require.ErrorIs(t, err, idem.ErrNotFound)
	_, err = e.Do(ctx, "big", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New(strings.Repeat("e", 17)))
	})
	require.ErrorIs(t, err, idem.ErrTooLarge)
	_, err = e.Lookup("big")
	require.ErrorIs(t, err, idem.ErrNotFound)
	res, err := e.Do(ctx, "big", nil, c.fn(strings.Repeat("x", 16)))
	require.NoError(t, err)
	require.False(t, res.Replayed)

	// nil fn.
	_, err = e.Do(ctx, "k", nil, nil)
	require.Error(t, err)

	// A done context: its error, nothing claimed.
	done, cancel := context.WithCancel(ctx)
	cancel()
	_, err = e.Do(done, "k", nil, c.fn("v"))
	require.ErrorIs(t, err, context.Canceled)
	res, err = e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(4), c.runs.Load())
}

func TestOpenRejectsInvalidOptions(t *testing.T) {
	for name, o := range map[string]idem.Options{
		"negative TTL":          {TTL: -time.Second},
		"negative MaxKeySize":   {MaxKeySize: -1},
		"negative MaxValueSize": {MaxValueSize: -1},
		"huge MaxValueSize":     {MaxValueSize: 2 << 30},
		"negative CacheSize":    {CacheSize: -1},
		"unknown Durability":    {Durability: 7},
	} {
		t.Run(name, func(t *testing.T) {
			o.FS = vfs.NewMem()
			_, err := idem.Open("db", &o)
			require.Error(t, err)
			require.Contains(t, err.Error(), "idem: Options.")
		})
	}
}

func TestOpenDoesNotModifyTheCallersOptions(t *testing.T) {
	o := idem.Options{FS: vfs.NewMem(), SweepInterval: -1}
	want := o
	e, err := idem.Open("db", &o)
	require.NoError(t, err)
	defer e.Close()
	require.Equal(t, want.TTL, o.TTL)
	require.Nil(t, o.Now)
	require.Nil(t, o.Logger)
	require.Equal(t, 0, o.MaxKeySize)
	require.Equal(t, want.SweepInterval, o.SweepInterval)
}

func TestOpenNilOptions(t *testing.T) {
	e, err := idem.Open(t.TempDir(), nil)
	require.NoError(t, err)
	res, err := e.Do(context.Background(), "k", nil, (&counter{}).fn("v"))
	require.NoError(t, err)
	// A result lives TTL from when it was stored.
	require.Equal(t, idem.DefaultTTL, res.ExpiresAt.Sub(res.CreatedAt))
	require.NoError(t, e.Close())
}

func TestOpenALockedDirectory(t *testing.T) {
	dir := t.TempDir()
	e, err := idem.Open(dir, nil)
	require.NoError(t, err)
	_, err = idem.Open(dir, nil)
	require.ErrorIs(t, err, idem.ErrLocked)
	require.Contains(t, err.Error(), dir)
	require.NoError(t, e.Close())
	e, err = idem.Open(dir, nil)
	require.NoError(t, err)
	require.NoError(t, e.Close())

	fs := vfs.NewMem()
	e = open(t, fs, "db", nil)
	_, err = idem.Open("db", &idem.Options{FS: fs})
	require.ErrorIs(t, err, idem.ErrLocked)
	require.NoError(t, e.Close())
}

// One directory, however its path is spelled, is open in at most one Engine
// of the process: a second Open returns ErrLocked, and leaves the first
// Engine's lock in place, so that another process still cannot open it.
func TestOpenTheSameDirectoryTwiceInOneProcess(t *testing.T) {
	if os.Getenv("IDEM_TEST_CHILD") == "open-dir" {
		e, err := idem.Open(os.Getenv("IDEM_TEST_DIR"), &idem.Options{SweepInterval: -1})
		switch {
		case errors.Is(err, idem.ErrLocked):
			fmt.Println("child: locked")
		case err == nil:
			fmt.Println("child: opened")
			require.NoError(t, e.Close())
		default:
			t.Fatal(err)
		}
		return
	}
	childOpens := func(dir string) string {
		t.Helper()
		t.Setenv("IDEM_TEST_DIR", dir)
		out, err := runChildTest(t, "open-dir")
		require.NoError(t, err, "%s", out)
		if bytes.Contains(out, []byte("child: locked")) {
			return "locked"
		}
		require.Contains(t, string(out), "child: opened")
		return "opened"
	}

	t.Run("OS", func(t *testing.T) {
		base := t.TempDir()
		dir := filepath.Join(base, "db")
		e, err := idem.Open(dir, &idem.Options{SweepInterval: -1})
		require.NoError(t, err)
		link := filepath.Join(base, "link")
		require.NoError(t, os.Symlink(dir, link))
		wd, err := os.Getwd()
		require.NoError(t, err)
		rel, err := filepath.Rel(wd, dir)
		require.NoError(t, err)
		for _, spelling := range []string{dir, link, rel, dir + "/", dir + "/.", base + "/x/../db", link + "/"} {
			for _, ro := range []bool{false, true} {
				_, err := idem.Open(spelling, &idem.Options{SweepInterval: -1, ReadOnly: ro})
				require.ErrorIs(t, err, idem.ErrLocked, "Open(%q, ReadOnly: %v)", spelling, ro)
			}
		}
		// The refused Opens released nothing: another process is still
		// locked out.
		require.Equal(t, "locked", childOpens(link))
		res, err := e.Do(context.Background(), "k", nil, (&counter{}).fn("v"))
		require.NoError(t, err)
		require.False(t, res.Replayed)
		require.NoError(t, e.Close())

		require.Equal(t, "opened", childOpens(dir))
		e, err = idem.Open(link, &idem.Options{SweepInterval: -1})
		require.NoError(t, err, "a closed Engine's directory stays claimed")
		res, err = e.Do(context.Background(), "k", nil, (&counter{}).fn("other"))
		require.NoError(t, err)
		require.True(t, res.Replayed)
		require.NoError(t, e.Close())
	})

	t.Run("MemFS", func(t *testing.T) {
		fs := vfs.NewMem()
		e := open(t, fs, "db", nil)
		for _, spelling := range []string{"db", "/db", "./db", "db/", "//db", "x/../db"} {
			_, err := idem.Open(spelling, &idem.Options{FS: fs})
			require.ErrorIs(t, err, idem.ErrLocked, "Open(%q)", spelling)
			// A wrapper of the same file system is the same file system.
			_, err = idem.Open(spelling, &idem.Options{FS: errorfs.Wrap(fs, errorfs.InjectorFunc(func(errorfs.Op) error { return nil }))})
			require.ErrorIs(t, err, idem.ErrLocked, "Open(%q) on a wrapper", spelling)
		}
		// Another MemFS is another file system.
		open(t, vfs.NewMem(), "/db", nil)
		require.NoError(t, e.Close())
		open(t, fs, "/db", nil)
	})

	t.Run("LockedOutside", func(t *testing.T) {
		// Pebble's lock held by someone else: ErrLocked, and the refused
		// Open leaves the directory unclaimed in the process.
		fs := vfs.NewMem()
		require.NoError(t, fs.MkdirAll("db", 0o755))
		l, err := fs.Lock("db/LOCK")
		require.NoError(t, err)
		_, err = idem.Open("db", &idem.Options{FS: fs})
		require.ErrorIs(t, err, idem.ErrLocked)
		require.NoError(t, l.Close())
		open(t, fs, "db", nil)
	})
}

func TestCloseWaitsForCallsInProgressAndRefusesNewOnes(t *testing.T) {
	dir := t.TempDir()
	e, err := idem.Open(dir, &idem.Options{SweepInterval: time.Millisecond})
	require.NoError(t, err)
	b := newBlocker("stored before close")
	leader := goDo(context.Background(), e, "k", nil, b.fn)
	<-b.started
	follower := goDo(context.Background(), e, "k", nil, b.fn)
	eventually(t, func() bool { return e.Stats().Waits == 1 }, "follower did not wait")

	closed := make(chan error, 1)
	go func() { closed <- e.Close() }()
	eventually(t, func() bool {
		_, err := e.Do(context.Background(), "other", nil, (&counter{}).fn("v"))
		return errors.Is(err, idem.ErrClosed)
	}, "Close did not refuse new calls")
	select {
	case <-closed:
		t.Fatal("Close returned while fn was running")
	default:
	}
	close(b.release)
	require.NoError(t, waitFor(t, leader).err)
	fr := waitFor(t, follower)
	require.NoError(t, fr.err)
	require.True(t, fr.res.Replayed)
	require.NoError(t, <-closed)
	require.NoError(t, e.Close(), "a second Close returns nil")

	// Nothing works, and nothing panics, after Close.
	_, err = e.Do(context.Background(), "k", nil, b.fn)
	require.ErrorIs(t, err, idem.ErrClosed)
	_, err = e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrClosed)
	require.ErrorIs(t, e.Forget("k"), idem.ErrClosed)
	_, err = e.Sweep(context.Background())
	require.ErrorIs(t, err, idem.ErrClosed)
	for _, err := range e.Interrupted() {
		require.ErrorIs(t, err, idem.ErrClosed)
	}
	require.Equal(t, uint64(0), e.Stats().DiskUsage)

	e, err = idem.Open(dir, nil)
	require.NoError(t, err)
	defer e.Close()
	rec, err := e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, []byte("stored before close"), rec.Value)
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	clk := newClock()
	e, err := idem.Open(t.TempDir(), &idem.Options{SweepInterval: time.Millisecond, Now: clk.Now})
	require.NoError(t, err)
	for i := range 100 {
		_, err := e.Do(context.Background(), fmt.Sprint(i), nil, (&counter{}).fn("v"))
		require.NoError(t, err)
	}
	clk.Advance(48 * time.Hour)
	eventually(t, func() bool { return e.Stats().Swept == 100 }, "the background sweeper did not sweep")
	require.NoError(t, e.Close())
	// Polled here rather than with eventually, whose condition runs in a
	// goroutine of its own.
	for deadline := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before Open, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}
}

func TestForget(t *testing.T) {
	e := open(t, nil, "db", nil)
	var c counter
	_, err := e.Do(context.Background(), "k", nil, c.fn("v1"))
	require.NoError(t, err)
	require.NoError(t, e.Forget("k"))
	_, err = e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	res, err := e.Do(context.Background(), "k", nil, c.fn("v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v2"), res.Value)
	require.NoError(t, e.Forget("never-stored"))

	b := newBlocker("v")
	leader := goDo(context.Background(), e, "busy", nil, b.fn)
	<-b.started
	require.ErrorIs(t, e.Forget("busy"), idem.ErrInFlight)
	close(b.release)
	require.NoError(t, waitFor(t, leader).err)
	require.NoError(t, e.Forget("busy"))
}

// TestManyGoroutinesRunEachKeyOnce: 64 goroutines call Do over 1,000 keys in
// random orders, so that most calls race with others of the same key. fn
// must run exactly once per key, and every caller must see that run's value.
func TestManyGoroutinesRunEachKeyOnce(t *testing.T) {
	const goroutines, keys = 64, 1000
	e := open(t, nil, "db", nil)
	var runs [keys]atomic.Int64
	var values [keys]atomic.Value
	var token atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for _, k := range rng.Perm(keys) {
				key := fmt.Sprint("key-", k)
				res, err := e.Do(context.Background(), key, []byte(key), func(context.Context) ([]byte, error) {
					runs[k].Add(1)
					return []byte(fmt.Sprint(key, "#", token.Add(1))), nil
				})
				if err != nil {
					t.Errorf("Do(%s): %v", key, err)
					return
				}
				if prev := values[k].Swap(string(res.Value)); prev != nil && prev != string(res.Value) {
					t.Errorf("key %s: got %q, another caller got %q", key, res.Value, prev)
				}
			}
		}()
	}
	wg.Wait()
	for k := range keys {
		require.Equal(t, int64(1), runs[k].Load(), "fn runs for key %d", k)
	}
	st := e.Stats()
	require.Equal(t, uint64(goroutines*keys), st.Calls)
	require.Equal(t, uint64(keys), st.Executions)
	require.Equal(t, uint64(goroutines*keys-keys), st.Replays)
}

func TestDoValue(t *testing.T) {
	type receipt struct {
		ID     string
		Amount int64
		Tags   []string
	}
	e := open(t, nil, "db", nil)
	want := receipt{ID: "r1", Amount: 4200, Tags: []string{"eur"}}
	var runs int
	fn := func(context.Context) (receipt, error) { runs++; return want, nil }
	got, res, err := idem.DoValue(context.Background(), e, "k", nil, fn)
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, want, got)
	got, res, err = idem.DoValue(context.Background(), e, "k", nil, fn)
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, want, got)
	require.Equal(t, 1, runs)

	// A stored value of another shape is an error, not a panic.
	_, res, err = idem.DoValue(context.Background(), e, "k", nil, func(context.Context) (map[string]int, error) { return nil, nil })
	require.ErrorIs(t, err, idem.ErrValueType)
	require.NotErrorIs(t, err, idem.ErrCorrupt)
	require.True(t, res.Replayed)
	require.NotEmpty(t, res.Value)
}

type describer interface{ Describe() string }

type card struct{ Last4 string }

func (c card) Describe() string { return "card " + c.Last4 }

// charge has a field of an interface type with methods, which msgpack
// encodes but cannot decode: its decoder panics.
type charge struct {
	ID     string
	Source describer
}

// panickyDecoder's msgpack decoding panics: a bug of the caller's own.
type panickyDecoder struct{ N int }

func (p *panickyDecoder) DecodeMsgpack(*msgpack.Decoder) error { panic("my decoder's bug") }

// A panic in T's own decoding method is the caller's to see, not a type
// error.
func TestDoValueLetsACustomDecodersPanicThrough(t *testing.T) {
	e := open(t, nil, "db", nil)
	fn := func(context.Context) (panickyDecoder, error) { return panickyDecoder{N: 1}, nil }
	_, _, err := idem.DoValue(context.Background(), e, "k", nil, fn)
	require.NoError(t, err)
	require.PanicsWithValue(t, "my decoder's bug", func() {
		idem.DoValue(context.Background(), e, "k", nil, fn)
	})
}

// A value that does not decode into T is an error on every replay, and for
// the concurrent duplicates of the first call: never a panic.
func TestDoValueOfATypeThatDoesNotDecode(t *testing.T) {
	e := open(t, nil, "db", nil)
	want := charge{ID: "ch_1", Source: card{Last4: "4242"}}
	release := make(chan struct{})
	var runs atomic.Int64
	fn := func(context.Context) (charge, error) {
		runs.Add(1)
		<-release
		return want, nil
	}
	type outcome struct {
		v   charge
		res idem.Result
		err error
	}
	first := make(chan outcome, 1)
	go func() {
		v, res, err := idem.DoValue(context.Background(), e, "k", nil, fn)
		first <- outcome{v, res, err}
	}()
	eventually(t, func() bool { return runs.Load() == 1 }, "fn did not start")
	const dups = 4
	dup := make(chan outcome, dups)
	for range dups {
		go func() {
			v, res, err := idem.DoValue(context.Background(), e, "k", nil, fn)
			dup <- outcome{v, res, err}
		}()
	}
	eventually(t, func() bool { return e.Stats().Waits == dups }, "the duplicates did not wait")
	close(release)
	got := <-first
	require.NoError(t, got.err)
	require.Equal(t, want, got.v)
	for range dups {
		got := <-dup
		require.ErrorIs(t, got.err, idem.ErrValueType)
		require.True(t, got.res.Replayed)
	}
	for range 2 {
		v, res, err := idem.DoValue(context.Background(), e, "k", nil, fn)
		require.ErrorIs(t, err, idem.ErrValueType)
		require.ErrorContains(t, err, "idem_test.charge")
		require.True(t, res.Replayed)
		require.Zero(t, v)
	}
	require.EqualValues(t, 1, runs.Load())
}

func TestStatsCountWhatHappened(t *testing.T) {
	e := open(t, nil, "db", nil)
	ctx := context.Background()
	var c counter
	e.Do(ctx, "a", []byte("1"), c.fn("v"))
	e.Do(ctx, "a", []byte("1"), c.fn("v"))
	e.Do(ctx, "a", []byte("2"), c.fn("v"))
	e.Do(ctx, "b", nil, func(context.Context) ([]byte, error) { return nil, errors.New("x") })
	st := e.Stats()
	require.Equal(t, uint64(4), st.Calls)
	require.Equal(t, uint64(2), st.Executions)
	require.Equal(t, uint64(1), st.Replays)
	require.Equal(t, uint64(1), st.Mismatches)
	require.Greater(t, st.DiskUsage, uint64(0))
}

type nilMsgError struct{ msg *string }

func (e *nilMsgError) Error() string { return *e.msg } // panics: msg is nil

// A panic after fn returned (here in the user error's Error method) must
// not leave the key claimed: the next call gets on, with ErrInterrupted
// since fn's effects happened.
// makeOrphan makes key an orphan of e: fn runs, then storing its outcome
// panics (a Permanent error whose Error method panics), and the caller
// recovers the panic as net/http does for a handler.
func makeOrphan(t *testing.T, e *idem.Engine, key string) {
	t.Helper()
	defer func() { require.NotNil(t, recover()) }()
	e.Do(context.Background(), key, nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(&nilMsgError{})
	})
}

func TestPanicAfterFnReturnedReleasesTheKey(t *testing.T) {
	// Under SyncNone too, which writes no marker before fn: without a
	// crash, fn must not run again.
	for _, d := range []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone} {
		t.Run(d.String(), func(t *testing.T) {
			e := open(t, nil, "db", &idem.Options{Durability: d})
			makeOrphan(t, e, "k")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var c counter
			_, err := e.Do(ctx, "k", nil, c.fn("v"))
			require.ErrorIs(t, err, idem.ErrInterrupted)
			require.Equal(t, int64(0), c.runs.Load())
			rec, err := e.Lookup("k")
			require.NoError(t, err)
			require.Equal(t, idem.StateInterrupted, rec.State)
			require.NoError(t, e.Forget("k"))
			_, err = e.Do(ctx, "k", nil, c.fn("v"))
			require.NoError(t, err)
		})
	}
}

// lateCancel is a context that is live when Do first looks at it and
// cancelled from then on: a caller whose context ends while Do reads the key.
type lateCancel struct {
	context.Context
	looks atomic.Int32
}

func (c *lateCancel) Err() error {
	if c.looks.Add(1) > 1 {
		return context.Canceled
	}
	return nil
}

// An orphan of this process (fn ran, its outcome could not be stored) keeps
// reporting StateInterrupted when a retry under RetryInterrupted gives up
// before replacing its marker.
func TestCancelledRetryKeepsAnOrphanInterrupted(t *testing.T) {
	for _, d := range []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone} {
		t.Run(d.String(), func(t *testing.T) {
			e := open(t, nil, "db", &idem.Options{RetryInterrupted: true, Durability: d})
			makeOrphan(t, e, "k")
			checkInterrupted := func() {
				t.Helper()
				rec, err := e.Lookup("k")
				require.NoError(t, err)
				require.Equal(t, idem.StateInterrupted, rec.State)
				var keys []string
				for r, err := range e.Interrupted() {
					require.NoError(t, err)
					keys = append(keys, r.Key)
				}
				require.Equal(t, []string{"k"}, keys)
			}
			checkInterrupted()

			var c counter
			interrupted := e.Stats().Interrupted
			_, err := e.Do(&lateCancel{Context: context.Background()}, "k", nil, c.fn("v"))
			require.ErrorIs(t, err, context.Canceled)
			require.Zero(t, c.runs.Load())
			require.Equal(t, interrupted+1, e.Stats().Interrupted, "the call did not get as far as the orphan's marker")
			checkInterrupted()

			// A retry that goes on runs fn and replaces the orphan.
			res, err := e.Do(context.Background(), "k", nil, c.fn("v"))
			require.NoError(t, err)
			require.False(t, res.Replayed)
			rec, err := e.Lookup("k")
			require.NoError(t, err)
			require.Equal(t, idem.StateCompleted, rec.State)
		})
	}
}

// Under RetryInterrupted, a retry of an orphan whose fn fails releases the
// key, and leaves no marker that reads as in flight.
func TestFailedRetryOfAnOrphanLeavesNoMarker(t *testing.T) {
	for _, d := range []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone} {
		t.Run(d.String(), func(t *testing.T) {
			e := open(t, nil, "db", &idem.Options{RetryInterrupted: true, Durability: d})
			makeOrphan(t, e, "k")
			_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
				return nil, errors.New("transient")
			})
			require.ErrorContains(t, err, "transient")
			_, err = e.Lookup("k")
			require.ErrorIs(t, err, idem.ErrNotFound)
		})
	}
}

func TestHugeTTLSaturates(t *testing.T) {
	e := open(t, nil, "db", &idem.Options{TTL: time.Duration(math.MaxInt64)})
	var c counter
	for range 2 {
		_, err := e.Do(context.Background(), "k", nil, c.fn("v"))
		require.NoError(t, err)
	}
	require.Equal(t, int64(1), c.runs.Load())
}

// DoValue must refuse stored bytes whose lengths claim more than they hold,
// rather than let msgpack allocate what they claim.
func TestDoValueRefusesLengthsBeyondTheStoredBytes(t *testing.T) {
	type item struct{ A, B, C int64 }
	e := open(t, nil, "db", nil)
	ctx := context.Background()
	for i, v := range [][]byte{
		{0xdd, 0x04, 0, 0, 0},          // array32 of 67M elements
		{0xdd, 0xff, 0xff, 0xff, 0xff}, // array32 of 4G elements
		{0xdf, 0xff, 0xff, 0xff, 0xff}, // map32
		{0xc6, 0xff, 0xff, 0xff, 0xff}, // bin32
		{0x91, 0x91, 0x91},             // truncated nesting
	} {
		key := fmt.Sprint("k", i)
		_, err := e.Do(ctx, key, nil, func(context.Context) ([]byte, error) { return v, nil })
		require.NoError(t, err)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, err = idem.DoValue(ctx, e, key, nil, func(context.Context) ([]item, error) { return nil, nil })
		runtime.ReadMemStats(&after)
		require.ErrorIs(t, err, idem.ErrCorrupt, "value % x", v)
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "value % x", v)
	}
	deep := append(bytes.Repeat([]byte{0x91}, 1000), 0xc0)
	_, err := e.Do(ctx, "deep", nil, func(context.Context) ([]byte, error) { return deep, nil })
	require.NoError(t, err)
	_, _, err = idem.DoValue(ctx, e, "deep", nil, func(context.Context) (any, error) { return nil, nil })
	require.ErrorIs(t, err, idem.ErrCorrupt)
}

func TestForgetInterruptedOnly(t *testing.T) {
	e := open(t, vfs.NewMem(), "db", nil)
	ctx := context.Background()
	if _, err := e.Do(ctx, "done", nil, func(context.Context) ([]byte, error) { return []byte("v"), nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.ForgetInterrupted("done"); !errors.Is(err, idem.ErrNotInterrupted) {
		t.Fatalf("ForgetInterrupted of a completed key: %v", err)
	}
	if err := e.ForgetInterrupted("none"); !errors.Is(err, idem.ErrNotFound) {
		t.Fatalf("ForgetInterrupted of no key: %v", err)
	}
	if _, err := e.Lookup("done"); err != nil {
		t.Fatalf("done was forgotten: %v", err)
	}
}
