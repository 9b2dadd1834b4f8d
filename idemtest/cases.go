package idemtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

// cases are the suite's cases, each run in a subtest of its name.
var cases = []struct {
	name string
	fn   func(*testing.T, *suite)
}{
	{"FirstCall", testFirstCall},
	{"Replay", testReplay},
	{"ReplayAfterReopen", testReplayAfterReopen},
	{"ValuesOwnedByCaller", testValuesOwnedByCaller},
	{"NilAndEmptyValues", testNilAndEmptyValues},
	{"ConcurrentDuplicates", testConcurrentDuplicates},
	{"ConcurrentDuplicatesWaitForRunning", testConcurrentDuplicatesWait},
	{"ManyKeysManyGoroutines", testManyKeysManyGoroutines},
	{"NoWait", testNoWait},
	{"WaiterContextEnds", testWaiterContextEnds},
	{"MismatchStored", testMismatchStored},
	{"MismatchRunning", testMismatchRunning},
	{"MismatchBeforeInterrupted", testMismatchBeforeInterrupted},
	{"FingerprintsCompareExactly", testFingerprintsCompareExactly},
	{"FnErrorReleases", testFnErrorReleases},
	{"FnErrorSharedWithWaiters", testFnErrorSharedWithWaiters},
	{"Permanent", testPermanent},
	{"PermanentAfterReopen", testPermanentAfterReopen},
	{"Panic", testPanic},
	{"Goexit", testGoexit},
	{"Expiry", testExpiry},
	{"TTLFromStore", testTTLFromStore},
	{"Forget", testForget},
	{"ForgetInFlight", testForgetInFlight},
	{"LookupStates", testLookupStates},
	{"Records", testRecords},
	{"Interrupted", testInterrupted},
	{"InterruptedAfterReopen", testInterruptedAfterReopen},
	{"RetryInterrupted", testRetryInterrupted},
	{"BadInput", testBadInput},
	{"TooLarge", testTooLarge},
	{"DoValue", testDoValue},
	{"Stats", testStats},
	{"CloseWaits", testCloseWaits},
	{"AfterClose", testAfterClose},
	{"SharedReplay", testSharedReplay},
	{"SharedConcurrentDuplicates", testSharedConcurrentDuplicates},
	{"SharedForget", testSharedForget},
}

func testFirstCall(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.TTL = time.Hour })
	var c counter
	res, err := v.e.Do(ctx, "k", []byte("fp"), c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v"), res.Value)
	require.Equal(t, int64(1), c.runs.Load())
	require.True(t, res.CreatedAt.Equal(v.clk.Now()), "CreatedAt %v, clock %v", res.CreatedAt, v.clk.Now())
	require.True(t, res.ExpiresAt.Equal(res.CreatedAt.Add(time.Hour)), "ExpiresAt %v, CreatedAt %v", res.ExpiresAt, res.CreatedAt)
	rec, err := v.e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, "k", rec.Key)
	require.Equal(t, idem.StateCompleted, rec.State)
	require.Equal(t, []byte("v"), rec.Value)
	require.True(t, rec.CreatedAt.Equal(res.CreatedAt))
	require.True(t, rec.ExpiresAt.Equal(res.ExpiresAt))
}

// checkReplay checks that Do replays key's value want, without running fn.
func checkReplay(t *testing.T, e *idem.Engine, key string, fp []byte, want string, created time.Time) {
	t.Helper()
	var c counter
	res, err := e.Do(ctx, key, fp, c.fn("not "+want))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, []byte(want), res.Value)
	require.True(t, res.CreatedAt.Equal(created), "CreatedAt %v, stored %v", res.CreatedAt, created)
	require.Zero(t, c.runs.Load(), "fn ran for a stored key")
}

func testReplay(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	first, err := v.e.Do(ctx, "k", []byte("fp"), c.fn("v"))
	require.NoError(t, err)
	v.clk.Advance(time.Minute)
	for range 3 { // a replay, and replays of a replayed record
		checkReplay(t, v.e, "k", []byte("fp"), "v", first.CreatedAt)
	}
	require.Equal(t, int64(1), c.runs.Load())
}

