package idem

// White-box tests: properties that cannot be observed through the API.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"
)

func openInternal(t testing.TB, fs vfs.FS, o Options) *Engine {
	t.Helper()
	if fs == nil {
		fs = vfs.NewMem()
	}
	o.FS = fs
	if o.SweepInterval == 0 {
		o.SweepInterval = -1
	}
	e, err := Open("db", &o)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

func valueFn(v []byte) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return v, nil }
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []StoredRecord{
		{State: StateInFlight, Fingerprint: digest(nil), Owner: 1, Created: 1, Expires: 2},
		{State: StateCompleted, Fingerprint: digest([]byte("abc")), Owner: 7, Created: -5, Expires: 1 << 62, Value: []byte{}},
		{State: StateCompleted, Fingerprint: digest(bytes.Repeat([]byte("x"), 100)), Value: []byte("value")},
		{State: StateFailed, Fingerprint: digest(bytes.Repeat([]byte("y"), 31)), Err: "declined"},
	} {
		got, err := decodeRecord(r.encode())
		require.NoError(t, err)
		require.Equal(t, r, got)
	}
}

func TestStoredFingerprintIsAtMost32Bytes(t *testing.T) {
	e := openInternal(t, nil, Options{})
	for _, n := range []int{0, 1, 31, 32, 33, 1 << 16} {
		fp := make([]byte, n)
		rand.Read(fp)
		key := fmt.Sprint("k", n)
		_, err := e.Do(context.Background(), key, fp, valueFn([]byte("v")))
		require.NoError(t, err)
		rec, _, found, err := e.local.get(key)
		require.NoError(t, err)
		require.True(t, found)
		require.LessOrEqual(t, len(rec.Fingerprint.Bytes()), 32)
		if n < 32 {
			require.Equal(t, fp, rec.Fingerprint.Bytes()[:n:n])
		}
	}
}

func TestCorruptRecordAffectsOnlyItsKey(t *testing.T) {
	e := openInternal(t, nil, Options{})
	ctx := context.Background()
	e.filter.add("bad") // as the key's owner would, before writing it
	require.NoError(t, e.local.db.Set(recordKey("bad"), []byte{0x93, 0x01, 0xff}, nil))
	_, err := e.Do(ctx, "bad", nil, valueFn([]byte("v")))
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = e.Lookup("bad")
	require.ErrorIs(t, err, ErrCorrupt)
	var sawCorrupt bool
	for _, err := range e.Interrupted() {
		require.ErrorIs(t, err, ErrCorrupt)
		sawCorrupt = true
	}
	require.True(t, sawCorrupt)

	res, err := e.Do(ctx, "good", nil, valueFn([]byte("v")))
	require.NoError(t, err)
	require.False(t, res.Replayed)

	// An operator can forget the corrupt record; the key then works.
	require.NoError(t, e.Forget("bad"))
	res, err = e.Do(ctx, "bad", nil, valueFn([]byte("v")))
	require.NoError(t, err)
	require.False(t, res.Replayed)
}

func TestEpochAdvancesAtEachOpen(t *testing.T) {
	fs := vfs.NewMem()
	for want := uint64(1); want <= 3; want++ {
		e, err := Open("db", &Options{FS: fs, SweepInterval: -1})
		require.NoError(t, err)
		require.Equal(t, want, e.owner)
		require.NoError(t, e.Close())
	}
}

func TestOpenRefusesAnotherFormat(t *testing.T) {
	fs := vfs.NewMem()
	e, err := Open("db", &Options{FS: fs, SweepInterval: -1})
	require.NoError(t, err)
	require.NoError(t, e.local.db.Set(metaFormat, []byte("idem/99"), nil))
	require.NoError(t, e.Close())
	before := snapshotDir(t, fs, "db")
	_, err = Open("db", &Options{FS: fs, SweepInterval: -1})
	require.ErrorContains(t, err, "unsupported data format")
	require.Equal(t, before, snapshotDir(t, fs, "db"), "the refused Open changed the directory")
	// The refused Open released the directory's lock.
	l, err := fs.Lock("db/LOCK")
	require.NoError(t, err)
	require.NoError(t, l.Close())
}

