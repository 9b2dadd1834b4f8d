package idemnats_test

// The engine's contract on a bucket that engines on the nodes of a 3-node
// cluster share. The cases of one cluster run as subtests of one test
// (TestEngineCluster, with the store's own tests of store_test.go), one
// after another, each on a bucket of its own.

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
)

// openEngine opens an engine on bucket (3 replicas), through a connection
// of its own to nd; mod, if not nil, changes the options first. The engine
// and the connection are closed when t ends.
func openEngine(t testing.TB, nd *idemnats.Node, bucket string, mod func(*idemnats.Options)) (*idem.Engine, *nats.Conn) {
	t.Helper()
	nc, err := nd.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close) // runs after the engine's Close, registered below
	o := idemnats.Options{Bucket: bucket, Replicas: 3, Engine: &idem.Options{Logger: discardLogger}}
	if mod != nil {
		mod(&o)
	}
	e, err := idemnats.Open(nc, &o)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e, nc
}

// openEngines opens an engine on bucket on each node; mod, if not nil,
// changes the options first.
func openEngines(t testing.TB, nodes []*idemnats.Node, bucket string, mods ...func(*idemnats.Options)) []*idem.Engine {
	t.Helper()
	es := make([]*idem.Engine, len(nodes))
	for i, nd := range nodes {
		es[i], _ = openEngine(t, nd, bucket, func(o *idemnats.Options) {
			for _, mod := range mods {
				mod(o)
			}
		})
	}
	return es
}

// blocker is an fn that signals its start and returns its value once
// released, counting its runs.
type blocker struct {
	runs    *atomic.Int64 // shared with other fns
	n       atomic.Int64  // this fn's runs
	value   string
	started chan struct{}
	release chan struct{}
	once    sync.Once // closes release
}

// newBlocker returns a blocker of value v, released when t ends if not
// before: a failed test must not leave fn holding the engine's Close.
func newBlocker(t testing.TB, runs *atomic.Int64, v string) *blocker {
	b := &blocker{runs: runs, value: v, started: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(b.unblock)
	return b
}

func (b *blocker) unblock() { b.once.Do(func() { close(b.release) }) }

func (b *blocker) fn(context.Context) ([]byte, error) {
	b.runs.Add(1)
	if b.n.Add(1) == 1 {
		close(b.started)
	}
	<-b.release
	return []byte(b.value), nil
}

func valueFn(runs *atomic.Int64, v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte(v), nil
	}
}

type outcome struct {
	res idem.Result
	err error
}

func goDo(ctx context.Context, e *idem.Engine, key string, fp []byte, fn func(context.Context) ([]byte, error)) <-chan outcome {
	ch := make(chan outcome, 1)
	go func() {
		res, err := e.Do(ctx, key, fp, fn)
		ch <- outcome{res, err}
	}()
	return ch
}

func wait(t testing.TB, ch <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(testTimeout):
		t.Fatal("Do did not return")
		return outcome{}
	}
}

func waitClosed(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("%s did not happen", what)
	}
}

func waitWaits(t testing.TB, e *idem.Engine, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return e.Stats().Waits >= n }, testTimeout, 5*time.Millisecond,
		"%d calls did not wait", n)
}

func TestEngineCluster(t *testing.T) {
	nodes := startCluster(t, 3)
	t.Run("ExactlyOnce", func(t *testing.T) {
		testExactlyOnce(t, openEngines(t, nodes, "once"), 200, 6)
	})
	t.Run("Waits", func(t *testing.T) { testWaits(t, nodes) })
	t.Run("Mismatch", func(t *testing.T) { testMismatch(t, nodes) })
	t.Run("Forget", func(t *testing.T) { testForget(t, nodes) })
	t.Run("DeadEngine", func(t *testing.T) { testDeadEngine(t, nodes) })
	t.Run("FreshRead", func(t *testing.T) { testFreshRead(t, nodes) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, nodes) })
	t.Run("CorruptRecord", func(t *testing.T) { testCorruptRecord(t, nodes) })
	t.Run("ValueSize", func(t *testing.T) { testValueSize(t, nodes) })
	t.Run("IncompatibleBucket", func(t *testing.T) { testIncompatibleBucket(t, nodes) })
	t.Run("DefaultLayout", func(t *testing.T) { testDefaultLayout(t, nodes) })
	t.Run("Buckets", func(t *testing.T) { testBuckets(t, nodes) })
	t.Run("Store", func(t *testing.T) { storeCases(t, nodes) })
}