func testReplayAfterReopen(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	first, err := v.e.Do(ctx, "k", []byte("fp"), c.fn("v"))
	require.NoError(t, err)
	v.reopen()
	checkReplay(t, v.e, "k", []byte("fp"), "v", first.CreatedAt)
	checkReplay(t, v.e, "k", []byte("fp"), "v", first.CreatedAt)
	_, err = v.e.Do(ctx, "k", []byte("other"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	require.Equal(t, int64(1), c.runs.Load())
}

func testValuesOwnedByCaller(t *testing.T, s *suite) {
	v := s.open(t, nil)
	buf := []byte("value")
	res, err := v.e.Do(ctx, "k", nil, func(context.Context) ([]byte, error) { return buf, nil })
	require.NoError(t, err)
	copy(buf, "XXXXX") // fn's own buffer, changed after Do returned
	res.Value[0] = 'Y'
	for range 3 {
		res, err := v.e.Do(ctx, "k", nil, (&counter{}).fn("other"))
		require.NoError(t, err)
		require.Equal(t, []byte("value"), res.Value)
		res.Value[0] = 'Z'
		rec, err := v.e.Lookup("k")
		require.NoError(t, err)
		require.Equal(t, []byte("value"), rec.Value)
		rec.Value[0] = 'Z'
		for r, err := range v.e.Records("") {
			require.NoError(t, err)
			require.Equal(t, []byte("value"), r.Value)
			r.Value[0] = 'Z'
		}
	}
}

func testNilAndEmptyValues(t *testing.T, s *suite) {
	v := s.open(t, nil)
	for _, tc := range []struct {
		key   string
		value []byte
	}{{"nil", nil}, {"empty", []byte{}}} {
		res, err := v.e.Do(ctx, tc.key, nil, func(context.Context) ([]byte, error) { return tc.value, nil })
		require.NoError(t, err)
		require.Equal(t, tc.value, res.Value, "first call of %s", tc.key)
		res, err = v.e.Do(ctx, tc.key, nil, (&counter{}).fn("other"))
		require.NoError(t, err)
		require.True(t, res.Replayed)
		require.Equal(t, tc.value, res.Value, "replay of %s", tc.key)
		rec, err := v.e.Lookup(tc.key)
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, rec.State)
		require.Empty(t, rec.Value)
	}
}

// testConcurrentDuplicates starts n calls of one key at once: fn runs once,
// its caller alone gets Replayed false, and all get its value.
func testConcurrentDuplicates(t *testing.T, s *suite) {
	v := s.open(t, nil)
	const n = 32
	var runs atomic.Int64
	start := make(chan struct{})
	results := make(chan doResult, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := v.e.Do(ctx, "k", []byte("fp"), func(context.Context) ([]byte, error) {
				runs.Add(1)
				runtime.Gosched()
				return []byte("shared"), nil
			})
			results <- doResult{res, err}
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	fresh := sharedOutcome(t, results, "shared")
	require.Equal(t, int64(1), runs.Load(), "fn runs")
	require.Equal(t, 1, fresh, "calls with Replayed false")
	st := v.e.Stats()
	require.Equal(t, uint64(n), st.Calls)
	require.Equal(t, uint64(1), st.Executions)
	require.Equal(t, uint64(n-1), st.Replays)
}

// testConcurrentDuplicatesWait holds fn while n duplicates wait for it: they
// share its outcome, each with a value of its own.
func testConcurrentDuplicatesWait(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "shared")
	leader := goDo(ctx, v.e, "k", []byte("fp"), b.fn)
	b.waitStarted(t)
	const n = 16
	var followers []<-chan doResult
	for range n {
		followers = append(followers, goDo(ctx, v.e, "k", []byte("fp"), b.fn))
	}
	waitWaits(t, v.e, n)
	b.unblock()

	lr := waitFor(t, leader)
	require.NoError(t, lr.err)
	require.False(t, lr.res.Replayed)
	require.Equal(t, []byte("shared"), lr.res.Value)
	var values [][]byte
	for _, f := range followers {
		r := waitFor(t, f)
		require.NoError(t, r.err)
		require.True(t, r.res.Replayed, "a waiter's Replayed")
		require.Equal(t, []byte("shared"), r.res.Value)
		require.True(t, r.res.CreatedAt.Equal(lr.res.CreatedAt))
		require.True(t, r.res.ExpiresAt.Equal(lr.res.ExpiresAt))
		values = append(values, r.res.Value)
	}
	require.Equal(t, int64(1), b.runs.Load())
	values[0][0] = 'X'
	for _, val := range values[1:] {
		require.Equal(t, []byte("shared"), val)
	}
	require.Equal(t, []byte("shared"), lr.res.Value)
	st := v.e.Stats()
	require.Equal(t, uint64(1), st.Executions)
	require.Equal(t, uint64(n), st.Replays)
	require.Equal(t, uint64(n), st.Waits)
}

// testManyKeysManyGoroutines has goroutines race over many keys, each in
// another order: fn runs once per key, and all callers of a key see one value.
func testManyKeysManyGoroutines(t *testing.T, s *suite) {
	v := s.open(t, nil)
	const goroutines, nkeys = 16, 200
	var runs [nkeys]atomic.Int64
	var values [nkeys]atomic.Value
	var token atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range nkeys {
				k := (i*(2*g+1) + g) % nkeys // an odd stride: a permutation
				key := fmt.Sprint("key-", k)
				res, err := v.e.Do(ctx, key, []byte(key), func(context.Context) ([]byte, error) {
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
	for k := range nkeys {
		require.Equal(t, int64(1), runs[k].Load(), "fn runs for key %d", k)
	}
	st := v.e.Stats()
	require.Equal(t, uint64(goroutines*nkeys), st.Calls)
	require.Equal(t, uint64(nkeys), st.Executions)
	require.Equal(t, uint64(goroutines*nkeys-nkeys), st.Replays)
}

func testNoWait(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.NoWait = true })
	b := newBlocker(t, "v")
	leader := goDo(ctx, v.e, "k", nil, b.fn)
	b.waitStarted(t)
	// fn is held until release: a call that waited would hang here.
	for range 3 {
		r := waitFor(t, goDo(ctx, v.e, "k", nil, b.fn))
		require.ErrorIs(t, r.err, idem.ErrInFlight)
	}
	require.Equal(t, uint64(3), v.e.Stats().Conflicts)
	b.unblock()
	require.NoError(t, waitFor(t, leader).err)
	res, err := v.e.Do(ctx, "k", nil, b.fn)
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, int64(1), b.runs.Load())
}

func testWaiterContextEnds(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "v")
	leader := goDo(ctx, v.e, "k", nil, b.fn)
	b.waitStarted(t)

	cctx, cancel := context.WithCancel(ctx)
	f := goDo(cctx, v.e, "k", nil, b.fn)
	waitWaits(t, v.e, 1)
	cancel()
	r := waitFor(t, f)
	require.ErrorIs(t, r.err, idem.ErrInFlight)
	require.ErrorIs(t, r.err, context.Canceled)

	// A deadline that passes while the call waits.
	dctx := newDeadline()
	f = goDo(dctx, v.e, "k", nil, b.fn)
	waitWaits(t, v.e, 2)
	dctx.expire()
	r = waitFor(t, f)
	require.ErrorIs(t, r.err, idem.ErrInFlight)
	require.ErrorIs(t, r.err, context.DeadlineExceeded)
	require.Equal(t, uint64(2), v.e.Stats().Conflicts)

	b.unblock()
	lr := waitFor(t, leader)
	require.NoError(t, lr.err)
	require.False(t, lr.res.Replayed)
	require.Equal(t, int64(1), b.runs.Load())
}

