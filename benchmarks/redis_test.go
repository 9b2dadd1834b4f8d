package benchmarks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkv/idem"
	"github.com/redis/go-redis/v9"
)

// The environment that points the Redis benchmarks at a server (run.sh sets
// both).
const (
	envAddr  = "IDEM_REDIS_ADDR"        // host:port of a redis-server
	envFsync = "IDEM_REDIS_APPENDFSYNC" // its appendfsync: everysec or always
)

const (
	ttl        = 24 * time.Hour
	replayKeys = 1 << 14 // the preloaded keys BenchmarkReplay cycles through
	poolSize   = 128     // go-redis connections, at least the most callers
)

var (
	// value is what fn returns, on both sides.
	value = bytes.Repeat([]byte{'v'}, 100)
	// fingerprint is every call's request fingerprint. 16 bytes: idem
	// stores fingerprints under 32 bytes as they are, as the Redis side
	// does.
	fingerprint = []byte("0123456789abcdef")

	callerCounts = []int{1, 64}
)

// fn is the work both sides make idempotent: trivial, so that the
// benchmarks measure the bookkeeping around it.
func fn(context.Context) ([]byte, error) { return value, nil }

// doer is one side under test: it makes fn idempotent for key and returns
// fn's value, and whether it was replayed rather than computed.
type doer func(ctx context.Context, key string) (v []byte, replayed bool, err error)

// side is one implementation in the comparison. open returns a doer on a
// fresh store (with keys preloaded as completed), closed by b's cleanup.
type side struct {
	name string
	skip string // why the side cannot run, if it cannot
	open func(b *testing.B, preload []string) doer
}

func sides() []side {
	s := []side{
		{name: "idem-SyncNone", open: func(b *testing.B, p []string) doer { return openIdem(b, idem.SyncNone, p) }},
		{name: "idem-SyncAll", open: func(b *testing.B, p []string) doer { return openIdem(b, idem.SyncAll, p) }},
	}
	addr, mode := os.Getenv(envAddr), os.Getenv(envFsync)
	switch {
	case addr == "":
		s = append(s, side{name: "redis", skip: envAddr + " is not set: run ./run.sh, which starts a redis-server and runs both sides"})
	case mode == "":
		s = append(s, side{name: "redis", skip: envFsync + " is not set: set it to the server's appendfsync (everysec or always), or run ./run.sh"})
	default:
		s = append(s, side{name: "redis-" + mode, open: func(b *testing.B, p []string) doer { return openRedis(b, addr, mode, p) }})
	}
	return s
}

// BenchmarkNewKey measures first calls: every call has a key never seen, so
// it claims the key, runs fn and stores the result.
func BenchmarkNewKey(b *testing.B) {
	benchSides(b, nil, func(i int64) string { return "key:" + strconv.FormatInt(i, 10) }, false)
}

// BenchmarkReplay measures retries: every call has the key of a completed
// call, out of replayKeys preloaded ones, and gets its stored value back.
func BenchmarkReplay(b *testing.B) {
	keys := make([]string, replayKeys)
	for i := range keys {
		keys[i] = "key:" + strconv.Itoa(i)
	}
	benchSides(b, keys, func(i int64) string { return keys[i%replayKeys] }, true)
}

func benchSides(b *testing.B, preload []string, key func(i int64) string, wantReplayed bool) {
	for _, s := range sides() {
		for _, callers := range callerCounts {
			b.Run(fmt.Sprintf("impl=%s/callers=%d", s.name, callers), func(b *testing.B) {
				if s.skip != "" {
					b.Skip(s.skip)
				}
				do := s.open(b, preload)
				ctx := context.Background()
				runCallers(b, callers, func(i int64) error {
					v, replayed, err := do(ctx, key(i))
					switch {
					case err != nil:
						return err
					case replayed != wantReplayed:
						return fmt.Errorf("key %q: replayed %v, want %v", key(i), replayed, wantReplayed)
					case len(v) != len(value):
						return fmt.Errorf("key %q: value of %d bytes, want %d", key(i), len(v), len(value))
					}
					return nil
				})
			})
		}
	}
}

