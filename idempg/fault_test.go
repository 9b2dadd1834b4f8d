package idempg_test

// Fault tests against a real PostgreSQL server (pgtest), after idemnats's
// fault_test.go:
//
//   - TestFaultTerminateBackends: every session of the test's database
//     (the pools', the heartbeats', the listeners') terminated again and
//     again with pg_terminate_backend, at random moments, while three
//     engines run Do for the same keys.
//   - TestFaultServerRestart: the server crashed (immediate shutdown) and
//     stopped (fast shutdown), and started again, under the same load.
//   - TestFaultKillEngineProcess: an engine in a child process (the test
//     binary run again for TestHelperEngineProcess) killed with SIGKILL
//     while its fn runs.
//   - TestFaultResolverFindsEarlierSending and
//     TestFaultResentCreateFindsItsFirstSending: the store's bugs that these
//     tests found (fixed), shown by a fault injected at the right moment (a
//     connection that loses the answer of one statement, a statement held
//     on the server).
//
// Each load test checks the promise of a shared table: fn runs at most
// once per key among all the engines, every outcome a Do acknowledged
// replays, identically, from every engine afterwards, every error is a
// clear one, and every key settles, once the faults stop, to an outcome
// the design allows (see faultLoad.check).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idempg"
	"github.com/idemkv/idem/idempg/internal/pgtest"
	"github.com/idemkv/idem/internal/testproc"
)

// The fault tests have two sizes, as idemnats's: the default keeps them
// under a minute together on two cores under -race; IDEM_TEST_LONG=1 runs
// them several times longer, and needs a -timeout above go test's default
// of 10 minutes.
var faultLong = faultEnvBool("IDEM_TEST_LONG")

func faultEnvBool(name string) bool {
	b, _ := strconv.ParseBool(os.Getenv(name))
	return b
}

// faultTestSize returns long under IDEM_TEST_LONG=1 and def otherwise.
func faultTestSize(def, long int) int {
	if faultLong {
		return long
	}
	return def
}

// faultRequireLongTimeout fails a test of the long size at once if go
// test's -timeout leaves it less than need, rather than a panic and a dump
// of every goroutine once the timeout is spent.
func faultRequireLongTimeout(t *testing.T, need time.Duration) {
	t.Helper()
	if !faultLong {
		return
	}
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < need {
		t.Fatalf("IDEM_TEST_LONG=1: %s may take %v on a busy machine, and go test's -timeout leaves %v; run go test with -timeout=30m",
			t.Name(), need, time.Until(deadline).Round(time.Second))
	}
}

// faultHang bounds each wait of these tests: a hang guard, generous for a
// loaded 2-core machine under -race, not a timing assertion.
const faultHang = 2 * time.Minute

// faultErrPrefix is how every error of the engine or the store begins: an
// error met during a fault must say where it comes from.
var faultErrPrefix = regexp.MustCompile(`^idem(pg)?: `)

// faultFingerprint is the fingerprint of every call for key.
func faultFingerprint(key string) []byte { return []byte("fp " + key) }

// faultPermanent reports whether key's fn returns a Permanent error rather
// than a value: one key in ten, so that stored errors are checked too.
func faultPermanent(key string) bool { return strings.HasSuffix(key, "7") }

// faultOutcomeOf returns what a Do call acknowledged: its value, or "!" and
// the message of a Permanent error; ok is false for any other error (a
// call whose result could not be stored returns fn's value with its error:
// not acknowledged).
func faultOutcomeOf(res idem.Result, err error) (string, bool) {
	var perm *idem.PermanentError
	switch {
	case err == nil:
		return string(res.Value), true
	case errors.As(err, &perm):
		return "!" + perm.Error(), true
	}
	return "", false
}

// faultErrClass is an error's message with its numbers blanked, to count
// errors by kind.
func faultErrClass(err error) string {
	return faultDigits.ReplaceAllStringFunc(err.Error(), func(m string) string {
		if strings.HasPrefix(m, "SQLSTATE") {
			return m
		}
		return "N"
	})
}

var faultDigits = regexp.MustCompile(`SQLSTATE [0-9A-Z]{5}|[0-9a-f]{16}|[0-9]+(\.[0-9]+)?(ms|µs|s)?`)