func testMismatchStored(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	first, err := v.e.Do(ctx, "k", []byte("payload A"), c.fn("v"))
	require.NoError(t, err)
	_, err = v.e.Do(ctx, "k", []byte("payload B"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	_, err = v.e.Do(ctx, "k", nil, c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	require.Equal(t, int64(1), c.runs.Load())
	require.Equal(t, uint64(2), v.e.Stats().Mismatches)
	checkReplay(t, v.e, "k", []byte("payload A"), "v", first.CreatedAt)

	// So for a stored Permanent error.
	_, err = v.e.Do(ctx, "p", []byte("A"), func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New("declined"))
	})
	require.Error(t, err)
	_, err = v.e.Do(ctx, "p", []byte("B"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
}

func testMismatchRunning(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "v")
	leader := goDo(ctx, v.e, "k", []byte("A"), b.fn)
	b.waitStarted(t)
	r := waitFor(t, goDo(ctx, v.e, "k", []byte("B"), b.fn))
	require.ErrorIs(t, r.err, idem.ErrFingerprintMismatch)
	require.Equal(t, uint64(1), v.e.Stats().Mismatches)
	b.unblock()
	require.NoError(t, waitFor(t, leader).err)
	require.Equal(t, int64(1), b.runs.Load())
}

// The fingerprint is compared before the interrupted state is reported.
func testMismatchBeforeInterrupted(t *testing.T, s *suite) {
	v := s.open(t, nil)
	makeInterrupted(t, v.e, "k", []byte("A"))
	var c counter
	_, err := v.e.Do(ctx, "k", []byte("B"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	require.NotErrorIs(t, err, idem.ErrInterrupted)
	_, err = v.e.Do(ctx, "k", []byte("A"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
	require.Zero(t, c.runs.Load())
}

func testFingerprintsCompareExactly(t *testing.T, s *suite) {
	v := s.open(t, nil)
	long := []byte(strings.Repeat("f", 100))
	longOther := append([]byte(strings.Repeat("f", 99)), 'g')
	sum := sha256.Sum256(long)
	for i, tc := range []struct {
		stored, same, other []byte
	}{
		{nil, []byte{}, []byte{0}},
		{[]byte{}, nil, []byte(" ")},
		{[]byte("abc"), []byte("abc"), []byte("abd")},
		{[]byte("abc"), []byte("abc"), []byte("abc\x00")},
		{long, append([]byte(nil), long...), longOther},
		{long, long, long[:99]},
		{long, long, sum[:]}, // a long fingerprint is not its digest
		{[]byte(strings.Repeat("a", 31)), []byte(strings.Repeat("a", 31)), []byte(strings.Repeat("a", 32))},
	} {
		key := fmt.Sprint("k", i)
		var c counter
		_, err := v.e.Do(ctx, key, tc.stored, c.fn("v"))
		require.NoError(t, err)
		res, err := v.e.Do(ctx, key, tc.same, c.fn("v"))
		require.NoError(t, err, "case %d: same fingerprint", i)
		require.True(t, res.Replayed)
		_, err = v.e.Do(ctx, key, tc.other, c.fn("v"))
		require.ErrorIs(t, err, idem.ErrFingerprintMismatch, "case %d: other fingerprint", i)
		require.Equal(t, int64(1), c.runs.Load())
	}
}

func testFnErrorReleases(t *testing.T, s *suite) {
	v := s.open(t, nil)
	errTransient := errors.New("transient")
	var runs int
	fn := func(context.Context) ([]byte, error) {
		runs++
		if runs < 3 {
			return []byte("ignored"), fmt.Errorf("attempt %d: %w", runs, errTransient)
		}
		return []byte("v"), nil
	}
	for range 2 {
		_, err := v.e.Do(ctx, "k", nil, fn)
		require.ErrorIs(t, err, errTransient)
		var perm *idem.PermanentError
		require.False(t, errors.As(err, &perm))
		_, err = v.e.Lookup("k")
		require.ErrorIs(t, err, idem.ErrNotFound)
	}
	res, err := v.e.Do(ctx, "k", nil, fn)
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v"), res.Value)
	require.Equal(t, 3, runs)
	require.Empty(t, keys(t, v.e.Interrupted()))
}

func testFnErrorSharedWithWaiters(t *testing.T, s *suite) {
	v := s.open(t, nil)
	errTransient := errors.New("transient")
	b := newBlocker(t, "")
	b.err = errTransient
	leader := goDo(ctx, v.e, "k", nil, b.fn)
	b.waitStarted(t)
	const n = 4
	var followers []<-chan doResult
	for range n {
		followers = append(followers, goDo(ctx, v.e, "k", nil, b.fn))
	}
	waitWaits(t, v.e, n)
	b.unblock()
	require.ErrorIs(t, waitFor(t, leader).err, errTransient)
	for _, f := range followers {
		r := waitFor(t, f)
		require.ErrorIs(t, r.err, errTransient)
		require.False(t, r.res.Replayed, "nothing was stored, so nothing replayed")
	}
	_, err := v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	require.Equal(t, int64(1), b.runs.Load())
	var c counter
	res, err := v.e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(1), c.runs.Load())
}

// permanentFn returns an fn that counts its runs and returns
// Permanent(wrapped errDeclined).
func permanentFn(runs *atomic.Int64, errDeclined error) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte("ignored"), idem.Permanent(fmt.Errorf("charge: %w", errDeclined))
	}
}

// checkPermanentReplay checks that key replays the stored error message msg.
func checkPermanentReplay(t *testing.T, e *idem.Engine, key, msg string) {
	t.Helper()
	var c counter
	res, err := e.Do(ctx, key, nil, c.fn("v"))
	require.EqualError(t, err, msg)
	var perm *idem.PermanentError
	require.ErrorAs(t, err, &perm)
	require.EqualError(t, perm.Err, msg)
	require.True(t, res.Replayed)
	require.Nil(t, res.Value)
	require.Zero(t, c.runs.Load())
	rec, err := e.Lookup(key)
	require.NoError(t, err)
	require.Equal(t, idem.StateFailed, rec.State)
	require.Equal(t, msg, rec.Err)
	require.Nil(t, rec.Value)
}

func testPermanent(t *testing.T, s *suite) {
	require.Nil(t, idem.Permanent(nil))
	v := s.open(t, nil)
	errDeclined := errors.New("declined")
	var runs atomic.Int64
	fn := permanentFn(&runs, errDeclined)

	b := newBlocker(t, "")
	b.err = idem.Permanent(fmt.Errorf("charge: %w", errDeclined))
	leader := goDo(ctx, v.e, "k", nil, b.fn)
	b.waitStarted(t)
	follower := goDo(ctx, v.e, "k", nil, fn)
	waitWaits(t, v.e, 1)
	b.unblock()

	// The call that ran fn, and the one that waited, get fn's own error.
	var perm *idem.PermanentError
	for _, r := range []doResult{waitFor(t, leader), waitFor(t, follower)} {
		require.ErrorIs(t, r.err, errDeclined)
		require.ErrorAs(t, r.err, &perm)
		require.EqualError(t, r.err, "charge: declined")
	}
	// Replays get its message.
	for range 3 {
		checkPermanentReplay(t, v.e, "k", "charge: declined")
	}
	require.Zero(t, runs.Load())
	require.Equal(t, int64(1), b.runs.Load())
	// Records lists it too.
	for r, err := range v.e.Records("") {
		require.NoError(t, err)
		require.Equal(t, idem.StateFailed, r.State)
		require.Equal(t, "charge: declined", r.Err)
	}
}

func testPermanentAfterReopen(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var runs atomic.Int64
	_, err := v.e.Do(ctx, "k", nil, permanentFn(&runs, errors.New("declined")))
	require.Error(t, err)
	v.reopen()
	checkPermanentReplay(t, v.e, "k", "charge: declined")
	require.Equal(t, int64(1), runs.Load())
}

func testPanic(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "")
	b.panicV = "boom"
	caught := make(chan any, 1)
	go func() {
		defer func() { caught <- recover() }()
		v.e.Do(ctx, "k", nil, b.fn)
	}()
	b.waitStarted(t)
	f := goDo(ctx, v.e, "k", nil, b.fn)
	waitWaits(t, v.e, 1)
	b.unblock()

	select {
	case r := <-caught:
		require.Equal(t, "boom", r, "the panic that reached Do's caller")
	case <-time.After(hang):
		t.Fatal("idemtest: Do did not end")
	}
	r := waitFor(t, f)
	require.Error(t, r.err)
	require.ErrorContains(t, r.err, "panicked")
	require.ErrorContains(t, r.err, "boom")
	_, err := v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	require.Empty(t, keys(t, v.e.Interrupted()))

	var c counter
	res, err := v.e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(1), c.runs.Load())
	require.Equal(t, int64(1), b.runs.Load())
}

func testGoexit(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "")
	b.goexit = true
	returned := make(chan bool, 1)
	go func() {
		ok := false
		defer func() { returned <- ok }()
		v.e.Do(ctx, "k", nil, b.fn)
		ok = true
	}()
	b.waitStarted(t)
	f := goDo(ctx, v.e, "k", nil, b.fn)
	waitWaits(t, v.e, 1)
	b.unblock()

	select {
	case ok := <-returned:
		require.False(t, ok, "Do returned after fn called runtime.Goexit")
	case <-time.After(hang):
		t.Fatal("idemtest: Do did not end")
	}
	r := waitFor(t, f)
	require.ErrorContains(t, r.err, "Goexit")
	_, err := v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)

	var c counter
	res, err := v.e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(1), c.runs.Load())
}