// Keys, each called by callers spread over the engines (on three nodes)
// at once: fn runs once per key, and every caller gets the value of that
// run.
func testExactlyOnce(t *testing.T, es []*idem.Engine, keys, callers int) {
	ctx := testCtx(t)
	runs := make([]atomic.Int64, keys)
	type got struct {
		key   int
		value string
		fresh bool
	}
	results := make(chan got, keys*callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for k := range keys {
		for c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				e := es[c%len(es)]
				key := fmt.Sprintf("key-%d", k)
				res, err := e.Do(ctx, key, []byte("fp"), func(context.Context) ([]byte, error) {
					runs[k].Add(1)
					return fmt.Appendf(nil, "%s by engine %d", key, c%len(es)), nil
				})
				if !assertNoError(t, err) {
					return
				}
				results <- got{k, string(res.Value), !res.Replayed}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(results)
	values := make([]string, keys)
	fresh := make([]int, keys)
	n := 0
	for r := range results {
		n++
		if values[r.key] == "" {
			values[r.key] = r.value
		}
		require.Equal(t, values[r.key], r.value, "key %d: callers got different values", r.key)
		if r.fresh {
			fresh[r.key]++
		}
	}
	require.Equal(t, keys*callers, n)
	for k := range keys {
		require.Equal(t, int64(1), runs[k].Load(), "key %d: fn runs", k)
		require.Equal(t, 1, fresh[k], "key %d: calls not replayed", k)
	}
	var execs, waits uint64
	for _, e := range es {
		st := e.Stats()
		execs += st.Executions
		waits += st.Waits
	}
	require.Equal(t, uint64(keys), execs)
	t.Logf("%d calls over %d engines: %d waited for another call", keys*callers, len(es), waits)
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("Do: %v", err)
		return false
	}
	return true
}

// Calls on other engines wait for a running fn and share its value; with
// NoWait they get ErrInFlight, and a waiting call whose context ends gets
// ErrInFlight and the context's error.
func testWaits(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	es := openEngines(t, nodes, "waits")
	noWait, _ := openEngine(t, nodes[1], "waits", func(o *idemnats.Options) { o.Engine.NoWait = true })

	var runs atomic.Int64
	b := newBlocker(t, &runs, "slow")
	leader := goDo(ctx, es[0], "w", nil, b.fn)
	waitClosed(t, b.started, "fn's start")

	w1 := goDo(ctx, es[1], "w", nil, valueFn(&runs, "other"))
	w2 := goDo(ctx, es[2], "w", nil, valueFn(&runs, "other"))
	waitWaits(t, es[1], 1)
	waitWaits(t, es[2], 1)

	_, err := noWait.Do(ctx, "w", nil, valueFn(&runs, "other"))
	require.ErrorIs(t, err, idem.ErrInFlight)

	cctx, cancel := context.WithCancel(ctx)
	w3 := goDo(cctx, es[2], "w", nil, valueFn(&runs, "other"))
	// es[2] has one call waiting (w2); w3 waits in es[2]'s own lock table
	// behind it, or on the claim: either way Waits counts it.
	waitWaits(t, es[2], 2)
	cancel()
	o := wait(t, w3)
	require.ErrorIs(t, o.err, idem.ErrInFlight)
	require.ErrorIs(t, o.err, context.Canceled)

	b.unblock()
	o = wait(t, leader)
	require.NoError(t, o.err)
	require.False(t, o.res.Replayed)
	for _, ch := range []<-chan outcome{w1, w2} {
		o := wait(t, ch)
		require.NoError(t, o.err)
		require.Equal(t, "slow", string(o.res.Value))
		require.True(t, o.res.Replayed)
	}
	require.Equal(t, int64(1), runs.Load())
}

// A key reused with another fingerprint is refused on every engine, stored
// or running.
func testMismatch(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	es := openEngines(t, nodes, "mismatch")
	var runs atomic.Int64
	_, err := es[0].Do(ctx, "stored", []byte("A"), valueFn(&runs, "v"))
	require.NoError(t, err)
	for _, e := range es[1:] {
		_, err := e.Do(ctx, "stored", []byte("B"), valueFn(&runs, "v"))
		require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	}

	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, es[0], "running", []byte("A"), b.fn)
	waitClosed(t, b.started, "fn's start")
	for _, e := range es[1:] {
		_, err := e.Do(ctx, "running", []byte("B"), valueFn(&runs, "v"))
		require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	}
	b.unblock()
	require.NoError(t, wait(t, leader).err)
	require.Equal(t, int64(2), runs.Load())
}

