package idempg_test

// Benchmarks of the engine on a table against its floor: the raw SQL
// statements an engine needs at least, sent through the same pool to the
// same server, in the same run. BENCHMARKS.md reports them; its ratios
// come from runs that alternate the engine and its floor:
//
//	go test -c -o idempg.test .
//	./idempg.test -test.run '^$' -test.benchtime 2s -test.bench 'PG/new/idem/callers=64$'
//	./idempg.test -test.run '^$' -test.benchtime 2s -test.bench 'PG/new/floor/callers=64$'
//
// Every benchmark reports ops/s and the median and 99th percentile of its
// calls' latencies (p50-µs, p99-µs); those of new keys also the share of
// their UPDATEs that PostgreSQL made heap-only (hot-%). Nothing starts unless a benchmark of
// this file runs: go test without -bench costs nothing.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idempg"
	"github.com/idemkv/idem/idempg/internal/pgtest"
)

// pgCallers are the numbers of callers calling at once.
var pgCallers = []int{1, 16, 64}

// pgValue is what the benchmarks' fn returns, and what the floor writes.
var pgValue = make([]byte, 64)

func pgFn(context.Context) ([]byte, error) { return pgValue, nil }

// pgReplayKeys is the number of keys that the replay benchmarks load and
// then read in random order.
const pgReplayKeys = 4096

// latencySample is the number of latencies each caller keeps: a uniform
// sample of its calls (reservoir sampling), from which the percentiles are
// taken.
const latencySample = 4096

// BenchmarkPG measures, through one pool of 64 connections:
//
//   - new/idem: Do with a new key per call; fn returns 64 bytes.
//   - new/floor: what a new key needs at least: the claim, an INSERT … ON
//     CONFLICT DO NOTHING of the key's row, and the completion, an UPDATE
//     of it WHERE its revision is the claim's, with the 64 bytes, in a
//     table with the same primary key and index on expiry as the engine's.
//   - replay/idem: Do on keys already stored (pgReplayKeys, in random
//     order).
//   - replay/floor: what a replay needs at least: a SELECT of the key's row.
//   - replay/floor-timeout: the same SELECT with a context that ends after
//     idempg.DefaultTimeout, as the store gives each of its statements (to
//     bound it by Options.Timeout), and as a service gives its own queries
//     (a request's context): pgx watches such a context (context.AfterFunc)
//     for the statement's duration, which the floor's Background context
//     spares it.
func BenchmarkPG(b *testing.B) {
	pool := benchPool(b)
	ctx := context.Background()
	open := func(b *testing.B, table string) *idem.Engine {
		e, err := idempg.Open(ctx, pool, &idempg.Options{Table: table, Engine: &idem.Options{Logger: discardLogger}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { e.Close() })
		return e
	}
	floor := func(b *testing.B, table string) {
		for _, q := range []string{
			`DROP TABLE IF EXISTS ` + table,
			`CREATE TABLE ` + table + ` (key bytea PRIMARY KEY, rev bigint NOT NULL, expires bigint NOT NULL, record bytea NOT NULL)`,
			`CREATE INDEX ON ` + table + ` (expires)`,
		} {
			if _, err := pool.Exec(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
	}
	expires := time.Now().Add(idem.DefaultTTL).UnixNano()
	b.Run("new", func(b *testing.B) {
		b.Run("idem", func(b *testing.B) {
			table := benchTable("new")
			e := open(b, table)
			var next atomic.Int64
			for _, callers := range pgCallers {
				b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
					hot := hotUpdates(b, pool, table)
					runTimed(b, callers, func(ctx context.Context, i int64) error {
						_, err := e.Do(ctx, pgKey("new", next.Add(1)), nil, pgFn)
						return err
					})
					hot()
				})
			}
		})
		b.Run("floor", func(b *testing.B) {
			table := benchTable("raw")
			floor(b, table)
			insert := `INSERT INTO ` + table + ` (key, rev, expires, record) VALUES ($1, 1, $2, $3) ON CONFLICT (key) DO NOTHING`
			update := `UPDATE ` + table + ` SET rev = 2, expires = $2, record = $3 WHERE key = $1 AND rev = 1`
			var next atomic.Int64
			for _, callers := range pgCallers {
				b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
					hot := hotUpdates(b, pool, table)
					runTimed(b, callers, func(ctx context.Context, i int64) error {
						key := []byte(pgKey("raw", next.Add(1)))
						tag, err := pool.Exec(ctx, insert, key, expires, pgValue)
						if err == nil && tag.RowsAffected() != 1 {
							err = errors.New("not inserted")
						}
						if err != nil {
							return err
						}
						tag, err = pool.Exec(ctx, update, key, expires, pgValue)
						if err == nil && tag.RowsAffected() != 1 {
							err = errors.New("not updated")
						}
						return err
					})
					hot()
				})
			}
		})
	})
	b.Run("replay", func(b *testing.B) {
		table := benchTable("replay")
		e := open(b, table)
		keys := loadKeys(b, e, pgReplayKeys)
		b.Run("idem", func(b *testing.B) {
			for _, callers := range pgCallers {
				b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
					runTimed(b, callers, func(ctx context.Context, i int64) error {
						res, err := e.Do(ctx, keys[randIndex(i, len(keys))], nil, pgFn)
						if err == nil && !res.Replayed {
							err = errors.New("not a replay")
						}
						return err
					})
				})
			}
		})
		// The engine's own table: the same rows.
		sel := `SELECT rev, record FROM ` + table + ` WHERE key = $1`
		b.Run("floor", func(b *testing.B) {
			for _, callers := range pgCallers {
				b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
					runTimed(b, callers, func(ctx context.Context, i int64) error {
						var rev int64
						var rec []byte
						return pool.QueryRow(ctx, sel, []byte(keys[randIndex(i, len(keys))])).Scan(&rev, &rec)
					})
				})
			}
		})
		b.Run("floor-timeout", func(b *testing.B) {
			for _, callers := range pgCallers {
				b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
					runTimed(b, callers, func(ctx context.Context, i int64) error {
						ctx, cancel := context.WithTimeout(ctx, idempg.DefaultTimeout)
						defer cancel()
						var rev int64
						var rec []byte
						return pool.QueryRow(ctx, sel, []byte(keys[randIndex(i, len(keys))])).Scan(&rev, &rec)
					})
				})
			}
		})
	})
}