func testExpiry(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.TTL = time.Hour })
	var c counter
	_, err := v.e.Do(ctx, "k", []byte("A"), c.fn("v1"))
	require.NoError(t, err)
	_, err = v.e.Do(ctx, "p", []byte("A"), func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New("declined"))
	})
	require.Error(t, err)

	v.clk.Advance(time.Hour - time.Nanosecond)
	res, err := v.e.Do(ctx, "k", []byte("A"), c.fn("v2"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	_, err = v.e.Lookup("p")
	require.NoError(t, err)

	v.clk.Advance(time.Nanosecond) // expired, and swept by nobody
	for _, key := range []string{"k", "p"} {
		_, err = v.e.Lookup(key)
		require.ErrorIs(t, err, idem.ErrNotFound, key)
	}
	require.Empty(t, keys(t, v.e.Records("")))
	res, err = v.e.Do(ctx, "k", []byte("A"), c.fn("v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v2"), res.Value)
	// An expired record refuses no fingerprint either.
	res, err = v.e.Do(ctx, "p", []byte("B"), c.fn("v3"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(3), c.runs.Load())
}

// A result lives TTL from when it was stored, however long fn ran.
func testTTLFromStore(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.TTL = time.Hour })
	var runs int
	fn := func(context.Context) ([]byte, error) {
		runs++
		v.clk.Advance(2 * time.Hour) // fn outlives the TTL
		return []byte("slow"), nil
	}
	start := v.clk.Now()
	res, err := v.e.Do(ctx, "k", nil, fn)
	require.NoError(t, err)
	stored := start.Add(2 * time.Hour)
	require.True(t, res.CreatedAt.Equal(stored), "CreatedAt %v, want %v", res.CreatedAt, stored)
	require.True(t, res.ExpiresAt.Equal(stored.Add(time.Hour)), "ExpiresAt %v", res.ExpiresAt)

	checkReplay(t, v.e, "k", nil, "slow", stored)
	v.clk.Advance(time.Hour - time.Nanosecond)
	checkReplay(t, v.e, "k", nil, "slow", stored)
	v.clk.Advance(time.Nanosecond)
	_, err = v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	require.Equal(t, 1, runs)
}

