package idem_test

import (
	"context"
	"fmt"
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

func TestSweepRemovesExpiredInterruptedMarkers(t *testing.T) {
	img := crashWhileFnRuns(t, idem.SyncAll, "k")
	clk := newClock()
	clk.Advance(48 * time.Hour)
	e := open(t, img, "db", &idem.Options{Now: clk.Now})
	for range e.Interrupted() {
		t.Fatal("an expired marker is not listed")
	}
	removed, err := e.Sweep(context.Background())
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
