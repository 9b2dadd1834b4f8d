package idemnats_test

// Tests of the store itself, through export_test.go: what the engine's
// behaviour does not show.

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
)

func openTestStore(t testing.TB, nd *idemnats.Node, o idemnats.Options) *idemnats.TestStore {
	t.Helper()
	nc, err := nd.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	if o.Engine == nil {
		o.Engine = &idem.Options{Logger: discardLogger}
	}
	s, err := idemnats.OpenTestStore(nc, &o)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func marker(owner uint64) idem.StoredRecord {
	return idem.StoredRecord{State: idem.StateInFlight, Owner: owner, Created: 1, Expires: int64(time.Hour) + 1}
}

// storeCases are the store's tests, subtests of TestEngineCluster on its
// cluster.
func storeCases(t *testing.T, nodes []*idemnats.Node) {
	t.Run("Operations", func(t *testing.T) { testStoreOperations(t, nodes) })
	t.Run("Keys", func(t *testing.T) { testStoreKeys(t, nodes) })
	t.Run("WatchWakesOnWrite", func(t *testing.T) { testWatchWakes(t, nodes) })
	t.Run("Liveness", func(t *testing.T) { testStoreLiveness(t, nodes) })
	t.Run("ResolveClaims", func(t *testing.T) { testResolveClaims(t, nodes) })
	t.Run("SpuriousRefusals", func(t *testing.T) { testSpurious(t, nodes) })
	t.Run("WatchConnectionClosed", func(t *testing.T) { testWatchClosed(t, nodes) })
	t.Run("Buckets", func(t *testing.T) { testStoreBuckets(t, nodes) })
}

// Create, Update and Delete are compare-and-sets, across stores on
// different nodes.
func testStoreOperations(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	a := openTestStore(t, nodes[0], idemnats.Options{Bucket: "ops", Replicas: 3}).Store()
	b := openTestStore(t, nodes[1], idemnats.Options{Bucket: "ops", Replicas: 3}).Store()
	rec := marker(7)

	_, _, err := b.Get(ctx, "k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	rev, err := a.Create(ctx, "k", rec, idem.WriteClaim)
	require.NoError(t, err)
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
	rev2, err := b.Update(ctx, "k", done, rev, idem.WriteResult)
	require.NoError(t, err)
	_, err = a.Update(ctx, "k", done, rev, idem.WriteResult)
	require.ErrorIs(t, err, idem.ErrStoreConflict, "an update of a stale revision")
	require.ErrorIs(t, a.Delete(ctx, "k", rev, idem.WriteForget), idem.ErrStoreConflict)
	require.NoError(t, a.Delete(ctx, "k", rev2, idem.WriteForget))
	_, _, err = b.Get(ctx, "k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	_, err = b.Update(ctx, "k", done, rev2, idem.WriteResult)
	require.ErrorIs(t, err, idem.ErrStoreConflict, "an update of a deleted record")

	// Create over the delete marker, as KV's Create.
	rev3, err := b.Create(ctx, "k", rec, idem.WriteClaim)
	require.NoError(t, err)
	require.Greater(t, rev3, rev2)
	// Unconditional deletes, of a record and of nothing.
	require.NoError(t, a.Delete(ctx, "k", 0, idem.WriteForget))
	require.NoError(t, a.Delete(ctx, "never", 0, idem.WriteForget))
	require.ErrorIs(t, a.Delete(ctx, "never", 5, idem.WriteForget), idem.ErrStoreConflict)
}

// Keys of any bytes round-trip, and Scan lists them in key order, with
// prefixes and pages.
func testStoreKeys(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	s := openTestStore(t, nodes[0], idemnats.Options{Bucket: "keys", Replicas: 3}).Store()
	keys := []string{"a", "a.b", "a*", "a>", "a b", "ab", "\x00", "\xff\xfe", "é", "b/c", "=", strings.Repeat("k", 512), "a\x00"}
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
	require.Equal(t, want, scan("", 0))
	require.Equal(t, want, scan("", 3))
	require.Equal(t, want, scan("", 1))
	var wantA []string
	for _, k := range want {
		if strings.HasPrefix(k, "a") {
			wantA = append(wantA, k)
		}
	}
	require.Equal(t, wantA, scan("a", 2))
	require.Empty(t, scan("zzz", 2))
}

// Watch returns when the key is written, through the stream's republish:
// with a liveness window of an hour it would otherwise wait half an hour.
func testWatchWakes(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	w := openTestStore(t, nodes[0], idemnats.Options{Bucket: "watch", Replicas: 3, LivenessWindow: time.Hour})
	other := openTestStore(t, nodes[2], idemnats.Options{Bucket: "watch", Replicas: 3}).Store()
	rev, err := other.Create(ctx, "k", marker(9), idem.WriteClaim)
	require.NoError(t, err)

	// A change made before Watch began: it returns at once.
	rev2, err := other.Update(ctx, "k", marker(9), rev, idem.WriteClaim)
	require.NoError(t, err)
	require.NoError(t, w.Watch(ctx, "k", rev))

	for _, change := range []func(rev uint64) error{
		func(rev uint64) error {
			_, err := other.Update(ctx, "k", marker(9), rev, idem.WriteResult)
			return err
		},
		func(rev uint64) error { return other.Delete(ctx, "k", rev, idem.WriteRelease) },
	} {
		done := make(chan error, 1)
		go func() { done <- w.Watch(ctx, "k", rev2) }()
		// Watch may have subscribed or not yet: either way it sees the
		// change, by its read or by the republish.
		require.NoError(t, change(rev2))
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Fatal("Watch did not wake on a write")
		}
		_, rev2, _ = other.Get(ctx, "k")
	}

	// A Watch whose context ends returns its error.
	cctx, cancel := context.WithCancel(ctx)
	rev3, err := other.Create(ctx, "k", marker(9), idem.WriteClaim)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- w.Watch(cctx, "k", rev3) }()
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

// An engine is alive from Open to Close, and not after.
func testStoreLiveness(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	a := openTestStore(t, nodes[0], idemnats.Options{Bucket: "alive", Replicas: 3})
	b := openTestStore(t, nodes[1], idemnats.Options{Bucket: "alive", Replicas: 3})
	alive, err := b.Alive(ctx, a.Owner())
	require.NoError(t, err)
	require.True(t, alive)
	alive, err = b.Alive(ctx, 12345)
	require.NoError(t, err)
	require.False(t, alive, "an owner that never was")
	require.NoError(t, a.Close())
	alive, err = b.Alive(ctx, a.Owner())
	require.NoError(t, err)
	require.False(t, alive, "a closed engine")
	require.NotEqual(t, a.Owner(), b.Owner())
	require.NotZero(t, a.Owner())
}

// A claim whose outcome was unknown is resolved in the background: sent
// again with its Msg-Id, and taken back if it landed.
func testResolveClaims(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	s := openTestStore(t, nodes[0], idemnats.Options{Bucket: "resolve", Replicas: 3})
	st := s.Store()
	mine := marker(s.Owner())
	waitResolved := func() {
		t.Helper()
		require.Eventually(t, func() bool { return s.Unresolved() == 0 }, testTimeout, 10*time.Millisecond)
	}

	// A create that never reached the stream: the resolver stores it,
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
	other := marker(42)
	_, err = st.Create(ctx, "taken", other, idem.WriteClaim)
	require.NoError(t, err)
	s.ResolveClaim("taken", mine, 0)
	waitResolved()
	got, _, err = st.Get(ctx, "taken")
	require.NoError(t, err)
	require.Equal(t, uint64(42), got.Owner)
}

// "Wrong last sequence" refusals that the key does not justify (error
// 10164, while the leader has another write of the key in flight, which it
// may report just after acknowledging this client's own write) are checked
// with a fresh read and sent again: none surfaces as a conflict, and of
// concurrent compare-and-sets of one revision exactly one wins.
func testSpurious(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	openTestStore(t, nodes[0], idemnats.Options{Bucket: "spurious", Replicas: 3}) // creates the bucket
	// Through the stream leader's node, where a client's next write comes
	// soonest after the acknowledgement of its last.
	_, js := connectJS(t, nodes[0])
	leader := nodeIndex(t, nodes, streamInfo(ctx, t, js, "KV_spurious").Cluster.Leader)
	s := openTestStore(t, nodes[leader], idemnats.Options{Bucket: "spurious", Replicas: 3})
	st := s.Store()
	for i := range 40 {
		key := fmt.Sprint(i)
		rev, err := st.Create(ctx, key, marker(s.Owner()), idem.WriteClaim)
		require.NoError(t, err)
		done := marker(s.Owner())
		done.State = idem.StateCompleted
		rev, err = st.Update(ctx, key, done, rev, idem.WriteResult)
		require.NoError(t, err)
		require.NoError(t, st.Delete(ctx, key, rev, idem.WriteForget))
		_, err = st.Create(ctx, key, marker(s.Owner()), idem.WriteClaim)
		require.NoError(t, err)
	}

	others := []idem.Store{st,
		openTestStore(t, nodes[(leader+1)%3], idemnats.Options{Bucket: "spurious"}).Store(),
		openTestStore(t, nodes[(leader+2)%3], idemnats.Options{Bucket: "spurious"}).Store()}
	for i := range 10 {
		key := fmt.Sprint("race", i)
		rev, err := st.Create(ctx, key, marker(s.Owner()), idem.WriteClaim)
		require.NoError(t, err)
		const racers = 6
		errs := make(chan error, racers)
		for r := range racers {
			go func() {
				rec := marker(uint64(100 + r))
				_, err := others[r%len(others)].Update(ctx, key, rec, rev, idem.WriteClaim)
				errs <- err
			}()
		}
		won := 0
		for range racers {
			err := <-errs
			if err == nil {
				won++
			} else {
				require.ErrorIs(t, err, idem.ErrStoreConflict)
			}
		}
		require.Equal(t, 1, won, "compare-and-sets of one revision that succeeded")
	}
	t.Logf("refusals found spurious and sent again: %d", s.Spurious())
}

// Watch on a connection that is closed (it never reconnects) returns an
// error at once, whether the connection closed before the call or while
// it waits, rather than wait out half the liveness window (here half an
// hour) for a read that would fail anyway.
func testWatchClosed(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	other := openTestStore(t, nodes[1], idemnats.Options{Bucket: "watch-closed", Replicas: 3}).Store()
	rev, err := other.Create(ctx, "k", marker(9), idem.WriteClaim)
	require.NoError(t, err)

	for _, closeFirst := range []bool{true, false} {
		nc, err := nodes[0].Connect()
		require.NoError(t, err)
		w, err := idemnats.OpenTestStore(nc, &idemnats.Options{Bucket: "watch-closed", Replicas: 3, LivenessWindow: time.Hour,
			Engine: &idem.Options{Logger: discardLogger}})
		require.NoError(t, err)
		if closeFirst {
			nc.Close()
		}
		done := make(chan error, 1)
		go func() { done <- w.Watch(ctx, "k", rev) }()
		if !closeFirst {
			nc.Close()
		}
		select {
		case err := <-done:
			require.ErrorIs(t, err, nats.ErrConnectionClosed, "closed before Watch: %v", closeFirst)
		case <-ctx.Done():
			t.Fatalf("Watch did not return on a closed connection (closed before Watch: %v)", closeFirst)
		}
		require.NoError(t, w.Close())
	}
}

// With Buckets, Watch wakes on a write of a key of any bucket (each bucket
// republishes its own records), and Scan pages through the keys of all the
// buckets in key order.
func testStoreBuckets(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	const buckets = 3
	opts := idemnats.Options{Bucket: "watchb", Buckets: buckets, Replicas: 3, LivenessWindow: time.Hour}
	w := openTestStore(t, nodes[0], opts)
	other := openTestStore(t, nodes[2], opts).Store()
	// A key of each bucket.
	keys := make([]string, buckets)
	for i, found := 0, 0; found < buckets; i++ {
		k := fmt.Sprint("k", i)
		if b := idemnats.BucketIndex(k, buckets); keys[b] == "" {
			keys[b] = k
			found++
		}
	}
	for b, key := range keys {
		require.Equal(t, []string{"watchb", "watchb-1", "watchb-2"}[b], w.BucketOf(key))
		rev, err := other.Create(ctx, key, marker(9), idem.WriteClaim)
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { done <- w.Watch(ctx, key, rev) }()
		_, err = other.Update(ctx, key, marker(9), rev, idem.WriteResult)
		require.NoError(t, err)
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-ctx.Done():
			t.Fatalf("Watch did not wake on a write of a key of bucket %d", b)
		}
	}

	var all []string
	for i := range 12 {
		key := fmt.Sprint("s", i)
		_, err := other.Create(ctx, key, marker(9), idem.WriteClaim)
		require.NoError(t, err)
		all = append(all, key)
	}
	all = append(all, keys...)
	slices.Sort(all)
	for _, limit := range []int{0, 1, 5} {
		var got []string
		after := ""
		for {
			next, err := w.Store().Scan(ctx, "", after, limit, func(key string, _ idem.StoredRecord, err error) {
				require.NoError(t, err)
				got = append(got, key)
			})
			require.NoError(t, err)
			if next == "" {
				break
			}
			after = next
		}
		require.Equal(t, all, got, "limit %d", limit)
	}
}

// The bucket of a key is FNV-1a (64 bits) of its bytes modulo the count:
// the same in every process and version, or engines would look for records
// in different buckets. Fixed values, and hash/fnv's.
func TestBucketIndex(t *testing.T) {
	for _, c := range []struct {
		key  string
		n    int
		want int
	}{
		{"", 2, 1}, {"", 3, 2}, {"a", 3, 1}, {"a", 7, 5},
		{"key-0", 3, 2}, {"key-1", 3, 1}, {"order-42", 7, 0}, {"\x00\xff", 7, 6},
		{"anything", 1, 0},
	} {
		require.Equal(t, c.want, idemnats.BucketIndex(c.key, c.n), "%q of %d", c.key, c.n)
	}
	for i := range 1000 {
		key := fmt.Sprint("key-", i)
		h := fnv.New64a()
		h.Write([]byte(key))
		for _, n := range []int{2, 3, 5, 256} {
			require.Equal(t, int(h.Sum64()%uint64(n)), idemnats.BucketIndex(key, n))
		}
	}
}

// A request that gets no answer is sent again soon (a second at most for
// the first), since a leader that stopped never answers it; each wait that
// runs out doubles the next, up to a quarter of Timeout (5 s at most).
func TestAttemptTimeouts(t *testing.T) {
	for _, c := range []struct {
		timeout time.Duration
		want    []time.Duration
	}{
		{0, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second}}, // DefaultTimeout, 20 s
		{10 * time.Second, []time.Duration{time.Second, 2 * time.Second, 2500 * time.Millisecond, 2500 * time.Millisecond}},
		{2 * time.Second, []time.Duration{500 * time.Millisecond, 500 * time.Millisecond}},
		{30 * time.Second, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}},
		{100 * time.Millisecond, []time.Duration{100 * time.Millisecond, 100 * time.Millisecond}},
	} {
		got, err := idemnats.AttemptTimeouts(&idemnats.Options{Timeout: c.timeout}, len(c.want))
		require.NoError(t, err)
		require.Equal(t, c.want, got, "Timeout %v", c.timeout)
	}
}