// Forget on one engine: the next Do on every engine runs fn.
func testForget(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	es := openEngines(t, nodes, "forget")
	for i, forgetter := range es {
		key := fmt.Sprintf("k%d", i)
		var runs atomic.Int64
		_, err := es[(i+1)%len(es)].Do(ctx, key, nil, valueFn(&runs, "v1"))
		require.NoError(t, err)
		for _, e := range es { // every engine has replayed it
			res, err := e.Do(ctx, key, nil, valueFn(&runs, "v1"))
			require.NoError(t, err)
			require.True(t, res.Replayed)
		}
		require.NoError(t, forgetter.Forget(key))
		for _, e := range es {
			_, err := e.Lookup(key)
			require.ErrorIs(t, err, idem.ErrNotFound)
		}
		res, err := es[(i+2)%len(es)].Do(ctx, key, []byte("new"), valueFn(&runs, "v2"))
		require.NoError(t, err)
		require.False(t, res.Replayed)
		for _, e := range es {
			res, err := e.Do(ctx, key, []byte("new"), valueFn(&runs, "v3"))
			require.NoError(t, err)
			require.Equal(t, "v2", string(res.Value))
		}
		require.Equal(t, int64(2), runs.Load())
	}
}

// An engine that dies while its fn runs: the others wait while it is alive,
// however slow its fn, and report ErrInterrupted once its liveness window
// has lapsed; they never run fn, unless RetryInterrupted.
func testDeadEngine(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	const window = 2 * time.Second
	short := func(o *idemnats.Options) { o.LivenessWindow = window }
	dying, dyingConn := openEngine(t, nodes[2], "dead", short)
	other, _ := openEngine(t, nodes[0], "dead", short)

	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	dead := goDo(ctx, dying, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")

	waiter := goDo(ctx, other, "k", nil, valueFn(&runs, "other"))
	waitWaits(t, other, 1)
	// The dying engine is alive, its fn slow: through more than a whole
	// liveness window, the waiting call goes on waiting (it reads the key
	// and asks whether the claim's engine is alive every window/2).
	select {
	case o := <-waiter:
		t.Fatalf("the waiting call returned while the claim's engine was alive: %v", o.err)
	case <-time.After(window + window/3):
	}

	dyingConn.Close() // the engine dies: no Close, its heartbeat stops
	o := wait(t, waiter)
	require.ErrorIs(t, o.err, idem.ErrInterrupted)
	rec, err := other.Lookup("k")
	require.NoError(t, err)
	require.Equal(t, idem.StateInterrupted, rec.State)
	require.Equal(t, int64(1), runs.Load(), "fn ran again")

	retry, _ := openEngine(t, nodes[1], "dead", func(o *idemnats.Options) { o.Engine.RetryInterrupted = true })
	res, err := retry.Do(ctx, "k", nil, valueFn(&runs, "retried"))
	require.NoError(t, err)
	require.Equal(t, "retried", string(res.Value))
	require.Equal(t, int64(2), runs.Load())

	b.unblock()
	require.Error(t, wait(t, dead).err, "the dead engine stored its outcome")
}

// A record created through one node is read at once through another: Get
// is answered by the stream's leader, never by a replica behind it.
func testFreshRead(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	es := openEngines(t, nodes, "fresh")
	const workers, perWorker = 4, 60
	var misses atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writer, reader := es[w%3], es[(w+1)%3]
			for i := range perWorker {
				key := fmt.Sprintf("w%d-%d", w, i)
				_, err := writer.Do(ctx, key, nil, func(context.Context) ([]byte, error) { return []byte("v"), nil })
				if !assertNoError(t, err) {
					return
				}
				if _, err := reader.Lookup(key); err != nil {
					misses.Add(1)
					t.Errorf("key %s created through %s, read through another node: %v", key, nodes[w%3].Name(), err)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, misses.Load())
}

// Expiry: a record is invisible once its TTL has passed on the engine's
// clock, and removed by the server after its TTL in real time.
func testExpiry(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e, _ := openEngine(t, nodes[0], "expiry", func(o *idemnats.Options) {
		o.Engine.TTL, o.Engine.Now = time.Hour, clock
	})
	var runs atomic.Int64
	_, err := e.Do(ctx, "k", nil, valueFn(&runs, "v1"))
	require.NoError(t, err)
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	_, err = e.Lookup("k")
	require.ErrorIs(t, err, idem.ErrNotFound)
	res, err := e.Do(ctx, "k", nil, valueFn(&runs, "v2"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
	require.Equal(t, int64(2), runs.Load())

	// The server removes records itself: a bucket whose delete markers
	// live a second (created beforehand, as another tool would, with the
	// settings Open needs), and a TTL of a second.
	_, js := connectJS(t, nodes[1])
	_, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: "expiry-real", Replicas: 3, LimitMarkerTTL: time.Second,
		RePublish: &jetstream.RePublish{Source: "$KV.expiry-real.r.>", Destination: "_IDEM.WATCH.expiry-real.r.>", HeadersOnly: true},
	})
	require.NoError(t, err)
	short, _ := openEngine(t, nodes[2], "expiry-real", func(o *idemnats.Options) { o.Engine.TTL = time.Second })
	_, err = short.Do(ctx, "k", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	st, err := js.Stream(ctx, "KV_expiry-real")
	require.NoError(t, err)
	records := func() int {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter("$KV.expiry-real.r.>"))
		require.NoError(t, err)
		return len(info.State.Subjects)
	}
	require.Equal(t, 1, records())
	require.Eventually(t, func() bool { return records() == 0 }, testTimeout, 100*time.Millisecond,
		"the record and its delete marker were not removed")
}

// A record that does not decode: Do, Lookup and Records report ErrCorrupt
// with the key; Forget removes it.
func testCorruptRecord(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	es := openEngines(t, nodes[:2], "corrupt")
	_, js := connectJS(t, nodes[0])
	var runs atomic.Int64
	_, err := es[0].Do(ctx, "good", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	// "bad" is YmFk in base64url.
	_, err = js.Publish(ctx, "$KV.corrupt.r.YmFk", []byte("not a record"))
	require.NoError(t, err)

	for _, e := range es {
		_, err = e.Do(ctx, "bad", nil, valueFn(&runs, "v"))
		require.ErrorIs(t, err, idem.ErrCorrupt)
		require.Contains(t, err.Error(), `"bad"`)
		_, err = e.Lookup("bad")
		require.ErrorIs(t, err, idem.ErrCorrupt)
		var keys []string
		corrupt := 0
		for r, err := range e.Records("") {
			if err != nil {
				require.ErrorIs(t, err, idem.ErrCorrupt)
				corrupt++
			}
			keys = append(keys, r.Key)
		}
		require.Equal(t, []string{"bad", "good"}, keys)
		require.Equal(t, 1, corrupt)
	}
	require.Zero(t, runs.Load()-1)
	require.NoError(t, es[1].Forget("bad"))
	res, err := es[0].Do(ctx, "bad", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	require.False(t, res.Replayed)
}

// A record always fits in a message: the default MaxValueSize leaves room
// for the record's fields and headers, a larger value is refused by the
// engine before anything is written, and a MaxValueSize that cannot fit is
// refused by Open.
func testValueSize(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	e, nc := openEngine(t, nodes[0], "size", nil)
	limit := int(nc.MaxPayload()) - 512
	var runs atomic.Int64
	big := strings.Repeat("x", limit)
	res, err := e.Do(ctx, "fits", nil, valueFn(&runs, big))
	require.NoError(t, err)
	require.Len(t, res.Value, limit)
	rec, err := e.Lookup("fits")
	require.NoError(t, err)
	require.Len(t, rec.Value, limit)

	_, err = e.Do(ctx, "too-big", nil, valueFn(&runs, big+"x"))
	require.ErrorIs(t, err, idem.ErrTooLarge)
	_, err = e.Lookup("too-big")
	require.ErrorIs(t, err, idem.ErrNotFound, "the key is released")
	// A Permanent error's message is bounded as well.
	_, err = e.Do(ctx, "too-big", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New(big + "x"))
	})
	require.ErrorIs(t, err, idem.ErrTooLarge)

	_, err = idemnats.Open(nc, &idemnats.Options{Bucket: "size", Engine: &idem.Options{MaxValueSize: limit + 1, Logger: discardLogger}})
	require.ErrorContains(t, err, "MaxValueSize")
	_, err = idemnats.Open(nc, &idemnats.Options{Bucket: "size", Engine: &idem.Options{MaxKeySize: 1 << 20, Logger: discardLogger}})
	require.ErrorContains(t, err, "MaxKeySize")
}

// Buckets that exist with settings the store cannot use are refused, with
// the reason.
func testIncompatibleBucket(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	nc, js := connectJS(t, nodes[0])
	for _, c := range []struct {
		cfg  jetstream.KeyValueConfig
		want string
	}{
		{jetstream.KeyValueConfig{Bucket: "plain"}, "per-message TTLs"},
		{jetstream.KeyValueConfig{Bucket: "norepublish", LimitMarkerTTL: time.Second}, "RePublish"},
		{jetstream.KeyValueConfig{Bucket: "ttl", TTL: time.Hour, LimitMarkerTTL: time.Second,
			RePublish: &jetstream.RePublish{Source: "$KV.ttl.r.>", Destination: "_IDEM.WATCH.ttl.r.>", HeadersOnly: true}}, "TTL"},
	} {
		_, err := js.CreateKeyValue(ctx, c.cfg)
		require.NoError(t, err)
		_, err = idemnats.Open(nc, &idemnats.Options{Bucket: c.cfg.Bucket, Engine: &idem.Options{Logger: discardLogger}})
		require.ErrorContains(t, err, c.want, c.cfg.Bucket)
		require.ErrorContains(t, err, "choose another Options.Bucket")
	}
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "KV_stream", Subjects: []string{"other.>"}})
	require.NoError(t, err)
	_, err = idemnats.Open(nc, &idemnats.Options{Bucket: "stream", Engine: &idem.Options{Logger: discardLogger}})
	require.ErrorContains(t, err, "not a key-value bucket")
}