// runCallers runs body b.N times in all from callers goroutines, body
// getting a distinct sequence number each time, and reports ops/s.
func runCallers(b *testing.B, callers int, body func(i int64) error) {
	b.Helper()
	b.ResetTimer()
	if callers == 1 {
		for i := 0; i < b.N; i++ {
			if err := body(int64(i)); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		procs := runtime.GOMAXPROCS(0)
		b.SetParallelism((callers + procs - 1) / procs)
		var seq atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := body(seq.Add(1) - 1); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// openIdem opens an engine in a new directory on the real disk. The keys to
// preload are stored under SyncNone, and the engine is then reopened with
// durability d (replays write nothing, in every mode).
func openIdem(b *testing.B, d idem.Durability, preload []string) doer {
	b.Helper()
	dir := b.TempDir()
	if len(preload) > 0 {
		e, err := idem.Open(dir, &idem.Options{Durability: idem.SyncNone, SweepInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		for _, k := range preload {
			if _, err := e.Do(context.Background(), k, fingerprint, fn); err != nil {
				b.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
	}
	e, err := idem.Open(dir, &idem.Options{Durability: d, SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := e.Close(); err != nil {
			b.Error(err)
		}
	})
	return func(ctx context.Context, key string) ([]byte, bool, error) {
		res, err := e.Do(ctx, key, fingerprint, fn)
		return res.Value, res.Replayed, err
	}
}

// A record as the Redis side stores it: a state byte, the fingerprint, and
// for a completed call fn's value.
const (
	stateInFlight  = 'I'
	stateCompleted = 'C'
)

func encodeRecord(state byte, v []byte) []byte {
	r := make([]byte, 0, 1+len(fingerprint)+len(v))
	r = append(r, state)
	r = append(r, fingerprint...)
	return append(r, v...)
}

var (
	errRedisInFlight = errors.New("redis side: key in flight")
	errRedisMismatch = errors.New("redis side: fingerprint mismatch")
)

// decodeRecord returns the value of a stored completed record, or the error
// a retry gets.
func decodeRecord(r string) ([]byte, error) {
	n := 1 + len(fingerprint)
	switch {
	case len(r) < n:
		return nil, fmt.Errorf("redis side: record of %d bytes", len(r))
	case r[1:n] != string(fingerprint):
		return nil, errRedisMismatch
	case r[0] == stateInFlight:
		return nil, errRedisInFlight
	case r[0] != stateCompleted:
		return nil, fmt.Errorf("redis side: record in state %q", r[0])
	}
	return []byte(r[n:]), nil
}

// openRedis connects to the server at addr, checks that it runs with the
// append-only file and appendfsync mode, empties it, and stores the keys to
// preload as completed.
func openRedis(b *testing.B, addr, mode string, preload []string) doer {
	b.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: poolSize, DisableIdentity: true})
	b.Cleanup(func() { rdb.Close() })

	cfg, err := rdb.ConfigGet(ctx, "append*").Result()
	if err != nil {
		b.Fatalf("redis at %s: %v", addr, err)
	}
	if cfg["appendonly"] != "yes" || cfg["appendfsync"] != mode {
		b.Fatalf("redis at %s runs with appendonly %q, appendfsync %q; %s says %q", addr, cfg["appendonly"], cfg["appendfsync"], envFsync, mode)
	}
	info, err := rdb.InfoMap(ctx, "server").Result()
	if err != nil {
		b.Fatal(err)
	}
	version := info["Server"]["redis_version"]
	major, _ := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	nxGet := major >= 7 // SET with both NX and GET: Redis 7.0 and later

	if err := rdb.FlushDB(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	if len(preload) > 0 {
		rec := encodeRecord(stateCompleted, value)
		for start := 0; start < len(preload); start += 1024 {
			_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range preload[start:min(start+1024, len(preload))] {
					p.Set(ctx, k, rec, ttl)
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	// Open the pool's connections before the timer starts.
	var wg sync.WaitGroup
	for range poolSize {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rdb.Ping(ctx)
		}()
	}
	wg.Wait()

	marker := encodeRecord(stateInFlight, nil)
	// go-redis sends whole seconds of TTL as EX rather than PX: the same
	// command for the server.
	claim := func(ctx context.Context, key string) (old string, claimed bool, err error) {
		if nxGet {
			old, err = rdb.SetArgs(ctx, key, marker, redis.SetArgs{Mode: "NX", Get: true, TTL: ttl}).Result()
			if errors.Is(err, redis.Nil) {
				return "", true, nil
			}
			return old, false, err
		}
		// SET key marker EX ttl NX, as SetNX sends it.
		switch _, err = rdb.SetArgs(ctx, key, marker, redis.SetArgs{Mode: "NX", TTL: ttl}).Result(); {
		case err == nil:
			return "", true, nil
		case !errors.Is(err, redis.Nil):
			return "", false, err
		}
		old, err = rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			// Expired or deleted in between: a retry would claim it again.
			return "", false, errRedisInFlight
		}
		return old, false, err
	}
	return func(ctx context.Context, key string) ([]byte, bool, error) {
		old, claimed, err := claim(ctx, key)
		if err != nil {
			return nil, false, err
		}
		if !claimed {
			v, err := decodeRecord(old)
			return v, err == nil, err
		}
		v, err := fn(ctx)
		if err != nil {
			// Never here (fn does not fail). A real service would delete
			// its own marker only, with a compare-and-delete script.
			rdb.Del(ctx, key)
			return nil, false, err
		}
		stored, err := rdb.SetXX(ctx, key, encodeRecord(stateCompleted, v), ttl).Result()
		if err != nil {
			return nil, false, err
		}
		if !stored {
			return nil, false, fmt.Errorf("redis side: key %q vanished while fn ran", key)
		}
		return v, false, nil
	}
}
