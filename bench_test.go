package idem

// Benchmarks of Do against the floor: raw Pebble with the same options, and
// a map behind a mutex. Run them on a real disk (they use b.TempDir()):
//
//	go test -run '^$' -bench . -benchmem -count 6 | tee new.txt
//	benchstat new.txt
//
// Each reports ops/s besides ns/op. "callers" is the number of goroutines
// calling at once.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem/internal/countfs"
)

var benchCallers = []int{1, 16, 64, 256}

// runCallers runs body b.N times in total from callers goroutines; body gets
// a distinct sequence number each time.
func runCallers(b *testing.B, callers int, body func(i int64)) {
	b.Helper()
	var seq atomic.Int64
	if callers == 1 {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			body(int64(i))
		}
	} else {
		procs := runtime.GOMAXPROCS(0)
		b.SetParallelism((callers + procs - 1) / procs)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				body(seq.Add(1))
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func benchEngine(b *testing.B, o Options) *Engine {
	b.Helper()
	if o.SweepInterval == 0 {
		o.SweepInterval = -1
	}
	e, err := Open(b.TempDir(), &o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return e
}

// benchDB opens a raw Pebble database with the engine's options, on fs: the
// floor.
func benchDB(b *testing.B, fs vfs.FS) *pebble.DB {
	b.Helper()
	e := benchEngine(b, Options{FS: fs})
	return e.local.db
}

// reportFsyncs reports the calls per fsync since syncs0, if any fsync was
// made: how well the commits were grouped.
func reportFsyncs(b *testing.B, fs *countfs.FS, syncs0 uint64) {
	if n := fs.Syncs() - syncs0; n > 0 {
		b.ReportMetric(float64(b.N)/float64(n), "calls/fsync")
	}
}

// benchKey returns the key of i: "key-" and 16 hex digits, in one
// allocation.
func benchKey(i int64) string {
	const hex = "0123456789abcdef"
	var b [20]byte
	copy(b[:], "key-")
	for j := range 16 {
		b[19-j] = hex[uint64(i)>>(4*j)&0xf]
	}
	return string(b[:])
}

// keyOrders are the orders of the keys of the new-key benchmarks, the
// engine's and the floor's alike. In "seq", keys come in key order, which is
// Pebble's best case: a flushed table overlaps no older one and moves down
// the levels without a rewrite. In "rand", they are scattered, as UUIDs are
// (the IETF draft's example key is one): every flushed table overlaps the
// older ones, and compactions rewrite them.
var keyOrders = []struct {
	name string
	key  func(i int64) string
}{
	{"seq", benchKey},
	{"rand", func(i int64) string { return benchKey(int64(uint64(i) * 0x9E3779B97F4A7C15)) }},
}

// benchKeys returns the keys of 0 to n-1, made before the timer starts, so
// that the replay benchmarks count only the engine's allocations.
func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = benchKey(int64(i))
	}
	return keys
}

var benchValue = make([]byte, 100)

func benchFn(context.Context) ([]byte, error) { return benchValue, nil }

func BenchmarkDoNewKey(b *testing.B) {
	for _, d := range []Durability{SyncAll, SyncResult, SyncNone} {
		for _, order := range keyOrders {
			for _, callers := range benchCallers {
				b.Run(fmt.Sprintf("%v/keys=%s/callers=%d", d, order.name, callers), func(b *testing.B) {
					fs := countfs.New(vfs.Default)
					e := benchEngine(b, Options{Durability: d, FS: fs})
					ctx := context.Background()
					b.ReportAllocs()
					syncs0 := fs.Syncs()
					runCallers(b, callers, func(i int64) {
						if _, err := e.Do(ctx, order.key(i), nil, benchFn); err != nil {
							b.Fatal(err)
						}
					})
					reportFsyncs(b, fs, syncs0)
				})
			}
		}
	}
}

