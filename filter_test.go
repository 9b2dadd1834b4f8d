package idem

import (
	"context"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"
)

func TestBloomHasNoFalseNegatives(t *testing.T) {
	b := newBloom(10000, maphash.MakeSeed())
	for i := range 10000 {
		b.add(fmt.Sprint("in-", i))
	}
	for i := range 10000 {
		require.True(t, b.mayContain(fmt.Sprint("in-", i)))
	}
	fp := 0
	for i := range 100000 {
		if b.mayContain(fmt.Sprint("out-", i)) {
			fp++
		}
	}
	t.Logf("false positives: %.2f%%", float64(fp)/1000)
	require.Less(t, fp, 3000, "far more false positives than designed (~1%)")
}

// With tiny filters, rebuilds happen all the time while calls store new
// keys and replay old ones: no key may ever read as absent once it has a
// record, or fn would run twice. The second round starts from a scan of
// the records.
func TestFilterRebuildsNeverLoseAKey(t *testing.T) {
	defer func(n int64) { filterMinKeys = n }(filterMinKeys)
	filterMinKeys = 64
	fs := vfs.NewMem()
	const keys, goroutines = 1500, 8
	var runs [keys]atomic.Int64
	for round := range 2 {
		e := openInternal(t, fs, Options{Durability: SyncNone, RecordCacheSize: -1})
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(g), uint64(round)))
				for range keys {
					// Mostly new keys in order, with retries of earlier ones.
					k := rng.IntN(keys)
					_, err := e.Do(context.Background(), fmt.Sprint("key-", k), nil, func(context.Context) ([]byte, error) {
						runs[k].Add(1)
						return []byte("v"), nil
					})
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		e.filter.wait()
		require.NoError(t, e.Close())
	}
	for k := range keys {
		require.LessOrEqual(t, runs[k].Load(), int64(1), "key %d ran %d times", k, runs[k].Load())
	}
}

func TestFilterIsBuiltFromTheRecordsAtOpen(t *testing.T) {
	fs := vfs.NewMem()
	e := openInternal(t, fs, Options{RecordCacheSize: -1})
	for i := range 100 {
		_, err := e.Do(context.Background(), fmt.Sprint(i), nil, valueFn([]byte("v")))
		require.NoError(t, err)
	}
	require.NoError(t, e.Close())
	e = openInternal(t, fs, Options{RecordCacheSize: -1})
	e.filter.wait()
	require.NotNil(t, e.filter.current.Load())
	for i := range 100 {
		require.False(t, e.filter.absent(fmt.Sprint(i)))
		res, err := e.Do(context.Background(), fmt.Sprint(i), nil, valueFn([]byte("other")))
		require.NoError(t, err)
		require.True(t, res.Replayed)
	}
}