// faultTopClasses formats the most frequent error classes of counts.
func faultTopClasses(counts map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range counts {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var b strings.Builder
	for i, c := range all {
		if i == n {
			fmt.Fprintf(&b, "\n\t(%d more kinds)", len(all)-n)
			break
		}
		fmt.Fprintf(&b, "\n\t%5d × %s", c.v, c.k)
	}
	return b.String()
}

// faultLogBuffer collects the engines' log, safe for concurrent writes.
type faultLogBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *faultLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *faultLogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// warnings counts the lines logged at Warn and above.
func (l *faultLogBuffer) warnings() int {
	s := l.String()
	return strings.Count(s, "level=WARN") + strings.Count(s, "level=ERROR")
}

// faultLogger returns a logger of Warn and above into logs.
func faultLogger(logs io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// faultInfoLogger returns a logger of Info and above into logs: the
// heartbeat says at Info how long it failed, once it is written again.
func faultInfoLogger(logs io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// faultOpen opens an engine on pool, closed when t ends (before the pool,
// whose cleanup was registered earlier).
func faultOpen(t *testing.T, ctx context.Context, pool *pgxpool.Pool, o *idempg.Options) *idem.Engine {
	t.Helper()
	e, err := idempg.Open(ctx, pool, o)
	if err != nil {
		t.Fatalf("Open table %s: %v", o.Table, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// faultControl connects to srv's database, retrying while the server
// starts, for the test's own statements; the connection is closed when t
// ends. Its session is the one the terminations spare.
func faultControl(t *testing.T, ctx context.Context, srv *pgtest.Server) *pgx.Conn {
	t.Helper()
	for {
		c, err := pgx.Connect(ctx, srv.ConnString())
		if err == nil {
			t.Cleanup(func() { c.Close(context.Background()) })
			return c
		}
		if ctx.Err() != nil {
			t.Fatalf("hang guard: connecting to the test's database: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// faultRow describes key's row in table, for a failure's message.
func faultRow(ctx context.Context, ctl *pgx.Conn, table, key string) string {
	var (
		rev, wid int64
		data     []byte
	)
	err := ctl.QueryRow(ctx, `SELECT rev, wid, record FROM `+table+` WHERE key = $1`, []byte(key)).Scan(&rev, &wid, &data)
	if err != nil {
		return fmt.Sprintf("key %q: %v", key, err)
	}
	rec, err := idem.DecodeRecord(data)
	if err != nil {
		return fmt.Sprintf("key %q: revision %d: %v", key, rev, err)
	}
	return fmt.Sprintf("key %q: revision %d, write %d: state %v, owner %016x, expires %s", key, rev, wid, rec.State, rec.Owner,
		time.Unix(0, rec.Expires).Format(time.RFC3339))
}

// faultSessions counts the test database's sessions whose last statement
// starts with prefix (other than the caller's own): "LISTEN" finds the
// engines' listeners.
func faultSessions(ctx context.Context, ctl *pgx.Conn, db, prefix string) (int, error) {
	var n int
	err := ctl.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid() AND query LIKE $2 || '%'`, db, prefix).Scan(&n)
	return n, err
}

// faultFreshBeats counts the heartbeats in table's engines table written
// after since (by the server's clock): a heartbeat sets its expiry to the
// liveness window from now.
func faultFreshBeats(ctx context.Context, ctl *pgx.Conn, table string, since time.Time, window time.Duration) (int, error) {
	var n int
	err := ctl.QueryRow(ctx, `SELECT count(*) FROM `+table+`_engines WHERE expires > $1::timestamptz + $2 * interval '1 microsecond'`,
		since, window.Microseconds()).Scan(&n)
	return n, err
}

// faultServerNow returns the server's clock.
func faultServerNow(ctx context.Context, ctl *pgx.Conn) (time.Time, error) {
	var now time.Time
	err := ctl.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now)
	return now, err
}

// Network faults injected into a pool's connections.

// faultNet injects faults into the connections of a pool, which its
// DialFunc wraps (faultNetPool); the engine's own two connections, made
// from the pool's configuration, go through it too. It counts the writes
// that hold a pattern (a key, which a statement's parameters carry) and
// strikes the connection of the nth one.
type faultNet struct {
	mu      sync.Mutex // guards the fields below
	pattern []byte
	nth     int                // the write of pattern that is struck: 1 for the first from arm
	seen    int                // writes of pattern since arm
	strike  func(c *faultConn) // what befalls the connection of the nth write, before it is sent
	struck  int                // connections struck
	downTil time.Time          // dials and writes fail until then
}

var (
	errFaultDown       = errors.New("fault injection: the database is out of reach")
	errFaultAnswerLost = errors.New("fault injection: the statement's answer was lost")
)

// faultNetPool returns a pool on srv's database whose connections go
// through n, closed when t ends.
func faultNetPool(t *testing.T, srv *pgtest.Server, n *faultNet) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(srv.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if n.down() {
			return nil, errFaultDown
		}
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &faultConn{Conn: c, n: n}, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// arm makes the nth write from now that holds pattern strike its
// connection.
func (n *faultNet) arm(pattern []byte, nth int, strike func(c *faultConn)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pattern, n.nth, n.seen, n.strike = pattern, nth, 0, strike
}

// hits returns the strike for write b, if it is the one.
func (n *faultNet) hits(b []byte) func(c *faultConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.strike == nil || !bytes.Contains(b, n.pattern) {
		return nil
	}
	n.seen++
	if n.seen < n.nth {
		return nil
	}
	s := n.strike
	n.strike = nil
	n.struck++
	return s
}

func (n *faultNet) strikes() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.struck
}

func (n *faultNet) down() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return time.Now().Before(n.downTil)
}

// until returns when the database is in reach again.
func (n *faultNet) until() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.downTil
}

func (n *faultNet) goDown(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.downTil = time.Now().Add(d)
}

// faultLoseAnswer is a strike: the server gets the statement, and its answer is
// read to its end (ReadyForQuery: the statement is committed) and lost;
// then the database is out of reach for d (every dial and every write
// fails, without sending anything), so that the store cannot learn the
// statement's fate in time.
func faultLoseAnswer(d time.Duration) func(c *faultConn) {
	return func(c *faultConn) {
		c.downFor = d
		c.swallow.Store(true)
	}
}

// faultCutAfter is a strike: the connection is closed d after the statement was
// sent, whatever the server is doing with it, and the database is out of
// reach for blip, a blip of the network: pgx's cancel request for the
// statement, which it sends on a new connection when its connection
// breaks, does not get through. The server does not notice the closed
// connection until it next reads or writes it: a statement waiting for a
// lock goes on when it gets the lock, and commits.
func faultCutAfter(d, blip time.Duration) func(c *faultConn) {
	return func(c *faultConn) {
		time.AfterFunc(d, func() {
			c.n.goDown(blip)
			c.Conn.Close()
		})
	}
}

// faultConn is a connection through a faultNet.
type faultConn struct {
	net.Conn
	n       *faultNet
	downFor time.Duration // set before swallow
	swallow atomic.Bool   // lose the answer to the statement sent
}

func (c *faultConn) Write(b []byte) (int, error) {
	if c.n.down() {
		return 0, errFaultDown // nothing sent: pgx knows it is safe to retry
	}
	if s := c.n.hits(b); s != nil {
		s(c) // before the write: pgx may read the answer while it writes
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Read(p []byte) (int, error) {
	if !c.swallow.Load() {
		return c.Conn.Read(p)
	}
	// Read the answer to its ReadyForQuery (a message is a type byte and
	// a big-endian length that counts itself), then lose it.
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		k, err := c.Conn.Read(tmp)
		buf = append(buf, tmp[:k]...)
		for len(buf) >= 5 {
			size := 1 + int(binary.BigEndian.Uint32(buf[1:5]))
			if len(buf) < size {
				break
			}
			typ := buf[0]
			buf = buf[size:]
			if typ == 'Z' {
				c.Conn.Close()
				c.n.goDown(c.downFor)
				return 0, errFaultAnswerLost
			}
		}
		if err != nil {
			return 0, err
		}
	}
}

// The store's bugs these tests found, fixed: each test fails without its fix.

// TestFaultResolverFindsEarlierSending: without the fix, a claim was left
// behind for its whole TTL: a claim that replaces a record (here an expired one) is an
// UPDATE … WHERE rev = $expected. Its answer is lost after the commit, and
// the database is out of reach until the call's Timeout, so the store hands
// the write, its outcome unknown, to a resolver. The resolver sends it
// again once the database is back; the row is no longer at the expected
// revision (the first sending moved it), and the resolver takes that for a
// conflict, without the read by write id that apply makes when an earlier
// sending may be stored: apply started every call with maybe = false (the
// write now keeps it, write.sent). The claim, which no fn ran for, stayed: its own engine reports ErrInFlight
// (resolving), every other engine waits on it (its owner is alive) or gets
// ErrInFlight, until it expires. What the store means to do (resolve's
// comment): find the claim stored and take it back, rewriting it with owner
// 0, so that every engine reports ErrInterrupted.
func TestFaultResolverFindsEarlierSending(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), faultHang)
	defer cancel()
	srv := pgtest.Start(t)
	const table = "fault_bug_update"
	const down = 2 * time.Second
	fnet := &faultNet{}
	var skew atomic.Int64 // e1's clock, ahead of the real one
	logs := &faultLogBuffer{}
	e1 := faultOpen(t, ctx, faultNetPool(t, srv, fnet), &idempg.Options{Table: table, Timeout: 500 * time.Millisecond, LivenessWindow: 10 * time.Second,
		Engine: &idem.Options{TTL: time.Hour, Logger: faultLogger(logs), Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }}})
	e2 := faultOpen(t, ctx, srv.Pool(t, nil), &idempg.Options{Table: table, LivenessWindow: 10 * time.Second,
		Engine: &idem.Options{NoWait: true, Logger: discardLogger}})
	ctl := faultControl(t, ctx, srv)

	const key = "fault-bug-update-claim"
	var runs atomic.Int64
	fn := func(v string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			runs.Add(1)
			return []byte(v), nil
		}
	}
	if res, err := e1.Do(ctx, key, faultFingerprint(key), fn("first")); err != nil || string(res.Value) != "first" {
		t.Fatalf("first Do: %q, %v", res.Value, err)
	}
	// Two hours on, the record has expired for e1, which claims the key
	// again over it: a Create refused with the record (the first write of
	// the key), then the UPDATE (the second), whose answer is lost.
	skew.Store(int64(2 * time.Hour))
	fnet.arm([]byte(key), 2, faultLoseAnswer(down))
	_, err := e1.Do(ctx, key, faultFingerprint(key), fn("second"))
	if err == nil || !strings.Contains(err.Error(), "outcome unknown") || fnet.strikes() != 1 || runs.Load() != 1 {
		t.Fatalf("Do whose claim's answer was lost: %v (strikes %d, fn ran %d times); want an error saying its outcome is unknown, and fn not run",
			err, fnet.strikes(), runs.Load())
	}
	t.Logf("Do whose claim's answer was lost: %v", err)
	t.Logf("the row: %s", faultRow(ctx, ctl, table, key))
	time.Sleep(time.Until(fnet.until()))

	// Once the resolver has found the claim stored and taken it back, the
	// key is interrupted for both engines (the claim replaced a record,
	// whose outcome a delete would forget).
	deadline := time.Now().Add(20 * time.Second) // the resolver tries every 5 s at most
	var err1, err2 error
	for {
		_, err1 = e1.Do(ctx, key, faultFingerprint(key), fn("third"))
		_, err2 = e2.Do(ctx, key, faultFingerprint(key), fn("fourth"))
		if errors.Is(err1, idem.ErrInterrupted) && errors.Is(err2, idem.ErrInterrupted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("regression: %v after the network came back, the claim whose outcome was unknown is still there: the engine that claimed it says %v, another says %v; %s\nthe engine's log:\n%s",
				time.Since(fnet.until()).Round(time.Second), err1, err2, faultRow(ctx, ctl, table, key), logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("fn ran %d times, want once", n)
	}
}

// TestFaultResentCreateFindsItsFirstSending: without the fix, a Do that
// claimed a new key returned ErrInFlight, without running fn, and leaves its
// claim for its whole TTL. The claim's INSERT (its first sending) waits on
// the server for a lock (here an advisory lock that a trigger takes for the
// key, held by the test; in production the unique index, behind another
// engine's INSERT that then rolls back, or any lock), and its connection
// breaks meanwhile. The store sends it again; the second sending waits
// behind the first, which commits once the lock is released. The second's
// INSERT … ON CONFLICT DO NOTHING then finds the first's row, but the
// SELECT of the same statement does not see it (READ COMMITTED: its
// snapshot was taken before the first committed), so attempt gets no row
// and reports a conflict, although maybe is set: the row is its own, as its
// write id would show. The engine reads the key, finds its own claim that
// no call holds, and returns ErrInFlight (a claim of its being resolved);
// but nothing resolves it.
func TestFaultResentCreateFindsItsFirstSending(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), faultHang)
	defer cancel()
	srv := pgtest.Start(t)
	const table = "fault_bug_create"
	fnet := &faultNet{}
	logs := &faultLogBuffer{}
	e1 := faultOpen(t, ctx, faultNetPool(t, srv, fnet), &idempg.Options{Table: table, LivenessWindow: 10 * time.Second,
		Engine: &idem.Options{Logger: faultLogger(logs)}})
	ctl := faultControl(t, ctx, srv)

	const key = "fault-bug-create-resent"
	const lock = 4242
	for _, q := range []string{
		`CREATE FUNCTION fault_hold() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_advisory_xact_lock(` + strconv.Itoa(lock) + `);
			RETURN NEW;
		END
		$$`,
		`CREATE TRIGGER fault_hold BEFORE INSERT ON ` + table + ` FOR EACH ROW
			WHEN (NEW.key = '\x` + hex.EncodeToString([]byte(key)) + `'::bytea) EXECUTE FUNCTION fault_hold()`,
		`SELECT pg_advisory_lock(` + strconv.Itoa(lock) + `)`,
	} {
		if _, err := ctl.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	fnet.arm([]byte(key), 1, faultCutAfter(300*time.Millisecond, 300*time.Millisecond))
	var runs atomic.Int64
	type result struct {
		res idem.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e1.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
			runs.Add(1)
			return []byte("value"), nil
		})
		done <- result{res, err}
	}()
	// The first sending waits for the lock; its connection is cut; the
	// second sending waits too.
	for {
		var waiting int
		if err := ctl.QueryRow(ctx, `SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
			WHERE d.datname = $1 AND l.locktype = 'advisory' AND NOT l.granted`, srv.Database()).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("hang guard: %d sendings of the claim wait for the lock, want 2; strikes %d", waiting, fnet.strikes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := ctl.Exec(ctx, `SELECT pg_advisory_unlock(`+strconv.Itoa(lock)+`)`); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("hang guard: Do did not return")
	}
	if errors.Is(r.err, idem.ErrInFlight) {
		// Still stuck a moment later, and for every engine.
		time.Sleep(time.Second)
		_, again := e1.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) { return nil, errors.New("unreachable") })
		t.Fatalf("regression: Do of a new key returned %v, with fn run %d times, and again a second later: %v; %s\nthe engine's log:\n%s",
			r.err, runs.Load(), again, faultRow(ctx, ctl, table, key), logs.String())
	}
	if r.err != nil || string(r.res.Value) != "value" || runs.Load() != 1 {
		t.Fatalf("Do: %q, %v, fn ran %d times; want fn run once", r.res.Value, r.err, runs.Load())
	}
}

// The load of TestFaultTerminateBackends and TestFaultServerRestart.

// faultLoad calls Do for keys on several engines at once and keeps the
// ledger: every execution of fn, every outcome acknowledged, every error.
// Each key is called once on every engine, at about the same time (each
// engine's workers take the keys in order), and a key in four twice on one
// engine: duplicates meet across engines, through the table, and within
// one, through its lock table. A call that fails is not retried: its error
// is counted, and the key settles after the faults (settle).
type faultLoad struct {
	ctx     context.Context // the hang guard
	es      []*idem.Engine
	names   []string // the engines', for the figures
	keys    int
	workers int // per engine
	// settlers are the engines that settle the keys after the faults:
	// those whose Timeout is long, so that a loaded machine does not
	// make them fail and leave new unknown outcomes.
	settlers []int

	execs    atomic.Int64 // executions of fn
	calls    atomic.Int64 // Do calls of the load
	finished atomic.Int64 // Do calls of the load that returned
	acked    atomic.Int64 // keys acknowledged at least once

	mu       sync.Mutex          // guards the fields below
	runs     map[string][]string // key -> the outcome of each execution of fn ("!msg" for a Permanent error)
	acks     map[string]string   // key -> the outcome acknowledged
	intr     map[string]int      // key -> calls that returned ErrInterrupted
	unstored map[string]bool     // keys whose Do ran fn and could not store its result
	errs     map[string]int      // error classes, by engine
	errCalls []int               // per engine: calls that failed
	lastErr  map[string]string   // key -> the last error a call for it met
	spans    []faultSpan         // every call of the load
	late     map[string]int      // classes of the errors met after the faults (tried again)
	bad      []string            // contradictions: the test fails on any
	// strays are the ErrInterrupted answers for a key whose fn had not run:
	// a claim of a live engine whose heartbeat lapsed (see faultOutages),
	// and a contradiction otherwise.
	strays []string
	// ranInLoad holds the keys whose fn ran during the load, once it is
	// over (freeze).
	ranInLoad map[string]bool
}

// faultSpan is a call of the load.
type faultSpan struct {
	engine       int
	began, ended time.Time
	ok           bool // it acknowledged an outcome
}

func faultNewLoad(ctx context.Context, es []*idem.Engine, names []string, settlers []int, keys, workers int) *faultLoad {
	return &faultLoad{ctx: ctx, es: es, names: names, settlers: settlers, keys: keys, workers: workers,
		runs: map[string][]string{}, acks: map[string]string{}, intr: map[string]int{}, unstored: map[string]bool{},
		errs: map[string]int{}, errCalls: make([]int, len(es)), lastErr: map[string]string{}, late: map[string]int{}}
}

func faultKey(k int) string { return fmt.Sprintf("key-%05d", k) }

// faultCallsFor returns the number of calls the load makes for its first
// k keys on n engines.
func faultCallsFor(k, n int) int { return k*n + (k+3)/4 }

// fn is the fn of key on engine ei: it records its execution, takes a
// moment (so that a fault finds some fn running), and returns a value that
// names the execution, or a Permanent error.
func (l *faultLoad) fn(ei int, key string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		n := l.execs.Add(1)
		v := fmt.Sprintf("%s by engine %d, execution %d", key, ei, n)
		out := v
		if faultPermanent(key) {
			out = "!" + v
		}
		l.mu.Lock()
		l.runs[key] = append(l.runs[key], out)
		l.mu.Unlock()
		time.Sleep(time.Duration(1+n%4) * time.Millisecond)
		if faultPermanent(key) {
			return nil, idem.Permanent(errors.New(v))
		}
		return []byte(v), nil
	}
}

// call makes one Do call of the load, and records it.
func (l *faultLoad) call(ei int, key string) {
	began := time.Now()
	l.calls.Add(1)
	res, err := l.es[ei].Do(l.ctx, key, faultFingerprint(key), l.fn(ei, key))
	ended := time.Now()
	defer l.finished.Add(1)
	out, ok := faultOutcomeOf(res, err)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spans = append(l.spans, faultSpan{engine: ei, began: began, ended: ended, ok: ok})
	if ok {
		prev, seen := l.acks[key]
		switch {
		case !seen:
			l.acks[key] = out
			l.acked.Add(1)
		case prev != out:
			l.bad = append(l.bad, fmt.Sprintf("key %s acknowledged with two outcomes: %q, then %q (engine %s)", key, prev, out, l.names[ei]))
		}
		return
	}
	l.errCalls[ei]++
	switch {
	case errors.Is(err, idem.ErrInterrupted) && len(l.runs[key]) == 0:
		l.strays = append(l.strays, fmt.Sprintf("key %s on engine %s at %s: ErrInterrupted, and fn has not run", key, l.names[ei], ended.Format("15:04:05.000")))
	case errors.Is(err, idem.ErrInterrupted):
		l.intr[key]++
	case !faultErrPrefix.MatchString(err.Error()):
		l.bad = append(l.bad, fmt.Sprintf("key %s on engine %s: an error that does not say where it comes from: %v", key, l.names[ei], err))
	}
	if strings.Contains(err.Error(), "storing the result") {
		l.unstored[key] = true
	}
	l.errs[l.names[ei]+": "+faultErrClass(err)]++
	l.lastErr[key] = fmt.Sprintf("engine %s at %s: %v", l.names[ei], ended.Format("15:04:05.000"), err)
}

// start runs the load: the workers take keys up to the limits that come
// from limits (all of them if limits is nil). The returned channel is
// closed once every call has returned.
func (l *faultLoad) start(limits <-chan int) <-chan struct{} {
	queues := make([]chan string, len(l.es))
	for i := range queues {
		queues[i] = make(chan string, l.workers)
	}
	var wg sync.WaitGroup
	for ei := range l.es {
		for range l.workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for key := range queues[ei] {
					l.call(ei, key)
				}
			}()
		}
	}
	go func() {
		defer func() {
			for _, q := range queues {
				close(q)
			}
		}()
		limit := l.keys
		if limits != nil {
			limit = 0
		}
		for k := range l.keys {
			for k >= limit {
				select {
				case limit = <-limits:
				case <-l.ctx.Done():
					return
				}
			}
			key := faultKey(k)
			for j := range l.es {
				select {
				case queues[(k+j)%len(l.es)] <- key:
				case <-l.ctx.Done():
					return
				}
			}
			if k%4 == 0 {
				select {
				case queues[k%len(l.es)] <- key:
				case <-l.ctx.Done():
					return
				}
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	return done
}

func (l *faultLoad) errSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return faultTopClasses(l.errs, 12)
}

const faultInterrupted = "interrupted"

// lateError counts an error met after the faults, which is tried again: on
// a loaded machine, a call of an engine with a short Timeout may still
// fail.
func (l *faultLoad) lateError(ei int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.late[l.names[ei]+": "+faultErrClass(err)]++
}

// settle gives every key its final outcome once the faults have stopped,
// with a call on one of the settlers per key: the outcome stored, or
// faultInterrupted, or fn's if the key has none (its claims, if any is
// stored, taken back by their resolvers). ErrInFlight, while a claim
// whose outcome was unknown is being resolved, is tried again, as is any
// other error (counted in l.late); a key that has not settled after a
// minute fails the test. It returns each key's outcome and how long the
// last key took to settle.
func (l *faultLoad) settle(t *testing.T) (map[string]string, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(time.Minute) // resolvers try again every 5 s at most
	final := make(map[string]string, l.keys)
	var mu sync.Mutex // guards final, and t's failures
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := int(next.Add(1) - 1); k < l.keys; k = int(next.Add(1) - 1) {
				key := faultKey(k)
				ei := l.settlers[k%len(l.settlers)]
				for {
					res, err := l.es[ei].Do(l.ctx, key, faultFingerprint(key), l.fn(ei, key))
					out, ok := faultOutcomeOf(res, err)
					if !ok && errors.Is(err, idem.ErrInterrupted) {
						out, ok = faultInterrupted, true
					}
					if ok {
						mu.Lock()
						final[key] = out
						mu.Unlock()
						break
					}
					if !errors.Is(err, idem.ErrInFlight) {
						l.lateError(ei, err)
					}
					if time.Now().After(deadline) || l.ctx.Err() != nil {
						mu.Lock()
						t.Errorf("key %s did not settle in %v after the faults: %v", key, time.Since(start).Round(time.Millisecond), err)
						mu.Unlock()
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	return final, time.Since(start)
}

// replay checks that e replays key's outcome, want (faultInterrupted for
// ErrInterrupted), without running fn. An error other than the one
// expected is tried again, for up to 30 s (counted in l.late): on a
// loaded machine, an engine with a short Timeout may fail to read.
func (l *faultLoad) replay(t *testing.T, ei int, key, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ran atomic.Bool
		res, err := l.es[ei].Do(l.ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
			ran.Store(true)
			return nil, errors.New("fn ran again after the settling")
		})
		out, ok := faultOutcomeOf(res, err)
		if errors.Is(err, idem.ErrInterrupted) {
			out, ok = faultInterrupted, true
		}
		switch {
		case ran.Load():
			t.Errorf("engine %s: key %s settled as %q: fn ran again", l.names[ei], key, want)
			return
		case ok && out == want && (res.Replayed || want == faultInterrupted):
			return
		case ok:
			t.Errorf("engine %s: key %s settled as %q: %q (replayed %v), %v", l.names[ei], key, want, out, res.Replayed, err)
			return
		case time.Now().After(deadline) || l.ctx.Err() != nil:
			t.Errorf("engine %s: key %s settled as %q: %v", l.names[ei], key, want, err)
			return
		}
		l.lateError(ei, err)
		time.Sleep(50 * time.Millisecond)
	}
}

// lateSummary formats the errors met after the faults.
func (l *faultLoad) lateSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return faultTopClasses(l.late, 6)
}

// faultVerdict counts the keys by what became of them.
type faultVerdict struct {
	acked            int // acknowledged during the load: replayed as acknowledged
	unackedCompleted int // fn ran during the load, no call acknowledged it, and its outcome was stored
	unackedInterrupt int // fn ran during the load and its outcome was not stored: interrupted
	ranAtSettle      int // fn never ran during the load (every call failed first): ran once when the key settled
	flipped          int // a call got ErrInterrupted, and the key's outcome turned out stored
	replays          int // replays checked after the settling
}

// check checks the ledger against final, settle's outcomes, and then every
// engine against final. The outcomes it accepts:
//
//   - A key acknowledged during the load: its one execution's outcome,
//     replayed by every engine.
//   - A key whose fn ran during the load and that no call acknowledged
//     (the call that ran fn could not store the result, or its duplicates
//     failed): completed with that execution's outcome (its write was
//     stored after all), or interrupted (it was not: the engine rewrote its
//     claim with owner 0, by itself or through a resolver). No third
//     outcome: fn must not run again.
//   - A key whose fn never ran during the load: free once its claims whose
//     outcome was unknown are taken back (a claim of a live engine is never
//     interrupted), so fn runs once when it settles, and the key is
//     completed. Interrupted is refused: a claim was left behind.
//
// No key's fn runs twice, and ErrInterrupted during the load is accepted
// only for a key whose fn ran.
func (l *faultLoad) check(t *testing.T, final map[string]string) faultVerdict {
	t.Helper()
	var v faultVerdict
	l.mu.Lock()
	for _, b := range l.bad {
		t.Error(b)
	}
	for k := range l.keys {
		key := faultKey(k)
		runs := l.runs[key]
		ack, acked := l.acks[key]
		out, settled := final[key]
		switch {
		case !settled:
			// settle failed the test already
		case len(runs) > 1:
			t.Errorf("key %s: fn ran %d times: %q", key, len(runs), runs)
		case len(runs) == 0:
			t.Errorf("key %s: settled as %q, and fn never ran", key, out)
		case acked && (runs[0] != ack || out != ack):
			t.Errorf("key %s: acknowledged %q, fn returned %q, settled as %q", key, ack, runs[0], out)
		case acked:
			v.acked++
		case out == faultInterrupted && (l.unstored[key] || l.intr[key] > 0):
			v.unackedInterrupt++
		case out == faultInterrupted:
			t.Errorf("key %s: interrupted, though no call said that its result was not stored; fn returned %q; last error: %s", key, runs[0], l.lastErr[key])
			v.unackedInterrupt++
		case out != runs[0]:
			t.Errorf("key %s: settled as %q, but fn returned %q", key, out, runs[0])
		case l.execsAtSettle(key):
			v.ranAtSettle++
		default:
			v.unackedCompleted++
		}
		if l.intr[key] > 0 && out != faultInterrupted {
			v.flipped++
		}
	}
	l.mu.Unlock()

	// Every engine replays every outcome, without running fn; an
	// interrupted key is interrupted for all.
	for ei := range l.es {
		for k := range l.keys {
			key := faultKey(k)
			if want, ok := final[key]; ok {
				l.replay(t, ei, key, want)
				v.replays++
			}
		}
	}
	// And the listing agrees.
	listed := map[idem.State]int{}
	for r, err := range l.es[0].Records("key-") {
		if err != nil {
			t.Errorf("Records: %v", err)
			break
		}
		listed[r.State]++
	}
	if n := listed[idem.StateCompleted] + listed[idem.StateFailed]; n != len(final)-v.unackedInterrupt || listed[idem.StateInterrupted] != v.unackedInterrupt {
		t.Errorf("Records lists %v; want %d completed or failed and %d interrupted", listed, len(final)-v.unackedInterrupt, v.unackedInterrupt)
	}
	return v
}

// freeze notes the keys whose fn ran during the load, which is over.
func (l *faultLoad) freeze() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ranInLoad = make(map[string]bool, len(l.runs))
	for key := range l.runs {
		l.ranInLoad[key] = true
	}
}

// execsAtSettle reports whether key's fn ran only when it settled (l.mu
// held).
func (l *faultLoad) execsAtSettle(key string) bool {
	return !l.ranInLoad[key]
}

// checkStrays fails t on the ErrInterrupted answers for a key whose fn had
// not run, unless an engine's heartbeat may have lapsed (an outage of the
// window less a beat's interval), which makes its claims interrupted for
// the others while it lives, by design. It returns how many there were.
func (l *faultLoad) checkStrays(t *testing.T, outage, window time.Duration) int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if outage < window-window/6 {
		for _, s := range l.strays {
			t.Errorf("%s (no heartbeat lapsed: the longest outage was %v)", s, outage)
		}
	} else if len(l.strays) > 0 {
		t.Logf("a heartbeat was out for %v, and its live engine's claims were interrupted for the others: %d calls got ErrInterrupted for a key whose fn had not run:\n\t%s",
			outage, len(l.strays), strings.Join(l.strays, "\n\t"))
	}
	return len(l.strays)
}

// faultOutages returns the longest time an engine's heartbeat failed, as
// the engines logged it (at Info when it is written again, at Warn while
// it fails).
func faultOutages(logs string) time.Duration {
	var longest time.Duration
	for _, m := range faultOutageRE.FindAllStringSubmatch(logs, -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			longest = max(longest, d)
		}
	}
	return longest
}

var faultOutageRE = regexp.MustCompile(`fail(?:ed|ing)_for=([0-9.]+[a-zµ]+)`)

// engineErrors formats the failed calls of each engine.
func (l *faultLoad) engineErrors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	for ei, e := range l.es {
		st := e.Stats()
		parts = append(parts, fmt.Sprintf("engine %s: %d calls failed, %d executions, %d waits, %d interrupted",
			l.names[ei], l.errCalls[ei], st.Executions, st.Waits, st.Interrupted))
	}
	return strings.Join(parts, "; ")
}

// faultEngines opens n engines on table, each through a pool of its own
// (of up to 4 connections), with the options that opts returns for each.
func faultEngines(t *testing.T, ctx context.Context, srv *pgtest.Server, n int, opts func(i int) *idempg.Options) []*idem.Engine {
	t.Helper()
	es := make([]*idem.Engine, n)
	for i := range es {
		es[i] = faultOpen(t, ctx, srv.Pool(t, &pgtest.PoolOptions{MaxConns: 4}), opts(i))
	}
	return es
}

// faultWaitRecovered waits until every one of n engines of table has
// written its heartbeat after since (the server's clock) and has its
// listener LISTENing again: the engines recover by themselves, without
// being reopened. It returns how long that took from from.
func faultWaitRecovered(ctx context.Context, t *testing.T, ctl *pgx.Conn, srv *pgtest.Server, table string, n int, since time.Time, window time.Duration, from time.Time) time.Duration {
	t.Helper()
	for {
		beats, err := faultFreshBeats(ctx, ctl, table, since, window)
		if err != nil {
			t.Fatalf("reading the heartbeats: %v", err)
		}
		listeners, err := faultSessions(ctx, ctl, srv.Database(), "LISTEN")
		if err != nil {
			t.Fatalf("reading pg_stat_activity: %v", err)
		}
		if beats == n && listeners == n {
			return time.Since(from)
		}
		if ctx.Err() != nil {
			t.Fatalf("hang guard: %d of %d engines wrote their heartbeat since the faults ended, %d listen", beats, n, listeners)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// faultWake measures how long a call waiting on another engine's claim
// takes to return once that claim's fn returns: a notification wakes it at
// once; without the listener it polls (twice a second at most).
func faultWake(ctx context.Context, t *testing.T, owner, waiter *idem.Engine) time.Duration {
	t.Helper()
	const key = "wake"
	started, release := make(chan struct{}), make(chan struct{})
	go owner.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
		close(started)
		<-release
		return []byte("woken"), nil
	})
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("hang guard: the wake key's fn did not start")
	}
	waits := waiter.Stats().Waits
	type result struct {
		res idem.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := waiter.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) { return nil, errors.New("ran twice") })
		done <- result{res, err}
	}()
	for waiter.Stats().Waits == waits && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // into Watch
	released := time.Now()
	close(release)
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("hang guard: the waiting call did not return")
	}
	if r.err != nil || string(r.res.Value) != "woken" || !r.res.Replayed {
		t.Errorf("the call that waited: %q (replayed %v), %v", r.res.Value, r.res.Replayed, r.err)
	}
	return time.Since(released)
}

// TestFaultTerminateBackends terminates the sessions of the test's
// database, all of them or one at random, with pg_terminate_backend, again
// and again at random moments (every 20-200 ms), while three engines, each
// on a pool of its own, run Do for the same keys (faultLoad), for 10 s (90
// s in the long size) or until the load ends. Every session but the
// test's own goes: the pools', and the engines' heartbeat and listener
// connections. Two engines have a Timeout (10 s) that outlasts the faults
// of a statement, and ride them out; the third has a short one (300 ms),
// and meets errors: writes whose outcome is unknown, claims resolved in
// the background, results not stored. Once the faults stop, the engines
// must recover by themselves (their heartbeats written again, their
// listeners back), every key must settle to an outcome the design allows
// (faultLoad.check), and no fn may have run twice. The liveness window is
// short (6 s), to see what a lapse does: an ErrInterrupted for a key
// whose fn has not run is accepted only if a heartbeat was out long
// enough to lapse (checkStrays).
func TestFaultTerminateBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("terminates sessions under load")
	}
	faultRequireLongTimeout(t, 10*time.Minute)
	var (
		keys    = faultTestSize(200, 3000)
		faults  = time.Duration(faultTestSize(10, 90)) * time.Second
		engines = 3
		workers = 4
	)
	const table = "fault_terminate"
	const window = 6 * time.Second
	const patient, impatient = 10 * time.Second, 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(faultTestSize(4, 20))*time.Minute)
	defer cancel()
	srv := pgtest.Start(t)
	logs := &faultLogBuffer{}
	names := []string{"patient 0", "patient 1", "impatient"}
	es := faultEngines(t, ctx, srv, engines, func(i int) *idempg.Options {
		o := &idempg.Options{Table: table, LivenessWindow: window, Timeout: patient, Engine: &idem.Options{Logger: faultInfoLogger(logs)}}
		if i == engines-1 {
			o.Timeout = impatient
		}
		return o
	})
	ctl := faultControl(t, ctx, srv)
	t.Logf("%d keys, each called from every engine (and a key in four twice from one), %d engines × %d workers; liveness window %v",
		keys, engines, workers, window)

	// The terminations.
	const all = `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid()) s WHERE ok`
	const one = `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1) s WHERE ok`
	var (
		rounds, roundsAll, sessions int
		termErr                     error
	)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(20+rand.IntN(181)) * time.Millisecond):
			}
			q := all
			if rand.IntN(3) == 0 {
				q = one
			}
			var n int
			if err := ctl.QueryRow(ctx, q, srv.Database()).Scan(&n); err != nil {
				termErr = err
				return
			}
			rounds++
			sessions += n
			if q == all {
				roundsAll++
			}
		}
	}()

	l := faultNewLoad(ctx, es, names, []int{0, 1}, keys, workers)
	began := time.Now()
	done := l.start(nil)
	select {
	case <-done:
	case <-time.After(faults):
	case <-ctx.Done():
		t.Fatalf("hang guard: the load did not finish; %d of %d keys acknowledged; errors:%s", l.acked.Load(), keys, l.errSummary())
	}
	close(stop)
	<-stopped
	faultsTook := time.Since(began)
	ackedInFaults := l.acked.Load()
	if termErr != nil {
		t.Fatalf("terminating sessions: %v", termErr)
	}
	ended := time.Now()
	serverEnded, err := faultServerNow(ctx, ctl)
	if err != nil {
		t.Fatal(err)
	}
	recovered := faultWaitRecovered(ctx, t, ctl, srv, table, engines, serverEnded, window, ended)
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("hang guard: the load did not finish; %d of %d keys acknowledged; errors:%s", l.acked.Load(), keys, l.errSummary())
	}
	loadTook := time.Since(began)
	l.freeze()
	final, settleTook := l.settle(t)
	v := l.check(t, final)
	outage := faultOutages(logs.String())
	strays := l.checkStrays(t, outage, window)
	wake := faultWake(ctx, t, es[0], es[1])
	for i, e := range es {
		if err := e.Close(); err != nil {
			t.Errorf("Close engine %s: %v", names[i], err)
		}
	}

	t.Logf("%d rounds of terminations in %v (%d of every session, %d of one at random), %d sessions terminated, while %d keys were acknowledged; "+
		"all %d keys in %v; %d Do calls, %d executions of fn; %s",
		rounds, faultsTook.Round(time.Millisecond), roundsAll, rounds-roundsAll, sessions, ackedInFaults,
		keys, loadTook.Round(time.Millisecond), l.calls.Load(), l.execs.Load(), l.engineErrors())
	t.Logf("after the faults: every engine's heartbeat written again and its listener back in %v; every key settled in %v; "+
		"a waiting call woke %v after the claim's fn returned",
		recovered.Round(time.Millisecond), settleTook.Round(time.Millisecond), wake.Round(time.Millisecond))
	t.Logf("keys: %d acknowledged and replayed; %d whose fn ran with no call acknowledged, then replayed; %d interrupted (fn ran, result not stored); "+
		"%d whose fn never ran during the load, run once at the settling; %d reported interrupted to a call, then completed; "+
		"%d ErrInterrupted for a key whose fn had not run; no fn ran twice; %d replays checked; longest heartbeat outage %v; %d lines logged at Warn and above",
		v.acked, v.unackedCompleted, v.unackedInterrupt, v.ranAtSettle, v.flipped, strays, v.replays, outage, logs.warnings())
	if s := l.errSummary(); s != "" {
		t.Logf("errors met, by kind:%s", s)
	}
	if s := l.lateSummary(); s != "" {
		t.Logf("errors met after the faults, tried again:%s", s)
	}
	if t.Failed() {
		t.Logf("the engines' log:\n%s", logs.String())
	}
}

// faultRestart is what a restart of the server did.
type faultRestart struct {
	mode            pgtest.StopMode
	acked           int64 // keys acknowledged before it
	stopAt, readyAt time.Time
	recovered       time.Duration // from readyAt to every engine's heartbeat and listener back
}

// TestFaultServerRestart restarts the test's own server, alternately
// crashing it (immediate shutdown: every process exits at once, and the
// next start recovers from the WAL) and stopping it (fast shutdown), while
// three engines on pools of their own run Do for the same keys
// (faultLoad). Two engines have a Timeout (30 s) that outlasts a restart,
// and ride it out; the third has a short one (300 ms), and its calls fail
// around each restart. The engines must recover without being reopened:
// their pools reconnect, and their heartbeats and listeners come back. No
// key may run twice, no acknowledged result may be lost (synchronous_commit
// is on, pgtest's default), and every key must settle to an outcome the
// design allows (faultLoad.check). The test logs, per restart, how long the
// server was down, when calls failed, and how long the engines took to
// recover.
func TestFaultServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a server under load")
	}
	faultRequireLongTimeout(t, 10*time.Minute)
	var (
		keys     = faultTestSize(300, 2000)
		restarts = faultTestSize(3, 12)
		engines  = 3
		workers  = 4
	)
	const table = "fault_restart"
	const window = 10 * time.Second
	const patient, impatient = 30 * time.Second, 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(faultTestSize(4, 20))*time.Minute)
	defer cancel()
	srv := pgtest.StartOwn(t, nil)
	// A result acknowledged before a crash survives it only with these
	// (see the package documentation): pgtest's defaults.
	first := faultControl(t, ctx, srv)
	for setting, want := range map[string]string{"synchronous_commit": "on", "fsync": "on"} {
		var got string
		if err := first.QueryRow(ctx, "SELECT current_setting($1)", setting).Scan(&got); err != nil || got != want {
			t.Fatalf("the server's %s: %q, %v; want %q", setting, got, err, want)
		}
	}
	logs := &faultLogBuffer{}
	names := []string{"patient 0", "patient 1", "impatient"}
	es := faultEngines(t, ctx, srv, engines, func(i int) *idempg.Options {
		o := &idempg.Options{Table: table, LivenessWindow: window, Timeout: patient, Engine: &idem.Options{Logger: faultInfoLogger(logs)}}
		if i == engines-1 {
			o.Timeout = impatient
		}
		return o
	})
	t.Logf("%d keys, each called from every engine (and a key in four twice from one), %d engines × %d workers, %d restarts; liveness window %v",
		keys, engines, workers, restarts, window)

	l := faultNewLoad(ctx, es, names, []int{0, 1}, keys, workers)
	// Each restart comes when half the keys released for it have
	// finished, so that it finds calls of every kind in progress; the
	// rest of the keys go after the last.
	seg := keys / (restarts + 1)
	limits := make(chan int, restarts+1)
	began := time.Now()
	done := l.start(limits)
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("hang guard: %s; errors so far:%s", what, l.errSummary())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var rs []faultRestart
	for r := range restarts {
		limit := (r + 1) * seg
		limits <- limit
		target := int64(faultCallsFor(limit-seg/2, engines))
		waitUntil(fmt.Sprintf("restart %d: %d calls finished", r, target), func() bool { return l.finished.Load() >= target })
		f := faultRestart{mode: pgtest.Immediate, acked: l.acked.Load()}
		if r%2 == 1 {
			f.mode = pgtest.Fast
		}
		f.stopAt = time.Now()
		srv.Restart(t, f.mode)
		f.readyAt = time.Now()
		if r+1 == restarts {
			limits <- keys
		}
		ctl := faultControl(t, ctx, srv) // the last one broke with the server
		serverReady, err := faultServerNow(ctx, ctl)
		if err != nil {
			t.Fatal(err)
		}
		f.recovered = faultWaitRecovered(ctx, t, ctl, srv, table, engines, serverReady, window, f.readyAt)
		rs = append(rs, f)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("hang guard: the load did not finish; %d of %d keys acknowledged; errors:%s", l.acked.Load(), keys, l.errSummary())
	}
	loadTook := time.Since(began)
	l.freeze()
	final, settleTook := l.settle(t)
	v := l.check(t, final)
	outage := faultOutages(logs.String())
	strays := l.checkStrays(t, outage, window)
	wake := faultWake(ctx, t, es[0], es[1])
	for i, e := range es {
		if err := e.Close(); err != nil {
			t.Errorf("Close engine %s: %v", names[i], err)
		}
	}

	// The figures of each restart, from the calls' spans.
	l.mu.Lock()
	spans := slices.Clone(l.spans)
	l.mu.Unlock()
	for i, f := range rs {
		next := time.Now()
		if i+1 < len(rs) {
			next = rs[i+1].stopAt
		}
		var (
			failed           = make([]int, engines)
			firstFail, lastF time.Duration
			rideOut          time.Duration // the longest call of a patient engine that spanned the stop and acknowledged
			resumed          time.Duration // from readyAt to the first acknowledgement after it
		)
		for _, s := range spans {
			if s.ok && s.ended.After(f.readyAt) && (resumed == 0 || s.ended.Sub(f.readyAt) < resumed) {
				resumed = s.ended.Sub(f.readyAt)
			}
			if !s.ok && !s.ended.Before(f.stopAt) && s.ended.Before(next) {
				failed[s.engine]++
				d := s.ended.Sub(f.stopAt)
				if firstFail == 0 || d < firstFail {
					firstFail = d
				}
				lastF = max(lastF, d)
			}
			if s.ok && s.engine != engines-1 && s.began.Before(f.stopAt) && s.ended.After(f.stopAt) {
				rideOut = max(rideOut, s.ended.Sub(s.began))
			}
		}
		t.Logf("restart %d (%v shutdown, %d keys acknowledged before): server down %v (stop to accepting connections); "+
			"calls acknowledged again %v after it was back, and every heartbeat and listener was back %v after; "+
			"calls failed until the next restart: %v by engine (%v), from %v to %v after the stop; longest call of a patient engine across the stop: %v",
			i, f.mode, f.acked, f.readyAt.Sub(f.stopAt).Round(time.Millisecond), resumed.Round(time.Millisecond), f.recovered.Round(time.Millisecond),
			failed, names, firstFail.Round(time.Millisecond), lastF.Round(time.Millisecond), rideOut.Round(time.Millisecond))
	}
	t.Logf("%d keys in %v across %d restarts; %d Do calls, %d executions of fn; %s; every key settled %v after the load; a waiting call woke %v after the claim's fn returned",
		keys, loadTook.Round(time.Millisecond), restarts, l.calls.Load(), l.execs.Load(), l.engineErrors(), settleTook.Round(time.Millisecond), wake.Round(time.Millisecond))
	t.Logf("keys: %d acknowledged and replayed; %d whose fn ran with no call acknowledged, then replayed; %d interrupted (fn ran, result not stored); "+
		"%d whose fn never ran during the load, run once at the settling; %d reported interrupted to a call, then completed; "+
		"%d ErrInterrupted for a key whose fn had not run; no fn ran twice, no acknowledged outcome lost; %d replays checked; longest heartbeat outage %v; %d lines logged at Warn and above",
		v.acked, v.unackedCompleted, v.unackedInterrupt, v.ranAtSettle, v.flipped, strays, v.replays, outage, logs.warnings())
	if s := l.errSummary(); s != "" {
		t.Logf("errors met, by kind:%s", s)
	}
	if s := l.lateSummary(); s != "" {
		t.Logf("errors met after the faults, tried again:%s", s)
	}
	if t.Failed() {
		t.Logf("the engines' log:\n%s", logs.String())
	}
}

// An engine killed while its fn runs: the engine runs in a child process,
// this test binary run again for TestHelperEngineProcess, on the test's
// database, and the test kills it with SIGKILL.

// faultChildEnv carries an engine child's config, as JSON.
const faultChildEnv = "IDEMPG_TEST_HELPER_ENGINE"

// faultChildConfig is what an engine child does.
type faultChildConfig struct {
	Conn   string        // the database's connection string
	Table  string        // the records table, which the test has created
	Window time.Duration // Options.LivenessWindow
	// Ledger is the file of the child's effects, one line each, appended
	// and fsynced by fn before it goes on: "start <key>" for a key of
	// Block, "effect <key>" for a key of Busy.
	Ledger string
	// Block are keys whose fn, once it has recorded its effect and printed
	// "started <key>", blocks until the process is killed.
	Block []string
	// Busy are keys called by Workers goroutines once the child has read
	// "go" on its standard input; fn records its effect and returns
	// faultChildValue(key), and the child prints "done <key> <quoted
	// value>" (or "error <key> <error>").
	Busy    []string
	Workers int
}

// faultChildValue is the value the engine child's fn returns for key.
func faultChildValue(key string) string { return "child's value of " + key }

// TestHelperEngineProcess is not a test: it is the engine child of
// TestFaultKillEngineProcess, and skips unless started as one. It opens an
// engine on the table, prints "opened", starts the calls of Block, and on
// "go" runs the calls of Busy (see faultChildConfig), then prints "busy
// finished" and waits, until it is killed or its standard input closes.
func TestHelperEngineProcess(t *testing.T) {
	js := os.Getenv(faultChildEnv)
	if js == "" {
		t.Skip("the engine child of TestFaultKillEngineProcess only")
	}
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "engine child: "+format+"\n", args...)
		os.Exit(2)
	}
	var cfg faultChildConfig
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		fail("bad config: %v", err)
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, cfg.Conn)
	if err != nil {
		fail("pool: %v", err)
	}
	e, err := idempg.Open(ctx, pool, &idempg.Options{Table: cfg.Table, LivenessWindow: cfg.Window,
		Engine: &idem.Options{Logger: faultLogger(os.Stderr)}})
	if err != nil {
		fail("open: %v", err)
	}
	ledger, err := os.OpenFile(cfg.Ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fail("ledger: %v", err)
	}
	var mu sync.Mutex // guards ledger and standard output: a line at a time
	effect := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := ledger.WriteString(line + "\n"); err != nil {
			fail("ledger: %v", err)
		}
		if err := ledger.Sync(); err != nil {
			fail("ledger: %v", err)
		}
	}
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	say("opened")
	never := make(chan struct{})
	for _, key := range cfg.Block {
		go e.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
			effect("start " + key)
			say("started %s", key)
			<-never
			return nil, errors.New("unreachable")
		})
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		os.Exit(0)
	}
	jobs := make(chan string)
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for key := range jobs {
				res, err := e.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
					effect("effect " + key)
					time.Sleep(time.Duration(w*5) * time.Millisecond) // a kill may find fn past its effect
					return []byte(faultChildValue(key)), nil
				})
				if err != nil {
					say("error %s %v", key, err)
					continue
				}
				say("done %s %q", key, res.Value)
			}
		}()
	}
	for _, key := range cfg.Busy {
		jobs <- key
	}
	close(jobs)
	wg.Wait()
	say("busy finished")
	for in.Scan() {
	}
	os.Exit(0)
}

// faultChild is a running engine child.
type faultChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *faultLogBuffer
	mu     sync.Mutex    // guards out
	out    []string      // the lines of its standard output so far
	more   chan struct{} // a line came (capacity 1, sent without blocking)
	eof    chan struct{} // closed when its standard output has ended
	waited bool
}

// faultStartChild starts an engine child with cfg. It is killed and waited
// for when t ends, if the test did not kill it.
func faultStartChild(t *testing.T, cfg faultChildConfig) *faultChild {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// testproc: the child dies with the test binary, and has a deadline
	// of its own besides.
	cmd := testproc.Command(t, os.Args[0], "-test.run=^TestHelperEngineProcess$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), faultChildEnv+"="+string(js))
	c := &faultChild{cmd: cmd, stderr: &faultLogBuffer{}, more: make(chan struct{}, 1), eof: make(chan struct{})}
	cmd.Stderr = c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { // reads stdout to its end, which the child's exit brings
		defer close(c.eof)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.out = append(c.out, sc.Text())
			c.mu.Unlock()
			select {
			case c.more <- struct{}{}:
			default:
			}
		}
	}()
	// Registered after testproc's, so it runs first: the child is waited
	// for here, in the test's goroutine, and testproc's cleanup finds it
	// done.
	t.Cleanup(func() { c.kill() })
	return c
}

// waitFor waits until cond holds for the lines printed so far; it fails
// the test if the child exits first, or after faultHang.
func (c *faultChild) waitFor(t *testing.T, what string, cond func(lines []string) bool) {
	t.Helper()
	guard := time.NewTimer(faultHang)
	defer guard.Stop()
	for {
		c.mu.Lock()
		ok := cond(c.out)
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.more:
		case <-c.eof:
			c.kill()
			t.Fatalf("engine child exited before %s: %v; stdout:\n%s\nstderr:\n%s", what, c.cmd.ProcessState, c.lines(), c.stderr.String())
		case <-guard.C:
			t.Fatalf("hang guard: engine child: %s; stdout:\n%s\nstderr:\n%s", what, c.lines(), c.stderr.String())
		}
	}
}

// kill sends the child SIGKILL, reads its output to the end and waits for
// it. After the first call it does nothing.
func (c *faultChild) kill() {
	if c.waited {
		return
	}
	c.waited = true
	_ = c.cmd.Process.Kill()
	<-c.eof
	_ = c.cmd.Wait()
}

func (c *faultChild) lines() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.out, "\n")
}

// faultCountPrefix counts the lines that begin with prefix.
func faultCountPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// faultEachLine calls fn for each complete line of the file at path (a
// line without its newline, cut short by a kill, is no effect: fn wrote it
// in one write, with its newline).
func faultEachLine(t *testing.T, path string, fn func(string)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range lines[:len(lines)-1] {
		fn(l)
	}
}

// faultWaitStat polls cond, an engine's counters, until it holds; it fails
// the test if ctx ends first (a hang guard).
func faultWaitStat(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("hang guard: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFaultKillEngineProcess kills, with SIGKILL, an engine whose fn is
// running, and checks what the engines that share its table make of its
// keys. Each round starts an engine child (on the test's database, with a
// liveness window of 2 s) whose fn blocks for a few keys, and which
// completes other keys with several goroutines, its fn recording each
// effect in a file, fsynced, before it goes on. While the child is alive,
// engines here get ErrInFlight for the blocked keys with NoWait, and wait
// without. The test kills the child in the middle of its busy keys; then,
// once its heartbeat has lapsed (and not before), the calls that waited
// return ErrInterrupted, and every engine reports ErrInterrupted for the
// keys whose fn had started (the child's ledger says which), never running
// fn for them, while the keys the child completed replay its values; keys
// whose fn never started run here, once. An engine with RetryInterrupted
// runs one interrupted key again, once, and then every engine replays its
// value.
func TestFaultKillEngineProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills engine processes")
	}
	if runtime.GOOS == "windows" {
		t.Skip("SIGKILL")
	}
	faultRequireLongTimeout(t, 10*time.Minute)
	var (
		rounds = faultTestSize(2, 10)
		blockN = 3
		busyN  = faultTestSize(60, 200)
	)
	const table, window = "fault_kill_engine", 2 * time.Second
	// The hang guard of the whole test.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(faultTestSize(4, 20))*time.Minute)
	defer cancel()
	srv := pgtest.Start(t)
	open := func(mod func(*idem.Options)) *idem.Engine {
		eo := &idem.Options{Logger: discardLogger}
		if mod != nil {
			mod(eo)
		}
		return faultOpen(t, ctx, srv.Pool(t, nil), &idempg.Options{Table: table, LivenessWindow: window, Engine: eo})
	}
	pA := open(nil)
	pB := open(nil)
	pN := open(func(o *idem.Options) { o.NoWait = true })
	pR := open(func(o *idem.Options) { o.RetryInterrupted = true })
	engines := map[string]*idem.Engine{"A": pA, "B": pB, "NoWait": pN}
	ctl := faultControl(t, ctx, srv)

	var runsMu sync.Mutex          // guards parentRuns
	parentRuns := map[string]int{} // key -> executions of fn in this process
	parentValue := func(key string) string { return "parent's value of " + key }
	parentFn := func(key string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			runsMu.Lock()
			parentRuns[key]++
			runsMu.Unlock()
			return []byte(parentValue(key)), nil
		}
	}
	runsOf := func(key string) int {
		runsMu.Lock()
		defer runsMu.Unlock()
		return parentRuns[key]
	}

	type tally struct {
		blocked, busyDone, busyActedInterrupted, busyRanHere, busyInterrupted, busyReplayedAfterKill int
		nowaitAfterKill                                                                              map[string]int
		lapsed                                                                                       []time.Duration // kill to the heartbeat's lapse
		reported                                                                                     []time.Duration // the lapse to the last waiting call's ErrInterrupted
	}
	tot := tally{nowaitAfterKill: map[string]int{}}
	for round := range rounds {
		prefix := fmt.Sprintf("r%d-", round)
		block := make([]string, blockN)
		for i := range block {
			block[i] = fmt.Sprintf("%sblock-%d", prefix, i)
		}
		busy := make([]string, busyN)
		for i := range busy {
			busy[i] = fmt.Sprintf("%sbusy-%03d", prefix, i)
		}
		ledger := filepath.Join(t.TempDir(), "ledger")
		child := faultStartChild(t, faultChildConfig{Conn: srv.ConnString(), Table: table, Window: window,
			Ledger: ledger, Block: block, Busy: busy, Workers: 4})
		child.waitFor(t, "its fn started for the blocked keys", func(lines []string) bool {
			return faultCountPrefix(lines, "started "+prefix+"block-") == blockN
		})

		// The child is alive: its claims hold.
		for _, key := range block {
			_, err := pN.Do(ctx, key, faultFingerprint(key), parentFn(key))
			if !errors.Is(err, idem.ErrInFlight) {
				t.Fatalf("round %d: NoWait Do(%s) while the child's fn runs: %v, want ErrInFlight", round, key, err)
			}
		}
		// A call without NoWait waits, until its context ends.
		waitsA := pA.Stats().Waits
		wctx, wcancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := pA.Do(wctx, block[0], faultFingerprint(block[0]), parentFn(block[0]))
			errc <- err
		}()
		faultWaitStat(ctx, t, "a call on a blocked key waits", func() bool { return pA.Stats().Waits > waitsA })
		wcancel()
		if err := <-errc; !errors.Is(err, idem.ErrInFlight) || !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: Do(%s) waiting on the child's claim until its context ended: %v, want ErrInFlight and Canceled", round, block[0], err)
		}
		// Calls that wait on the claims when the child dies.
		type waited struct {
			key string
			err error
			at  time.Time
		}
		waits0 := pB.Stats().Waits
		waitedc := make(chan waited, blockN)
		for _, key := range block {
			go func() {
				_, err := pB.Do(ctx, key, faultFingerprint(key), parentFn(key))
				waitedc <- waited{key, err, time.Now()}
			}()
		}
		faultWaitStat(ctx, t, "the calls on the blocked keys wait", func() bool { return pB.Stats().Waits >= waits0+uint64(blockN) })

		// Kill it in the middle of its busy keys.
		if _, err := io.WriteString(child.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
		child.waitFor(t, "a third of the busy keys done", func(lines []string) bool {
			return faultCountPrefix(lines, "done "+prefix) >= busyN/3
		})
		child.kill()
		killed := time.Now()
		key0 := block[0]
		_, nowaitErr := pN.Do(ctx, key0, faultFingerprint(key0), parentFn(key0))
		nowaitAt := time.Now()
		if strings.Contains(child.stderr.String(), "DATA RACE") {
			t.Errorf("round %d: the engine child reported a data race:\n%s", round, child.stderr.String())
		}

		// The calls that waited get ErrInterrupted once its heartbeat
		// lapsed.
		var waits []waited
		for range blockN {
			select {
			case w := <-waitedc:
				waits = append(waits, w)
			case <-ctx.Done():
				t.Fatalf("hang guard: round %d: the calls waiting on the dead child's claims did not return", round)
			}
		}
		// When the heartbeat lapsed: the expiry of the dead child's last
		// heartbeat (the owner of its claims), by the server's clock,
		// which is this machine's.
		var data []byte
		if err := ctl.QueryRow(ctx, `SELECT record FROM `+table+` WHERE key = $1`, []byte(key0)).Scan(&data); err != nil {
			t.Fatalf("round %d: reading %s: %v", round, key0, err)
		}
		rec, err := idem.DecodeRecord(data)
		if err != nil {
			t.Fatal(err)
		}
		var lapsed time.Time
		if err := ctl.QueryRow(ctx, `SELECT expires FROM `+table+`_engines WHERE owner = $1`, int64(rec.Owner)).Scan(&lapsed); err != nil {
			t.Fatalf("round %d: reading the child's heartbeat: %v", round, err)
		}
		const slack = 20 * time.Millisecond // the clocks' readings
		switch {
		case errors.Is(nowaitErr, idem.ErrInFlight):
			tot.nowaitAfterKill["ErrInFlight (heartbeat not lapsed yet)"]++
		case errors.Is(nowaitErr, idem.ErrInterrupted) && nowaitAt.After(lapsed.Add(-slack)):
			tot.nowaitAfterKill["ErrInterrupted (heartbeat lapsed already, on a slow machine)"]++
		default:
			t.Errorf("round %d: NoWait Do(%s) %v after the kill, %v before the heartbeat lapsed: %v, want ErrInFlight",
				round, key0, nowaitAt.Sub(killed), lapsed.Sub(nowaitAt), nowaitErr)
		}
		var last time.Duration
		for _, w := range waits {
			if !errors.Is(w.err, idem.ErrInterrupted) {
				t.Errorf("round %d: Do(%s) that waited on the killed child's claim: %v, want ErrInterrupted", round, w.key, w.err)
			}
			if w.at.Before(lapsed.Add(-slack)) {
				t.Errorf("round %d: Do(%s) that waited on the killed child's claim returned %v after the kill, %v before its heartbeat lapsed: %v",
					round, w.key, w.at.Sub(killed), lapsed.Sub(w.at), w.err)
			}
			last = max(last, w.at.Sub(lapsed))
		}
		tot.lapsed = append(tot.lapsed, lapsed.Sub(killed))
		tot.reported = append(tot.reported, last)

		// The blocked keys are interrupted for every engine.
		for _, key := range block {
			for name, e := range engines {
				if _, err := e.Do(ctx, key, faultFingerprint(key), parentFn(key)); !errors.Is(err, idem.ErrInterrupted) {
					t.Errorf("round %d: engine %s: Do(%s) after the window: %v, want ErrInterrupted", round, name, key, err)
				}
			}
			if rec, err := pA.Lookup(key); err != nil || rec.State != idem.StateInterrupted {
				t.Errorf("round %d: Lookup(%s) = %v, %v; want interrupted", round, key, rec.State, err)
			}
			if n := runsOf(key); n != 0 {
				t.Errorf("round %d: fn of the interrupted key %s ran %d times here", round, key, n)
			}
		}
		tot.blocked += blockN

		// The busy keys, against the child's ledger and output.
		effects := map[string]int{}
		faultEachLine(t, ledger, func(l string) {
			if k, ok := strings.CutPrefix(l, "effect "); ok {
				effects[k]++
			} else if k, ok := strings.CutPrefix(l, "start "); ok {
				effects[k]++
			} else {
				t.Errorf("round %d: bad ledger line %q", round, l)
			}
		})
		for _, key := range block {
			if effects[key] != 1 {
				t.Errorf("round %d: blocked key %s: %d effects in the ledger, want 1", round, key, effects[key])
			}
		}
		done := map[string]string{}
		for _, l := range strings.Split(child.lines(), "\n") {
			if rest, ok := strings.CutPrefix(l, "done "); ok {
				k, q, _ := strings.Cut(rest, " ")
				v, err := strconv.Unquote(q)
				if err != nil {
					t.Fatalf("round %d: bad line %q", round, l)
				}
				done[k] = v
			}
		}
		interrupted := map[string]bool{}
		for _, key := range block {
			interrupted[key] = true
		}
		outcome := map[string]string{}
		for _, key := range busy {
			if effects[key] > 1 {
				t.Errorf("round %d: key %s: the child's fn acted %d times", round, key, effects[key])
			}
			res, err := pA.Do(ctx, key, faultFingerprint(key), parentFn(key))
			ran := runsOf(key)
			out := string(res.Value)
			switch {
			case ran > 0 && effects[key] > 0:
				t.Errorf("round %d: key %s: fn ran here after the child's fn acted (twice)", round, key)
			case ran > 1:
				t.Errorf("round %d: key %s: fn ran %d times here", round, key, ran)
			case done[key] != "":
				// Acknowledged to the child: replays.
				if err != nil || !res.Replayed || out != done[key] {
					t.Errorf("round %d: key %s acknowledged to the child as %q: %q (replayed %v), %v", round, key, done[key], out, res.Replayed, err)
				}
				tot.busyDone++
			case effects[key] > 0 && err == nil:
				// Stored by the child, but killed before it printed.
				if !res.Replayed || out != faultChildValue(key) {
					t.Errorf("round %d: key %s: the child's fn acted; got %q (replayed %v)", round, key, out, res.Replayed)
				}
				tot.busyReplayedAfterKill++
			case errors.Is(err, idem.ErrInterrupted):
				// Claimed by the child; its fn acted, or was about to.
				interrupted[key] = true
				out = faultInterrupted
				tot.busyInterrupted++
				if effects[key] > 0 {
					tot.busyActedInterrupted++
				}
			case effects[key] > 0:
				t.Errorf("round %d: key %s: the child's fn acted; got %v", round, key, err)
			case err != nil || res.Replayed || out != parentValue(key):
				t.Errorf("round %d: key %s, never started by the child: %q (replayed %v), %v; want fn to run here", round, key, out, res.Replayed, err)
			default:
				tot.busyRanHere++
			}
			outcome[key] = out
		}
		// Every other engine agrees, and runs nothing.
		for _, key := range busy {
			before := runsOf(key)
			for name, e := range engines {
				res, err := e.Do(ctx, key, faultFingerprint(key), parentFn(key))
				out := string(res.Value)
				if errors.Is(err, idem.ErrInterrupted) {
					out = faultInterrupted
				} else if err != nil || !res.Replayed {
					out = fmt.Sprintf("%q (replayed %v), %v", out, res.Replayed, err)
				}
				if out != outcome[key] {
					t.Errorf("round %d: engine %s: key %s: %s, want %q", round, name, key, out, outcome[key])
				}
			}
			if runsOf(key) != before {
				t.Errorf("round %d: key %s: fn ran again", round, key)
			}
		}
		listed := map[string]bool{}
		for r, err := range pA.Interrupted() {
			if err != nil {
				t.Fatalf("Interrupted: %v", err)
			}
			if strings.HasPrefix(r.Key, prefix) {
				listed[r.Key] = true
			}
		}
		if !maps.Equal(listed, interrupted) {
			t.Errorf("round %d: Interrupted lists %v of the round's keys, want %v", round, slices.Sorted(maps.Keys(listed)), slices.Sorted(maps.Keys(interrupted)))
		}

		// RetryInterrupted runs one key again; then it replays everywhere.
		res, err := pR.Do(ctx, key0, faultFingerprint(key0), parentFn(key0))
		if err != nil || res.Replayed || string(res.Value) != parentValue(key0) || runsOf(key0) != 1 {
			t.Errorf("round %d: RetryInterrupted Do(%s): %q (replayed %v), %v, fn ran %d times; want it run once", round, key0, res.Value, res.Replayed, err, runsOf(key0))
		}
		for name, e := range engines {
			res, err := e.Do(ctx, key0, faultFingerprint(key0), parentFn(key0))
			if err != nil || !res.Replayed || string(res.Value) != parentValue(key0) {
				t.Errorf("round %d: engine %s: Do(%s) after RetryInterrupted: %q (replayed %v), %v", round, name, key0, res.Value, res.Replayed, err)
			}
		}
		if res, err := pR.Do(ctx, key0, faultFingerprint(key0), parentFn(key0)); err != nil || !res.Replayed || runsOf(key0) != 1 {
			t.Errorf("round %d: RetryInterrupted Do(%s) again: %q (replayed %v), %v, fn ran %d times; want a replay", round, key0, res.Value, res.Replayed, err, runsOf(key0))
		}
		if t.Failed() {
			t.Fatalf("round %d failed; the child's stdout:\n%s\nstderr:\n%s", round, child.lines(), child.stderr.String())
		}
	}
	var lapsed, reported []string
	for i, d := range tot.reported {
		lapsed = append(lapsed, tot.lapsed[i].Round(time.Millisecond).String())
		reported = append(reported, d.Round(time.Millisecond).String())
	}
	t.Logf("%d engine processes killed with SIGKILL, liveness window %v: %d keys whose fn was blocked, each ErrInFlight (NoWait) and waited on before the kill; "+
		"the heartbeat lapsed %v after the kill, and the calls waiting on them returned ErrInterrupted, none before the lapse, the last %v after it, per round; NoWait just after the kill: %v; "+
		"of %d busy keys: %d acknowledged to the child replayed, %d stored by the child but not acknowledged replayed, %d interrupted (%d of them after the child's fn acted), "+
		"%d never started by the child ran here; no fn ran twice (the child's fsynced ledger and this process's count); 1 interrupted key per round ran again, once, with RetryInterrupted",
		rounds, window, tot.blocked, lapsed, reported, tot.nowaitAfterKill, rounds*busyN, tot.busyDone, tot.busyReplayedAfterKill,
		tot.busyInterrupted, tot.busyActedInterrupted, tot.busyRanHere)
}
