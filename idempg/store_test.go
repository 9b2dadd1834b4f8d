package idempg_test

// Tests of the store itself, through export_test.go: what the engine's
// behaviour does not show. The cases run as subtests of TestStore, on one
// database, each on a table of its own.

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idempg"
	"github.com/idemkv/idem/idempg/internal/pgtest"
)

func TestStore(t *testing.T) {
	srv := pgtest.Start(t)
	t.Run("Operations", func(t *testing.T) { testStoreOperations(t, srv) })
	t.Run("Keys", func(t *testing.T) { testStoreKeys(t, srv) })
	t.Run("CreateConflictCarriesTheRecord", func(t *testing.T) { testCreateConflictCarries(t, srv) })
	t.Run("Watch", func(t *testing.T) { testStoreWatch(t, srv) })
	t.Run("Liveness", func(t *testing.T) { testStoreLiveness(t, srv) })
	t.Run("ResolveClaims", func(t *testing.T) { testResolveClaims(t, srv) })
	t.Run("Sweep", func(t *testing.T) { testStoreSweep(t, srv) })
	t.Run("Timeout", func(t *testing.T) { testStoreTimeout(t, srv) })
}

// A statement that cannot finish (a row lock held by another transaction)
// ends after Options.Timeout with an error matching
// context.DeadlineExceeded, not before, and the store forgets the call: it
// is the store's watchdog that ends it (see bound.go), the caller's
// context having no deadline.
func testStoreTimeout(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "storetimeout"
	const timeout = 300 * time.Millisecond
	pool := srv.Pool(t, nil)
	s := openTestStore(t, pool, idempg.Options{Table: table, Timeout: timeout})
	st := s.Store()
	rev, err := st.Create(ctx, "k", marker(7), idem.WriteClaim)
	require.NoError(t, err)

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.Background())
	_, err = tx.Exec(ctx, `SELECT 1 FROM `+table+` WHERE key = $1 FOR UPDATE`, []byte("k"))
	require.NoError(t, err)

	begun := time.Now()
	updated := make(chan error, 1)
	go func() {
		_, err := st.Update(context.Background(), "k", marker(7), rev, idem.WriteResult)
		updated <- err
	}()
	// The call is the watchdog's while it waits for the lock.
	require.Eventually(t, func() bool { return s.CallsInProgress() == 1 }, testTimeout, time.Millisecond)
	err = <-updated
	took := time.Since(begun)
	t.Logf("an update behind a row lock, with Timeout %v: %v after %v", timeout, err, took)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.GreaterOrEqual(t, took, timeout)
	require.Zero(t, s.CallsInProgress())

	// The lock gone, the key is as the update left it: stored or not.
	require.NoError(t, tx.Rollback(ctx))
	_, _, err = st.Get(ctx, "k")
	require.NoError(t, err)
	require.Zero(t, s.CallsInProgress())
}

// Create, Update and Delete are compare-and-sets on the record's revision,
// across stores on different pools.
func testStoreOperations(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "ops"
	a := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table}).Store()
	b := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table}).Store()
	require.True(t, a.Info().Shared)
	rec := marker(7)

	_, _, err := b.Get(ctx, "k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	rev, err := a.Create(ctx, "k", rec, idem.WriteClaim)
	require.NoError(t, err)
	require.NotZero(t, rev)
	_, err = b.Create(ctx, "k", rec, idem.WriteClaim)
	require.ErrorIs(t, err, idem.ErrStoreConflict)
	got, grev, err := b.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, rev, grev)
	require.Equal(t, rec, got)

	done := rec
	done.State, done.Value = idem.StateCompleted, []byte("v")
	_, err = b.Update(ctx, "k", done, rev+100, idem.WriteResult)
	require.ErrorIs(t, err, idem.ErrStoreConflict)
	_, err = b.Update(ctx, "k", done, 0, idem.WriteResult)
	require.ErrorIs(t, err, idem.ErrStoreConflict)
	rev2, err := b.Update(ctx, "k", done, rev, idem.WriteResult)
	require.NoError(t, err)
	require.NotEqual(t, rev, rev2)
	_, err = a.Update(ctx, "k", done, rev, idem.WriteResult)
	require.ErrorIs(t, err, idem.ErrStoreConflict, "an update of a stale revision")
	got, grev, err = a.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, rev2, grev)
	require.Equal(t, done, got)
	require.ErrorIs(t, a.Delete(ctx, "k", rev, idem.WriteForget), idem.ErrStoreConflict)
	require.NoError(t, a.Delete(ctx, "k", rev2, idem.WriteForget))
	_, _, err = b.Get(ctx, "k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	_, err = b.Update(ctx, "k", done, rev2, idem.WriteResult)
	require.ErrorIs(t, err, idem.ErrStoreConflict, "an update of a deleted record")

	// A new record of the key has a revision no earlier one had: a
	// compare-and-set of an old revision cannot match it.
	rev3, err := b.Create(ctx, "k", rec, idem.WriteClaim)
	require.NoError(t, err)
	require.NotContains(t, []uint64{0, rev, rev2}, rev3)
	require.ErrorIs(t, a.Delete(ctx, "k", rev, idem.WriteForget), idem.ErrStoreConflict)
	// Unconditional deletes, of a record and of nothing.
	require.NoError(t, a.Delete(ctx, "k", 0, idem.WriteForget))
	require.NoError(t, a.Delete(ctx, "never", 0, idem.WriteForget))
	require.ErrorIs(t, a.Delete(ctx, "never", 5, idem.WriteForget), idem.ErrStoreConflict)

	// Of concurrent compare-and-sets of one revision, exactly one wins.
	stores := []idem.Store{a, b, openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table}).Store()}
	for i := range 10 {
		key := string(rune('a' + i))
		rev, err := a.Create(ctx, key, marker(7), idem.WriteClaim)
		require.NoError(t, err)
		const racers = 6
		errs := make(chan error, racers)
		for r := range racers {
			go func() {
				_, err := stores[r%len(stores)].Update(ctx, key, marker(uint64(100+r)), rev, idem.WriteClaim)
				errs <- err
			}()
		}
		won := 0
		for range racers {
			if err := <-errs; err == nil {
				won++
			} else {
				require.ErrorIs(t, err, idem.ErrStoreConflict)
			}
		}
		require.Equal(t, 1, won, "compare-and-sets of one revision that succeeded")
	}
}