func testForget(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	_, err := v.e.Do(ctx, "k", []byte("A"), c.fn("v1"))
	require.NoError(t, err)
	require.NoError(t, v.e.Forget("k"))
	_, err = v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	// The next call runs fn, whatever its fingerprint.
	res, err := v.e.Do(ctx, "k", []byte("B"), c.fn("v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v2"), res.Value)
	require.Equal(t, int64(2), c.runs.Load())
	require.NoError(t, v.e.Forget("never-stored"))
	require.NoError(t, v.e.Forget("k"))
	require.NoError(t, v.e.Forget("k"), "forgetting twice")

	// A stored Permanent error is forgotten too.
	_, err = v.e.Do(ctx, "p", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New("declined"))
	})
	require.Error(t, err)
	require.NoError(t, v.e.Forget("p"))
	_, err = v.e.Do(ctx, "p", nil, c.fn("v"))
	require.NoError(t, err)
}

func testForgetInFlight(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "v")
	leader := goDo(ctx, v.e, "busy", nil, b.fn)
	b.waitStarted(t)
	require.ErrorIs(t, v.e.Forget("busy"), idem.ErrInFlight)
	b.unblock()
	require.NoError(t, waitFor(t, leader).err)
	_, err := v.e.Lookup("busy")
	require.NoError(t, err, "a refused Forget removed nothing")
	require.NoError(t, v.e.Forget("busy"))
	_, err = v.e.Lookup("busy")
	require.ErrorIs(t, err, idem.ErrNotFound)
}