// loadRecords stores n completed records with keys benchKey(0..n-1)
// directly, in large batches, and compacts them, so that the benchmark that
// follows does not share the machine with the compactions of the load.
func loadRecords(b *testing.B, e *Engine, n int) {
	b.Helper()
	now := e.now()
	const batch = 10000
	for start := 0; start < n; start += batch {
		bt := e.local.db.NewBatch()
		for i := start; i < min(start+batch, n); i++ {
			key := benchKey(int64(i))
			e.filter.add(key) // as the key's owner would, before writing it
			r := StoredRecord{State: StateCompleted, Owner: e.owner, Created: now, Expires: now + e.ttl, Value: benchValue}
			bt.Set(recordKey(key), r.encode(), nil)
		}
		if err := bt.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		bt.Close()
	}
	if err := e.local.db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := e.Compact(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// replaySets are the key sets of the replay benchmarks: a hot set that any
// cache holds, and a cold one larger than any.
var replaySets = []struct {
	name string
	keys int
}{{"hot=1k", 1000}, {"cold=1M", 1000000}}

func replayCallers() []int { return []int{1, runtime.GOMAXPROCS(0)} }

func BenchmarkDoReplay(b *testing.B) {
	for _, set := range replaySets {
		if set.keys > 1000 && testing.Short() {
			continue
		}
		e := benchEngine(b, Options{})
		loadRecords(b, e, set.keys)
		keys := benchKeys(set.keys)
		for _, callers := range replayCallers() {
			b.Run(fmt.Sprintf("%s/callers=%d", set.name, callers), func(b *testing.B) {
				ctx := context.Background()
				b.ReportAllocs()
				runCallers(b, callers, func(i int64) {
					key := keys[randKey(i, set.keys)]
					res, err := e.Do(ctx, key, nil, benchFn)
					if err != nil || !res.Replayed {
						b.Fatal(err, res.Replayed)
					}
				})
			})
		}
	}
}

// randKey spreads sequence numbers over n keys (a multiplicative hash, so
// that consecutive calls do not hit neighbouring keys).
func randKey(i int64, n int) int64 {
	return int64((uint64(i) * 0x9E3779B97F4A7C15 >> 11) % uint64(n))
}

// BenchmarkDoDuplicates: all callers call Do for the same few keys at once,
// while fn runs: one call per key runs fn, the others wait for it.
func BenchmarkDoDuplicates(b *testing.B) {
	for _, callers := range benchCallers[1:] {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			e := benchEngine(b, Options{Durability: SyncNone})
			ctx := context.Background()
			// Each key is asked for by `callers` calls in a row, so most
			// calls find it in flight or just stored.
			b.ReportAllocs()
			runCallers(b, callers, func(i int64) {
				if _, err := e.Do(ctx, benchKey(i/int64(callers)), nil, benchFn); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

func BenchmarkFloorPebble(b *testing.B) {
	for _, mode := range []struct {
		name string
		opts *pebble.WriteOptions
	}{{"Set(Sync)", pebble.Sync}, {"Set(NoSync)", pebble.NoSync}} {
		for _, order := range keyOrders {
			for _, callers := range benchCallers {
				b.Run(fmt.Sprintf("%s/keys=%s/callers=%d", mode.name, order.name, callers), func(b *testing.B) {
					fs := countfs.New(vfs.Default)
					db := benchDB(b, fs)
					b.ReportAllocs()
					syncs0 := fs.Syncs()
					runCallers(b, callers, func(i int64) {
						if err := db.Set(recordKey(order.key(i)), benchValue, mode.opts); err != nil {
							b.Fatal(err)
						}
					})
					reportFsyncs(b, fs, syncs0)
				})
			}
		}
	}
	for _, set := range replaySets {
		if set.keys > 1000 && testing.Short() {
			continue
		}
		e := benchEngine(b, Options{})
		loadRecords(b, e, set.keys)
		keys := make([][]byte, set.keys)
		for i := range keys {
			keys[i] = recordKey(benchKey(int64(i)))
		}
		for _, callers := range replayCallers() {
			b.Run(fmt.Sprintf("Get/%s/callers=%d", set.name, callers), func(b *testing.B) {
				b.ReportAllocs()
				runCallers(b, callers, func(i int64) {
					v, closer, err := e.local.db.Get(keys[randKey(i, set.keys)])
					if err != nil {
						b.Fatal(err)
					}
					_ = v
					closer.Close()
				})
			})
		}
	}
}

// BenchmarkFloorMap is the upper bound of an in-memory engine: a map behind
// a mutex, get-or-set.
func BenchmarkFloorMap(b *testing.B) {
	for _, callers := range replayCallers() {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			var mu sync.Mutex
			m := make(map[string][]byte)
			b.ReportAllocs()
			runCallers(b, callers, func(i int64) {
				key := benchKey(randKey(i, 1000))
				mu.Lock()
				v, ok := m[key]
				if !ok {
					m[key] = benchValue
				}
				mu.Unlock()
				_ = v
			})
		})
	}
}

// BenchmarkSweep measures a sweep's pass over 1M records (100k under
// -short), none of them expired: what the background sweeper reads per
// pass, spread over TTL/8. It reports records read per second.
func BenchmarkSweep(b *testing.B) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	e := benchEngine(b, Options{})
	loadRecords(b, e, n)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		removed, err := e.Sweep(ctx)
		if err != nil || removed != 0 {
			b.Fatal(removed, err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkScale loads IDEM_SCALE_RECORDS records (default 5M) with 100-byte
// random values through Do, then measures replays over all of them in a
// sub-benchmark (so that the load runs once). It reports the process's peak
// RSS, the bytes on disk per record against the bytes of key and value, and
// the replay rate. Run it alone:
//
//	go test -run '^$' -bench Scale -benchtime 200000x -timeout 1h
func BenchmarkScale(b *testing.B) {
	n := 5_000_000
	if s := os.Getenv("IDEM_SCALE_RECORDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		n = v
	}
	e := benchEngine(b, Options{Durability: SyncNone})
	ctx := context.Background()
	start := time.Now()
	var next, seeds atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := make([]byte, 100)
			rng := rand.New(rand.NewPCG(uint64(seeds.Add(1)), 1))
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				for j := range v {
					v[j] = byte(rng.Uint32())
				}
				if _, err := e.Do(ctx, benchKey(i), nil, func(context.Context) ([]byte, error) { return v, nil }); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	load := time.Since(start)
	if err := e.local.db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := e.Compact(ctx); err != nil {
		b.Fatal(err)
	}
	// Pebble's cleaner deletes the tables that the compaction replaced
	// shortly after it returns: the figure is taken once they are gone, so
	// that it is the space the records hold rather than a moment's.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if m := e.local.db.Metrics(); m.Table.Local.ObsoleteSize+m.Table.Local.ZombieSize == 0 {
			break
		}
	}
	disk := e.Stats().DiskUsage
	perRecord := float64(disk) / float64(n)
	keyValue := float64(len(benchKey(0)) + 100)
	b.Logf("%d records loaded in %v (%.0f/s); disk %d bytes: %.1f bytes/record for %.0f bytes of key and value (%.2fx)",
		n, load.Round(time.Millisecond), float64(n)/load.Seconds(), disk, perRecord, keyValue, perRecord/keyValue)

	b.Run(fmt.Sprintf("replay/records=%d", n), func(b *testing.B) {
		b.ReportAllocs()
		runCallers(b, runtime.GOMAXPROCS(0), func(i int64) {
			res, err := e.Do(ctx, benchKey(randKey(i, n)), nil, benchFn)
			if err != nil || !res.Replayed {
				b.Fatal(err, res.Replayed)
			}
		})
		b.ReportMetric(perRecord, "disk-B/record")
		b.ReportMetric(perRecord/keyValue, "disk/(key+value)")
		if rss, err := peakRSS(); err == nil {
			b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
		}
	})
}

// peakRSS returns the process's peak resident set size (VmHWM), in bytes.
func peakRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}

// BenchmarkOpen measures Open and Close of a directory that holds records,
// against the floor: pebble.Open and Close of the same directory with the
// same options. A writable Open reads an existing database read-only first,
// so that it refuses one that idem did not write without changing it:
// "check" is that read alone.
func BenchmarkOpen(b *testing.B) {
	for _, records := range []int{0, 10_000} {
		dir := b.TempDir()
		e, err := Open(dir, &Options{SweepInterval: -1, Durability: SyncNone})
		if err != nil {
			b.Fatal(err)
		}
		loadRecords(b, e, records)
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
		o, err := (&Options{SweepInterval: -1}).withDefaults()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("idem/records=%d", records), func(b *testing.B) {
			for range b.N {
				e, err := Open(dir, &Options{SweepInterval: -1})
				if err != nil {
					b.Fatal(err)
				}
				if err := e.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("check/records=%d", records), func(b *testing.B) {
			// What a writable Open adds for an existing database.
			lock, err := pebble.LockDirectory(dir, o.FS)
			if err != nil {
				b.Fatal(err)
			}
			defer lock.Close()
			for range b.N {
				if err := checkDatabase(dir, &o, lock); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("pebble/records=%d", records), func(b *testing.B) {
			for range b.N {
				db, err := pebble.Open(dir, pebbleOptions(&o, nil, false))
				if err != nil {
					b.Fatal(err)
				}
				if err := db.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
