package idemnats_test

// Benchmarks of the engine on a bucket against its floor: the raw
// JetStream requests an engine needs at least, sent through the same
// connections to a bucket with the engine's own settings, in the same
// cluster, in the same run. BENCHMARKS.md reports them; its ratios come
// from runs that alternate the engine and its floor:
//
//	go test -c -o idemnats.test .
//	./idemnats.test -test.run '^$' -test.benchtime 2s -test.bench 'NATS/nodes=3/new/idem/callers=64$'
//	./idemnats.test -test.run '^$' -test.benchtime 2s -test.bench 'NATS/nodes=3/new/floor/callers=64$'
//
// The clusters are in-process (startCluster): nodes=1 is a single node and
// a bucket of one replica, nodes=3 a cluster of three and a bucket of
// three replicas, every node with sync_interval: always (StartNode's
// default). The engines keep their records in one bucket (Options.Buckets
// left at its default, 1), which the floor reads directly. Each node has its own connection, and an engine on it; call i
// of a benchmark goes to node i mod nodes, engine and floor alike, as a
// load balancer spreads requests over the replicas of a service.
//
// Every benchmark reports ops/s and the median and 99th percentile of its
// calls' latencies (p50-µs, p99-µs). Nothing starts unless a benchmark of
// this file runs: go test without -bench costs nothing.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
)

// natsCallers are the numbers of callers calling at once.
var natsCallers = []int{1, 16, 64}

// natsValue is what the benchmarks' fn returns, and what the floor writes.
var natsValue = make([]byte, 64)

func natsFn(context.Context) ([]byte, error) { return natsValue, nil }

// natsReplayKeys is the number of keys that the replay benchmarks load and
// then read in random order; 512 under -short, for a smoke run.
const natsReplayKeys = 4096

// latencySample is the number of latencies each caller keeps: a uniform
// sample of its calls (reservoir sampling), from which the percentiles are
// taken.
const latencySample = 4096

