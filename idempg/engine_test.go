package idempg_test

// The engine's contract on a table that several engines share, each
// through a pool of its own, on a real server. The cases run as subtests
// of TestEngine, one after another, on one database, each on a table of
// its own.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idempg"
	"github.com/idemkv/idem/idempg/internal/pgtest"
)

func TestEngine(t *testing.T) {
	srv := pgtest.Start(t)
	// The cases that mostly wait (for liveness windows, or timeouts) run in
	// parallel, each on a table of its own, after the others.
	t.Run("ExactlyOnce", func(t *testing.T) {
		keys, callers := 200, 6
		if longTests() {
			keys, callers = 2000, 9
		}
		testExactlyOnce(t, openEngines(t, srv, "once", 3, window(longWindow)), keys, callers)
	})
	t.Run("Waits", func(t *testing.T) { testWaits(t, srv) })
	t.Run("FnErrorAcrossEngines", func(t *testing.T) { testFnErrorAcrossEngines(t, srv) })
	t.Run("Mismatch", func(t *testing.T) { testMismatch(t, srv) })
	t.Run("Forget", func(t *testing.T) { testForget(t, srv) })
	t.Run("AliveButSlow", func(t *testing.T) { t.Parallel(); testAliveButSlow(t, srv) })
	t.Run("SlowHeartbeat", func(t *testing.T) { t.Parallel(); testSlowHeartbeat(t, srv) })
	t.Run("ClosedEngineClaim", func(t *testing.T) { testClosedEngineClaim(t, srv) })
	t.Run("ClosedEngineWakesWaiters", func(t *testing.T) { testClosedEngineWakesWaiters(t, srv) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, srv) })
	t.Run("SweepBatches", func(t *testing.T) { testSweepBatches(t, srv) })
	t.Run("SweepUsesIndex", func(t *testing.T) { testSweepUsesIndex(t, srv) })
	t.Run("SweepBacklog", func(t *testing.T) { testSweepBacklog(t, srv) })
	t.Run("CorruptRecord", func(t *testing.T) { testCorruptRecord(t, srv) })
	t.Run("PoolExhausted", func(t *testing.T) { t.Parallel(); testPoolExhausted(t, srv) })
	t.Run("HeartbeatWithPoolExhausted", func(t *testing.T) { t.Parallel(); testHeartbeatPoolExhausted(t, srv) })
	t.Run("ResultNotStored", func(t *testing.T) { t.Parallel(); testResultNotStored(t, srv) })
	t.Run("CloseLeaksNothing", func(t *testing.T) { testCloseLeaksNothing(t, srv) })
	t.Run("LateBeat", func(t *testing.T) { testLateBeat(t, srv) })
}

// Keys, each called by callers spread over the engines at once: fn runs
// once per key, every caller gets the value of that run, and all but one
// caller per key get it Replayed. The engines' liveness window is long
// (longWindow): a call that waits for another engine's claim is woken by
// its notification, or it would not return within the test's timeout.
func testExactlyOnce(t *testing.T, es []*idem.Engine, keys, callers int) {
	ctx := testCtx(t)
	runs := make([]atomic.Int64, keys)
	type got struct {
		key   int
		value string
		fresh bool
	}
	results := make(chan got, keys*callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for k := range keys {
		for c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				e := es[(k+c)%len(es)]
				key := fmt.Sprintf("key-%d", k)
				res, err := e.Do(ctx, key, []byte("fp"), func(context.Context) ([]byte, error) {
					runs[k].Add(1)
					return fmt.Appendf(nil, "%s by caller %d", key, c), nil
				})
				if err != nil {
					t.Errorf("Do(%s): %v", key, err)
					return
				}
				results <- got{k, string(res.Value), !res.Replayed}
			}()
		}
	}
	began := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(began)
	close(results)
	require.False(t, t.Failed())
	values := make([]string, keys)
	fresh := make([]int, keys)
	n := 0
	for r := range results {
		n++
		if values[r.key] == "" {
			values[r.key] = r.value
		}
		require.Equal(t, values[r.key], r.value, "key %d: callers got different values", r.key)
		if r.fresh {
			fresh[r.key]++
		}
	}
	require.Equal(t, keys*callers, n)
	for k := range keys {
		require.Equal(t, int64(1), runs[k].Load(), "key %d: fn runs", k)
		require.Equal(t, 1, fresh[k], "key %d: calls not replayed", k)
	}
	var execs, waits, replays uint64
	for _, e := range es {
		st := e.Stats()
		execs += st.Executions
		waits += st.Waits
		replays += st.Replays
	}
	require.Equal(t, uint64(keys), execs)
	require.Equal(t, uint64(keys*(callers-1)), replays)
	// Every engine replays every key.
	for _, e := range es {
		for k := range keys {
			res, err := e.Do(ctx, fmt.Sprintf("key-%d", k), []byte("fp"), func(context.Context) ([]byte, error) {
				return nil, errors.New("fn ran again")
			})
			require.NoError(t, err)
			require.True(t, res.Replayed)
			require.Equal(t, values[k], string(res.Value))
		}
	}
	t.Logf("%d calls over %d engines in %v: %d waited for another call", keys*callers, len(es), elapsed.Round(time.Millisecond), waits)
}

