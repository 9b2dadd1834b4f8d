package idem_test

// Fault injection with Pebble's vfs/errorfs, in this process: read errors
// while serving, read errors while opening, a disk that fills. Faults that
// Pebble treats as fatal (a failed WAL write or sync, a failed MANIFEST
// write) stop the process, so they are tested with the worker process in
// torture_test.go.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/testproc"
)

// faultOutcome is what a key should replay: a value, or a Permanent error's
// message.
type faultOutcome struct {
	value  string
	errMsg string
}

// faultFn returns the fn of key: a value, or for one key in ten a Permanent
// error.
func faultFn(key string, runs *atomic.Int64) (func(context.Context) ([]byte, error), faultOutcome) {
	if strings.HasSuffix(key, "7") {
		msg := "declined " + key
		return func(context.Context) ([]byte, error) {
			runs.Add(1)
			return nil, idem.Permanent(errors.New(msg))
		}, faultOutcome{errMsg: msg}
	}
	v := "value of " + key
	return func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte(v), nil
	}, faultOutcome{value: v}
}

// checkReplays checks that every key of want replays its outcome and that
// the engine holds nothing else.
func checkReplays(t *testing.T, e *idem.Engine, want map[string]faultOutcome) {
	t.Helper()
	ctx := context.Background()
	for key, o := range want {
		res, err := e.Do(ctx, key, []byte(key), func(context.Context) ([]byte, error) {
			t.Errorf("fn ran for the stored key %s", key)
			return nil, errors.New("must not run")
		})
		if o.errMsg != "" {
			var perm *idem.PermanentError
			require.ErrorAs(t, err, &perm, "key %s", key)
			require.Equal(t, o.errMsg, perm.Error())
		} else {
			require.NoError(t, err, "key %s", key)
			require.Equal(t, o.value, string(res.Value), "key %s", key)
		}
		require.True(t, res.Replayed)
	}
	n := 0
	for r, err := range e.Records("") {
		require.NoError(t, err)
		_, ok := want[r.Key]
		require.True(t, ok, "record %+v was never acknowledged", r)
		n++
	}
	require.Equal(t, len(want), n)
}

// isTableRead reports whether op reads an sstable or a blob file.
func isTableRead(op errorfs.Op) bool {
	return op.Kind.ReadOrWrite() == errorfs.OpIsRead && (strings.HasSuffix(op.Path, ".sst") || strings.HasSuffix(op.Path, ".blob"))
}