func testLookupStates(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.TTL = time.Hour })
	_, err := v.e.Lookup("none")
	require.ErrorIs(t, err, idem.ErrNotFound)

	b := newBlocker(t, "v")
	leader := goDo(ctx, v.e, "running", nil, b.fn)
	b.waitStarted(t)
	rec, err := v.e.Lookup("running")
	if s.d == idem.SyncNone {
		// No in-flight marker is written: the key has no record yet.
		require.ErrorIs(t, err, idem.ErrNotFound)
	} else {
		require.NoError(t, err)
		require.Equal(t, idem.StateInFlight, rec.State)
		require.Equal(t, "running", rec.Key)
		require.True(t, rec.CreatedAt.Equal(v.clk.Now()))
		require.True(t, rec.ExpiresAt.Equal(v.clk.Now().Add(time.Hour)))
		require.Empty(t, keys(t, v.e.Interrupted()), "a running key is not interrupted")
	}
	b.unblock()
	require.NoError(t, waitFor(t, leader).err)
	rec, err = v.e.Lookup("running")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
	require.Equal(t, []byte("v"), rec.Value)
	require.Empty(t, rec.Err)

	_, err = v.e.Do(ctx, "failed", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New("declined"))
	})
	require.Error(t, err)
	rec, err = v.e.Lookup("failed")
	require.NoError(t, err)
	require.Equal(t, idem.StateFailed, rec.State)
	require.Equal(t, "declined", rec.Err)

	if interrupt(t, v.e, "interrupted", nil) {
		rec, err = v.e.Lookup("interrupted")
		require.NoError(t, err)
		require.Equal(t, idem.StateInterrupted, rec.State)
		require.Equal(t, "interrupted", rec.Key)
	}
}

func testRecords(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.TTL = time.Hour })
	var c counter
	do := func(key string) {
		t.Helper()
		_, err := v.e.Do(ctx, key, nil, c.fn("v-"+key))
		require.NoError(t, err)
	}
	do("a/0") // expires first
	v.clk.Advance(30 * time.Minute)
	for _, key := range []string{"b/1", "a/2", "a/1", "ab", "a"} {
		do(key)
	}
	_, err := v.e.Do(ctx, "a/3", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New("declined"))
	})
	require.Error(t, err)
	require.Equal(t, []string{"a", "a/0", "a/1", "a/2", "a/3", "ab", "b/1"}, keys(t, v.e.Records("")))
	require.Equal(t, []string{"a/0", "a/1", "a/2", "a/3"}, keys(t, v.e.Records("a/")))
	require.Empty(t, keys(t, v.e.Records("c")))

	v.clk.Advance(30 * time.Minute) // a/0 expires
	require.Equal(t, []string{"a", "a/1", "a/2", "a/3", "ab", "b/1"}, keys(t, v.e.Records("")))
	require.Equal(t, []string{"a/1", "a/2", "a/3"}, keys(t, v.e.Records("a/")))
	for r, err := range v.e.Records("a/") {
		require.NoError(t, err)
		switch r.Key {
		case "a/3":
			require.Equal(t, idem.StateFailed, r.State)
			require.Equal(t, "declined", r.Err)
		default:
			require.Equal(t, idem.StateCompleted, r.State)
			require.Equal(t, []byte("v-"+r.Key), r.Value)
		}
	}
	// Breaking out of the loop is allowed.
	n := 0
	for range v.e.Records("") {
		n++
		break
	}
	require.Equal(t, 1, n)
	require.Empty(t, keys(t, v.e.Interrupted()))
}

func testInterrupted(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	_, err := v.e.Do(ctx, "done", nil, c.fn("v"))
	require.NoError(t, err)
	makeInterrupted(t, v.e, "k2", nil)
	makeInterrupted(t, v.e, "k1", []byte("fp"))
	require.Equal(t, []string{"k1", "k2"}, keys(t, v.e.Interrupted()))
	for r, err := range v.e.Interrupted() {
		require.NoError(t, err)
		require.Equal(t, idem.StateInterrupted, r.State)
	}

	before := v.e.Stats().Interrupted
	for range 2 {
		_, err = v.e.Do(ctx, "k1", []byte("fp"), c.fn("v"))
		require.ErrorIs(t, err, idem.ErrInterrupted)
	}
	require.Equal(t, before+2, v.e.Stats().Interrupted)
	require.Equal(t, int64(1), c.runs.Load())

	// Reconciled: Forget releases the key.
	require.NoError(t, v.e.Forget("k1"))
	require.Equal(t, []string{"k2"}, keys(t, v.e.Interrupted()))
	res, err := v.e.Do(ctx, "k1", []byte("fp"), c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	rec, err := v.e.Lookup("k1")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
	require.Equal(t, int64(2), c.runs.Load())
}

func testInterruptedAfterReopen(t *testing.T, s *suite) {
	v := s.open(t, nil)
	makeInterrupted(t, v.e, "k", nil)
	v.reopen()
	require.Equal(t, []string{"k"}, keys(t, v.e.Interrupted()))
	var c counter
	_, err := v.e.Do(ctx, "k", nil, c.fn("v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
	require.Zero(t, c.runs.Load())
	require.NoError(t, v.e.Forget("k"))
	_, err = v.e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.Equal(t, int64(1), c.runs.Load())
}

func testRetryInterrupted(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.RetryInterrupted = true })
	makeInterrupted(t, v.e, "k", []byte("fp"))
	var c counter
	// Still refused to another fingerprint.
	_, err := v.e.Do(ctx, "k", []byte("other"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	res, err := v.e.Do(ctx, "k", []byte("fp"), c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(1), c.runs.Load())
	require.Empty(t, keys(t, v.e.Interrupted()))
	checkReplay(t, v.e, "k", []byte("fp"), "v", res.CreatedAt)

	// A retry whose fn fails releases the key and leaves no marker.
	makeInterrupted(t, v.e, "j", nil)
	_, err = v.e.Do(ctx, "j", nil, func(context.Context) ([]byte, error) { return nil, errors.New("transient") })
	require.ErrorContains(t, err, "transient")
	_, err = v.e.Lookup("j")
	require.ErrorIs(t, err, idem.ErrNotFound)
}

func testBadInput(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.MaxKeySize = 8 })
	var c counter
	for _, key := range []string{"", "123456789"} {
		_, err := v.e.Do(ctx, key, nil, c.fn("v"))
		require.ErrorIs(t, err, idem.ErrInvalidKey, "Do(%q)", key)
		_, err = v.e.Lookup(key)
		require.ErrorIs(t, err, idem.ErrInvalidKey, "Lookup(%q)", key)
		require.ErrorIs(t, v.e.Forget(key), idem.ErrInvalidKey, "Forget(%q)", key)
	}
	res, err := v.e.Do(ctx, "12345678", nil, c.fn("v")) // MaxKeySize exactly
	require.NoError(t, err)
	require.False(t, res.Replayed)

	_, err = v.e.Do(ctx, "k", nil, nil)
	require.Error(t, err, "a nil fn")

	done, cancel := context.WithCancel(ctx)
	cancel()
	_, err = v.e.Do(done, "k", nil, c.fn("v"))
	require.ErrorIs(t, err, context.Canceled)
	_, err = v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound, "a call with a done context claimed its key")
	res, err = v.e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(2), c.runs.Load())
}