// Calls on other engines wait for a running fn and get its value, woken by
// the notification of its completion: under a liveness window of ten
// minutes, Watch's own timer would not wake them before the test's
// timeout. With NoWait they get ErrInFlight; a waiting call whose context
// ends gets an error matching ErrInFlight and the context's error.
func testWaits(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "waits"
	es := openEngines(t, srv, table, 2, window(longWindow))
	// An engine whose pool counts the marks of its Watch: its waiting
	// call has marked the claim's row before fn returns (a Watch that
	// polls, when the listener is down, marks nothing; one that marks
	// after the change returns at once).
	marking, marks := openWatched(t, srv, table, window(longWindow))
	nowait := openEngine(t, srv, table, noWait(longWindow))
	bounded := openEngine(t, srv, table, window(longWindow))

	var runs atomic.Int64
	b := newBlocker(t, &runs, "slow")
	leader := goDo(ctx, es[0], "w", []byte("fp"), b.fn)
	waitClosed(t, b.started, "fn's start")

	sameEngine := goDo(ctx, es[0], "w", []byte("fp"), valueFn(&runs, "other"))
	w1 := goDo(ctx, marking, "w", []byte("fp"), valueFn(&runs, "other"))
	w2 := goDo(ctx, es[1], "w", []byte("fp"), valueFn(&runs, "other"))
	waitWaits(t, es[0], 1)
	waitWaits(t, marking, 1)
	waitWaits(t, es[1], 1)

	_, err := nowait.Do(ctx, "w", []byte("fp"), valueFn(&runs, "other"))
	require.ErrorIs(t, err, idem.ErrInFlight)
	require.Equal(t, uint64(1), nowait.Stats().Conflicts)

	// A call whose deadline passes while it waits: on its own engine,
	// in Watch; and on es[1], behind w2 in that engine's lock table.
	for _, e := range []*idem.Engine{bounded, es[1]} {
		d := newDeadline()
		before := e.Stats().Waits
		w := goDo(d, e, "w", []byte("fp"), valueFn(&runs, "other"))
		waitWaits(t, e, before+1)
		d.expire()
		o := wait(t, w)
		require.ErrorIs(t, o.err, idem.ErrInFlight)
		require.ErrorIs(t, o.err, context.DeadlineExceeded)
	}

	waitMarked(t, marks, 1)
	notReturned(t, w1, "a waiting call, while fn runs,")
	b.unblock()
	o := wait(t, leader)
	require.NoError(t, o.err)
	require.False(t, o.res.Replayed)
	for _, ch := range []<-chan outcome{sameEngine, w1, w2} {
		o := wait(t, ch)
		require.NoError(t, o.err)
		require.Equal(t, "slow", string(o.res.Value))
		require.True(t, o.res.Replayed)
	}
	require.Equal(t, int64(1), runs.Load())
	require.Equal(t, 1, marks.count(markSQL), "the waiting call's Watch marks the claim once")
	for _, e := range append(es[1:], marking) {
		require.Zero(t, e.Stats().Executions)
	}
}

// fn's error, across engines: a transient error is not stored, so a call
// waiting on another engine is woken by the claim's release and runs fn
// itself, while a call waiting on the leader's own engine shares the error
// (the single-engine rule); a Permanent error is stored, and the waiting
// call on the other engine gets it, replayed.
func testFnErrorAcrossEngines(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	remoteEngine, marks := openWatched(t, srv, "fnerr", window(longWindow))
	es := []*idem.Engine{openEngine(t, srv, "fnerr", window(longWindow)), remoteEngine}

	var runs atomic.Int64
	errTransient := errors.New("transient")
	b := newBlocker(t, &runs, "")
	b.err = errTransient
	leader := goDo(ctx, es[0], "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	local := goDo(ctx, es[0], "k", nil, valueFn(&runs, "local"))
	remote := goDo(ctx, es[1], "k", nil, valueFn(&runs, "remote"))
	waitWaits(t, es[0], 1)
	waitMarked(t, marks, 1)
	b.unblock()
	require.ErrorIs(t, wait(t, leader).err, errTransient)
	o := wait(t, local)
	require.ErrorIs(t, o.err, errTransient, "a waiting call of the same engine shares the error")
	require.False(t, o.res.Replayed)
	o = wait(t, remote)
	require.NoError(t, o.err, "a waiting call of another engine runs fn")
	require.Equal(t, "remote", string(o.res.Value))
	require.False(t, o.res.Replayed)
	require.Equal(t, int64(2), runs.Load())

	errDeclined := errors.New("declined")
	p := newBlocker(t, &runs, "")
	p.err = idem.Permanent(errDeclined)
	leader = goDo(ctx, es[0], "p", nil, p.fn)
	waitClosed(t, p.started, "fn's start")
	remote = goDo(ctx, es[1], "p", nil, valueFn(&runs, "remote"))
	waitMarked(t, marks, 2)
	p.unblock()
	require.ErrorIs(t, wait(t, leader).err, errDeclined)
	o = wait(t, remote)
	var perm *idem.PermanentError
	require.ErrorAs(t, o.err, &perm)
	require.Equal(t, "declined", perm.Err.Error())
	require.True(t, o.res.Replayed)
	require.Equal(t, int64(3), runs.Load())
}

// A key reused with another fingerprint is refused on every engine, stored
// or running.
func testMismatch(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	es := openEngines(t, srv, "mismatch", 3, nil)
	var runs atomic.Int64
	_, err := es[0].Do(ctx, "stored", []byte("A"), valueFn(&runs, "v"))
	require.NoError(t, err)
	for _, e := range es {
		_, err := e.Do(ctx, "stored", []byte("B"), valueFn(&runs, "v"))
		require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	}

	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, es[0], "running", []byte("A"), b.fn)
	waitClosed(t, b.started, "fn's start")
	for _, e := range es[1:] {
		_, err := e.Do(ctx, "running", []byte("B"), valueFn(&runs, "v"))
		require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
		_, err = e.Do(ctx, "running", nil, valueFn(&runs, "v"))
		require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	}
	b.unblock()
	require.NoError(t, wait(t, leader).err)
	require.Equal(t, int64(2), runs.Load())
	var mismatches uint64
	for _, e := range es {
		mismatches += e.Stats().Mismatches
	}
	require.Equal(t, uint64(3+4), mismatches)
}

// Forget on one engine: the next Do on every engine sees the key gone,
// and runs fn there.
func testForget(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	es := openEngines(t, srv, "forget", 3, nil)
	for i, forgetter := range es {
		key := fmt.Sprintf("k%d", i)
		var runs atomic.Int64
		_, err := es[(i+1)%len(es)].Do(ctx, key, nil, valueFn(&runs, "v1"))
		require.NoError(t, err)
		for _, e := range es { // every engine has replayed it
			res, err := e.Do(ctx, key, nil, valueFn(&runs, "v1"))
			require.NoError(t, err)
			require.True(t, res.Replayed)
		}
		require.NoError(t, forgetter.Forget(key))
		for _, e := range es {
			_, err := e.Lookup(key)
			require.ErrorIs(t, err, idem.ErrNotFound)
		}
		// Each other engine in turn: its next Do runs fn.
		for j := 1; j < len(es); j++ {
			e := es[(i+j)%len(es)]
			res, err := e.Do(ctx, key, nil, valueFn(&runs, fmt.Sprint("v", j+1)))
			require.NoError(t, err)
			require.False(t, res.Replayed, "engine %d after Forget on engine %d", (i+j)%len(es), i)
			require.Equal(t, fmt.Sprint("v", j+1), string(res.Value))
			require.NoError(t, forgetter.Forget(key))
		}
		require.Equal(t, int64(len(es)), runs.Load())
	}
	// A key whose fn runs on another engine cannot be forgotten.
	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, es[0], "busy", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	require.ErrorIs(t, es[1].Forget("busy"), idem.ErrInFlight)
	b.unblock()
	require.NoError(t, wait(t, leader).err)
}