// Interrupted reads records in chunks; it must list every interrupted
// record across chunk boundaries, skip the others, and stop when asked.
func TestInterruptedListsAllAcrossChunks(t *testing.T) {
	clk := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := openInternal(t, nil, Options{Now: func() time.Time { return clk }})
	now := clk.UnixNano()
	const n = 3*scanChunk + 7
	var want []string
	for i := range 2 * n {
		key := fmt.Sprintf("k%05d", i)
		r := StoredRecord{State: StateCompleted, Owner: e.owner, Created: now, Expires: now + int64(time.Hour)}
		if i%2 == 0 {
			r.State, r.Owner = StateInFlight, e.owner-1
			want = append(want, key)
		}
		_, err := e.local.put(key, &r, false)
		require.NoError(t, err)
	}
	var got []string
	for r, err := range e.Interrupted() {
		require.NoError(t, err)
		require.Equal(t, StateInterrupted, r.State)
		got = append(got, r.Key)
	}
	require.Equal(t, want, got)

	count := 0
	for range e.Interrupted() {
		count++
		if count == 5 {
			break
		}
	}
	require.Equal(t, 5, count)
}

// A key held by another call while a sweep passes is left alone, and a
// later sweep removes it.
func TestSweepLeavesHeldKeysToALaterSweep(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := openInternal(t, nil, Options{Now: func() time.Time { return now }, TTL: time.Hour})
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		_, err := e.Do(ctx, k, nil, valueFn([]byte("v")))
		require.NoError(t, err)
	}
	now = now.Add(2 * time.Hour)

	holder := newMaintCall()
	got, _ := e.locks.tryAcquire("b", holder)
	require.Equal(t, claimed, got)
	removed, err := e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, removed)
	e.locks.releaseAll([]string{"b"}, holder)

	removed, err = e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, removed, "the held key was not swept later")
	_, _, found, err := e.local.get("b")
	require.NoError(t, err)
	require.False(t, found)
}

// After a sweep of many expired records and a compaction, the space they
// used is free again.
func TestSweepThenCompactionReclaimsDiskSpace(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 20 MB")
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := openInternal(t, nil, Options{Now: func() time.Time { return now }, TTL: time.Hour, Durability: SyncNone})
	ctx := context.Background()
	const n, size = 4000, 5000
	value := make([]byte, size)
	for i := range n {
		rand.Read(value) // incompressible
		_, err := e.Do(ctx, fmt.Sprintf("key-%06d", i), nil, valueFn(value))
		require.NoError(t, err)
	}
	require.NoError(t, e.local.db.Flush())
	compact := func() {
		require.NoError(t, e.local.db.Compact(ctx, []byte{0}, []byte{0xff}, false))
	}
	compact()
	before := e.Stats().DiskUsage
	require.Greater(t, before, uint64(n*size))

	now = now.Add(61 * time.Minute)
	_, err := e.Do(ctx, "live", nil, valueFn([]byte("stored after the others expired")))
	require.NoError(t, err)
	removed, err := e.Sweep(ctx)
	require.NoError(t, err)
	require.Equal(t, n, removed)
	_, err = e.Lookup("live")
	require.NoError(t, err)
	compact()
	// The records' tables are gone at once; the files they lived in, and
	// the log files Pebble keeps to recycle, are counted until Pebble's
	// cleaner deletes them in the background.
	m := e.local.db.Metrics()
	require.Less(t, m.Table.Local.LiveSize, uint64(n*size/100))
	var after uint64
	require.Eventually(t, func() bool {
		after = e.Stats().DiskUsage
		return after < before/2
	}, 30*time.Second, 10*time.Millisecond, "disk usage did not fall: %d before, %d after", before, after)
	t.Logf("disk usage: %d bytes before the sweep, %d after sweep and compaction (live tables: %d bytes)", before, after, m.Table.Local.LiveSize)
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []StoredRecord{
		{State: StateInFlight, Fingerprint: digest([]byte("fp")), Owner: 3, Created: 10, Expires: 20},
		{State: StateCompleted, Fingerprint: digest(bytes.Repeat([]byte("x"), 40)), Value: []byte("hello")},
		{State: StateFailed, Err: "no"},
	} {
		f.Add(r.encode())
	}
	f.Add([]byte{0x98, 0x01, 0x03, 0xc6, 0xff, 0xff, 0xff, 0xff}) // bin32 claiming 4 GiB
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		lib, libErr := decodeMsgpack(b)
		if (err == nil) != (libErr == nil) {
			t.Fatalf("decodeRecord: %v; the msgpack library: %v", err, libErr)
		}
		if err != nil {
			return
		}
		if !recordsEqual(r, lib) {
			t.Fatalf("decodeRecord read %+v, the msgpack library %+v", r, lib)
		}
		again, err := decodeRecord(r.encode())
		if err != nil {
			t.Fatalf("a decoded record fails to decode once re-encoded: %v", err)
		}
		if fmt.Sprint(again) != fmt.Sprint(r) {
			t.Fatalf("re-encoding changed the record: %+v != %+v", again, r)
		}
	})
}

