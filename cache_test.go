package idem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

// The record cache answers replays of recent keys; everything that changes a
// record must show through it. Each check runs with the cache on and off.
func TestRecordCacheStaysCurrent(t *testing.T) {
	for _, size := range []int64{0, -1} {
		t.Run(map[int64]string{0: "cache", -1: "nocache"}[size], func(t *testing.T) {
			clk := newClock()
			e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour, RecordCacheSize: size})
			ctx := context.Background()
			var c counter
			do := func(fp, v string) (idem.Result, error) { return e.Do(ctx, "k", []byte(fp), c.fn(v)) }

			_, err := do("a", "v1")
			require.NoError(t, err)
			res, err := do("a", "x") // replay (cached, if on)
			require.NoError(t, err)
			require.True(t, res.Replayed)
			require.Equal(t, "v1", string(res.Value))
			res.Value[0] = 'X' // the caller's copy
			_, err = do("b", "x")
			require.ErrorIs(t, err, idem.ErrFingerprintMismatch)

			require.NoError(t, e.Forget("k"))
			res, err = do("b", "v2") // forgotten: runs, with another fingerprint
			require.NoError(t, err)
			require.False(t, res.Replayed)

			clk.Advance(time.Hour)
			res, err = do("b", "v3") // expired: runs again
			require.NoError(t, err)
			require.False(t, res.Replayed)
			require.Equal(t, "v3", string(res.Value))

			clk.Advance(time.Hour)
			n, err := e.Sweep(ctx)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			clk.Advance(-2 * time.Hour) // swept: gone even with the clock set back
			res, err = do("c", "v4")
			require.NoError(t, err)
			require.False(t, res.Replayed)

			_, err = e.Do(ctx, "p", nil, func(context.Context) ([]byte, error) {
				return nil, idem.Permanent(errors.New("declined"))
			})
			require.Error(t, err)
			for range 2 {
				res, err = e.Do(ctx, "p", nil, c.fn("x"))
				require.EqualError(t, err, "declined")
				var perm *idem.PermanentError
				require.ErrorAs(t, err, &perm)
				require.True(t, res.Replayed)
			}
			require.Equal(t, int64(4), c.runs.Load())
		})
	}
}

// Under SyncNone no in-flight marker is written: the lock table alone keeps
// duplicates out, and a crash leaves nothing to report as interrupted.
func TestSyncNoneWritesNoMarker(t *testing.T) {
	e := open(t, nil, "db", &idem.Options{Durability: idem.SyncNone})
	b := newBlocker("v")
	ch := goDo(context.Background(), e, "k", nil, b.fn)
	<-b.started
	_, err := e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	r := waitFor(t, goDo(context.Background(), e, "k", []byte("other"), b.fn))
	require.ErrorIs(t, r.err, idem.ErrFingerprintMismatch)
	close(b.release)
	require.NoError(t, waitFor(t, ch).err)
	rec, err := e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
}