// An engine whose fn runs for several liveness windows is alive all along:
// a NoWait duplicate on another engine gets ErrInFlight, never
// ErrInterrupted, and a waiting one on a third engine (which asks again
// whether the claim's engine is alive every half window) goes on waiting;
// then both get the value, replayed.
func testAliveButSlow(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const window = 2 * time.Second
	const table = "slow"
	logTo := withLog(t)
	slow := openEngine(t, srv, table, func(o *idempg.Options) { o.LivenessWindow = window; logTo(o) })
	other := openEngine(t, srv, table, noWait(window))
	waiting := openEngine(t, srv, table, func(o *idempg.Options) { o.LivenessWindow = window })

	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, slow, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	waiter := goDo(ctx, waiting, "k", nil, valueFn(&runs, "other"))
	waitWaits(t, waiting, 1)

	calls := checkInFlightFor(t, other, "k", 3*window)
	notReturned(t, waiter, "the waiting call, while the claim's engine is alive,")
	require.Zero(t, other.Stats().Interrupted)
	require.Zero(t, waiting.Stats().Interrupted)
	t.Logf("%d NoWait calls over %v: all ErrInFlight", calls, 3*window)

	b.unblock()
	require.NoError(t, wait(t, leader).err)
	o := wait(t, waiter)
	require.NoError(t, o.err)
	require.Equal(t, "v", string(o.res.Value))
	require.True(t, o.res.Replayed)
	res, err := other.Do(ctx, "k", nil, valueFn(&runs, "other"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, "v", string(res.Value))
	require.Equal(t, int64(1), runs.Load())
}

// A heartbeat whose statement takes longer than the interval between beats
// (a sixth of the window) but well within the window (here 300 ms of a
// 1 s window: a loaded server, a slow network) still keeps its engine
// alive: a NoWait duplicate of its running claim gets ErrInFlight, never
// ErrInterrupted.
func testSlowHeartbeat(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const window = time.Second
	const table = "slowbeat"
	admin := srv.Pool(t, nil)
	openOn(t, admin, table, nil).Close() // the table
	for _, q := range []string{
		`CREATE FUNCTION slowbeat_sleep() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_sleep(0.3);
			RETURN NEW;
		END
		$$`,
		`CREATE TRIGGER slow BEFORE INSERT ON slowbeat_engines FOR EACH ROW EXECUTE FUNCTION slowbeat_sleep()`,
	} {
		_, err := admin.Exec(ctx, q)
		require.NoError(t, err)
	}
	logTo := withLog(t)
	slow := openEngine(t, srv, table, func(o *idempg.Options) { o.LivenessWindow = window; logTo(o) })
	other := openEngine(t, srv, table, noWait(window))
	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, slow, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	checkInFlightFor(t, other, "k", 3*window)
	b.unblock()
	require.NoError(t, wait(t, leader).err)
}

// checkInFlightFor calls Do on key through e (a NoWait engine) every 20 ms
// for d, and fails t unless each returns ErrInFlight. It returns the
// number of calls.
func checkInFlightFor(t *testing.T, e *idem.Engine, key string, d time.Duration) int {
	t.Helper()
	ctx := testCtx(t)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	calls := 0
	for end := time.Now().Add(d); time.Now().Before(end); calls++ {
		_, err := e.Do(ctx, key, nil, func(context.Context) ([]byte, error) {
			return nil, errors.New("fn ran for a key in flight")
		})
		require.ErrorIs(t, err, idem.ErrInFlight, "call %d", calls)
		<-tick.C
	}
	return calls
}

// Close deletes the engine's heartbeat: a claim of its that is left (here
// written through the store directly, as a call whose outcome could not be
// stored leaves one) is reported interrupted by other engines at once,
// though the closed engine's liveness window is ten minutes.
func testClosedEngineClaim(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "closed"
	pool := srv.Pool(t, nil)
	closing := openTestStore(t, pool, idempg.Options{Table: table, LivenessWindow: longWindow})
	other := openEngine(t, srv, table, noWait(longWindow))
	_, err := closing.Store().Create(ctx, "k", marker(closing.Owner()), idem.WriteClaim)
	require.NoError(t, err)

	var runs atomic.Int64
	_, err = other.Do(ctx, "k", nil, valueFn(&runs, "v"))
	require.ErrorIs(t, err, idem.ErrInFlight, "the claim of a live engine")
	rec, err := other.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateInFlight, rec.State)
	require.Equal(t, 1, liveBeats(t, pool, table, closing.Owner()))

	require.NoError(t, closing.Close())
	require.Zero(t, liveBeats(t, pool, table, closing.Owner()))
	_, err = other.Do(ctx, "k", nil, valueFn(&runs, "v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
	rec, err = other.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateInterrupted, rec.State)
	var interrupted []string
	for r, err := range other.Interrupted() {
		require.NoError(t, err)
		interrupted = append(interrupted, r.Key)
	}
	require.Equal(t, []string{"k"}, interrupted)
	require.Zero(t, runs.Load())
}

// A call that is already waiting for a claim when the claim's engine
// closes learns at once that the claim is interrupted, as a new call does
// (testClosedEngineClaim), rather than when Watch's timer fires (half the
// liveness window: here five minutes).
func testClosedEngineWakesWaiters(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "closedwait"
	closing := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table, LivenessWindow: longWindow})
	other, marks := openWatched(t, srv, table, window(longWindow))
	_, err := closing.Store().Create(ctx, "k", marker(closing.Owner()), idem.WriteClaim)
	require.NoError(t, err)
	var runs atomic.Int64
	waiter := goDo(ctx, other, "k", nil, valueFn(&runs, "v"))
	waitMarked(t, marks, 1)
	require.NoError(t, closing.Close())
	require.ErrorIs(t, wait(t, waiter).err, idem.ErrInterrupted)
	require.Zero(t, runs.Load())
}

