package idem_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

func TestSweepRemovesExpiredRecordsAndNeverLiveOnes(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour})
	ctx := context.Background()
	// 1,500 records, one minute apart in creation: more than one sweep
	// batch expires at once.
	const n = 1500
	for i := range n {
		_, err := e.Do(ctx, fmt.Sprint("k", i), nil, (&counter{}).fn(fmt.Sprint("v", i)))
		require.NoError(t, err)
		clk.Advance(time.Second)
	}
	// Now the first 900 records are an hour old or more (expiry is
	// inclusive: a record expires at CreatedAt+TTL).
	clk.Advance(time.Hour - (n-899)*time.Second)
	removed, err := e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 900, removed)
	require.Equal(t, uint64(900), e.Stats().Swept)
	for i := 900; i < n; i++ {
		rec, err := e.Lookup(fmt.Sprint("k", i))
		require.NoError(t, err, "live record %d", i)
		require.Equal(t, fmt.Sprint("v", i), string(rec.Value))
	}
	removed, err = e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, removed, "a second sweep finds nothing")

	// Swept records are gone, not only invisible: with the clock set back
	// before their expiry they still do not show.
	clk.Advance(-2 * time.Hour)
	for i := range 900 {
		_, err := e.Lookup(fmt.Sprint("k", i))
		require.ErrorIs(t, err, idem.ErrNotFound, "swept record %d", i)
	}
	_, err = e.Lookup("k900")
	require.NoError(t, err)
}

func TestSweepKeepsARecordStoredAgainAfterExpiry(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour})
	ctx := context.Background()
	var c counter
	_, err := e.Do(ctx, "k", nil, c.fn("old"))
	require.NoError(t, err)
	clk.Advance(2 * time.Hour)
	_, err = e.Do(ctx, "k", nil, c.fn("new")) // expired: runs again
	require.NoError(t, err)
	removed, err := e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, removed)
	rec, err := e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, "new", string(rec.Value))

	// And once the new one expires, it is swept like any other.
	clk.Advance(2 * time.Hour)
	removed, err = e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, removed)
}

// The crash image is made on the test's clock, as every engine here: one
// stamped with the real clock would expire, or not, by the day the test
// runs.
func TestSweepRemovesExpiredInterruptedMarkers(t *testing.T) {
	clk := newClock()
	img := crashWhileFnRunsWith(t, &idem.Options{Now: clk.Now, Durability: idem.SyncAll}, "k")
	clk.Advance(idem.DefaultTTL - time.Minute)
	e := open(t, img, "db", &idem.Options{Now: clk.Now})
	var listed []string
	for r, err := range e.Interrupted() {
		require.NoError(t, err)
		listed = append(listed, r.Key)
	}
	require.Equal(t, []string{"k"}, listed, "a live marker is listed")
	removed, err := e.Sweep(context.Background())
	require.NoError(t, err)
	require.Equal(t, 0, removed, "a live marker is kept")
	require.NoError(t, e.Close())

	clk.Advance(time.Minute) // expiry is inclusive
	e = open(t, img, "db", &idem.Options{Now: clk.Now})
	for range e.Interrupted() {
		t.Fatal("an expired marker is not listed")
	}
	removed, err = e.Sweep(context.Background())
	require.NoError(t, err)
	require.Equal(t, 1, removed)
}

func TestSweepStopsWhenItsContextEnds(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now})
	for i := range 10 {
		_, err := e.Do(context.Background(), fmt.Sprint(i), nil, (&counter{}).fn("v"))
		require.NoError(t, err)
	}
	clk.Advance(48 * time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.Sweep(ctx)
	require.ErrorIs(t, err, context.Canceled)
	removed, err := e.Sweep(context.Background())
	require.NoError(t, err)
	require.Equal(t, 10, removed)
}

func TestBackgroundSweeper(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, SweepInterval: time.Millisecond})
	for i := range 50 {
		_, err := e.Do(context.Background(), fmt.Sprint(i), nil, (&counter{}).fn("v"))
		require.NoError(t, err)
	}
	clk.Advance(idem.DefaultTTL)
	eventually(t, func() bool { return e.Stats().Swept == 50 }, "the background sweeper did not sweep")
}

// Do calls for keys that a sweep batch holds wait for it and then go on; a
// sweep's claim spans many shards at once (run with -race).
func TestSweepWhileDoCallsTheSameKeys(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour})
	ctx := context.Background()
	const n = 400
	var first counter
	for i := range n {
		_, err := e.Do(ctx, fmt.Sprint(i), nil, first.fn("v1"))
		require.NoError(t, err)
	}
	clk.Advance(2 * time.Hour)
	var again counter
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := e.Sweep(ctx)
		require.NoError(t, err)
	}()
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				res, err := e.Do(ctx, fmt.Sprint(i), nil, again.fn("v2"))
				require.NoError(t, err)
				require.Equal(t, "v2", string(res.Value))
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int64(n), again.runs.Load(), "every expired key runs once more")
	for i := range n {
		rec, err := e.Lookup(fmt.Sprint(i))
		require.NoError(t, err, "a record stored during the sweep was lost: %d", i)
		require.Equal(t, "v2", string(rec.Value))
	}
}

// A result lives TTL from when it was stored, whatever the durability and
// however long fn ran: a caller who has seen an outcome can count on its
// replay for a whole TTL. CreatedAt is when the result was stored.
func TestExpiryCountsFromTheStore(t *testing.T) {
	for _, d := range []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone} {
		t.Run(d.String(), func(t *testing.T) {
			clk := newClock()
			e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour, Durability: d})
			var runs atomic.Int64
			fn := func(context.Context) ([]byte, error) {
				runs.Add(1)
				clk.Advance(90 * time.Minute) // longer than the TTL
				return []byte("v"), nil
			}
			res, err := e.Do(context.Background(), "k", nil, fn)
			require.NoError(t, err)
			stored := clk.Now()
			require.True(t, stored.Equal(res.CreatedAt), "CreatedAt %v", res.CreatedAt)
			require.True(t, stored.Add(time.Hour).Equal(res.ExpiresAt), "ExpiresAt %v", res.ExpiresAt)

			// The client's immediate retry is a replay, not a second run.
			res, err = e.Do(context.Background(), "k", nil, fn)
			require.NoError(t, err)
			require.True(t, res.Replayed)
			require.EqualValues(t, 1, runs.Load())
			rec, err := e.Lookup("k")
			require.NoError(t, err)
			require.True(t, stored.Add(time.Hour).Equal(rec.ExpiresAt), "ExpiresAt %v", rec.ExpiresAt)

			clk.Advance(time.Hour - time.Nanosecond)
			_, err = e.Lookup("k")
			require.NoError(t, err, "expired before a whole TTL after it was stored")
			clk.Advance(time.Nanosecond)
			_, err = e.Lookup("k")
			require.ErrorIs(t, err, idem.ErrNotFound)
		})
	}
}
