package idem_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemtest"
)

// counting is a store (Pebble's underneath, one engine) that counts the
// engine's Gets and Creates. Shared, it says so, and its Create refuses a
// key with a record, as a shared store's must: with an idem.ConflictError
// that carries the record if carry is set (as idemnats's does), with
// idem.ErrStoreConflict alone otherwise.
type counting struct {
	idem.Store
	shared, carry bool
	gets, creates atomic.Int64
}

func (s *counting) Info() idem.StoreInfo {
	info := s.Store.Info()
	info.Shared = s.shared
	return info
}

func (s *counting) Get(ctx context.Context, key string) (idem.StoredRecord, uint64, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, key)
}

func (s *counting) Create(ctx context.Context, key string, rec idem.StoredRecord, w idem.Write) (uint64, error) {
	s.creates.Add(1)
	if cur, rev, err := s.Store.Get(ctx, key); err == nil {
		if s.carry {
			return 0, &idem.ConflictError{Record: cur, Rev: rev}
		}
		return 0, idem.ErrStoreConflict
	}
	return s.Store.Create(ctx, key, rec, w)
}

// orderFixture is an engine on a counting store, and a Do that returns
// what one call asked of the store.
type orderFixture struct {
	t    *testing.T
	s    *counting
	e    *idem.Engine
	runs int
}

func newOrderFixture(t *testing.T, shared, carry bool) *orderFixture {
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: vfs.NewMem()})
	require.NoError(t, err)
	f := &orderFixture{t: t, s: &counting{Store: st, shared: shared, carry: carry}}
	var opts idem.Options
	if !shared {
		opts.RecordCacheSize = -1 // every replay a lead (a shared store has no cache)
	}
	f.e, err = idem.New(f.s, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { f.e.Close() })
	return f
}

// do calls Do on key, checks that it replayed or ran fn as replay says, and
// returns the Gets and Creates the call made.
func (f *orderFixture) do(key string, replay bool) (gets, creates int64) {
	f.t.Helper()
	g, c, runs := f.s.gets.Load(), f.s.creates.Load(), f.runs
	res, err := f.e.Do(context.Background(), key, nil, func(context.Context) ([]byte, error) {
		f.runs++
		return []byte("v:" + key), nil
	})
	require.NoError(f.t, err)
	require.Equal(f.t, replay, res.Replayed, key)
	require.Equal(f.t, "v:"+key, string(res.Value))
	if replay {
		require.Equal(f.t, runs, f.runs, "fn ran for a replay of %s", key)
	} else {
		require.Equal(f.t, runs+1, f.runs, "fn did not run once for %s", key)
	}
	return f.s.gets.Load() - g, f.s.creates.Load() - c
}

// switchBound is how many leads the engine may take to follow a change from
// all new keys to all replays, or back (11 with the weight of 1/16: see
// keyMix).
const switchBound = 16