// Expiry: a record is invisible once its TTL has passed on the engine's
// clock, on every engine, before any sweep; a new call runs fn.
func testExpiry(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	clk := newClock()
	es := openEngines(t, srv, "expiry", 2, func(o *idempg.Options) {
		o.Engine.TTL, o.Engine.Now, o.Engine.SweepInterval = time.Hour, clk.now, -1
	})
	var runs atomic.Int64
	_, err := es[0].Do(ctx, "k", nil, valueFn(&runs, "v1"))
	require.NoError(t, err)
	res, err := es[1].Do(ctx, "k", nil, valueFn(&runs, "v1"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	clk.advance(time.Hour - 1)
	_, err = es[1].Lookup("k")
	require.NoError(t, err, "a nanosecond before its expiry")
	clk.advance(1)
	for _, e := range es {
		_, err = e.Lookup("k")
		require.ErrorIs(t, err, idem.ErrNotFound)
	}
	res, err = es[1].Do(ctx, "k", []byte("other fingerprint"), valueFn(&runs, "v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(2), runs.Load())
	res, err = es[0].Do(ctx, "k", []byte("other fingerprint"), valueFn(&runs, "v3"))
	require.NoError(t, err)
	require.Equal(t, "v2", string(res.Value))
}

// clock is a clock that the test moves.
type clock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Sweep deletes the expired rows, and only those, in batches of
// Options.SweepBatch: one statement per batch, and one that finds fewer
// than a batch.
func testSweepBatches(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "sweep"
	clk := newClock()
	stmts := newStmtCounter("SKIP LOCKED")
	pool := newPoolOf(t, srv, poolConfig{tracer: stmts})
	e := openOn(t, pool, table, func(o *idempg.Options) {
		o.SweepBatch = 3
		o.Engine.TTL, o.Engine.Now, o.Engine.SweepInterval = time.Hour, clk.now, -1
	})
	var runs atomic.Int64
	const expired, kept = 10, 4
	for i := range expired {
		_, err := e.Do(ctx, fmt.Sprint("old-", i), nil, valueFn(&runs, "v"))
		require.NoError(t, err)
	}
	clk.advance(30 * time.Minute)
	for i := range kept {
		_, err := e.Do(ctx, fmt.Sprint("new-", i), nil, valueFn(&runs, "v"))
		require.NoError(t, err)
	}
	clk.advance(30 * time.Minute) // the old ones expire now
	require.Equal(t, expired+kept, count(t, pool, `SELECT count(*) FROM `+table))
	require.Zero(t, stmts.count("SKIP LOCKED"))

	n, err := e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, expired, n)
	require.Equal(t, expired/3+1, stmts.count("SKIP LOCKED"), "statements of the sweep: 3, 3, 3, 1")
	require.Equal(t, kept, count(t, pool, `SELECT count(*) FROM `+table))
	require.Zero(t, count(t, pool, `SELECT count(*) FROM `+table+` WHERE key LIKE 'old-%'`))
	for i := range kept {
		res, err := e.Do(ctx, fmt.Sprint("new-", i), nil, valueFn(&runs, "again"))
		require.NoError(t, err)
		require.True(t, res.Replayed)
	}
	n, err = e.Sweep(ctx)
	require.NoError(t, err)
	require.Zero(t, n)

	// A whole number of batches: the last statement finds none.
	clk.advance(time.Hour)
	for i := range 2 {
		_, err := e.Do(ctx, fmt.Sprint("more-", i), nil, valueFn(&runs, "v"))
		require.NoError(t, err)
	}
	before := stmts.count("SKIP LOCKED")
	n, err = e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, kept, n)
	require.Equal(t, 2, stmts.count("SKIP LOCKED")-before, "statements of the sweep: 3, 1")
	require.Equal(t, 2, count(t, pool, `SELECT count(*) FROM `+table))
}

// The sweep's batch is found through the index on expires, not by reading
// the whole table: the plan of its statement, on a table of many rows a
// tenth of which are expired, after ANALYZE, uses <table>_expires.
func testSweepUsesIndex(t *testing.T, srv *pgtest.Server) {
	const table = "sweepplan"
	pool := srv.Pool(t, nil)
	rows := fillSweepTable(t, pool, table)
	sweep := idempg.SweepStatement(table)
	require.Contains(t, sweep, "ORDER BY expires LIMIT $2 FOR UPDATE SKIP LOCKED")
	plan := explainSweep(t, pool, table, rows/10, idempg.DefaultSweepBatch, false)
	require.Contains(t, plan, "Index Scan using "+table+"_expires on "+table)
	require.NotContains(t, plan, "Seq Scan")
}

// A sweep's statement reads its batch, not every expired row: on a table
// with a backlog of expired rows (nine tenths of its rows), no node of the
// plan of a batch reads more rows than the batch, whether the server plans
// it for the statement's values or generically (as it may for a
// statement prepared, as pgx does, after five runs).
func testSweepBacklog(t *testing.T, srv *pgtest.Server) {
	const table = "sweepbacklog"
	pool := srv.Pool(t, nil)
	rows := fillSweepTable(t, pool, table)
	const batch = 500
	for _, generic := range []bool{false, true} {
		plan := explainSweep(t, pool, table, rows*9/10, batch, generic)
		require.NotContains(t, plan, "Seq Scan", "generic plan: %v", generic)
		for _, m := range planRows.FindAllStringSubmatch(plan, -1) {
			n, err := strconv.Atoi(m[1])
			require.NoError(t, err)
			require.LessOrEqual(t, n, batch, "a node of the plan reads more rows than a batch (generic plan: %v)", generic)
		}
	}
}

// planRows finds the rows of each node of a plan that EXPLAIN ANALYZE
// reports.
var planRows = regexp.MustCompile(`actual time=[0-9.]+\.\.[0-9.]+ rows=([0-9]+)`)

// fillSweepTable creates table, with rows as the engines write them, whose
// expires are 1 to the number of rows, which it returns; and ANALYZEs it.
func fillSweepTable(t *testing.T, pool *pgxpool.Pool, table string) int {
	t.Helper()
	ctx := testCtx(t)
	openOn(t, pool, table, nil).Close() // creates the table
	rows := 20000
	if longTests() {
		rows = 200000
	}
	_, err := pool.Exec(ctx, `INSERT INTO `+table+` (key, rev, wid, expires, record)
		SELECT convert_to('k' || i, 'UTF8'), nextval('`+table+`_rev'), i, i, '\x00'::bytea
		FROM generate_series(1, $1) AS i`, rows)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `ANALYZE `+table)
	require.NoError(t, err)
	return rows
}

// explainSweep returns the plan, as EXPLAIN ANALYZE prints it, of a sweep's
// statement on table at now, for a batch, rolled back; generic asks for
// the plan that the server makes for any values.
func explainSweep(t *testing.T, pool *pgxpool.Pool, table string, now, batch int, generic bool) string {
	t.Helper()
	ctx := testCtx(t)
	tx, err := pool.Begin(ctx) // EXPLAIN ANALYZE deletes: rolled back
	require.NoError(t, err)
	defer tx.Rollback(context.Background())
	mode := "force_custom_plan"
	if generic {
		mode = "force_generic_plan"
	}
	_, err = tx.Exec(ctx, `SET LOCAL plan_cache_mode = `+mode)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `PREPARE sweep_plan(bigint, int) AS `+idempg.SweepStatement(table))
	require.NoError(t, err)
	defer tx.Exec(context.Background(), `DEALLOCATE sweep_plan`) // (before the rollback)
	rs, err := tx.Query(ctx, fmt.Sprintf(`EXPLAIN (ANALYZE, COSTS OFF) EXECUTE sweep_plan(%d, %d)`, now, batch), pgx.QueryExecModeSimpleProtocol)
	require.NoError(t, err)
	var plan []string
	for rs.Next() {
		var line string
		require.NoError(t, rs.Scan(&line))
		plan = append(plan, line)
	}
	require.NoError(t, rs.Err())
	text := strings.Join(plan, "\n")
	t.Logf("the plan of a sweep's batch of %d at %d (generic: %v):\n%s", batch, now, generic, text)
	return text
}