// TestFaultReadErrorsWhileServing fails a random fifth of the reads of
// sstables while Do and Lookup serve keys stored in them. A call may fail,
// with an error that wraps the cause, but never runs fn for a stored key,
// never reports a stored key as missing, and never stores a wrong record;
// once the faults stop, every acknowledged outcome is there.
func TestFaultReadErrorsWhileServing(t *testing.T) {
	for _, cache := range []int64{-1, 0} {
		t.Run(map[int64]string{-1: "nocache", 0: "recordcache"}[cache], func(t *testing.T) {
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 0))
			var on atomic.Bool
			var prng atomic.Uint64
			prng.Store(seed)
			counter := &errorfs.Counter{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
				// A fifth of the table reads while on; a counter-based
				// hash, as the injector is called from many goroutines.
				if on.Load() && isTableRead(op) && (prng.Add(0x9e3779b97f4a7c15)*0xbf58476d1ce4e5b9)>>60 < 3 {
					return errorfs.ErrInjected
				}
				return nil
			})}
			mem := vfs.NewMem()
			opts := &idem.Options{FS: errorfs.Wrap(mem, counter), CacheSize: 1, RecordCacheSize: cache, SweepInterval: -1, Logger: discardLogger}
			ctx := context.Background()

			const stored = 2000
			acked := map[string]faultOutcome{}
			var runs atomic.Int64
			e, err := idem.Open("db", opts)
			require.NoError(t, err)
			for i := range stored {
				key := fmt.Sprintf("key-%05d", i)
				fn, o := faultFn(key, &runs)
				_, err := e.Do(ctx, key, []byte(key), fn)
				if o.errMsg == "" {
					require.NoError(t, err)
				}
				acked[key] = o
			}
			require.NoError(t, e.Compact(ctx)) // into sstables
			require.NoError(t, e.Close())
			e, err = idem.Open("db", opts) // cold caches
			require.NoError(t, err)

			on.Store(true)
			calls := 2000
			if raceEnabled {
				calls = 1000
			}
			failed := 0
			checkErr := func(what string, err error) {
				t.Helper()
				failed++
				require.ErrorIs(t, err, errorfs.ErrInjected, "%s: the error must wrap the cause", what)
				require.True(t, strings.HasPrefix(err.Error(), "idem: "), "%s: %v", what, err)
			}
			for i := range calls {
				switch op := rng.IntN(4); op {
				case 0, 1: // Do on a stored or a new key
					key := fmt.Sprintf("key-%05d", rng.IntN(stored))
					if op == 1 {
						key = fmt.Sprintf("new-%05d", i)
					}
					before := runs.Load()
					fn, o := faultFn(key, &runs)
					want, isStored := acked[key]
					res, err := e.Do(ctx, key, []byte(key), fn)
					ran := runs.Load() > before
					var perm *idem.PermanentError
					switch {
					case isStored && ran:
						t.Fatalf("fn ran again for the stored key %s", key)
					case err != nil && !errors.As(err, &perm):
						require.False(t, ran, "Do(%s) ran fn and failed: %v", key, err)
						checkErr("Do("+key+")", err)
						continue
					case isStored:
						require.True(t, res.Replayed)
					default:
						require.True(t, ran)
						acked[key], want = o, o
					}
					if want.errMsg != "" {
						require.Equal(t, want.errMsg, perm.Error())
					} else {
						require.Equal(t, want.value, string(res.Value))
					}
				case 2: // Lookup of a stored key
					key := fmt.Sprintf("key-%05d", rng.IntN(stored))
					rec, err := e.Lookup(key)
					if err != nil {
						require.NotErrorIs(t, err, idem.ErrNotFound, "a read error must not look like a missing record")
						checkErr("Lookup("+key+")", err)
						continue
					}
					require.Equal(t, acked[key].value, string(rec.Value))
					require.Equal(t, acked[key].errMsg, rec.Err)
				case 3: // Lookup of a key never stored
					_, err := e.Lookup(fmt.Sprintf("missing-%05d", i))
					if !errors.Is(err, idem.ErrNotFound) {
						checkErr("Lookup(missing)", err)
					}
				}
			}
			// A listing either fails with the cause or lists everything.
			n := 0
			var listErr error
			for _, err := range e.Records("") {
				if err != nil {
					listErr = err
					break
				}
				n++
			}
			if listErr != nil {
				require.ErrorIs(t, listErr, errorfs.ErrInjected)
			} else {
				require.Equal(t, len(acked), n)
			}
			on.Store(false)
			injected := counter.Load()
			t.Logf("%d calls with a fifth of the table reads failing: %d faults injected, %d calls failed with them, all wrapped; %d keys checked after",
				calls, injected, failed, len(acked))
			require.NotZero(t, injected)

			checkReplays(t, e, acked)
			require.NoError(t, e.Close())
			e, err = idem.Open("db", &idem.Options{FS: mem, SweepInterval: -1})
			require.NoError(t, err)
			checkReplays(t, e, acked)
			require.NoError(t, e.Close())
		})
	}
}

// openFaultImage returns a crash image of a database with records in
// sstables, records and deletions only in the WAL (the markers of calls
// whose fn failed), and an interrupted key, and what it must hold.
func openFaultImage(t *testing.T) (*vfs.MemFS, map[string]faultOutcome) {
	t.Helper()
	fs := vfs.NewCrashableMem()
	e, err := idem.Open("db", &idem.Options{FS: fs, SweepInterval: -1, Logger: discardLogger})
	require.NoError(t, err)
	ctx := context.Background()
	want := map[string]faultOutcome{}
	var runs atomic.Int64
	put := func(prefix string, n int) {
		for i := range n {
			key := fmt.Sprintf("%s-%03d", prefix, i)
			fn, o := faultFn(key, &runs)
			e.Do(ctx, key, []byte(key), fn)
			want[key] = o
		}
	}
	put("table", 300)
	require.NoError(t, e.Compact(ctx))
	put("wal", 100)
	for i := range 50 {
		// fn fails: the marker is written, then deleted.
		_, err := e.Do(ctx, fmt.Sprintf("failed-%03d", i), nil, func(context.Context) ([]byte, error) { return nil, errors.New("declined") })
		require.Error(t, err)
	}
	b := newBlocker("never stored")
	ch := goDo(ctx, e, "interrupted", []byte("interrupted"), b.fn)
	<-b.started
	img := fs.CrashClone(vfs.CrashCloneCfg{})
	close(b.release)
	require.NoError(t, waitFor(t, ch).err)
	require.NoError(t, e.Close())
	return img, want
}