// Faults at Open: bad options, a server that is gone, one without
// JetStream. Errors, never a panic.
func TestOpenFaults(t *testing.T) {
	nodes := startCluster(t, 1)
	nc, err := nodes[0].Connect()
	require.NoError(t, err)
	defer nc.Close()
	quiet := &idem.Options{Logger: discardLogger}
	for _, c := range []struct {
		opts idemnats.Options
		want string
	}{
		{idemnats.Options{Bucket: "a.b"}, "Bucket"},
		{idemnats.Options{Replicas: 7}, "Replicas"},
		{idemnats.Options{LivenessWindow: time.Millisecond}, "LivenessWindow"},
		{idemnats.Options{Timeout: -time.Second}, "Timeout"},
		{idemnats.Options{Engine: &idem.Options{Durability: idem.SyncNone, Logger: discardLogger}}, "Durability"},
		{idemnats.Options{Engine: &idem.Options{RecordCacheSize: 1, Logger: discardLogger}}, "RecordCacheSize"},
		{idemnats.Options{Engine: &idem.Options{TTL: -1, Logger: discardLogger}}, "TTL"},
	} {
		e, err := idemnats.Open(nc, &c.opts)
		require.ErrorContains(t, err, c.want)
		require.Nil(t, e)
	}
	_, err = idemnats.Open(nil, nil)
	require.ErrorContains(t, err, "nil")

	// A server without JetStream.
	srv, err := server.NewServer(&server.Options{Port: -1, NoLog: true, NoSigs: true})
	require.NoError(t, err)
	srv.Start()
	defer srv.Shutdown()
	require.True(t, srv.ReadyForConnections(testTimeout))
	plain, err := nats.Connect("", nats.InProcessServer(srv))
	require.NoError(t, err)
	defer plain.Close()
	_, err = idemnats.Open(plain, &idemnats.Options{Engine: quiet})
	require.ErrorContains(t, err, "JetStream is not enabled")

	// A server older than 2.11, without per-message TTLs.
	old, err := nats.Connect(fakeServer(t, "2.10.22"))
	require.NoError(t, err)
	defer old.Close()
	_, err = idemnats.Open(old, &idemnats.Options{Engine: quiet})
	require.ErrorContains(t, err, "2.10.22")
	require.ErrorContains(t, err, "2.11 or later")

	// A server that is gone: the connection is down with it.
	nodes[0].Shutdown()
	require.Eventually(t, func() bool { return !nc.IsConnected() }, testTimeout, time.Millisecond)
	_, err = idemnats.Open(nc, &idemnats.Options{Engine: quiet})
	require.ErrorContains(t, err, "not connected")
}