// A database that idem did not write is refused without a byte of it
// changed, by a writable Open as by a read-only one: a writable pebble.Open
// would ratchet its format, flush its log and write a new MANIFEST and
// OPTIONS before idem could read it.
func TestOpenRefusesAPebbleDatabaseOfAnotherProgram(t *testing.T) {
	fs := vfs.NewMem()
	quiet := pebbleLogger{slog.New(slog.NewTextHandler(io.Discard, nil))}
	db, err := pebble.Open("db", &pebble.Options{FS: fs, Logger: quiet}) // an old format, a WAL to replay
	require.NoError(t, err)
	require.NoError(t, db.Set([]byte("someone else's key"), []byte("v"), pebble.Sync))
	require.NoError(t, db.Close())
	before := snapshotDir(t, fs, "db")
	for _, ro := range []bool{false, true} {
		_, err = Open("db", &Options{FS: fs, ReadOnly: ro})
		require.ErrorIs(t, err, ErrNotDatabase)
		require.ErrorContains(t, err, "db: a Pebble database with other data")
		require.Equal(t, before, snapshotDir(t, fs, "db"), "ReadOnly: %v", ro)
	}
	// The other program can still open it, with its own key.
	db, err = pebble.Open("db", &pebble.Options{FS: fs, Logger: quiet})
	require.NoError(t, err)
	v, closer, err := db.Get([]byte("someone else's key"))
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	closer.Close()
	require.NoError(t, db.Close())
}

// An empty Pebble database, which an Open that died before its first commit
// leaves behind, is refused read-only and made an idem database by a
// writable Open.
func TestOpenTakesAnEmptyPebbleDatabase(t *testing.T) {
	fs := vfs.NewMem()
	o, err := (&Options{FS: fs}).withDefaults()
	require.NoError(t, err)
	db, err := pebble.Open("db", pebbleOptions(&o, nil, false))
	require.NoError(t, err)
	require.NoError(t, db.Close())
	_, err = Open("db", &Options{FS: fs, ReadOnly: true})
	require.ErrorIs(t, err, ErrNotDatabase)
	require.ErrorContains(t, err, "an empty Pebble database")
	e := openInternal(t, fs, Options{})
	_, err = e.Do(context.Background(), "k", nil, valueFn([]byte("v")))
	require.NoError(t, err)
}

// snapshotDir returns the names and contents of the files in dir.
func snapshotDir(t *testing.T, fs vfs.FS, dir string) map[string]string {
	t.Helper()
	names, err := fs.List(dir)
	require.NoError(t, err)
	files := make(map[string]string, len(names))
	for _, name := range names {
		f, err := fs.Open(fs.PathJoin(dir, name))
		require.NoError(t, err)
		b, err := io.ReadAll(f)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		files[name] = string(b)
	}
	return files
}

func TestDecodeRefusesAnOutOfRangeState(t *testing.T) {
	r := StoredRecord{State: StateCompleted}
	b := r.encode()
	// The state is the third byte: a positive fixint. Make it uint16 259,
	// which truncates to 3 (StateCompleted).
	b = append(append(b[:2:2], 0xcd, 0x01, 0x03), b[3:]...)
	_, err := decodeRecord(b)
	require.ErrorContains(t, err, "invalid stored state 259")
}

// cacheShardRecord returns a completed record of n value bytes.
func cacheShardRecord(n int) *StoredRecord {
	return &StoredRecord{State: StateCompleted, Expires: math.MaxInt64, Value: make([]byte, n)}
}