func testTooLarge(t *testing.T, s *suite) {
	v := s.open(t, func(o *idem.Options) { o.MaxValueSize = 16 })
	var c counter
	_, err := v.e.Do(ctx, "big", nil, c.fn(strings.Repeat("x", 17)))
	require.ErrorIs(t, err, idem.ErrTooLarge)
	_, err = v.e.Lookup("big")
	require.ErrorIs(t, err, idem.ErrNotFound)
	_, err = v.e.Do(ctx, "big", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New(strings.Repeat("e", 17)))
	})
	require.ErrorIs(t, err, idem.ErrTooLarge)
	_, err = v.e.Lookup("big")
	require.ErrorIs(t, err, idem.ErrNotFound)
	require.Empty(t, keys(t, v.e.Interrupted()))
	res, err := v.e.Do(ctx, "big", nil, c.fn(strings.Repeat("x", 16)))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(2), c.runs.Load())
}

type receipt struct {
	ID     string
	Amount int64
	Tags   []string
}

func testDoValue(t *testing.T, s *suite) {
	v := s.open(t, nil)
	want := receipt{ID: "r1", Amount: 4200, Tags: []string{"eur"}}
	var runs int
	fn := func(context.Context) (receipt, error) { runs++; return want, nil }
	got, res, err := idem.DoValue(ctx, v.e, "k", []byte("fp"), fn)
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, want, got)
	got, res, err = idem.DoValue(ctx, v.e, "k", []byte("fp"), fn)
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, want, got)
	require.Equal(t, 1, runs)

	// A stored value of another shape is an error, not a panic.
	_, res, err = idem.DoValue(ctx, v.e, "k", []byte("fp"), func(context.Context) (map[string]int, error) { return nil, nil })
	require.ErrorIs(t, err, idem.ErrValueType)
	require.NotErrorIs(t, err, idem.ErrCorrupt)
	require.True(t, res.Replayed)
	require.NotEmpty(t, res.Value)

	// Errors behave as in Do.
	errTransient := errors.New("transient")
	_, _, err = idem.DoValue(ctx, v.e, "e", nil, func(context.Context) (receipt, error) { return receipt{}, errTransient })
	require.ErrorIs(t, err, errTransient)
	_, err = v.e.Lookup("e")
	require.ErrorIs(t, err, idem.ErrNotFound)
	_, _, err = idem.DoValue(ctx, v.e, "p", nil, func(context.Context) (receipt, error) {
		return receipt{}, idem.Permanent(errors.New("declined"))
	})
	require.EqualError(t, err, "declined")
	_, res, err = idem.DoValue(ctx, v.e, "p", nil, fn)
	var perm *idem.PermanentError
	require.ErrorAs(t, err, &perm)
	require.True(t, res.Replayed)
	require.Equal(t, 1, runs)
}

func testStats(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	v.e.Do(ctx, "a", []byte("1"), c.fn("v")) // an execution
	v.e.Do(ctx, "a", []byte("1"), c.fn("v")) // a replay
	v.e.Do(ctx, "a", []byte("2"), c.fn("v")) // a mismatch
	v.e.Do(ctx, "b", nil, func(context.Context) ([]byte, error) { return nil, errors.New("x") })
	v.e.Do(ctx, "", nil, c.fn("v")) // invalid: not counted
	st := v.e.Stats()
	require.Equal(t, uint64(4), st.Calls)
	require.Equal(t, uint64(2), st.Executions)
	require.Equal(t, uint64(1), st.Replays)
	require.Equal(t, uint64(1), st.Mismatches)
	require.Zero(t, st.Waits)
	require.Zero(t, st.Conflicts)
	require.Zero(t, st.Interrupted)
	require.Zero(t, st.Swept)

	v.clk.Advance(48 * time.Hour)
	n, err := v.e.Sweep(ctx)
	require.NoError(t, err)
	want := 1 // the record of "a"
	if _, ok := s.h.(SelfSweeping); ok {
		want = 0
	}
	require.Equal(t, want, n)
	require.Equal(t, uint64(want), v.e.Stats().Swept)
}