// Keys of any bytes round-trip, and Scan lists them in byte order, with
// prefixes and pages.
func testStoreKeys(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	s := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: "keys"}).Store()
	keys := []string{"a", "a.b", "a*", "a%", "a_", "a'b", `a\b`, "a b", "ab", "\x00", "a\x00", "\xff", "\xff\xfe", "\xff\xff\x00",
		"é", "b/c", "=", strings.Repeat("k", 512)}
	for i, k := range keys {
		rec := marker(uint64(i + 1))
		_, err := s.Create(ctx, k, rec, idem.WriteClaim)
		require.NoError(t, err, "%q", k)
		got, _, err := s.Get(ctx, k)
		require.NoError(t, err, "%q", k)
		require.Equal(t, uint64(i+1), got.Owner, "%q", k)
	}
	require.NoError(t, s.Delete(ctx, "ab", 0, idem.WriteForget))

	scan := func(prefix string, limit int) []string {
		var got []string
		after := ""
		for {
			next, err := s.Scan(ctx, prefix, after, limit, func(key string, _ idem.StoredRecord, err error) {
				require.NoError(t, err)
				got = append(got, key)
			})
			require.NoError(t, err)
			if next == "" {
				return got
			}
			after = next
		}
	}
	want := slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return k == "ab" })
	slices.Sort(want)
	require.Equal(t, want, scan("", 100))
	require.Equal(t, want, scan("", 3))
	require.Equal(t, want, scan("", 1))
	for _, prefix := range []string{"a", "a_", "a%", "\xff", "\xff\xff", "\x00", "zzz"} {
		var wantP []string
		for _, k := range want {
			if strings.HasPrefix(k, prefix) {
				wantP = append(wantP, k)
			}
		}
		require.Equal(t, wantP, scan(prefix, 2), "prefix %q", prefix)
	}
	next, err := s.Scan(ctx, "", "", 0, func(string, idem.StoredRecord, error) { t.Error("a record for a limit of 0") })
	require.NoError(t, err)
	require.Empty(t, next)
}

// A create refused for a key that has a record hands the record to the
// engine (idem.ConflictError), so that a replay does not read it again.
func testCreateConflictCarries(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "carry"
	e := openEngine(t, srv, table, nil)
	_, err := e.Do(ctx, "k", []byte("fp"), func(context.Context) ([]byte, error) { return []byte("v"), nil })
	require.NoError(t, err)

	ts := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table})
	s := ts.Store()
	_, err = s.Create(ctx, "k", marker(ts.Owner()), idem.WriteClaim)
	require.ErrorIs(t, err, idem.ErrStoreConflict)
	var ce *idem.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, idem.StateCompleted, ce.Record.State)
	require.Equal(t, "v", string(ce.Record.Value))
	require.Equal(t, idem.MakeFingerprint([]byte("fp")), ce.Record.Fingerprint)
	rec, rev, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, rev, ce.Rev)
	require.Equal(t, rec, ce.Record)
}

