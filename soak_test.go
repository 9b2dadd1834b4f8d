package idem_test

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

var (
	soakCalls      = flag.Int("soak.calls", 0, "Do calls in TestSoak (0: 250,000, or 50,000 under -race; IDEM_TEST_LONG=1: 1,000,000, or 200,000 under -race)")
	soakGoroutines = flag.Int("soak.goroutines", 256, "goroutines calling Do in TestSoak")
)

// soakKey is what the soak test knows of a key.
type soakKey struct {
	mu      sync.Mutex
	serials []int64    // the serials of fn's runs for the key
	runs    [][2]int64 // CreatedAt and ExpiresAt of those runs' results, as their callers saw them
}

// TestSoak runs 256 goroutines making 250,000 Do calls (50,000 under
// -race; with IDEM_TEST_LONG=1, 1,000,000 and 200,000) over a tenth as many
// keys: 30% are duplicates of recent calls, 1% reuse a recent key with
// another fingerprint; the clock moves one millisecond per call, so that
// each key's record expires about four times, and the background sweeper
// runs every 10 ms. fn must run exactly once per lifetime of a key (each
// run's result stored once the previous one had expired, and returned to
// its caller), every replay must return a value that fn returned for its
// key, a mismatch must never run fn; the heap is sampled twenty times (its
// peak is reported and bounded) and no goroutine is left after Close.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("a quarter of a million calls")
	}
	calls := *soakCalls
	if calls == 0 {
		calls = testSize(250_000, 1_000_000)
		if raceEnabled {
			calls = testSize(50_000, 200_000)
		}
		requireLongTimeout(t, 4*time.Minute)
	}
	sampleEvery := int64(max(calls/20, 1)) // calls between samples of the heap
	keys := calls / 10
	const step = time.Millisecond // of the clock, per call
	ttl := time.Duration(calls) * step / 4

	goroutinesBefore := runtime.NumGoroutine()
	base := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC).UnixNano()
	var clockCalls atomic.Int64
	now := func() time.Time { return time.Unix(0, base+clockCalls.Load()*int64(step)) }
	e, err := idem.Open(t.TempDir(), &idem.Options{TTL: ttl, Now: now, SweepInterval: 10 * time.Millisecond, Logger: discardLogger})
	require.NoError(t, err)

	state := make([]soakKey, keys)
	var (
		serial    atomic.Int64
		cursor    atomic.Int64
		next      atomic.Int64
		failures  atomic.Int64
		peakHeap  atomic.Uint64
		dups      atomic.Int64
		mismatchN atomic.Int64
		replays   atomic.Int64
	)
	// recent holds recently stored keys, each packed as key<<32 | the
	// clock's call count when its record was stored.
	recent := make([]atomic.Uint64, 4096)
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	sampleHeap := func() {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		for {
			p := peakHeap.Load()
			if m.HeapAlloc <= p || peakHeap.CompareAndSwap(p, m.HeapAlloc) {
				return
			}
		}
	}
	var wg sync.WaitGroup
	for g := range *soakGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				i := next.Add(1)
				if i > int64(calls) {
					return
				}
				if i%sampleEvery == 0 {
					sampleHeap()
				}
				tick := clockCalls.Add(1)
				k := int(cursor.Add(1) % int64(keys))
				mismatch := false
				switch r := rng.IntN(100); {
				case r < 31:
					packed := recent[rng.IntN(len(recent))].Load()
					if packed == 0 {
						break
					}
					k = int(packed >> 32)
					stored := int64(packed & 0xffffffff)
					// A mismatch only where the record surely still lives.
					if r == 0 && (tick-stored)*int64(step) < int64(ttl)/4 {
						mismatch = true
						mismatchN.Add(1)
					} else {
						dups.Add(1)
					}
				}
				key := "key-" + strconv.Itoa(k)
				fp := []byte(key)
				if mismatch {
					fp = []byte("another request")
				}
				ks := &state[k]
				res, err := e.Do(context.Background(), key, fp, func(context.Context) ([]byte, error) {
					if mismatch {
						fail("fn ran for a call with another fingerprint (key %s)", key)
					}
					s := serial.Add(1)
					ks.mu.Lock()
					ks.serials = append(ks.serials, s)
					ks.mu.Unlock()
					return []byte(fmt.Sprintf("%s#%d", key, s)), nil
				})
				switch {
				case mismatch:
					if !errors.Is(err, idem.ErrFingerprintMismatch) {
						fail("key %s with another fingerprint: %v, want ErrFingerprintMismatch", key, err)
					}
					continue
				case err != nil:
					fail("Do(%s): %v", key, err)
					continue
				}
				v := string(res.Value)
				prefix, s, ok := strings.Cut(v, "#")
				n, _ := strconv.ParseInt(s, 10, 64)
				if !ok || prefix != key {
					fail("Do(%s) returned %q", key, v)
					continue
				}
				ks.mu.Lock()
				if !slices.Contains(ks.serials, n) {
					fail("Do(%s) returned %q, which no run of its fn returned", key, v)
				}
				if !res.Replayed {
					ks.runs = append(ks.runs, [2]int64{res.CreatedAt.UnixNano(), res.ExpiresAt.UnixNano()})
				}
				ks.mu.Unlock()
				if res.Replayed {
					replays.Add(1)
				} else {
					stored := (res.CreatedAt.UnixNano() - base) / int64(step)
					recent[rng.IntN(len(recent))].Store(uint64(k)<<32 | uint64(stored))
				}
			}
		}()
	}
	wg.Wait()
	sampleHeap()
	st := e.Stats()
	require.NoError(t, e.Close())

	// fn ran once per lifetime: each key's run stored its result after the
	// previous run's had expired, and each run's result reached its caller.
	runs, lifetimes := 0, 0
	for k := range state {
		ks := &state[k]
		runs += len(ks.serials)
		if len(ks.runs) != len(ks.serials) {
			t.Errorf("key %d: fn ran %d times, %d callers got a first result", k, len(ks.serials), len(ks.runs))
		}
		slices.SortFunc(ks.runs, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
		for i := 1; i < len(ks.runs); i++ {
			if prev, cur := ks.runs[i-1], ks.runs[i]; cur[0] < prev[1] {
				t.Errorf("key %d: fn ran twice in one lifetime: a result stored at %v, the previous one lived until %v",
					k, time.Unix(0, cur[0]).UTC(), time.Unix(0, prev[1]).UTC())
				break
			}
		}
		lifetimes = max(lifetimes, len(ks.runs))
	}
	require.Equal(t, uint64(runs), st.Executions)

	// No goroutine is left once Close has returned. Polled, with a hang
	// guard, as the runtime may take a moment to reap exited goroutines.
	for deadline := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > goroutinesBefore; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before Open, %d after Close:\n%s", goroutinesBefore, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}
	// The heap holds the engine's caches (the record cache is 16 MiB) and
	// this test's bookkeeping (a few slices per key); 512 MiB means a leak.
	require.Less(t, peakHeap.Load(), uint64(512<<20), "peak heap")
	t.Logf("%d goroutines, %d calls over %d keys (%d duplicates, %d with another fingerprint), TTL %v of a clock moving %v per call: "+
		"fn ran %d times (at most %d lifetimes for a key), %d replays, %d records swept; peak heap %.1f MiB; goroutines: %d before Open, %d after Close",
		*soakGoroutines, calls, keys, dups.Load(), mismatchN.Load(), ttl, step, runs, lifetimes, replays.Load(), st.Swept,
		float64(peakHeap.Load())/(1<<20), goroutinesBefore, runtime.NumGoroutine())
}