func testCloseWaits(t *testing.T, s *suite) {
	v := s.open(t, nil)
	b := newBlocker(t, "stored before close")
	leader := goDo(ctx, v.e, "k", nil, b.fn)
	b.waitStarted(t)
	follower := goDo(ctx, v.e, "k", nil, b.fn)
	waitWaits(t, v.e, 1)

	closed := make(chan error, 1)
	go func() { closed <- v.e.Close() }()
	// Calls that began before Close may go on; once Close has begun, new
	// ones are refused.
	attempts := 0
	require.Eventually(t, func() bool {
		attempts++
		_, err := v.e.Do(ctx, fmt.Sprint("other-", attempts), nil, (&counter{}).fn("v"))
		return errors.Is(err, idem.ErrClosed)
	}, hang, time.Millisecond, "Close did not refuse new calls")
	refused := fmt.Sprint("other-", attempts)
	select {
	case <-closed:
		t.Fatal("Close returned while fn was running")
	default:
	}
	b.unblock()
	lr := waitFor(t, leader)
	require.NoError(t, lr.err)
	fr := waitFor(t, follower)
	require.NoError(t, fr.err)
	require.True(t, fr.res.Replayed)
	require.Equal(t, []byte("stored before close"), fr.res.Value)
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(hang):
		t.Fatal("idemtest: Close did not return")
	}

	if _, ok := s.h.(Reopener); ok {
		v.reopen()
		checkReplay(t, v.e, "k", nil, "stored before close", lr.res.CreatedAt)
		_, err := v.e.Lookup(refused)
		require.ErrorIs(t, err, idem.ErrNotFound, "a call refused by Close stored a record")
	}
}

func testAfterClose(t *testing.T, s *suite) {
	v := s.open(t, nil)
	var c counter
	_, err := v.e.Do(ctx, "k", nil, c.fn("v"))
	require.NoError(t, err)
	require.NoError(t, v.e.Close())
	require.NoError(t, v.e.Close(), "a second Close")

	_, err = v.e.Do(ctx, "k", nil, c.fn("v"))
	require.ErrorIs(t, err, idem.ErrClosed)
	_, _, err = idem.DoValue(ctx, v.e, "k", nil, func(context.Context) (int, error) { return 1, nil })
	require.ErrorIs(t, err, idem.ErrClosed)
	_, err = v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrClosed)
	require.ErrorIs(t, v.e.Forget("k"), idem.ErrClosed)
	_, err = v.e.Sweep(ctx)
	require.ErrorIs(t, err, idem.ErrClosed)
	for _, seq := range []func(func(idem.Record, error) bool){v.e.Records(""), v.e.Interrupted()} {
		n := 0
		for _, err := range seq {
			require.ErrorIs(t, err, idem.ErrClosed)
			n++
		}
		require.Equal(t, 1, n)
	}
	require.Equal(t, uint64(1), v.e.Stats().Calls, "Stats works after Close")
	require.Equal(t, int64(1), c.runs.Load())
}

func testSharedReplay(t *testing.T, s *suite) {
	v := s.open(t, nil)
	other := v.shared()
	var c counter
	first, err := v.e.Do(ctx, "k", []byte("fp"), c.fn("v"))
	require.NoError(t, err)
	checkReplay(t, other, "k", []byte("fp"), "v", first.CreatedAt)
	_, err = other.Do(ctx, "k", []byte("other"), c.fn("v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	rec, err := other.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
	require.Equal(t, int64(1), c.runs.Load())
}

// testSharedConcurrentDuplicates races calls of one key over two engines of
// one store: fn runs once, and every caller gets its value.
func testSharedConcurrentDuplicates(t *testing.T, s *suite) {
	v := s.open(t, nil)
	engines := []*idem.Engine{v.e, v.shared()}
	const n = 16
	var runs atomic.Int64
	start := make(chan struct{})
	results := make(chan doResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := engines[i%2].Do(ctx, "k", []byte("fp"), func(context.Context) ([]byte, error) {
				runs.Add(1)
				return []byte("shared"), nil
			})
			results <- doResult{res, err}
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	fresh := sharedOutcome(t, results, "shared")
	require.Equal(t, int64(1), runs.Load())
	require.Equal(t, 1, fresh)
}

func testSharedForget(t *testing.T, s *suite) {
	v := s.open(t, nil)
	other := v.shared()
	var c counter
	_, err := v.e.Do(ctx, "k", nil, c.fn("v1"))
	require.NoError(t, err)
	require.NoError(t, other.Forget("k"))
	_, err = v.e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	res, err := v.e.Do(ctx, "k", nil, c.fn("v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, []byte("v2"), res.Value)
}