// The record cache of a shard stays within its byte limit, evicts in the
// order records were cached, and its FIFO does not grow with churn that
// leaves the cache's size alone.
func TestRecordCacheShardBounds(t *testing.T) {
	var tab lockTable
	tab.init(numShards * 1000) // 1000 bytes a shard
	// Keys of one shard.
	var keys []string
	s0 := tab.shard("k0")
	for i := 0; len(keys) < 50; i++ {
		if k := fmt.Sprint("k", i); tab.shard(k) == s0 {
			keys = append(keys, k)
		}
	}
	// put releases key with a record read back, as replays would, until
	// the door has admitted it: on the second replay, or on the first when
	// another key of the shard set the same bit of the door (the door's
	// bits depend on a random seed).
	put := func(key string, n int) {
		for range 2 {
			c := newLeaderCall(Fingerprint{})
			_, hit, _, owner := tab.acquire(key, c, 0)
			if hit {
				return
			}
			require.True(t, owner)
			tab.release(key, c, outcome{}, cacheShardRecord(n))
		}
	}
	// 40 value bytes + key + 160 of overhead: 4 records fit in 1000 bytes.
	for _, k := range keys[:10] {
		put(k, 40)
		require.LessOrEqual(t, s0.cacheBytes, 1000)
	}
	require.Len(t, s0.cache, 4)
	for _, k := range keys[6:10] { // the last four cached
		require.Contains(t, s0.cache, k)
	}
	// A record above the limit is not cached, and evicts nothing.
	put(keys[10], 2000)
	require.NotContains(t, s0.cache, keys[10])
	require.Len(t, s0.cache, 4)

	// Churn: one key cached again and again (each Do of it after a Forget
	// or an expiry uncaches it first).
	for i := range 10000 {
		c := newLeaderCall(Fingerprint{})
		_, _, _, owner := tab.acquire(keys[6], c, math.MaxInt64) // expired: uncached
		require.True(t, owner)
		tab.release(keys[6], c, outcome{}, cacheShardRecord(40))
		// keys[6] was admitted before, so the door admits it at once.
		_, cached := s0.cache[keys[6]]
		require.True(t, cached, "round %d", i)
	}
	require.Len(t, s0.cache, 4)
	require.LessOrEqual(t, s0.fifo.len(), 2*len(s0.cache)+17)
	// keys[7] is now the oldest: the next record evicts it, not keys[6].
	put(keys[11], 40)
	require.NotContains(t, s0.cache, keys[7])
	require.Contains(t, s0.cache, keys[6])
	require.Contains(t, s0.cache, keys[11])

	sum := 0
	for k, r := range s0.cache {
		sum += cachedSize(k, r.value, r.errMsg)
	}
	require.Equal(t, sum, s0.cacheBytes)
}

// The background sweeper sweeps a slice of the records each interval; the
// slices of one pass cover every record, so a pass removes every record
// expired when it began, and the next pass starts again from the first.
func TestSweepSlicesCoverAPass(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := openInternal(t, nil, Options{Now: func() time.Time { return now }, TTL: time.Hour, Durability: SyncNone})
	ctx := context.Background()
	const n = 5*sweepBatch + 100
	for i := range n {
		_, err := e.Do(ctx, fmt.Sprintf("k%05d", i), nil, valueFn([]byte("v")))
		require.NoError(t, err)
		if i == n/2 {
			now = now.Add(30 * time.Minute) // the second half expires later
		}
	}
	now = now.Add(45 * time.Minute) // the first half has expired
	var cur sweepCursor
	removed, slices := 0, 0
	for {
		got, err := e.sweepSlice(ctx, &cur, 2*sweepBatch)
		require.NoError(t, err)
		removed += got
		slices++
		if cur.after == nil {
			break
		}
	}
	require.Equal(t, n/2+1, removed)
	require.Equal(t, 3, slices, "slices of at least 2 batches over %d records", n)
	require.EqualValues(t, n, cur.lastPass)

	now = now.Add(time.Hour) // everything has expired
	got, err := e.sweepSlice(ctx, &cur, 1)
	require.NoError(t, err)
	require.Equal(t, sweepBatch, got, "a new pass starts at the first record; one batch at least")
}

func TestSliceQuota(t *testing.T) {
	// A pass takes TTL/8, at least one interval: with a TTL of 24 hours
	// and an interval of a minute, 180 slices of 1/180 of the records.
	require.EqualValues(t, 5556, sliceQuota(1_000_000, 24*time.Hour, time.Minute))
	require.EqualValues(t, 1000, sliceQuota(1000, time.Hour, time.Hour), "one slice a pass")
	require.EqualValues(t, sweepBatch, sliceQuota(10, 24*time.Hour, time.Minute), "at least a batch")
	require.EqualValues(t, sweepBatch, sliceQuota(0, 24*time.Hour, time.Minute))
}