// fakeServer serves the NATS handshake, as a server of the given version,
// to every connection on a loopback port, and returns its URL.
func fakeServer(t *testing.T, version string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "INFO {\"server_id\":\"fake\",\"version\":%q,\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n", version)
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "PING") {
						fmt.Fprint(c, "PONG\r\n")
					}
				}
			}()
		}
	}()
	return "nats://" + l.Addr().String()
}

// Once Do has returned on any engine, every later Do on any engine
// replays, also after the node of the bucket's stream leader is shut down.
func TestEngineLeaderDown(t *testing.T) {
	ctx := testCtx(t)
	nodes := startCluster(t, 3)
	es := openEngines(t, nodes, "leader")
	var runs atomic.Int64
	const keys = 30
	for i := range keys {
		_, err := es[i%3].Do(ctx, fmt.Sprint(i), nil, valueFn(&runs, fmt.Sprint("v", i)))
		require.NoError(t, err)
	}
	_, js := connectJS(t, nodes[0])
	leader := nodeIndex(t, nodes, streamInfo(ctx, t, js, "KV_leader").Cluster.Leader)
	killNode(t, nodes, leader)
	for j, e := range es {
		if j == leader {
			continue
		}
		for i := range keys {
			res, err := e.Do(ctx, fmt.Sprint(i), nil, valueFn(&runs, "again"))
			require.NoError(t, err)
			require.True(t, res.Replayed)
			require.Equal(t, fmt.Sprint("v", i), string(res.Value))
		}
		res, err := e.Do(ctx, fmt.Sprint("new", j), nil, valueFn(&runs, "new"))
		require.NoError(t, err)
		require.False(t, res.Replayed)
	}
	require.Equal(t, int64(keys+2), runs.Load())
}

