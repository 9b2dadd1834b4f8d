package idempg_test

// Helpers of the engine's and the store's tests (engine_test.go,
// store_test.go).

import (
	"context"
	"log/slog"
	"os"
	"runtime"
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

// testTimeout bounds each wait of these tests: generous, for a loaded
// 2-core machine under -race. No test asserts how fast anything is.
const testTimeout = 60 * time.Second

// longWindow is a liveness window under which Watch's own timer (half the
// window) never fires within testTimeout: a waiting call that returns in
// time was woken by a notification.
const longWindow = 10 * time.Minute

// longTests reports whether the tests run at their larger sizes
// (IDEM_TEST_LONG=1).
func longTests() bool { return os.Getenv("IDEM_TEST_LONG") == "1" }

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// poolConfig configures a pool of the test's database.
type poolConfig struct {
	maxConns int32
	tracer   pgx.QueryTracer // if not nil, sees every statement
	appName  string          // application_name of its sessions
}

// newPoolOf returns a pool on srv's database, closed when t ends.
func newPoolOf(t testing.TB, srv *pgtest.Server, c poolConfig) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(srv.ConnString())
	require.NoError(t, err)
	if c.maxConns > 0 {
		cfg.MaxConns = c.maxConns
	}
	if c.tracer != nil {
		cfg.ConnConfig.Tracer = c.tracer
	}
	if c.appName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = c.appName
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// openOn opens an engine on table through pool; mod, if not nil, changes
// the options first. The engine is closed when t ends (before pool, whose
// cleanup was registered earlier).
func openOn(t testing.TB, pool *pgxpool.Pool, table string, mod func(*idempg.Options)) *idem.Engine {
	t.Helper()
	o := idempg.Options{Table: table, Engine: &idem.Options{Logger: discardLogger}}
	if mod != nil {
		mod(&o)
	}
	e, err := idempg.Open(testCtx(t), pool, &o)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// openEngine opens an engine on table through a pool of its own.
func openEngine(t testing.TB, srv *pgtest.Server, table string, mod func(*idempg.Options)) *idem.Engine {
	t.Helper()
	return openOn(t, srv.Pool(t, nil), table, mod)
}

// openEngines opens n engines on table, each through a pool of its own.
func openEngines(t testing.TB, srv *pgtest.Server, table string, n int, mod func(*idempg.Options)) []*idem.Engine {
	t.Helper()
	es := make([]*idem.Engine, n)
	for i := range es {
		es[i] = openEngine(t, srv, table, mod)
	}
	return es
}

// window sets the liveness window.
func window(d time.Duration) func(*idempg.Options) {
	return func(o *idempg.Options) { o.LivenessWindow = d }
}

// noWait sets the liveness window, and NoWait.
func noWait(d time.Duration) func(*idempg.Options) {
	return func(o *idempg.Options) { o.LivenessWindow, o.Engine.NoWait = d, true }
}

// blocker is an fn that signals its start and returns its value (or err)
// once released, counting its runs.
type blocker struct {
	runs    *atomic.Int64 // shared with other fns
	n       atomic.Int64  // this fn's runs
	value   string
	err     error
	started chan struct{}
	release chan struct{}
	once    sync.Once // closes release
}

// newBlocker returns a blocker of value v, released when t ends if not
// before: a failed test must not leave fn holding the engine's Close.
func newBlocker(t testing.TB, runs *atomic.Int64, v string) *blocker {
	b := &blocker{runs: runs, value: v, started: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(b.unblock)
	return b
}

func (b *blocker) unblock() { b.once.Do(func() { close(b.release) }) }

func (b *blocker) fn(context.Context) ([]byte, error) {
	b.runs.Add(1)
	if b.n.Add(1) == 1 {
		close(b.started)
	}
	<-b.release
	if b.err != nil {
		return nil, b.err
	}
	return []byte(b.value), nil
}

func valueFn(runs *atomic.Int64, v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte(v), nil
	}
}

type outcome struct {
	res idem.Result
	err error
}

func goDo(ctx context.Context, e *idem.Engine, key string, fp []byte, fn func(context.Context) ([]byte, error)) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		res, err := e.Do(ctx, key, fp, fn)
		ch <- outcome{res, err}
	}()
	return ch
}

func wait(t testing.TB, ch <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(testTimeout):
		t.Fatal("Do did not return")
		return outcome{}
	}
}

func waitClosed(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("%s did not happen", what)
	}
}