// A row whose record is garbage (written by hand): Do, Lookup and Records
// report ErrCorrupt on every engine, nothing panics, fn does not run, and
// Forget removes it.
func testCorruptRecord(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "corrupt"
	pool := srv.Pool(t, nil)
	es := openEngines(t, srv, table, 2, nil)
	var runs atomic.Int64
	for _, k := range []string{"good", "bad"} {
		_, err := es[0].Do(ctx, k, nil, valueFn(&runs, "v"))
		require.NoError(t, err)
	}
	tag, err := pool.Exec(ctx, `UPDATE `+table+` SET record = '\xdeadbeef'::bytea WHERE key = $1`, []byte("bad"))
	require.NoError(t, err)
	require.Equal(t, int64(1), tag.RowsAffected())

	for _, e := range es {
		for range 2 { // claiming first, and reading first
			_, err = e.Do(ctx, "bad", nil, valueFn(&runs, "v"))
			require.ErrorIs(t, err, idem.ErrCorrupt)
		}
		_, err = e.Lookup("bad")
		require.ErrorIs(t, err, idem.ErrCorrupt)
		var keys []string
		corrupt := 0
		for r, err := range e.Records("") {
			if err != nil {
				require.ErrorIs(t, err, idem.ErrCorrupt)
				corrupt++
			}
			keys = append(keys, r.Key)
		}
		require.Equal(t, []string{"bad", "good"}, keys)
		require.Equal(t, 1, corrupt)
		res, err := e.Do(ctx, "good", nil, valueFn(&runs, "v"))
		require.NoError(t, err)
		require.True(t, res.Replayed)
	}
	require.Equal(t, int64(2), runs.Load())
	require.NoError(t, es[1].Forget("bad"))
	res, err := es[0].Do(ctx, "bad", nil, valueFn(&runs, "new"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(3), runs.Load())
}

// A pool whose only connection the test holds: Do waits for a connection
// up to Options.Timeout, then returns an error that says so, without
// running fn; once the connection is back, Do works.
func testPoolExhausted(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "exhausted"
	openEngine(t, srv, table, nil) // the table, made within the default Timeout
	pool := srv.Pool(t, &pgtest.PoolOptions{MaxConns: 1})
	e := openOn(t, pool, table, func(o *idempg.Options) {
		o.Timeout = time.Second
		o.Engine.SweepInterval = -1
	})
	var runs atomic.Int64
	_, err := e.Do(ctx, "before", nil, valueFn(&runs, "v"))
	require.NoError(t, err)

	release := holdConn(t, pool)
	for _, key := range []string{"new", "before"} {
		_, err = e.Do(ctx, key, nil, valueFn(&runs, "v"))
		require.Error(t, err)
		t.Logf("Do(%q) with the pool exhausted: %v", key, err)
		require.ErrorContains(t, err, "no connection from the pool")
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
	_, err = e.Lookup("before")
	require.ErrorContains(t, err, "no connection from the pool")
	require.Equal(t, int64(1), runs.Load(), "fn ran without a claim")
	release()

	res, err := e.Do(ctx, "new", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	res, err = e.Do(ctx, "before", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, int64(2), runs.Load())
}

// An engine whose pool is exhausted (its only connection held by the
// test) for several liveness windows keeps its heartbeat, on a connection
// of its own: its heartbeat's expiry moves on, and another engine's NoWait
// duplicate of its running claim gets ErrInFlight all along.
func testHeartbeatPoolExhausted(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const window = 2 * time.Second
	const table = "beat"
	admin := srv.Pool(t, nil)
	pool := srv.Pool(t, &pgtest.PoolOptions{MaxConns: 1})
	logTo := withLog(t)
	claiming := openOn(t, pool, table, func(o *idempg.Options) {
		logTo(o)
		o.LivenessWindow = window
		o.Engine.SweepInterval = -1
	})
	other := openEngine(t, srv, table, noWait(window))

	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, claiming, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	owner := int64(storedRecord(t, admin, table, "k").Owner)
	beat := func() time.Time {
		var at time.Time
		require.NoError(t, admin.QueryRow(ctx, `SELECT expires FROM `+table+`_engines WHERE owner = $1`, owner).Scan(&at))
		return at
	}

	release := holdConn(t, pool)
	first := beat()
	checkInFlightFor(t, other, "k", 3*window)
	require.Greater(t, beat().Sub(first), window, "the heartbeat's expiry moved on by more than a window")
	release()

	b.unblock()
	o := wait(t, leader)
	require.NoError(t, o.err)
	res, err := other.Do(ctx, "k", nil, valueFn(&runs, "other"))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, "v", string(res.Value))
	require.Equal(t, int64(1), runs.Load())
}

// holdConn acquires a connection of pool and returns the function that
// releases it, which runs when t's function returns if not before: a pool
// whose connection is held cannot close.
func holdConn(t *testing.T, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	conn, err := pool.Acquire(testCtx(t))
	require.NoError(t, err)
	release = sync.OnceFunc(conn.Release)
	t.Cleanup(release) // before the pool's Close, registered earlier
	return release
}

// fn ran, but its result cannot be stored (the pool exhausted, by the test,
// until Options.Timeout passes): Do returns an error that says so, the key
// reports ErrInterrupted on its engine at once, and on the others once the
// claim is rewritten as interrupted (owner 0), which the store keeps
// trying in the background until the pool gives it a connection. fn does
// not run again anywhere.
func testResultNotStored(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "notstored"
	other := openEngine(t, srv, table, noWait(longWindow)) // the table, made within the default Timeout
	pool := srv.Pool(t, &pgtest.PoolOptions{MaxConns: 1})
	e := openOn(t, pool, table, func(o *idempg.Options) {
		o.LivenessWindow, o.Timeout = longWindow, time.Second
		o.Engine.SweepInterval = -1
	})

	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, e, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	release := holdConn(t, pool)
	b.unblock()
	o := wait(t, leader)
	t.Logf("Do, its result not stored: %v", o.err)
	require.ErrorContains(t, o.err, "storing the result")
	require.ErrorContains(t, o.err, "no connection from the pool")
	require.Equal(t, "v", string(o.res.Value), "fn's value, though not stored")
	release()

	_, err := e.Do(ctx, "k", nil, valueFn(&runs, "again"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
	require.Eventually(t, func() bool {
		_, err := other.Do(ctx, "k", nil, valueFn(&runs, "again"))
		if !errors.Is(err, idem.ErrInterrupted) {
			require.ErrorIs(t, err, idem.ErrInFlight)
			return false
		}
		return true
	}, testTimeout, 10*time.Millisecond, "the claim was not rewritten as interrupted")
	rec, err := other.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateInterrupted, rec.State)
	require.Equal(t, int64(1), runs.Load())
}

// Close stops every goroutine that Open started, closes the engine's two
// connections of its own, deletes its heartbeat, and leaves the caller's
// pool open.
func testCloseLeaksNothing(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "leak"
	const app = "idempg-leak-test"
	admin := srv.Pool(t, nil)
	beats := newStmtCounter(beatSQL) // the engine's own connections are made from the pool's configuration
	pool := newPoolOf(t, srv, poolConfig{appName: app, tracer: beats})
	openOn(t, admin, table, nil) // creates the table
	// The sessions of the test's pool, by pid, and those of app.
	poolPIDs := func() map[uint32]bool {
		conns := pool.AcquireAllIdle(ctx)
		pids := make(map[uint32]bool)
		for _, c := range conns {
			pids[c.Conn().PgConn().PID()] = true
			c.Release()
		}
		return pids
	}
	others := func() int { // sessions of app that are not the pool's
		pids := poolPIDs()
		rows, err := admin.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`, srv.Database(), app)
		require.NoError(t, err)
		n := 0
		for rows.Next() {
			var pid uint32
			require.NoError(t, rows.Scan(&pid))
			if !pids[pid] {
				n++
			}
		}
		require.NoError(t, rows.Err())
		return n
	}
	require.NoError(t, pool.Ping(ctx))
	require.Zero(t, others())
	goroutines := runtime.NumGoroutine()

	e, err := idempg.Open(ctx, pool, &idempg.Options{Table: table, LivenessWindow: 2 * time.Second,
		Engine: &idem.Options{Logger: discardLogger, SweepInterval: -1}})
	require.NoError(t, err)
	waiting := openOn(t, admin, table, window(longWindow)) // no pool of its own, started after the count
	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, e, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	waiter := goDo(ctx, waiting, "k", nil, valueFn(&runs, "v")) // a Watch
	waitWaits(t, waiting, 1)
	b.unblock()
	require.NoError(t, wait(t, leader).err)
	require.NoError(t, wait(t, waiter).err)
	owner := storedRecord(t, admin, table, "k").Owner
	// The listener's connection, and the heartbeat's (made at the first
	// beat, a sixth of the window after Open).
	require.Eventually(t, func() bool { return others() == 2 }, testTimeout, 10*time.Millisecond,
		"the engine's own connections")
	require.Equal(t, 1, liveBeats(t, admin, table, owner))

	// Closed just after a heartbeat, a window/6 before the next: one that
	// Close cancels can commit after Close deletes the row (see
	// testLateBeat).
	before := beats.count(beatSQL)
	require.Eventually(t, func() bool { return beats.count(beatSQL) > before }, testTimeout, time.Millisecond)
	require.NoError(t, e.Close())
	require.NoError(t, e.Close(), "a second Close")
	require.Zero(t, liveBeats(t, admin, table, owner), "the heartbeat of a closed engine")
	require.Eventually(t, func() bool { return others() == 0 }, testTimeout, 10*time.Millisecond,
		"the engine's own connections are still open")
	require.NoError(t, pool.Ping(ctx), "the caller's pool")
	require.NoError(t, waiting.Close())
	waitGoroutines(t, goroutines)
}

func TestOpen(t *testing.T) {
	srv := pgtest.Start(t)
	t.Run("BadOptions", func(t *testing.T) { testOpenBadOptions(t, srv) })
	t.Run("PebbleOnlyOptions", func(t *testing.T) { testOpenPebbleOnly(t, srv) })
	t.Run("ForeignTable", func(t *testing.T) { testOpenForeignTable(t, srv) })
	t.Run("SchemaByHand", func(t *testing.T) { testOpenSchemaByHand(t, srv) })
	t.Run("Racing", func(t *testing.T) { testOpenRacing(t, srv) })
	t.Run("MigrationLockHeld", func(t *testing.T) { testOpenLockHeld(t, srv) })
	t.Run("QualifiedTable", func(t *testing.T) { testOpenQualified(t, srv) })
	t.Run("Unreachable", testOpenUnreachable)
	t.Run("LongQualifiedTable", func(t *testing.T) { testOpenLongQualified(t, srv) })
	t.Run("TwoSpellingsOfOneTable", func(t *testing.T) { testOpenTwoSpellings(t, srv) })
}

// Invalid options are refused before anything is written, with an error
// naming the field.
func testOpenBadOptions(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	quiet := &idem.Options{Logger: discardLogger}
	for _, c := range []struct {
		opts idempg.Options
		want string
	}{
		{idempg.Options{Table: "Idem"}, "Options.Table"},
		{idempg.Options{Table: "app.Idem"}, "Options.Table"},
		{idempg.Options{Table: `"idem"`}, "Options.Table"},
		{idempg.Options{Table: `idem"; DROP TABLE x; --`}, "Options.Table"},
		{idempg.Options{Table: "idem-records"}, "Options.Table"},
		{idempg.Options{Table: "idem records"}, "Options.Table"},
		{idempg.Options{Table: "1idem"}, "Options.Table"},
		{idempg.Options{Table: "a.b.c"}, "Options.Table"},
		{idempg.Options{Table: ".idem"}, "Options.Table"},
		{idempg.Options{Table: strings.Repeat("t", 49)}, "Options.Table"},
		{idempg.Options{Table: strings.Repeat("s", 49) + ".t"}, "Options.Table"},
		{idempg.Options{Table: "tablé"}, "Options.Table"},
		{idempg.Options{LivenessWindow: 999 * time.Millisecond}, "Options.LivenessWindow"},
		{idempg.Options{LivenessWindow: -time.Second}, "Options.LivenessWindow"},
		{idempg.Options{Timeout: -time.Second}, "Options.Timeout"},
		{idempg.Options{SweepBatch: -1}, "Options.SweepBatch"},
	} {
		c.opts.Engine = quiet
		e, err := idempg.Open(ctx, pool, &c.opts)
		require.ErrorContains(t, err, c.want, "%+v", c.opts)
		require.ErrorContains(t, err, "idempg: ")
		require.Nil(t, e)
	}
	// The longest names are valid.
	_, err := idempg.Schema(strings.Repeat("t", 48))
	require.NoError(t, err)
	_, err = idempg.Schema(strings.Repeat("s", 48) + "." + strings.Repeat("t", 48))
	require.NoError(t, err)

	// A reserved word passes the name's check but not the server's:
	// refused, named, nothing made (Open's transaction rolls back).
	_, err = idempg.Open(ctx, pool, &idempg.Options{Table: "user", Engine: quiet})
	require.ErrorContains(t, err, "idempg: creating table user")
	require.Nil(t, pgRegclass(t, pool, "user_engines"))

	e, err := idempg.Open(ctx, nil, &idempg.Options{Engine: quiet})
	require.ErrorContains(t, err, "nil *pgxpool.Pool")
	require.Nil(t, e)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM pg_class WHERE relname LIKE 'idem%'`), "a refused Open created tables")
}

// The fields of idem.Options that only Pebble's store has are refused, as
// is an invalid one; the store opened meanwhile is closed: no heartbeat,
// no goroutine, no connection left behind.
func testOpenPebbleOnly(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	const table = "pebbleonly"
	openOn(t, pool, table, nil).Close() // the table, and its goroutines, first
	require.NoError(t, pool.Ping(ctx))
	before := runtime.NumGoroutine()
	for _, c := range []struct {
		opts idem.Options
		want string
	}{
		{idem.Options{Durability: idem.SyncNone}, "Options.Durability"},
		{idem.Options{CacheSize: 1 << 20}, "Options.CacheSize"},
		{idem.Options{ReadOnly: true}, "Options.ReadOnly"},
		{idem.Options{RecordCacheSize: 1 << 20}, "Options.RecordCacheSize"},
		{idem.Options{RecordCacheSize: -1}, "Options.RecordCacheSize"},
		{idem.Options{TTL: -time.Second}, "Options.TTL"},
		{idem.Options{MaxKeySize: -1}, "Options.MaxKeySize"},
	} {
		c.opts.Logger = discardLogger
		e, err := idempg.Open(ctx, pool, &idempg.Options{Table: table, Engine: &c.opts})
		require.ErrorContains(t, err, c.want)
		require.Nil(t, e)
	}
	require.Zero(t, count(t, pool, `SELECT count(*) FROM `+table+`_engines WHERE expires > clock_timestamp()`), "live heartbeats of refused engines")
	waitGoroutines(t, before)
}

// A table that exists but that idempg did not create is refused, with an
// error that names it; so is one with idempg's comment but another layout.
// Neither is changed.
func testOpenForeignTable(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	quiet := &idem.Options{Logger: discardLogger}
	_, err := pool.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, total numeric)`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO orders VALUES (1, 9.99)`)
	require.NoError(t, err)
	e, err := idempg.Open(ctx, pool, &idempg.Options{Table: "orders", Engine: quiet})
	require.ErrorContains(t, err, "table orders exists but was not created by idempg")
	require.ErrorContains(t, err, "choose another Options.Table")
	require.Nil(t, e)

	_, err = pool.Exec(ctx, `COMMENT ON TABLE orders IS 'the shop''s orders'`)
	require.NoError(t, err)
	_, err = idempg.Open(ctx, pool, &idempg.Options{Table: "orders", Engine: quiet})
	require.ErrorContains(t, err, `its comment is "the shop's orders"`)

	// idempg's comment, another layout.
	_, err = pool.Exec(ctx, `COMMENT ON TABLE orders IS 'idem records, format 1'`)
	require.NoError(t, err)
	_, err = idempg.Open(ctx, pool, &idempg.Options{Table: "orders", Engine: quiet})
	require.ErrorContains(t, err, "table orders is not as idempg made it")
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM orders`))
	require.Nil(t, pgRegclass(t, pool, "orders_engines"))
	require.Nil(t, pgRegclass(t, pool, "orders_rev"))
}

// pgRegclass returns to_regclass(name) as text, nil if there is none.
func pgRegclass(t *testing.T, pool interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string) *string {
	t.Helper()
	var s *string
	require.NoError(t, pool.QueryRow(testCtx(t), `SELECT to_regclass($1)::text`, name).Scan(&s))
	return s
}

// The statements of Schema, run by hand (a migration of the user's own),
// make a table that Open takes as it is, on which engines share records
// and wait through notifications.
func testOpenSchemaByHand(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	stmts, err := idempg.Schema("byhand")
	require.NoError(t, err)
	for _, q := range stmts {
		_, err := pool.Exec(ctx, q)
		require.NoError(t, err, q)
	}
	var comment string
	require.NoError(t, pool.QueryRow(ctx, `SELECT obj_description('byhand'::regclass, 'pg_class')`).Scan(&comment))
	require.Equal(t, "idem records, format 1", comment)

	// Open does not create anything (it would fail on what exists).
	ddl := newStmtCounter("CREATE")
	watching, marks := openWatched(t, srv, "byhand", window(longWindow))
	es := []*idem.Engine{openOn(t, newPoolOf(t, srv, poolConfig{tracer: ddl}), "byhand", window(longWindow)), watching}
	require.Zero(t, ddl.count("CREATE"))
	checkNotified(t, es[0], es[1], marks, "k")

	// The default table's statements; an invalid name's error.
	stmts, err = idempg.Schema("")
	require.NoError(t, err)
	require.Contains(t, stmts[0], "CREATE TABLE "+idempg.DefaultTable+" (")
	_, err = idempg.Schema("No")
	require.ErrorContains(t, err, "Options.Table")
}

// Engines opening a fresh table at once all succeed: one creates it, the
// others wait for its transaction (the advisory lock) and find it made.
func testOpenRacing(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const n = 4
	pools := make([]*pgxpool.Pool, n)
	for i := range pools {
		pools[i] = srv.Pool(t, nil)
	}
	for round := range 3 {
		table := fmt.Sprint("race_", round)
		start := make(chan struct{})
		es := make([]*idem.Engine, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				es[i], errs[i] = idempg.Open(ctx, pools[i], &idempg.Options{Table: table, Engine: &idem.Options{Logger: discardLogger}})
			}()
		}
		close(start)
		wg.Wait()
		for i := range n {
			require.NoError(t, errs[i], "round %d, engine %d", round, i)
			t.Cleanup(func() { es[i].Close() })
		}
		var runs atomic.Int64
		_, err := es[0].Do(ctx, "k", nil, valueFn(&runs, "v"))
		require.NoError(t, err)
		for _, e := range es[1:] {
			res, err := e.Do(ctx, "k", nil, valueFn(&runs, "v"))
			require.NoError(t, err)
			require.True(t, res.Replayed)
		}
		require.Equal(t, int64(1), runs.Load())
		require.Equal(t, n, count(t, pools[0], `SELECT count(*) FROM `+table+`_engines`))
	}
}