// BenchmarkNATS measures, on a cluster of 1 and of 3 nodes:
//
//   - new/idem: Do with a new key per call; fn returns 64 bytes.
//   - new/floor: what a new key needs at least: a create-if-absent (a
//     publish with Nats-Expected-Last-Subject-Sequence: 0) and a
//     compare-and-set on the create's sequence, each with a per-message TTL
//     (Nats-TTL) and the 64 bytes, through jetstream.PublishMsg, on a bucket
//     that an engine created (the same settings). A write refused because
//     another write of its key is in flight at the leader (error 10164,
//     which the leader gives even just after acknowledging the create) is
//     sent again; retries/op counts them.
//   - replay/idem: Do on keys already stored (natsReplayKeys, in random
//     order).
//   - replay/floor: what a replay needs at least: one read that the
//     stream's leader answers ($JS.API.STREAM.MSG.GET with last_by_subj,
//     the store's read), its JSON decoded.
//   - replay/kvget: for reference, KV's Get: a direct get, which any replica
//     answers (the store cannot use it: it may miss a write just
//     acknowledged).
func BenchmarkNATS(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			c := newBenchCluster(b, n)
			b.Run("new", func(b *testing.B) {
				b.Run("idem", func(b *testing.B) {
					es := c.openEngines(b, "new")
					var next atomic.Int64
					for _, callers := range natsCallers {
						b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
							runTimed(b, callers, func(ctx context.Context, i int64) error {
								_, err := es[i%int64(n)].Do(ctx, natsKey("new", next.Add(1)), nil, natsFn)
								return err
							})
						})
					}
				})
				b.Run("floor", func(b *testing.B) {
					c.createBucket(b, "raw")
					js := c.jetStreams(b)
					var next, retries atomic.Int64
					for _, callers := range natsCallers {
						b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
							retries0 := retries.Load()
							runTimed(b, callers, func(ctx context.Context, i int64) error {
								return floorNewKey(ctx, js[i%int64(n)], recordSubject("raw", natsKey("raw", next.Add(1))), &retries)
							})
							b.ReportMetric(float64(retries.Load()-retries0)/float64(b.N), "retries/op")
						})
					}
				})
			})
			b.Run("replay", func(b *testing.B) {
				es := c.openEngines(b, "replay")
				count := natsReplayKeys
				if testing.Short() {
					count = 512
				}
				keys := loadKeys(b, es, count)
				b.Run("idem", func(b *testing.B) {
					for _, callers := range natsCallers {
						b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
							runTimed(b, callers, func(ctx context.Context, i int64) error {
								res, err := es[i%int64(n)].Do(ctx, keys[randIndex(i, len(keys))], nil, natsFn)
								if err == nil && !res.Replayed {
									err = errors.New("not a replay")
								}
								return err
							})
						})
					}
				})
				b.Run("floor", func(b *testing.B) {
					reqs := make([][]byte, len(keys))
					for i, k := range keys {
						reqs[i] = []byte(`{"last_by_subj":"` + recordSubject("replay", k) + `"}`)
					}
					api := "$JS.API.STREAM.MSG.GET.KV_replay"
					for _, callers := range natsCallers {
						b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
							runTimed(b, callers, func(ctx context.Context, i int64) error {
								return floorGet(ctx, c.conns[i%int64(n)], api, reqs[randIndex(i, len(reqs))])
							})
						})
					}
				})
				b.Run("kvget", func(b *testing.B) {
					kvs := c.keyValues(b, "replay")
					kvKeys := make([]string, len(keys))
					for i, k := range keys {
						kvKeys[i] = "r." + base64.RawURLEncoding.EncodeToString([]byte(k))
					}
					for _, callers := range natsCallers {
						b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
							runTimed(b, callers, func(ctx context.Context, i int64) error {
								_, err := kvs[i%int64(n)].Get(ctx, kvKeys[randIndex(i, len(kvKeys))])
								return err
							})
						})
					}
				})
			})
		})
	}
}

// benchCluster is a cluster of the benchmarks, with a connection to each
// node.
type benchCluster struct {
	nodes []*idemnats.Node
	conns []*nats.Conn // conns[i] is to nodes[i]
}

// newBenchCluster starts n nodes (startCluster) and connects to each; tb's
// cleanup closes the connections and shuts the nodes down.
func newBenchCluster(tb testing.TB, n int) *benchCluster {
	tb.Helper()
	c := &benchCluster{nodes: startCluster(tb, n)}
	for _, nd := range c.nodes {
		nc, err := nd.Connect()
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(nc.Close) // after the engines' Close: registered before
		c.conns = append(c.conns, nc)
	}
	return c
}

// openEngines opens an engine on bucket (as many replicas as nodes) on each
// node's connection; tb's cleanup closes them.
func (c *benchCluster) openEngines(tb testing.TB, bucket string) []*idem.Engine {
	tb.Helper()
	es := make([]*idem.Engine, len(c.conns))
	for i, nc := range c.conns {
		e, err := idemnats.Open(nc, &idemnats.Options{Bucket: bucket, Replicas: len(c.nodes), Engine: &idem.Options{Logger: discardLogger}})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { e.Close() })
		es[i] = e
	}
	return es
}