// checkFaultImage checks that e holds want and the interrupted key, and
// nothing of the calls whose fn failed. A read that fails with the injected
// error is made again: a background load of a table that failed during
// Open can hand its error to a read that joined it, after the fault.
func checkFaultImage(t *testing.T, e *idem.Engine, want map[string]faultOutcome) {
	t.Helper()
	lookup := func(key string) (idem.Record, error) {
		rec, err := e.Lookup(key)
		for i := 0; i < 3 && errors.Is(err, errorfs.ErrInjected); i++ {
			rec, err = e.Lookup(key)
		}
		return rec, err
	}
	_, err := lookup("failed-007")
	require.ErrorIs(t, err, idem.ErrNotFound)
	for key, o := range want {
		rec, err := lookup(key)
		require.NoError(t, err, "key %s", key)
		require.Equal(t, o.value, string(rec.Value))
		require.Equal(t, o.errMsg, rec.Err)
	}
	rec, err := lookup("interrupted")
	require.NoError(t, err)
	require.Equal(t, idem.StateInterrupted, rec.State)
}

// TestFaultOpenReadErrors fails, one at a time, each read that Open makes of
// the MANIFEST, the OPTIONS file, the WAL, the sstables and the markers, and
// then each read of any kind (the nth read, for every n until Open makes no
// nth read). Open returns an error that names the directory and wraps the
// cause, or succeeds when the read was not needed; it never panics; and the
// next Open finds the directory whole.
//
// Directory listings are left out of the pass over every read: a failed
// listing late in Open crashes the process afterwards, a Pebble bug that
// TestBugFailedOpenCrashesTheProcessLater shows.
func TestFaultOpenReadErrors(t *testing.T) {
	img0, want := openFaultImage(t)
	total := map[string]int{}
	for _, kind := range []string{"MANIFEST-", "OPTIONS-", ".log", ".sst", "marker.", "(any)"} {
		outcomes := map[string]int{}
		for n := 0; ; n++ {
			img := img0.CrashClone(vfs.CrashCloneCfg{})
			var reads, hits atomic.Int64
			var disarmed atomic.Bool // once Open has returned: the fault is Open's
			inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
				if disarmed.Load() || op.Kind.ReadOrWrite() != errorfs.OpIsRead {
					return nil
				}
				if kind == "(any)" && op.Kind == errorfs.OpList {
					return nil
				}
				if kind != "(any)" && !strings.Contains(path.Base(op.Path), kind) {
					return nil
				}
				if reads.Add(1)-1 == int64(n) {
					hits.Add(1)
					return errorfs.ErrInjected
				}
				return nil
			})
			e, err := openNoPanic(t, "db", &idem.Options{FS: errorfs.Wrap(img, inj), SweepInterval: -1, Logger: discardLogger})
			disarmed.Store(true)
			if hits.Load() == 0 {
				require.NoError(t, err)
				require.NoError(t, e.Close())
				break // Open makes fewer than n+1 such reads
			}
			if err != nil {
				outcomes["error"]++
				require.ErrorIs(t, err, errorfs.ErrInjected, "%s read %d", kind, n)
				require.True(t, strings.HasPrefix(err.Error(), "idem: open db: "), "%s read %d: %v", kind, n, err)
			} else {
				outcomes["opened"]++
				checkFaultImage(t, e, want)
				require.NoError(t, e.Close())
			}
			e, err = idem.Open("db", &idem.Options{FS: img, SweepInterval: -1, Logger: discardLogger})
			require.NoError(t, err, "Open after a failed Open (%s read %d)", kind, n)
			checkFaultImage(t, e, want)
			require.NoError(t, e.Close())
		}
		t.Logf("%s: %d reads failed one at a time: %v", kind, outcomes["error"]+outcomes["opened"], outcomes)
		for k, v := range outcomes {
			total[k] += v
		}
	}
	t.Logf("read faults during Open: %v", total)
	require.NotZero(t, total["error"])
}