// Watch returns at once for a revision that is gone already (changed or
// deleted before it began), is woken by the notification of a change
// (update, delete, a sweep's delete) of the revision it marked (under a
// liveness window of ten minutes, its own timer would not wake it within
// the test's timeout), and returns its context's error when that ends.
func testStoreWatch(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "watch"
	marks := newStmtCounter(markSQL)
	w := openTestStore(t, newPoolOf(t, srv, poolConfig{tracer: marks}), idempg.Options{Table: table, LivenessWindow: longWindow})
	other := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table}).Store()
	require.Eventually(t, w.Listening, testTimeout, 5*time.Millisecond, "the listener did not LISTEN")

	// Gone before Watch began: changed, deleted, never there.
	rev, err := other.Create(ctx, "k", marker(9), idem.WriteClaim)
	require.NoError(t, err)
	rev2, err := other.Update(ctx, "k", marker(9), rev, idem.WriteClaim)
	require.NoError(t, err)
	require.NoError(t, w.Watch(ctx, "k", rev))
	require.NoError(t, other.Delete(ctx, "k", rev2, idem.WriteForget))
	require.NoError(t, w.Watch(ctx, "k", rev2))
	require.NoError(t, w.Watch(ctx, "never", 12345))

	// Woken by a change after the mark.
	for name, change := range map[string]func(rev uint64) error{
		"update": func(rev uint64) error {
			_, err := other.Update(ctx, "k", marker(9), rev, idem.WriteResult)
			return err
		},
		"delete": func(rev uint64) error { return other.Delete(ctx, "k", rev, idem.WriteRelease) },
		"sweep": func(uint64) error {
			n, err := w.Sweep(ctx, time.Now().Add(2*time.Hour).UnixNano()) // the marker expires in an hour
			require.Equal(t, 1, n)
			return err
		},
	} {
		_, _, err := other.Get(ctx, "k")
		if err == nil {
			require.NoError(t, other.Delete(ctx, "k", 0, idem.WriteForget))
		}
		rev, err := other.Create(ctx, "k", marker(9), idem.WriteClaim)
		require.NoError(t, err)
		before := marks.count(markSQL)
		done := make(chan error, 1)
		go func() { done <- w.Watch(ctx, "k", rev) }()
		waitMarked(t, marks, before+1)
		select {
		case err := <-done:
			t.Fatalf("%s: Watch returned before the change: %v", name, err)
		default:
		}
		require.NoError(t, change(rev), name)
		select {
		case err := <-done:
			require.NoError(t, err, name)
		case <-ctx.Done():
			t.Fatalf("Watch did not wake on a %s", name)
		}
	}

	// Two Watches of one revision, in one store: one notification wakes
	// both.
	rev, err = other.Create(ctx, "two", marker(9), idem.WriteClaim)
	require.NoError(t, err)
	before := marks.count(markSQL)
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- w.Watch(ctx, "two", rev) }()
	}
	waitMarked(t, marks, before+2)
	_, err = other.Update(ctx, "two", marker(9), rev, idem.WriteResult)
	require.NoError(t, err)
	for range 2 {
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Fatal("Watch did not wake")
		}
	}

	// A Watch whose context ends returns its error.
	cctx, cancel := context.WithCancel(ctx)
	rev, err = other.Create(ctx, "cancel", marker(9), idem.WriteClaim)
	require.NoError(t, err)
	before = marks.count(markSQL)
	go func() { done <- w.Watch(cctx, "cancel", rev) }()
	waitMarked(t, marks, before+1)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-ctx.Done():
		t.Fatal("Watch did not return when its context ended")
	}
}

// An engine is alive from Open to Close, and not after; owners differ and
// are never 0.
func testStoreLiveness(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "alive"
	pool := srv.Pool(t, nil)
	a := openTestStore(t, pool, idempg.Options{Table: table})
	b := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: table})
	require.NotEqual(t, a.Owner(), b.Owner())
	require.NotZero(t, a.Owner())
	require.Equal(t, a.Owner(), a.Store().Info().Owner)
	alive, err := b.Alive(ctx, a.Owner())
	require.NoError(t, err)
	require.True(t, alive)
	alive, err = b.Alive(ctx, 12345)
	require.NoError(t, err)
	require.False(t, alive, "an owner that never was")

	// A heartbeat that lapsed, by the server's clock.
	_, err = pool.Exec(ctx, `UPDATE `+table+`_engines SET expires = clock_timestamp() - interval '1 second' WHERE owner = $1`, int64(b.Owner()))
	require.NoError(t, err)
	alive, err = a.Alive(ctx, b.Owner())
	require.NoError(t, err)
	require.False(t, alive, "a lapsed heartbeat")

	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "a second Close")
	alive, err = b.Alive(ctx, a.Owner())
	require.NoError(t, err)
	require.False(t, alive, "a closed engine")
}