// A directory written by an earlier version ("idem/1") has an expiry index
// (x keys), which nothing reads now: a read-only Open reads the records as
// they are; a writable one deletes the index and upgrades the format.
func TestOpenDropsTheOldExpiryIndex(t *testing.T) {
	fs := vfs.NewMem()
	e := openInternal(t, fs, Options{})
	_, err := e.Do(context.Background(), "k", nil, valueFn([]byte("v")))
	require.NoError(t, err)
	for i := range 100 {
		k := append([]byte{prefixIndex, 0, 0, 0, 0, 0, 0, 0, byte(i)}, "k"...)
		require.NoError(t, e.local.db.Set(k, nil, pebble.Sync))
	}
	require.NoError(t, e.local.db.Set(metaFormat, []byte(formatIdemV1), pebble.Sync))
	require.NoError(t, e.Close())

	// Read-only, the directory is read as it is.
	ro := openInternal(t, fs, Options{ReadOnly: true})
	rec, err := ro.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, "v", string(rec.Value))
	require.NoError(t, ro.Close())

	e = openInternal(t, fs, Options{})
	it, err := e.local.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixIndex}, UpperBound: []byte{prefixIndex + 1}})
	require.NoError(t, err)
	require.False(t, it.First(), "an index key is left")
	require.NoError(t, it.Close())
	format, err := e.local.getMeta(metaFormat)
	require.NoError(t, err)
	require.Equal(t, formatName, string(format), "the format is upgraded")
	res, err := e.Do(context.Background(), "k", nil, valueFn([]byte("other")))
	require.NoError(t, err)
	require.True(t, res.Replayed)
	require.Equal(t, "v", string(res.Value))
}

// The door admits a record on its second replay, whatever other keys of the
// shard were replayed in between (up to its clearing): replaying a set of
// keys in a cycle caches them all.
func TestRecordCacheDoorAdmitsCycles(t *testing.T) {
	var tab lockTable
	tab.init(numShards * 100_000)
	s0 := tab.shard("k0")
	var keys []string
	for i := 0; len(keys) < doorResetAfter/2; i++ {
		if k := fmt.Sprint("k", i); tab.shard(k) == s0 {
			keys = append(keys, k)
		}
	}
	for round := range 3 {
		for _, k := range keys {
			c := newLeaderCall(Fingerprint{})
			if _, hit, _, owner := tab.acquire(k, c, 0); owner {
				tab.release(k, c, outcome{}, cacheShardRecord(10))
			} else {
				require.True(t, hit)
			}
		}
		if round >= 1 {
			require.Len(t, s0.cache, len(keys), "round %d", round)
		}
	}
}

// The background sweeper keeps up with a database that grows: its slices
// are sized by the most records known to be there, not only by the last
// pass's count. Here its first pass meets an empty database, then keys
// arrive at 2,500 an interval with a TTL of 8 intervals: the expired
// records on disk stay within a few intervals' worth (a pass takes TTL/8,
// one interval). Sized by the last pass alone (0), the slices were of 512
// records, and the pass never ended.
func TestSweeperKeepsUpWithGrowth(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const ttl, interval = 8 * time.Minute, time.Minute
	const perTick, ticks = 2500, 20
	e := openInternal(t, nil, Options{Now: func() time.Time { return now }, TTL: ttl, Durability: SyncNone})
	ctx := context.Background()
	var cur sweepCursor
	rng := mrand.New(mrand.NewPCG(1, 2))
	for tick := range ticks {
		now = now.Add(interval)
		if tick > 0 { // the first interval is idle
			for range perTick {
				_, err := e.Do(ctx, fmt.Sprintf("%016x", rng.Uint64()), nil, valueFn([]byte("v")))
				require.NoError(t, err)
			}
		}
		_, err := e.sweepTick(ctx, &cur, interval)
		require.NoError(t, err)
	}
	records := 0
	_, err := e.local.scanChunk([]byte{prefixRecord}, []byte{prefixRecord + 1}, nil, math.MaxInt, func(k, v []byte) { records++ })
	require.NoError(t, err)
	live := int(ttl/interval) * perTick
	require.LessOrEqual(t, records, live+4*perTick, "expired records pile up: %d on disk, %d live", records, live)
}

func TestLockShardLayout(t *testing.T) {
	var s lockShard
	require.EqualValues(t, shardSize, unsafe.Sizeof(s))
	require.EqualValues(t, 0, unsafe.Offsetof(s.mu))
	// The door's counter is 64 bytes before the next shard's mutex.
	require.EqualValues(t, shardSize-64, unsafe.Offsetof(s.doorAdds))
}