// Open waits for the advisory lock of the table's migration, up to
// Options.Timeout, and says what it was waiting for when that passes; once
// the lock is free, Open works.
func testOpenLockHeld(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	// Two connections, made before the clock of Open's Timeout starts.
	c1, c2 := holdConn(t, pool), holdConn(t, pool)
	c1()
	c2()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.Background())
	_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('idempg migrate locked'))`)
	require.NoError(t, err)
	_, err = idempg.Open(ctx, pool, &idempg.Options{Table: "locked", Timeout: time.Second, Engine: &idem.Options{Logger: discardLogger}})
	t.Logf("Open while another holds the migration's lock: %v", err)
	require.ErrorContains(t, err, "idempg: locking the schema")
	require.Nil(t, pgRegclass(t, pool, "locked"))
	require.NoError(t, tx.Rollback(ctx))
	openOn(t, pool, "locked", nil)
	require.NotNil(t, pgRegclass(t, pool, "locked"))
}

// A table in a schema of its own: its companions are made beside it, and
// engines on it share records and wait through notifications.
func testOpenQualified(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	_, err := pool.Exec(ctx, `CREATE SCHEMA app`)
	require.NoError(t, err)
	watching, marks := openWatched(t, srv, "app.records", window(longWindow))
	es := []*idem.Engine{openEngine(t, srv, "app.records", window(longWindow)), watching}
	for _, name := range []string{"app.records", "app.records_engines", "app.records_rev", "app.records_expires"} {
		require.NotNil(t, pgRegclass(t, pool, name), name)
	}
	require.Nil(t, pgRegclass(t, pool, "public.records"))
	checkNotified(t, es[0], es[1], marks, "k")
}

// Open through a pool whose server is not there (a socket directory with
// no server) fails at once with an error that says so; it does not hang.
func testOpenUnreachable(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@/idem?host="+t.TempDir()+"&sslmode=disable")
	require.NoError(t, err) // pgxpool connects lazily
	t.Cleanup(pool.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := idempg.Open(ctx, pool, &idempg.Options{Engine: &idem.Options{Logger: discardLogger}})
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("Open on no server: %v", err)
		require.ErrorContains(t, err, "idempg: connecting")
		require.ErrorContains(t, err, "connect")
	case <-time.After(testTimeout):
		t.Fatal("Open did not return")
	}
	// And with Options.Timeout as the only bound.
	go func() {
		_, err := idempg.Open(context.Background(), pool, &idempg.Options{Timeout: time.Second, Engine: &idem.Options{Logger: discardLogger}})
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "idempg: connecting")
	case <-time.After(testTimeout):
		t.Fatal("Open did not return")
	}
}

// A schema-qualified name of 64 bytes or more, which Options.Table allows
// (48 bytes a part): engines on it must still complete a call that another
// engine waits for.
func testOpenLongQualified(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	pool := srv.Pool(t, nil)
	schema, base := strings.Repeat("s", 30), strings.Repeat("t", 40)
	_, err := pool.Exec(ctx, `CREATE SCHEMA `+schema)
	require.NoError(t, err)
	table := schema + "." + base // 71 bytes
	watching, marks := openWatched(t, srv, table, window(longWindow))
	checkNotified(t, openEngine(t, srv, table, window(longWindow)), watching, marks, "k")
}

// Two spellings of one table ("t" and "public.t") are one table: engines
// that name it differently share its records, and one waiting for
// another's claim is woken by its notification.
func testOpenTwoSpellings(t *testing.T, srv *pgtest.Server) {
	a, aMarks := openWatched(t, srv, "spelled", window(longWindow))
	b, bMarks := openWatched(t, srv, "public.spelled", window(longWindow))
	checkNotified(t, a, b, bMarks, "k1")
	checkNotified(t, b, a, aMarks, "k2")
}

// checkNotified runs a blocked fn of key on leader, and a call of key on
// waiting (opened by openWatched, with marks), which waits for it; once
// the waiting call's Watch has marked the claim, it releases fn: the
// waiting call gets the value, replayed, woken by the notification (the
// engines' liveness window is longWindow).
func checkNotified(t *testing.T, leader, waiting *idem.Engine, marks *stmtCounter, key string) {
	t.Helper()
	ctx := testCtx(t)
	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	led := goDo(ctx, leader, key, nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	before := marks.count(markSQL)
	waiter := goDo(ctx, waiting, key, nil, valueFn(&runs, "other"))
	waitMarked(t, marks, before+1)
	b.unblock()
	o := wait(t, led)
	require.NoError(t, o.err, "the leading call, with another engine waiting")
	o = wait(t, waiter)
	require.NoError(t, o.err)
	require.True(t, o.res.Replayed)
	require.Equal(t, "v", string(o.res.Value))
	require.Equal(t, int64(1), runs.Load())
}

// A heartbeat that arrives after Close (one that Close cancelled while
// the server ran it: pgx's cancel request is asynchronous, and the server
// may commit the statement after Close's own) does not make the closed
// engine alive again. (With the engine's heartbeat held up by a lock of
// the test's, so that Close cancels it, it came back in about half the runs.)
func testLateBeat(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "latebeat"
	const window = 2 * time.Second
	admin := srv.Pool(t, nil)
	e := openEngine(t, srv, table, func(o *idempg.Options) { o.LivenessWindow = window })
	var runs atomic.Int64
	_, err := e.Do(ctx, "k", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	owner := storedRecord(t, admin, table, "k").Owner
	require.NoError(t, e.Close())
	require.Zero(t, liveBeats(t, admin, table, owner))

	_, err = admin.Exec(ctx, idempg.BeatStatement(table), int64(owner), window.Microseconds())
	require.NoError(t, err)
	require.Zero(t, liveBeats(t, admin, table, owner), "the closed engine is alive again")
}