// Close stops every goroutine the store started, and leaves the caller's
// connection open.
func TestCloseLeaksNothing(t *testing.T) {
	ctx := testCtx(t)
	nodes := startCluster(t, 1)
	nc, err := nodes[0].Connect()
	require.NoError(t, err)
	defer nc.Close()
	// A first engine creates the bucket, so that the count below does not
	// include the server's goroutines for it.
	first, err := idemnats.Open(nc, &idemnats.Options{Bucket: "leak", Engine: &idem.Options{Logger: discardLogger}})
	require.NoError(t, err)
	require.NoError(t, first.Close())
	before := runtime.NumGoroutine()

	e, err := idemnats.Open(nc, &idemnats.Options{Bucket: "leak", LivenessWindow: time.Second, Engine: &idem.Options{Logger: discardLogger}})
	require.NoError(t, err)
	other, err := idemnats.Open(nc, &idemnats.Options{Bucket: "leak", Engine: &idem.Options{Logger: discardLogger}})
	require.NoError(t, err)
	var runs atomic.Int64
	b := newBlocker(t, &runs, "v")
	leader := goDo(ctx, e, "k", nil, b.fn)
	waitClosed(t, b.started, "fn's start")
	waiter := goDo(ctx, other, "k", nil, valueFn(&runs, "v")) // a Watch
	waitWaits(t, other, 1)
	b.unblock()
	require.NoError(t, wait(t, leader).err)
	require.NoError(t, wait(t, waiter).err)
	require.NoError(t, e.Close())
	require.NoError(t, other.Close())
	require.False(t, nc.IsClosed())
	waitGoroutines(t, before)
}