// A claim whose outcome was unknown is resolved in the background: sent
// again (recognised by its write id if it landed), and taken back if it is
// stored.
func testResolveClaims(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	s := openTestStore(t, srv.Pool(t, nil), idempg.Options{Table: "resolve"})
	st := s.Store()
	mine := marker(s.Owner())
	waitResolved := func() {
		t.Helper()
		require.Eventually(t, func() bool { return s.Unresolved() == 0 }, testTimeout, 10*time.Millisecond)
	}

	// A create that never reached the server: the resolver stores it,
	// then deletes it.
	s.ResolveClaim("lost", mine, 0)
	waitResolved()
	_, _, err := st.Get(ctx, "lost")
	require.ErrorIs(t, err, idem.ErrNotFound)

	// An update of a record that replaced an interrupted claim: taken
	// back as a claim of owner 0, which every engine reads as interrupted.
	rev, err := st.Create(ctx, "upd", marker(0), idem.WriteClaim)
	require.NoError(t, err)
	s.ResolveClaim("upd", mine, rev)
	waitResolved()
	got, _, err := st.Get(ctx, "upd")
	require.NoError(t, err)
	require.Equal(t, idem.StateInFlight, got.State)
	require.Zero(t, got.Owner)

	// A claim the key no longer allows (another record is there): refused,
	// nothing changes.
	_, err = st.Create(ctx, "taken", marker(42), idem.WriteClaim)
	require.NoError(t, err)
	s.ResolveClaim("taken", mine, 0)
	waitResolved()
	got, _, err = st.Get(ctx, "taken")
	require.NoError(t, err)
	require.Equal(t, uint64(42), got.Owner)
	require.NoError(t, s.Close(), "nothing left unresolved")
}

// Sweep deletes the records expired at its time, and only those; a row
// that another transaction holds is skipped, not waited for, and deleted
// by a later sweep; heartbeats of engines dead for a day are deleted too.
func testStoreSweep(t *testing.T, srv *pgtest.Server) {
	ctx := testCtx(t)
	const table = "storesweep"
	pool := srv.Pool(t, nil)
	s := openTestStore(t, pool, idempg.Options{Table: table, SweepBatch: 2})
	st := s.Store()
	rec := func(expires int64) idem.StoredRecord {
		return idem.StoredRecord{State: idem.StateCompleted, Created: 1, Expires: expires, Value: []byte("v")}
	}
	const sec = int64(time.Second)
	for i := range 7 {
		_, err := st.Create(ctx, string(rune('a'+i)), rec(int64(100+i)*sec), idem.WriteResult) // a..g expire at 100..106 s
		require.NoError(t, err)
	}
	n, err := s.Sweep(ctx, 100*sec-1)
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = s.Sweep(ctx, 102*sec) // a, b, c
	require.NoError(t, err)
	require.Equal(t, 3, n)

	// d is held by a transaction: skipped.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.Background())
	_, err = tx.Exec(ctx, `SELECT 1 FROM `+table+` WHERE key = $1 FOR UPDATE`, []byte("d"))
	require.NoError(t, err)
	n, err = s.Sweep(ctx, 104*sec) // e; d is skipped
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, tx.Rollback(ctx))
	n, err = s.Sweep(ctx, 104*sec) // d
	require.NoError(t, err)
	require.Equal(t, 1, n)
	var left []string
	_, err = st.Scan(ctx, "", "", 100, func(key string, _ idem.StoredRecord, err error) {
		require.NoError(t, err)
		left = append(left, key)
	})
	require.NoError(t, err)
	require.Equal(t, []string{"f", "g"}, left)

	// The sweeper's column is the expiry rounded up to a whole second
	// (see sweepAt): a record is deleted within a second after it
	// expired, never before.
	_, err = st.Create(ctx, "h", rec(107*sec+1), idem.WriteResult)
	require.NoError(t, err)
	var column int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT expires FROM `+table+` WHERE key = $1`, []byte("h")).Scan(&column))
	require.Equal(t, 108*sec, column)
	n, err = s.Sweep(ctx, 107*sec+1) // f and g; h has just expired, but its row is left
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = s.Sweep(ctx, 108*sec) // h
	require.NoError(t, err)
	require.Equal(t, 1, n)

	// Heartbeats: one dead for two days goes, one dead for an hour stays.
	_, err = pool.Exec(ctx, `INSERT INTO `+table+`_engines (owner, expires) VALUES
		(1, clock_timestamp() - interval '2 days'), (2, clock_timestamp() - interval '1 hour')`)
	require.NoError(t, err)
	_, err = s.Sweep(ctx, 0)
	require.NoError(t, err)
	require.Zero(t, count(t, pool, `SELECT count(*) FROM `+table+`_engines WHERE owner = 1`))
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM `+table+`_engines WHERE owner = 2`))
	require.Equal(t, 1, count(t, pool, `SELECT count(*) FROM `+table+`_engines WHERE owner = $1`, int64(s.Owner())))
}
