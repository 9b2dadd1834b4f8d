package idem_test

import (
	"context"
	"errors"
	"iter"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemtest"
)

// storeOnly hides the Pebble store's type from the engine, which then runs
// the paths it runs on any store that one engine uses alone (New): a read
// before each claim, no key filter, no sweep (storeOnly has no Sweeper), no
// compaction and no Pebble figures.
type storeOnly struct{ idem.Store }

// storeHarness runs the conformance suite on the engine's generic paths, on
// Pebble stores opened through New. It implements idemtest.Reopener and
// idemtest.SelfSweeping.
type storeHarness struct{ fsHarness }

func newStoreHarness() *storeHarness {
	return &storeHarness{newFSHarness(func(fs vfs.FS, opts *idem.Options) (*idem.Engine, error) {
		st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
		if err != nil {
			return nil, err
		}
		return idem.New(storeOnly{st}, opts)
	})}
}

func (h *storeHarness) SelfSweeping() {}

func TestConformanceNew(t *testing.T) {
	idemtest.Run(t, newStoreHarness())
}

func TestNewRefusesPebbleOnlyOptions(t *testing.T) {
	for _, c := range []struct {
		field string
		opts  idem.Options
	}{
		{"Durability", idem.Options{Durability: idem.SyncNone}},
		{"CacheSize", idem.Options{CacheSize: 1 << 20}},
		{"FS", idem.Options{FS: vfs.NewMem()}},
		{"ReadOnly", idem.Options{ReadOnly: true}},
	} {
		t.Run(c.field, func(t *testing.T) {
			fs := vfs.NewMem()
			st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
			require.NoError(t, err)
			_, err = idem.New(storeOnly{st}, &c.opts)
			require.ErrorContains(t, err, "Options."+c.field)
			// New closed the store: the directory can be opened again.
			e, err := idem.Open(memDir, &idem.Options{FS: fs})
			require.NoError(t, err)
			require.NoError(t, e.Close())
		})
	}
}

// sharedStore says that its store is shared, as a store of several engines
// would; it is used only to see what New accepts.
type sharedStore struct{ idem.Store }

func (s sharedStore) Info() idem.StoreInfo {
	info := s.Store.Info()
	info.Shared = true
	return info
}

func TestNewRefusesRecordCacheOnSharedStore(t *testing.T) {
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: vfs.NewMem()})
	require.NoError(t, err)
	_, err = idem.New(sharedStore{st}, &idem.Options{RecordCacheSize: 1 << 20})
	require.ErrorContains(t, err, "Options.RecordCacheSize")
}

func TestNewNilStore(t *testing.T) {
	_, err := idem.New(nil, nil)
	require.Error(t, err)
}

func TestNewBadOptionsClosesTheStore(t *testing.T) {
	fs := vfs.NewMem()
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
	require.NoError(t, err)
	_, err = idem.New(storeOnly{st}, &idem.Options{TTL: -1})
	require.ErrorContains(t, err, "TTL")
	e, err := idem.Open(memDir, &idem.Options{FS: fs})
	require.NoError(t, err, "New closed the store it refused")
	require.NoError(t, e.Close())
}

// unknownClaims is a shared store (Pebble's underneath, used by one engine)
// whose next claim is stored and then reported as failed, as a claim whose
// write timed out with its outcome unknown is in a shared store. Create
// checks for a record, as a shared store's must: an engine whose calls
// found no record yet claims first.
type unknownClaims struct {
	idem.Store
	failNext atomic.Bool
}

func (s *unknownClaims) Info() idem.StoreInfo {
	info := s.Store.Info()
	info.Shared = true
	return info
}

func (s *unknownClaims) Create(ctx context.Context, key string, rec idem.StoredRecord, w idem.Write) (uint64, error) {
	if _, _, err := s.Store.Get(ctx, key); err == nil {
		return 0, idem.ErrStoreConflict
	}
	rev, err := s.Store.Create(ctx, key, rec, w)
	if err == nil && w == idem.WriteClaim && s.failNext.CompareAndSwap(true, false) {
		return 0, errors.New("timed out: the outcome is unknown")
	}
	return rev, err
}