// On a shared store the engine claims first while its keys are new, reads
// first once most of them are replays, and claims first again once they are
// new again: what the store sees, call by call.
func TestSharedStoreOrderFollowsTheMix(t *testing.T) {
	for _, carry := range []bool{true, false} {
		t.Run(fmt.Sprintf("carry=%v", carry), func(t *testing.T) {
			f := newOrderFixture(t, true, carry)
			const n = 200

			// New keys: a Create each, no Get.
			for i := range n {
				gets, creates := f.do(fmt.Sprint("a", i), false)
				require.Equal(t, [2]int64{0, 1}, [2]int64{gets, creates}, "new key %d", i)
			}

			// Replays: a refused Create each (and a Get, unless the
			// refusal carries the record), until the engine reads first;
			// then a Get each, no Create.
			wantGets := int64(1)
			if carry {
				wantGets = 0
			}
			switched := -1
			for i := range n {
				gets, creates := f.do(fmt.Sprint("a", i), true)
				if switched < 0 && creates == 0 {
					switched = i
				}
				if switched < 0 {
					require.Equal(t, [2]int64{wantGets, 1}, [2]int64{gets, creates}, "replay %d, claiming first", i)
				} else {
					require.Equal(t, [2]int64{1, 0}, [2]int64{gets, creates}, "replay %d, reading first from replay %d", i, switched)
				}
			}
			require.Positive(t, switched, "one replay after new keys made the engine read first")
			require.LessOrEqual(t, switched, switchBound, "replays before the engine read first")

			// New keys again: a Get and a Create each, until the engine
			// claims first again; then a Create each, no Get.
			switched = -1
			for i := range n {
				gets, creates := f.do(fmt.Sprint("b", i), false)
				if switched < 0 && gets == 0 {
					switched = i
				}
				if switched < 0 {
					require.Equal(t, [2]int64{1, 1}, [2]int64{gets, creates}, "new key %d, reading first", i)
				} else {
					require.Equal(t, [2]int64{0, 1}, [2]int64{gets, creates}, "new key %d, claiming first from key %d", i, switched)
				}
			}
			require.Positive(t, switched, "one new key after replays made the engine claim first")
			require.LessOrEqual(t, switched, switchBound, "new keys before the engine claimed first")
		})
	}
}

// A mix of replays and new keys keeps the engine on the cheaper side of one
// half: with one replay in four it claims first throughout; with three in
// four it reads first throughout, once it has followed the change.
func TestSharedStoreOrderOnAMix(t *testing.T) {
	f := newOrderFixture(t, true, true)
	f.do("seed", false)
	next := 0
	// round makes 4 calls, replays of them the first r, and returns what
	// they asked of the store.
	round := func(r int) (gets, creates int64) {
		for j := range 4 {
			key, replay := "seed", true
			if j >= r {
				key, replay = fmt.Sprint("k", next), false
				next++
			}
			g, c := f.do(key, replay)
			gets, creates = gets+g, creates+c
		}
		return gets, creates
	}
	for i := range 100 {
		gets, creates := round(1)
		require.Equal(t, [2]int64{0, 4}, [2]int64{gets, creates}, "round %d, a quarter replays", i)
	}
	for i := range 100 {
		gets, creates := round(3)
		if i >= switchBound {
			require.Equal(t, [2]int64{4, 1}, [2]int64{gets, creates}, "round %d, three quarters replays", i)
		}
	}
}

// A store of the engine's own (not shared) is read before every claim,
// whatever the mix: the order is unchanged.
func TestUnsharedStoreReadsFirst(t *testing.T) {
	f := newOrderFixture(t, false, false)
	for i := range 50 {
		gets, creates := f.do(fmt.Sprint("a", i), false)
		require.Equal(t, [2]int64{1, 1}, [2]int64{gets, creates}, "new key %d", i)
	}
	for i := range 50 {
		gets, creates := f.do(fmt.Sprint("a", i), true)
		require.Equal(t, [2]int64{1, 0}, [2]int64{gets, creates}, "replay %d", i)
	}
}

// sharedHarness runs the conformance suite on an engine that takes its
// Pebble store for a shared one (counting, with carry), started claiming
// first or, with readFirst, reading first: either way the engine changes
// order as its calls go, and must pass.
type sharedHarness struct{ fsHarness }

func newSharedHarness(readFirst bool) *sharedHarness {
	return &sharedHarness{newFSHarness(func(fs vfs.FS, opts *idem.Options) (*idem.Engine, error) {
		st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
		if err != nil {
			return nil, err
		}
		e, err := idem.New(&counting{Store: st, shared: true, carry: true}, opts)
		if err == nil && readFirst {
			idem.ReadFirst(e)
		}
		return e, err
	})}
}

func (h *sharedHarness) SelfSweeping() {}

func TestConformanceSharedOrder(t *testing.T) {
	t.Run("claimFirst", func(t *testing.T) { idemtest.Run(t, newSharedHarness(false)) })
	t.Run("readFirst", func(t *testing.T) { idemtest.Run(t, newSharedHarness(true)) })
}