// A create refused for a key that has a record hands the record to the
// engine (idem.ConflictError), so that a replay does not read it again.
func TestCreateConflictCarriesTheRecord(t *testing.T) {
	nodes := startCluster(t, 1)
	e, err := idemnats.Open(newConn(t, nodes[0]), &idemnats.Options{Bucket: "carry"})
	require.NoError(t, err)
	defer e.Close()
	ctx := testCtx(t)
	_, err = e.Do(ctx, "k", []byte("fp"), func(context.Context) ([]byte, error) { return []byte("v"), nil })
	require.NoError(t, err)

	ts, err := idemnats.OpenTestStore(newConn(t, nodes[0]), &idemnats.Options{Bucket: "carry"})
	require.NoError(t, err)
	s := ts.Store()
	defer s.Close()
	_, err = s.Create(ctx, "k", idem.StoredRecord{State: idem.StateInFlight, Owner: ts.Owner(), Created: 1, Expires: 2}, idem.WriteClaim)
	require.ErrorIs(t, err, idem.ErrStoreConflict)
	var ce *idem.ConflictError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, idem.StateCompleted, ce.Record.State)
	require.Equal(t, "v", string(ce.Record.Value))
	require.Equal(t, idem.MakeFingerprint([]byte("fp")), ce.Record.Fingerprint)
	rec, rev, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, rev, ce.Rev)
	require.Equal(t, rec.Value, ce.Record.Value)
}