// A claim of this engine whose write failed but landed is not an
// interrupted run: fn never ran. Until the store takes it back, the engine
// says the key is in flight, and a retry after that runs fn once.
func TestOwnUnresolvedClaimIsInFlightNotInterrupted(t *testing.T) {
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: vfs.NewMem()})
	require.NoError(t, err)
	s := &unknownClaims{Store: st}
	e, err := idem.New(s, nil)
	require.NoError(t, err)
	defer e.Close()
	ctx := context.Background()
	runs := 0
	fn := func(context.Context) ([]byte, error) { runs++; return []byte("v"), nil }

	s.failNext.Store(true)
	_, err = e.Do(ctx, "k", nil, fn)
	require.ErrorContains(t, err, "outcome is unknown")
	require.Zero(t, runs)

	_, err = e.Do(ctx, "k", nil, fn)
	require.ErrorIs(t, err, idem.ErrInFlight)
	require.NotErrorIs(t, err, idem.ErrInterrupted)
	require.Zero(t, runs)
	rec, err := e.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateInFlight, rec.State)
	require.Empty(t, collect(t, e.Interrupted()), "not listed as interrupted")

	// The store takes the claim back (a delete, as idemnats's resolver
	// does); the next call runs fn.
	require.NoError(t, s.Store.Delete(ctx, "k", 0, idem.WriteRelease))
	res, err := e.Do(ctx, "k", nil, fn)
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, 1, runs)
}

func collect(t *testing.T, seq iter.Seq2[idem.Record, error]) []idem.Record {
	t.Helper()
	var out []idem.Record
	for r, err := range seq {
		require.NoError(t, err)
		out = append(out, r)
	}
	return out
}

// carrying is a shared store (Pebble's underneath, one engine) whose Create
// refuses a key with a record by an idem.ConflictError that carries it, as
// idemnats's does; it counts the engine's reads.
type carrying struct {
	idem.Store
	gets atomic.Int64
}

func (s *carrying) Info() idem.StoreInfo {
	info := s.Store.Info()
	info.Shared = true
	return info
}

func (s *carrying) Get(ctx context.Context, key string) (idem.StoredRecord, uint64, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, key)
}

func (s *carrying) Create(ctx context.Context, key string, rec idem.StoredRecord, w idem.Write) (uint64, error) {
	if cur, rev, err := s.Store.Get(ctx, key); err == nil {
		return 0, &idem.ConflictError{Record: cur, Rev: rev}
	}
	return s.Store.Create(ctx, key, rec, w)
}

// A replay on a shared store whose refused claim carries the record reads
// nothing more: one request where there were two.
func TestReplayDecidesOnTheConflictsRecord(t *testing.T) {
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: vfs.NewMem()})
	require.NoError(t, err)
	s := &carrying{Store: st}
	e, err := idem.New(s, nil)
	require.NoError(t, err)
	defer e.Close()
	ctx := context.Background()
	fn := func(context.Context) ([]byte, error) { return []byte("v"), nil }
	_, err = e.Do(ctx, "k", []byte("fp"), fn)
	require.NoError(t, err)
	res, err := e.Do(ctx, "k", []byte("fp"), fn)
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, "v", string(res.Value))
	_, err = e.Do(ctx, "k", []byte("other"), fn)
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	require.Zero(t, s.gets.Load(), "the engine read the key again")
}

// AppendRecord, which shared stores call for every write, grows its dst at
// most once: a record encoded into a fresh slice is one allocation, into a
// slice with room none.
func TestAppendRecordGrowsOnce(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	rec := idem.StoredRecord{State: idem.StateCompleted, Owner: 1 << 40, Created: 1, Expires: 1 << 60, Value: make([]byte, 300), Err: ""}
	want := idem.AppendRecord(nil, &rec)
	require.Equal(t, append([]byte("prefix"), want...), idem.AppendRecord([]byte("prefix"), &rec))
	require.Equal(t, 1.0, testing.AllocsPerRun(20, func() { idem.AppendRecord(nil, &rec) }))
	room := make([]byte, 0, len(want))
	require.Zero(t, testing.AllocsPerRun(20, func() { idem.AppendRecord(room, &rec) }))
}