// runChildTest runs t's test again in a child process (this test binary)
// with IDEM_TEST_CHILD=role, for a test whose subject stops the process,
// and returns the child's output. The child has a deadline of its own
// (-test.timeout), dies with this process, and is waited for
// (internal/testproc).
func runChildTest(t *testing.T, role string) ([]byte, error) {
	t.Helper()
	cmd := testproc.Command(t, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), "IDEM_TEST_CHILD="+role)
	return cmd.CombinedOutput()
}

var runBugs = flag.Bool("bugs", false, "run the tests of known bugs, marked BUG, which fail until the bug is fixed")

// TestBugFailedOpenCrashesTheProcessLater: BUG, in Pebble v2.1.7. When the
// last directory listing of pebble.Open fails (an EIO, or EMFILE when the
// process is out of file descriptors), after the flush of the replayed WAL,
// pebble.Open returns the error, and idem.Open a clear one; but if the
// flushed table holds deletions, the flush has started the table-stats
// goroutine, which goes on using the file cache that the failed Open closed:
// the process dies of an integer divide by zero (or "element has
// outstanding references"), moments after Open returned. The caller cannot
// prevent it. It runs in a child process (this test binary again), since it
// kills the process. Run it with -bugs.
func TestBugFailedOpenCrashesTheProcessLater(t *testing.T) {
	if os.Getenv("IDEM_TEST_CHILD") == "failed-open" {
		childFailedOpen(t)
		return
	}
	if !*runBugs {
		t.Skip("BUG (Pebble v2.1.7): a failed listing late in Open crashes the process afterwards; see RELIABILITY.md; run with -bugs")
	}
	out, err := runChildTest(t, "failed-open")
	require.NoError(t, err, "the process died after Open had returned an error:\n%s", out)
}

// childFailedOpen fails the third directory listing of Open, on a database
// with a WAL to replay, then opens the directory again and works.
func childFailedOpen(t *testing.T) {
	img0, want := openFaultImage(t)
	img := img0.CrashClone(vfs.CrashCloneCfg{})
	var lists atomic.Int64
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpList && lists.Add(1) > 2 {
			return errorfs.ErrInjected
		}
		return nil
	})
	_, err := openNoPanic(t, "db", &idem.Options{FS: errorfs.Wrap(img, inj), SweepInterval: -1, Logger: discardLogger})
	require.ErrorIs(t, err, errorfs.ErrInjected)
	t.Logf("Open returned %v", err)
	for range 5 {
		e, err := idem.Open("db", &idem.Options{FS: img, SweepInterval: -1, Logger: discardLogger})
		require.NoError(t, err)
		checkFaultImage(t, e, want)
		require.NoError(t, e.Close())
	}
}

// TestFatalErrorStopsTheProcessEvenIfRecovered is the regression test of a
// bug this suite found (fixed in 1f09a12). A fatal Pebble error used to
// reach the Do caller as a panic; a server that recovers panics in its
// handlers (net/http does) went on calling Do, and once the WAL's writer had
// failed, Pebble's commit panicked with its own error while holding the
// commit pipeline's mutex, so every later Do, and Close, blocked forever.
// Now the engine's Fatalf panics in a goroutine of its own: the process
// stops, whatever its callers recover. The child process (this test binary
// again) fails every WAL write and calls Do as such a server would; it must
// die of the fatal error, and no call may block.
func TestFatalErrorStopsTheProcessEvenIfRecovered(t *testing.T) {
	if os.Getenv("IDEM_TEST_CHILD") == "recovered-fatal" {
		childRecoveredFatal(t)
		return
	}
	out, err := runChildTest(t, "recovered-fatal")
	require.NotContains(t, string(out), "BLOCKED", "a call blocked forever after a recovered fatal error")
	require.NotContains(t, string(out), "PEBBLE'S OWN PANIC", "Pebble's panic reached a caller, who could recover it:\n%s", out)
	require.Error(t, err, "the process must stop:\n%s", out)
	require.Contains(t, string(out), "panic: idem: fatal Pebble error", "the process must die of the fatal error:\n%s", out)
}