// With the default options, the records are in one bucket, laid out as
// they always were: the stream KV_<Bucket>, the records' subjects
// $KV.<Bucket>.r.<base64url key>, and no other bucket; the count of
// buckets, 1, is recorded in it.
func testDefaultLayout(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	e, _ := openEngine(t, nodes[0], "layout", nil)
	var runs atomic.Int64
	_, err := e.Do(ctx, "order-42", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	_, js := connectJS(t, nodes[1])
	info := streamInfo(ctx, t, js, "KV_layout")
	require.Equal(t, []string{"$KV.layout.>"}, info.Config.Subjects)
	st, err := js.Stream(ctx, "KV_layout")
	require.NoError(t, err)
	info, err = st.Info(ctx, jetstream.WithSubjectFilter("$KV.layout.r.>"))
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{"$KV.layout.r.b3JkZXItNDI": 1}, info.State.Subjects) // base64url("order-42")
	_, err = js.Stream(ctx, "KV_layout-1")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	kv, err := js.KeyValue(ctx, "layout")
	require.NoError(t, err)
	count, err := kv.Get(ctx, "m.buckets")
	require.NoError(t, err)
	require.Equal(t, "1", string(count.Value()))

	// Another count is refused, before any other bucket is created.
	_, err = idemnats.Open(newConn(t, nodes[1]), &idemnats.Options{Bucket: "layout", Buckets: 2, Engine: &idem.Options{Logger: discardLogger}})
	require.ErrorContains(t, err, "spread over 1 buckets, and Options.Buckets is 2")
	_, err = js.Stream(ctx, "KV_layout-1")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
}