// waitWaits waits until e counts n calls that waited for another.
func waitWaits(t testing.TB, e *idem.Engine, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return e.Stats().Waits >= n }, testTimeout, 5*time.Millisecond,
		"%d calls did not wait", n)
}

// notReturned fails t if ch has an outcome.
func notReturned(t testing.TB, ch <-chan outcome, what string) {
	t.Helper()
	select {
	case o := <-ch:
		t.Fatalf("%s returned: %+v", what, o)
	default:
	}
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

// stmtCounter is a pgx.QueryTracer that counts the statements that
// contain each of its substrings, once they have returned.
type stmtCounter struct {
	subs []string
	mu   sync.Mutex // guards n
	n    map[string]int
}

func newStmtCounter(subs ...string) *stmtCounter {
	return &stmtCounter{subs: subs, n: make(map[string]int)}
}

type stmtKey struct{}

func (c *stmtCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, stmtKey{}, data.SQL)
}

func (c *stmtCounter) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	sql, _ := ctx.Value(stmtKey{}).(string)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.subs {
		if strings.Contains(sql, s) {
			c.n[s]++
		}
	}
}

// count returns how many statements that contain sub have returned.
func (c *stmtCounter) count(sub string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[sub]
}

// markSQL is in the statement by which Watch marks a row watched.
const markSQL = "SET watched = true"

// openWatched opens an engine on table through a pool of its own that
// counts the rows its Watch marks watched (see waitMarked).
func openWatched(t testing.TB, srv *pgtest.Server, table string, mod func(*idempg.Options)) (*idem.Engine, *stmtCounter) {
	t.Helper()
	marks := newStmtCounter(markSQL)
	return openOn(t, newPoolOf(t, srv, poolConfig{tracer: marks}), table, mod), marks
}

// waitMarked waits until n marks of Watch through c's pool have returned:
// a waiting call that marked the claim's row before the claim changes is
// woken by the change's notification (or by Watch's timer, half the
// liveness window, which the tests make long), not by its own read.
func waitMarked(t testing.TB, c *stmtCounter, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return c.count(markSQL) >= n }, testTimeout, 5*time.Millisecond,
		"Watch did not mark the claim watched")
}

// marker returns an in-flight marker of owner, made now and expiring in
// an hour.
func marker(owner uint64) idem.StoredRecord {
	now := time.Now()
	return idem.StoredRecord{State: idem.StateInFlight, Owner: owner, Created: now.UnixNano(), Expires: now.Add(time.Hour).UnixNano()}
}

// storedRecord reads key's row of table by hand and decodes its record.
func storedRecord(t testing.TB, pool *pgxpool.Pool, table, key string) idem.StoredRecord {
	t.Helper()
	var data []byte
	require.NoError(t, pool.QueryRow(testCtx(t), `SELECT record FROM `+table+` WHERE key = $1`, []byte(key)).Scan(&data))
	rec, err := idem.DecodeRecord(data)
	require.NoError(t, err)
	return rec
}

// count returns the result of a SELECT count(*) … query.
func count(t testing.TB, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(testCtx(t), query, args...).Scan(&n))
	return n
}

// liveBeats returns how many heartbeats of owner in table's engines table
// have not expired, by the server's clock: 1 for an engine alive, 0 for
// one that closed (whose row is deleted, or kept as dead).
func liveBeats(t testing.TB, pool *pgxpool.Pool, table string, owner uint64) int {
	t.Helper()
	return count(t, pool, `SELECT count(*) FROM `+table+`_engines WHERE owner = $1 AND expires > clock_timestamp()`, int64(owner))
}

// beatSQL is in the statement of a heartbeat (and in no other).
const beatSQL = "ON CONFLICT (owner) DO UPDATE"

// openTestStore opens a store on table through pool, without an engine,
// closed when t ends.
func openTestStore(t testing.TB, pool *pgxpool.Pool, o idempg.Options) *idempg.TestStore {
	t.Helper()
	if o.Engine == nil {
		o.Engine = &idem.Options{Logger: discardLogger}
	}
	s, err := idempg.OpenTestStore(testCtx(t), pool, &o)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// waitGoroutines waits until the process has at most want goroutines.
func waitGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), want, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logBuffer collects an engine's log records.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// withLog makes the engine log at Info and above to a buffer, which t's
// log shows if t fails.
func withLog(t testing.TB) func(*idempg.Options) {
	var log logBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the engine's log:\n%s", log.String())
		}
	})
	return func(o *idempg.Options) {
		o.Engine.Logger = slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
}