// childRecoveredFatal fails every WAL write, then calls Do as a server
// that recovers panics would, one call at a time, until a call blocks or
// 2000 calls have returned; then it closes the engine the same way.
func childRecoveredFatal(t *testing.T) {
	var on atomic.Bool
	e, err := idem.Open("db", &idem.Options{FS: errorfs.Wrap(vfs.NewMem(), failWALWrites(&on)), SweepInterval: -1, Logger: discardLogger})
	require.NoError(t, err)
	on.Store(true)
	panics := map[string]int{}
	for i := range 2000 {
		var recovered any
		returned := callOrBlock(t, "Do", func() {
			defer func() { recovered = recover() }()
			e.Do(context.Background(), fmt.Sprintf("key-%d", i), nil, constValueFn("v"))
		})
		if !returned {
			t.Fatalf("BLOCKED: call %d of Do blocks forever in Pebble's commit after recovered panics %v", i, panics)
		}
		if recovered != nil {
			msg := fmt.Sprint(recovered)
			if !strings.HasPrefix(msg, "idem: fatal Pebble error") {
				// Pebble panics in the caller's goroutine, holding its
				// commit pipeline's mutex, when a commit's WAL write
				// fails: the engine must stop the process instead.
				t.Fatalf("PEBBLE'S OWN PANIC reached the caller of Do (call %d): %s", i, msg)
			}
			panics[msg]++
		}
	}
	if !callOrBlock(t, "Close", func() { e.Close() }) {
		t.Fatalf("BLOCKED: Close blocks forever after recovered panics %v", panics)
	}
	t.Fatalf("the process did not stop: 2000 calls returned after the WAL failed, with recovered panics %v", panics)
}

// TestFailedWALWriteStopsTheProcessEvenIfRecovered: once the WAL's writer
// has failed, Pebble reports it two ways. A commit waiting for the failed
// write's fsync gets the error and calls Logger.Fatalf
// (TestFatalErrorStopsTheProcessEvenIfRecovered). A commit that starts
// once the writer has filled a block after the failure panics with the
// error in its caller's goroutine, holding the commit pipeline's mutex;
// under SyncNone, where no commit waits for an fsync, that is the only way
// the failure shows. The panic must not reach a caller that recovers
// panics, or the next commit blocks forever. The child process fails every
// WAL write while 16 goroutines call Do with 512-byte values (the writer's
// blocks are 32 KiB) and recover panics. (TestTorture/WALSyncFailure met
// this panic by chance under SyncAll: the process died of Pebble's own
// panic instead of the engine's.)
func TestFailedWALWriteStopsTheProcessEvenIfRecovered(t *testing.T) {
	if os.Getenv("IDEM_TEST_CHILD") == "failed-wal-write" {
		childFailedWALWrite(t)
		return
	}
	out, err := runChildTest(t, "failed-wal-write")
	require.NotContains(t, string(out), "RECOVERED", "a panic reached a caller of Do:\n%s", out)
	require.Error(t, err, "the process must stop:\n%s", out)
	// If the memtable fills before the writer's error shows, Pebble's
	// rotation of the WAL panics with DB.mu unlocked, and its deferred
	// unlock makes that a runtime fatal error, which stops the process
	// too (about 1 run in 8 here; see RELIABILITY.md).
	if !strings.Contains(string(out), "fatal error: sync: unlock of unlocked mutex") {
		require.Contains(t, string(out), "panic: idem: fatal Pebble error", "the process must die of the fatal error:\n%s", out)
	}
}

func childFailedWALWrite(t *testing.T) {
	var on atomic.Bool
	e, err := idem.Open("db", &idem.Options{FS: errorfs.Wrap(vfs.NewMem(), failWALWrites(&on)), Durability: idem.SyncNone, SweepInterval: -1, Logger: discardLogger})
	require.NoError(t, err)
	on.Store(true)
	value := strings.Repeat("v", 512)
	for w := range 16 {
		go func() {
			for i := 0; ; i++ {
				func() {
					defer func() {
						if r := recover(); r != nil {
							fmt.Fprintf(os.Stderr, "RECOVERED by a caller of Do: %v\n", r)
							os.Exit(3)
						}
					}()
					e.Do(context.Background(), fmt.Sprintf("key-%d-%d", w, i), nil, constValueFn(value))
				}()
			}
		}()
	}
	time.Sleep(30 * time.Second)
	t.Fatalf("the process did not stop in 30s after the WAL failed")
}

// failWALWrites fails every write of a WAL file while on is set.
func failWALWrites(on *atomic.Bool) errorfs.Injector {
	return errorfs.InjectorFunc(func(op errorfs.Op) error {
		if on.Load() && strings.HasSuffix(op.Path, ".log") && (op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileWriteAt) {
			return errorfs.ErrInjected
		}
		return nil
	})
}

func constValueFn(v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return []byte(v), nil }
}