// newConn returns a connection to nd, closed when t ends.
func newConn(t testing.TB, nd *idemnats.Node) *nats.Conn {
	t.Helper()
	nc, err := nd.Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// Buckets: 3 on a 3-node cluster: the keys are spread over three streams
// by their hash; fn runs once per key among engines on every node;
// Records lists every key, in order, merged from the buckets; an Open with
// another count is refused.
func testBuckets(t *testing.T, nodes []*idemnats.Node) {
	ctx := testCtx(t)
	const buckets = 3
	three := func(o *idemnats.Options) { o.Buckets = buckets }
	es := openEngines(t, nodes, "spread", three)
	const keys = 300
	testExactlyOnce(t, es, keys, 3)

	// Each stream holds the keys whose hash puts them there, and no other.
	_, js := connectJS(t, nodes[0])
	want := make([]map[string]uint64, buckets)
	var all []string
	for k := range keys {
		key := fmt.Sprintf("key-%d", k)
		all = append(all, key)
		b := idemnats.BucketIndex(key, buckets)
		if want[b] == nil {
			want[b] = make(map[string]uint64)
		}
		want[b][fmt.Sprintf("$KV.%s.r.%s", []string{"spread", "spread-1", "spread-2"}[b], base64.RawURLEncoding.EncodeToString([]byte(key)))] = 1
	}
	leaders := make([]string, buckets)
	for b, name := range []string{"spread", "spread-1", "spread-2"} {
		info := streamInfo(ctx, t, js, "KV_"+name)
		require.Equal(t, 3, info.Config.Replicas, name)
		leaders[b] = info.Cluster.Leader
		st, err := js.Stream(ctx, "KV_"+name)
		require.NoError(t, err)
		info, err = st.Info(ctx, jetstream.WithSubjectFilter("$KV."+name+".r.>"))
		require.NoError(t, err)
		require.Equal(t, want[b], info.State.Subjects, name)
	}
	// Placement is the cluster's: logged, not asserted.
	t.Logf("stream leaders of the 3 buckets: %v; keys per bucket: %d, %d, %d", leaders, len(want[0]), len(want[1]), len(want[2]))

	// Records, on every engine: all the keys, in key order.
	slices.Sort(all)
	for _, e := range es {
		var got []string
		for r, err := range e.Records("") {
			require.NoError(t, err)
			got = append(got, r.Key)
		}
		require.Equal(t, all, got)
	}
	var got []string
	for r, err := range es[1].Records("key-1") {
		require.NoError(t, err)
		got = append(got, r.Key)
	}
	require.Equal(t, slices.DeleteFunc(slices.Clone(all), func(k string) bool { return !strings.HasPrefix(k, "key-1") }), got)

	// Another count, or the default, is refused.
	nc := newConn(t, nodes[2])
	for _, n := range []int{0, 1, 2, 4} {
		_, err := idemnats.Open(nc, &idemnats.Options{Bucket: "spread", Buckets: n, Engine: &idem.Options{Logger: discardLogger}})
		require.ErrorContains(t, err, fmt.Sprintf("spread over 3 buckets, and Options.Buckets is %d", max(n, 1)))
	}
	_, err := js.Stream(ctx, "KV_spread-3")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
}

// Open on a cluster that is not ready for a bucket of three replicas (two
// of its three nodes up: "no suitable peers for placement") retries until
// it is (the third node started), within Options.Timeout; and Open right
// after the nodes start, before they have elected a meta leader, does too.
func TestOpenBeforeClusterReady(t *testing.T) {
	t.Run("TwoOfThree", func(t *testing.T) { testOpenBeforeReady(t, true) })
	t.Run("JustStarted", func(t *testing.T) { testOpenBeforeReady(t, false) })
}

func testOpenBeforeReady(t *testing.T, twoOfThree bool) {
	ctx := testCtx(t)
	peers := freeAddrs(t, 3)
	nodes := make([]*idemnats.Node, 3)
	t.Cleanup(func() {
		for _, nd := range nodes {
			if nd != nil {
				nd.Shutdown()
			}
		}
	})
	start := func(i int) {
		nd, err := idemnats.StartNode(idemnats.NodeConfig{
			Dir: t.TempDir(), Name: fmt.Sprint("n", i), Listen: "127.0.0.1:-1",
			Cluster: peers[i], Peers: peers,
		})
		require.NoError(t, err)
		nodes[i] = nd
	}
	start(0)
	start(1)
	if twoOfThree {
		waitClusterReadyN(t, nodes[:2], 2)
	} else {
		start(2)
	}
	nc := newConn(t, nodes[0])
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	type opened struct {
		e   *idem.Engine
		err error
	}
	done := make(chan opened, 1)
	go func() {
		// A Timeout for a loaded machine, as a hang guard: Open returns
		// as soon as the buckets are there.
		e, err := idemnats.Open(nc, &idemnats.Options{Bucket: "early", Replicas: 3, Buckets: 2, Timeout: testTimeout,
			Engine: &idem.Options{Logger: logger}})
		done <- opened{e, err}
	}()
	if twoOfThree {
		require.Eventually(t, func() bool { return strings.Contains(log.String(), "no suitable peers") }, testTimeout, 10*time.Millisecond,
			"Open did not meet \"no suitable peers\"; its log:\n%s", log.String())
		start(2)
	}
	var o opened
	select {
	case o = <-done:
	case <-ctx.Done():
		t.Fatal("Open did not return")
	}
	require.NoError(t, o.err)
	t.Cleanup(func() { o.e.Close() })
	t.Logf("Open's log:\n%s", log.String())
	require.NotContains(t, log.String(), "fewer than 3 replicas", "three replicas: no warning")
	var runs atomic.Int64
	res, err := o.e.Do(ctx, "k", nil, valueFn(&runs, "v"))
	require.NoError(t, err)
	require.Equal(t, "v", string(res.Value))
	_, js := connectJS(t, nodes[1])
	for _, name := range []string{"KV_early", "KV_early-1"} {
		require.Equal(t, 3, streamInfo(ctx, t, js, name).Config.Replicas)
	}
}

// A bucket of fewer than three replicas does not survive the loss of a
// node: Open says so in the log (and says nothing of three: see
// TestOpenBeforeClusterReady).
func TestOpenWarnsOfFewReplicas(t *testing.T) {
	nodes := startCluster(t, 1)
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := idemnats.Open(newConn(t, nodes[0]), &idemnats.Options{Bucket: "one", Engine: &idem.Options{Logger: logger}})
	require.NoError(t, err)
	require.NoError(t, e.Close())
	require.Contains(t, log.String(), "fewer than 3 replicas")
}