// createBucket creates bucket as Open does, by opening an engine on it and
// closing it: a bucket with the engine's settings, for the floor.
func (c *benchCluster) createBucket(tb testing.TB, bucket string) {
	tb.Helper()
	e, err := idemnats.Open(c.conns[0], &idemnats.Options{Bucket: bucket, Replicas: len(c.nodes), Engine: &idem.Options{Logger: discardLogger}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := e.Close(); err != nil {
		tb.Fatal(err)
	}
}

// jetStreams returns a JetStream context on each node's connection.
func (c *benchCluster) jetStreams(tb testing.TB) []jetstream.JetStream {
	tb.Helper()
	js := make([]jetstream.JetStream, len(c.conns))
	for i, nc := range c.conns {
		var err error
		if js[i], err = jetstream.New(nc); err != nil {
			tb.Fatal(err)
		}
	}
	return js
}

// keyValues returns bucket's KeyValue on each node's connection.
func (c *benchCluster) keyValues(tb testing.TB, bucket string) []jetstream.KeyValue {
	tb.Helper()
	kvs := make([]jetstream.KeyValue, len(c.conns))
	for i, js := range c.jetStreams(tb) {
		var err error
		if kvs[i], err = js.KeyValue(context.Background(), bucket); err != nil {
			tb.Fatal(err)
		}
	}
	return kvs
}

// natsKey returns the i-th key of a benchmark: prefix, '-' and 16 hex
// digits.
func natsKey(prefix string, i int64) string {
	return fmt.Sprintf("%s-%016x", prefix, uint64(i))
}

// recordSubject is the subject of key's record in bucket, as keys.go lays
// it out: $KV.<bucket>.r.<base64url(key)>.
func recordSubject(bucket, key string) string {
	return "$KV." + bucket + ".r." + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// randIndex spreads sequence numbers over n indexes (a multiplicative
// hash: consecutive calls read keys far apart).
func randIndex(i int64, n int) int {
	return int((uint64(i) * 0x9E3779B97F4A7C15 >> 11) % uint64(n))
}

// loadKeys stores n records through Do, from 64 goroutines spread over the
// engines, and returns their keys.
func loadKeys(tb testing.TB, es []*idem.Engine, n int) []string {
	tb.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = natsKey("replay", int64(i))
	}
	var next atomic.Int64
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if _, err := es[g%len(es)].Do(context.Background(), keys[i], nil, natsFn); err != nil {
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

// floorNewKey creates subject's message if the subject has none, then
// replaces it with a compare-and-set on the create's sequence.
func floorNewKey(ctx context.Context, js jetstream.JetStream, subject string, retries *atomic.Int64) error {
	seq, err := floorPublish(ctx, js, subject, 0, retries)
	if err != nil {
		return err
	}
	_, err = floorPublish(ctx, js, subject, seq, retries)
	return err
}

// floorTTL is the Nats-TTL of the floor's messages: the engine's default
// TTL, as its records have (plus a second).
const floorTTL = idem.DefaultTTL + time.Second

// floorPublish publishes natsValue to subject if the subject's last
// sequence is expect, sending it again while the leader refuses it for a
// write of the subject in flight (10164), after a pause that grows from
// 50 µs to 5 ms, for up to 10 s. (The leader acknowledges a write before
// it forgets that the write is in flight: a compare-and-set sent at once
// on the acknowledgement may be refused so, as the store's own writes may
// be; a busy machine widens the window.)
func floorPublish(ctx context.Context, js jetstream.JetStream, subject string, expect uint64, retries *atomic.Int64) (uint64, error) {
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 0; ; attempt++ {
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: natsValue},
			jetstream.WithExpectLastSequencePerSubject(expect), jetstream.WithMsgTTL(floorTTL))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant && time.Now().Before(deadline) {
			retries.Add(1)
			time.Sleep(min(50*time.Microsecond<<min(attempt, 7), 5*time.Millisecond))
			continue
		}
		if err != nil {
			return 0, err
		}
		return ack.Sequence, nil
	}
}

// floorGet sends req, a last_by_subj request, to the stream's leader (api)
// and decodes the answer, as the store's read does, less its headers.
func floorGet(ctx context.Context, nc *nats.Conn, api string, req []byte) error {
	resp, err := nc.RequestWithContext(ctx, api, req)
	if err != nil {
		return err
	}
	var r struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs"`
			Data   []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return err
	}
	switch {
	case r.Error != nil:
		return r.Error
	case r.Message == nil || len(r.Message.Data) == 0:
		return errors.New("no message")
	}
	return nil
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