// callOrBlock runs fn in a goroutine and returns true when it returns, or
// false when the goroutine is parked on a mutex in Pebble's commit pipeline,
// which no live goroutine can hold while this test makes one call at a
// time. A 30-second guard fails a call that does neither.
func callOrBlock(t *testing.T, what string, fn func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		select {
		case <-done:
			return true
		default:
		}
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "sync.(*Mutex).Lock") && strings.Contains(g, "(*commitPipeline).prepare") {
				return false
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s neither returned nor blocked in Pebble's commit in 30s:\n%s", what, stacks)
		}
	}
}

// openNoPanic opens an engine, turning a panic into a test failure.
func openNoPanic(t *testing.T, dir string, o *idem.Options) (e *idem.Engine, err error) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("Open panicked: %v", r)
		}
	}()
	return idem.Open(dir, o)
}

// TestFaultDiskFull fills the disk for the writes of sstables: flushes and
// compactions fail with ENOSPC (reported through vfs.OnDiskFull, whose
// callback frees nothing), while the WAL, preallocated, still takes writes.
// Do and Lookup keep working, and once space is back nothing acknowledged is
// lost. A flush that fails is retried by Pebble at once, without backoff,
// logging a background error each time, and Compact waits for it: Compact
// does not fail with ENOSPC but waits until its context ends, and returns
// the context's error. (A full disk under the WAL itself is fatal in Pebble;
// TestTorture/DiskFull shows it. A memtable that fills while flushes fail
// stalls Do until space is back; that is not tested, as it blocks.)
func TestFaultDiskFull(t *testing.T) {
	var full atomic.Bool
	var injected atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const failuresBeforeCancel = 50
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !full.Load() || op.Kind.ReadOrWrite() != errorfs.OpIsWrite {
			return nil
		}
		if base := path.Base(op.Path); !strings.HasSuffix(base, ".sst") && !strings.HasSuffix(base, ".blob") {
			return nil
		}
		switch op.Kind {
		case errorfs.OpCreate, errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFilePreallocate:
			if injected.Add(1) == failuresBeforeCancel {
				cancel() // Compact, waiting for the flush, gives up
			}
			return &os.PathError{Op: "write", Path: op.Path, Err: syscall.ENOSPC}
		}
		return nil
	})
	var callbacks atomic.Int64
	logs := &countingHandler{}
	mem := vfs.NewMem()
	fs := vfs.OnDiskFull(errorfs.Wrap(mem, inj), func() { callbacks.Add(1) })
	e, err := idem.Open("db", &idem.Options{FS: fs, SweepInterval: -1, Logger: slog.New(logs)})
	require.NoError(t, err)
	want := map[string]faultOutcome{}
	var runs atomic.Int64
	put := func(prefix string, n int) {
		for i := range n {
			key := fmt.Sprintf("%s-%04d", prefix, i)
			fn, o := faultFn(key, &runs)
			_, err := e.Do(context.Background(), key, []byte(key), fn)
			if o.errMsg == "" {
				require.NoError(t, err)
			}
			want[key] = o
		}
	}
	put("before", 500)
	require.NoError(t, e.Compact(ctx))
	put("memtable", 300)

	full.Store(true)
	put("full", 300) // the WAL still takes writes
	err = e.Compact(ctx)
	require.ErrorIs(t, err, context.Canceled, "Compact waits for the failing flush until its context ends")
	require.ErrorContains(t, err, "idem: compact")
	put("spinning", 300) // while Pebble retries the flush
	checkReplays(t, e, want)
	for key := range want {
		_, err := e.Lookup(key)
		require.NoError(t, err)
	}
	t.Logf("disk full: %d sstable writes failed with ENOSPC (the flush retried with no backoff), the disk-full callback ran %d times, "+
		"%d errors logged; %d keys read back while full",
		injected.Load(), callbacks.Load(), logs.errors.Load(), len(want))
	require.NotZero(t, callbacks.Load())
	require.NotZero(t, logs.errors.Load(), "the failed flushes are logged")

	full.Store(false) // space freed
	require.NoError(t, e.Compact(context.Background()))
	put("after", 100)
	require.NoError(t, e.Close())
	e, err = idem.Open("db", &idem.Options{FS: mem, SweepInterval: -1})
	require.NoError(t, err)
	checkReplays(t, e, want)
	require.NoError(t, e.Close())
}

// countingHandler is a slog handler that counts the records of level Error
// and above, and drops all.
type countingHandler struct {
	errors atomic.Int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