// hotUpdates reads table's counts of updates and of heap-only (HOT) ones
// from pg_stat_user_tables, and returns a func that reads them again and
// reports the share of HOT updates between the two reads (hot-%), if any
// update was counted. The server counts a backend's updates when it
// flushes its statistics, at most once a second: the last second's may be
// left out, and an earlier run's counted in.
func hotUpdates(b *testing.B, pool *pgxpool.Pool, table string) func() {
	read := func() (upd, hot int64) {
		err := pool.QueryRow(context.Background(), `SELECT coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0)
			FROM pg_stat_user_tables WHERE relname = $1`, table).Scan(&upd, &hot)
		if err != nil {
			b.Fatal(err)
		}
		return upd, hot
	}
	upd0, hot0 := read()
	return func() {
		if upd, hot := read(); upd > upd0 {
			b.ReportMetric(100*float64(hot-hot0)/float64(upd-upd0), "hot-%")
		}
	}
}

// benchTable returns a table name for a benchmark's run, fresh in each
// process.
func benchTable(what string) string {
	return fmt.Sprintf("bench_%s_%d", what, time.Now().UnixNano()%1e9)
}

// benchPool returns a pool of 64 connections to the benchmarks' server.
func benchPool(b *testing.B) *pgxpool.Pool {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.Start(b).ConnString())
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 64
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// pgKey returns the i-th key of a benchmark: prefix, '-' and 16 hex digits.
func pgKey(prefix string, i int64) string {
	return fmt.Sprintf("%s-%016x", prefix, uint64(i))
}

// randIndex spreads sequence numbers over n indexes (a multiplicative
// hash: consecutive calls read keys far apart).
func randIndex(i int64, n int) int {
	return int((uint64(i) * 0x9E3779B97F4A7C15 >> 11) % uint64(n))
}

// loadKeys stores n records through Do, from 64 goroutines, and returns
// their keys.
func loadKeys(tb testing.TB, e *idem.Engine, n int) []string {
	tb.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = pgKey("replay", int64(i))
	}
	var next atomic.Int64
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if _, err := e.Do(context.Background(), keys[i], nil, pgFn); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tb.Fatal(err)
	}
	return keys
}

// runTimed runs body b.N times in all, from exactly callers goroutines,
// each call with a distinct sequence number i (from 0), and reports ops/s
// and the p50 and p99 of the calls' latencies, in µs, from a uniform sample
// of each goroutine's calls. The first error fails the benchmark.
func runTimed(b *testing.B, callers int, body func(ctx context.Context, i int64) error) {
	b.Helper()
	ctx := context.Background()
	var (
		next     atomic.Int64
		failed   atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex // guards lats, firstErr
		lats     []time.Duration
		firstErr error
	)
	b.ResetTimer()
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			sample := make([]time.Duration, 0, min(latencySample, b.N/callers+1))
			seen := 0
			for i := next.Add(1) - 1; i < int64(b.N) && !failed.Load(); i = next.Add(1) - 1 {
				start := time.Now()
				err := body(ctx, i)
				d := time.Since(start)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("call %d: %w", i, err)
					}
					mu.Unlock()
					failed.Store(true)
					return
				}
				seen++
				if len(sample) < latencySample {
					sample = append(sample, d)
				} else if j := rng.IntN(seen); j < latencySample {
					sample[j] = d
				}
			}
			mu.Lock()
			lats = append(lats, sample...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	if len(lats) > 0 {
		slices.Sort(lats)
		pct := func(p float64) float64 {
			return float64(lats[min(int(p*float64(len(lats))), len(lats)-1)].Nanoseconds()) / 1e3
		}
		b.ReportMetric(pct(0.50), "p50-µs")
		b.ReportMetric(pct(0.99), "p99-µs")
	}
}
