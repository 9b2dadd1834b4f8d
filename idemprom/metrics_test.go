package idemprom_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemprom"
)

// openEngine opens an engine in a temporary directory with m as its
// Observer, the other options as given.
func openEngine(t testing.TB, m *idemprom.Metrics, opts idem.Options) *idem.Engine {
	t.Helper()
	opts.Observer = m
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1 // the test sweeps when it means to
	}
	e, err := idem.Open(t.TempDir(), &opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

func value(v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return []byte(v), nil }
}

// Two engines on Pebble, one waiting for duplicates and one not, each with
// its Metrics, served from one registry over loopback. Each step makes
// calls, and every figure of the next scrape moved by exactly what the
// calls did, and no other figure moved.
func TestFiguresMoveWithCalls(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }

	mMain := idemprom.New(&idemprom.Options{ConstLabels: prometheus.Labels{"engine": "main"}})
	mNoWait := idemprom.New(&idemprom.Options{ConstLabels: prometheus.Labels{"engine": "nowait"}})
	// No record cache, so that every replay reads the store: exact counts.
	main := openEngine(t, mMain, idem.Options{Now: now, TTL: time.Hour, RecordCacheSize: -1})
	noWait := openEngine(t, mNoWait, idem.Options{NoWait: true})
	url := serve(t, mMain.Collector(main), mNoWait.Collector(noWait))
	m, n := of("main"), of("nowait")
	ctx := context.Background()
	errBoom := errors.New("boom")

	// Pebble's store skips the read of a new key once its key filter,
	// built in the background at Open, knows the key has no record.
	newKeyRead := func(f func(string, ...string) string) map[string][2]float64 {
		return map[string][2]float64{f("idem_store_request_duration_seconds_count", "op", "read"): {0, 1}}
	}
	// A call that runs fn and stores its value.
	executed := func(f func(string, ...string) string) map[string]float64 {
		return map[string]float64{
			f("idem_calls_total"):      1,
			f("idem_executions_total"): 1,
			f("idem_call_duration_seconds_count", "outcome", "executed"):     1,
			f("idem_fn_duration_seconds_count"):                              1,
			f("idem_store_request_duration_seconds_count", "op", "claim"):    1,
			f("idem_store_request_duration_seconds_count", "op", "complete"): 1,
		}
	}
	// plus adds the figures of b to a.
	plus := func(a, b map[string]float64) map[string]float64 {
		for k, v := range b {
			a[k] += v
		}
		return a
	}
	// conflictWhileWaiting holds key, makes a call whose context ends
	// (by end) while it waits for the holder, then lets the holder finish.
	conflictWhileWaiting := func(t *testing.T, key string, callCtx context.Context, end func(), wantErr error) {
		h := hold(main, key)
		waits := main.Stats().Waits
		errc := make(chan error, 1)
		go func() {
			_, err := main.Do(callCtx, key, nil, value("w"))
			errc <- err
		}()
		waitUntil(func() bool { return main.Stats().Waits == waits+1 })
		end()
		err := <-errc
		require.ErrorIs(t, err, idem.ErrInFlight)
		require.ErrorIs(t, err, wantErr)
		h.finish(t)
	}

	steps := []struct {
		name    string
		do      func(t *testing.T)
		want    map[string]float64
		between map[string][2]float64
	}{{
		name: "new key",
		do: func(t *testing.T) {
			res, err := main.Do(ctx, "a", []byte("1"), value("v"))
			require.NoError(t, err)
			require.False(t, res.Replayed)
		},
		want:    executed(m),
		between: newKeyRead(m),
	}, {
		name: "replay",
		do: func(t *testing.T) {
			res, err := main.Do(ctx, "a", []byte("1"), value("x"))
			require.NoError(t, err)
			require.True(t, res.Replayed)
		},
		want: map[string]float64{
			m("idem_calls_total"):   1,
			m("idem_replays_total"): 1,
			m("idem_call_duration_seconds_count", "outcome", "replayed"): 1,
			m("idem_store_request_duration_seconds_count", "op", "read"): 1,
		},
	}, {
		name: "mismatch",
		do: func(t *testing.T) {
			_, err := main.Do(ctx, "a", []byte("2"), value("x"))
			require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
		},
		want: map[string]float64{
			m("idem_calls_total"):      1,
			m("idem_mismatches_total"): 1,
			m("idem_call_duration_seconds_count", "outcome", "mismatch"): 1,
			m("idem_store_request_duration_seconds_count", "op", "read"): 1,
		},
	}, {
		name: "fn error",
		do: func(t *testing.T) {
			_, err := main.Do(ctx, "f", nil, func(context.Context) ([]byte, error) { return nil, errBoom })
			require.ErrorIs(t, err, errBoom)
		},
		want: map[string]float64{
			m("idem_calls_total"):                                           1,
			m("idem_executions_total"):                                      1,
			m("idem_call_duration_seconds_count", "outcome", "failed"):      1,
			m("idem_fn_duration_seconds_count"):                             1,
			m("idem_store_request_duration_seconds_count", "op", "claim"):   1,
			m("idem_store_request_duration_seconds_count", "op", "release"): 1,
		},
		between: newKeyRead(m),
	}, {
		name: "fn panics",
		do: func(t *testing.T) {
			defer func() { require.Equal(t, "oops", recover()) }()
			main.Do(ctx, "g", nil, func(context.Context) ([]byte, error) { panic("oops") })
		},
		want: map[string]float64{
			m("idem_calls_total"):                                           1,
			m("idem_executions_total"):                                      1,
			m("idem_call_duration_seconds_count", "outcome", "failed"):      1,
			m("idem_fn_duration_seconds_count"):                             1,
			m("idem_store_request_duration_seconds_count", "op", "claim"):   1,
			m("idem_store_request_duration_seconds_count", "op", "release"): 1,
		},
		between: newKeyRead(m),
	}, {
		name: "permanent error",
		do: func(t *testing.T) {
			_, err := main.Do(ctx, "p", nil, func(context.Context) ([]byte, error) { return nil, idem.Permanent(errBoom) })
			require.ErrorIs(t, err, errBoom)
		},
		want:    executed(m),
		between: newKeyRead(m),
	}, {
		name: "duplicates wait",
		do: func(t *testing.T) {
			h := hold(main, "d")
			const dups = 3
			waits := main.Stats().Waits
			var wg sync.WaitGroup
			for i := 0; i < dups; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := main.Do(ctx, "d", nil, value("x"))
					if err != nil || !res.Replayed || string(res.Value) != "v" {
						t.Errorf("a duplicate got %q, %v, replayed %v", res.Value, err, res.Replayed)
					}
				}()
			}
			waitUntil(func() bool { return main.Stats().Waits == waits+dups })
			h.finish(t)
			wg.Wait()
		},
		want: plus(executed(m), map[string]float64{
			m("idem_calls_total"):   3,
			m("idem_waits_total"):   3,
			m("idem_replays_total"): 3,
			m("idem_call_duration_seconds_count", "outcome", "waited"): 3,
			m("idem_wait_duration_seconds_count"):                      3,
		}),
		between: newKeyRead(m),
	}, {
		name: "waiter canceled",
		do: func(t *testing.T) {
			callCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			conflictWhileWaiting(t, "c", callCtx, cancel, context.Canceled)
		},
		want: plus(executed(m), map[string]float64{
			m("idem_calls_total"):                                        1,
			m("idem_waits_total"):                                        1,
			m("idem_conflicts_total", "reason", "canceled"):              1,
			m("idem_call_duration_seconds_count", "outcome", "conflict"): 1,
			m("idem_wait_duration_seconds_count"):                        1,
		}),
		between: newKeyRead(m),
	}, {
		name: "waiter's deadline passes",
		do: func(t *testing.T) {
			callCtx := newDeadlineCtx()
			conflictWhileWaiting(t, "dl", callCtx, callCtx.pass, context.DeadlineExceeded)
		},
		want: plus(executed(m), map[string]float64{
			m("idem_calls_total"): 1,
			m("idem_waits_total"): 1,
			m("idem_conflicts_total", "reason", "deadline_exceeded"):     1,
			m("idem_call_duration_seconds_count", "outcome", "conflict"): 1,
			m("idem_wait_duration_seconds_count"):                        1,
		}),
		between: newKeyRead(m),
	}, {
		name: "no wait",
		do: func(t *testing.T) {
			h := hold(noWait, "n")
			_, err := noWait.Do(ctx, "n", nil, value("x"))
			require.ErrorIs(t, err, idem.ErrInFlight)
			h.finish(t)
		},
		want: plus(executed(n), map[string]float64{
			n("idem_calls_total"):                                        1,
			n("idem_conflicts_total", "reason", "no_wait"):               1,
			n("idem_call_duration_seconds_count", "outcome", "conflict"): 1,
		}),
		between: newKeyRead(n),
	}, {
		name: "sweep",
		do: func(t *testing.T) {
			clock.Add(int64(2 * time.Hour))
			swept, err := main.Sweep(ctx)
			require.NoError(t, err)
			require.Equal(t, 5, swept) // a, p, d, c, dl
		},
		want: map[string]float64{m("idem_swept_total"): 5},
	}}

	before := parse(t, scrape(t, url))
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.do(t)
			after := parse(t, scrape(t, url))
			moved(t, before, after, s.want, s.between)
			before = after
		})
	}

	// With no call in flight, the calls by outcome add up to the calls,
	// the conflicts by reason to the engine's count, and the fn durations
	// to the executions.
	body := scrape(t, url)
	f := parse(t, body)
	for _, e := range []struct {
		name string
		eng  *idem.Engine
	}{{"main", main}, {"nowait", noWait}} {
		k := of(e.name)
		var byOutcome, byReason float64
		for o := idem.OutcomeExecuted; o <= idem.OutcomeError; o++ {
			byOutcome += f[k("idem_call_duration_seconds_count", "outcome", o.String())]
		}
		for _, r := range []string{"no_wait", "canceled", "deadline_exceeded"} {
			byReason += f[k("idem_conflicts_total", "reason", r)]
		}
		s := e.eng.Stats()
		require.Equal(t, float64(s.Calls), byOutcome, e.name)
		require.Equal(t, float64(s.Calls), f[k("idem_calls_total")], e.name)
		require.Equal(t, float64(s.Conflicts), byReason, e.name)
		require.Equal(t, float64(s.Executions), f[k("idem_fn_duration_seconds_count")], e.name)
		require.Positive(t, f[k("idem_disk_usage_bytes")], e.name)
	}
	lint(t, body)
}

// A store's failures are counted by request; a key whose outcome could not
// be stored reports ErrInterrupted; and Pebble's figures are 0 on a store
// other than Pebble's.
func TestStoreErrorsAndInterrupted(t *testing.T) {
	store := newFlakyStore()
	mx := idemprom.New(nil)
	e, err := idem.New(store, &idem.Options{Observer: mx, SweepInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	url := serve(t, mx.Collector(e))
	ctx := context.Background()
	boom := errors.New("boom")

	steps := []struct {
		name string
		do   func(t *testing.T)
		want map[string]float64
	}{{
		name: "read fails",
		do: func(t *testing.T) {
			store.failNext("get")
			_, err := e.Do(ctx, "r", nil, value("v"))
			require.ErrorIs(t, err, errStore)
		},
		want: map[string]float64{
			"idem_calls_total": 1,
			key("idem_call_duration_seconds_count", "outcome", "error"):    1,
			key("idem_store_request_duration_seconds_count", "op", "read"): 1,
			key("idem_store_errors_total", "op", "read"):                   1,
		},
	}, {
		name: "claim fails",
		do: func(t *testing.T) {
			store.failNext("claim")
			_, err := e.Do(ctx, "c", nil, value("v"))
			require.ErrorIs(t, err, errStore)
		},
		want: map[string]float64{
			"idem_calls_total": 1,
			key("idem_call_duration_seconds_count", "outcome", "error"):     1,
			key("idem_store_request_duration_seconds_count", "op", "read"):  1,
			key("idem_store_request_duration_seconds_count", "op", "claim"): 1,
			key("idem_store_errors_total", "op", "claim"):                   1,
		},
	}, {
		name: "release fails",
		do: func(t *testing.T) {
			store.failNext("release")
			_, err := e.Do(ctx, "x", nil, func(context.Context) ([]byte, error) { return nil, boom })
			require.ErrorIs(t, err, boom)
		},
		want: map[string]float64{
			"idem_calls_total":      1,
			"idem_executions_total": 1,
			key("idem_call_duration_seconds_count", "outcome", "failed"):      1,
			"idem_fn_duration_seconds_count":                                  1,
			key("idem_store_request_duration_seconds_count", "op", "read"):    1,
			key("idem_store_request_duration_seconds_count", "op", "claim"):   1,
			key("idem_store_request_duration_seconds_count", "op", "release"): 1,
			key("idem_store_errors_total", "op", "release"):                   1,
		},
	}, {
		name: "completion fails",
		do: func(t *testing.T) {
			store.failNext("result")
			_, err := e.Do(ctx, "k", nil, value("v"))
			require.ErrorIs(t, err, errStore)
		},
		want: map[string]float64{
			"idem_calls_total":      1,
			"idem_executions_total": 1,
			key("idem_call_duration_seconds_count", "outcome", "error"):        1,
			"idem_fn_duration_seconds_count":                                   1,
			key("idem_store_request_duration_seconds_count", "op", "read"):     1,
			key("idem_store_request_duration_seconds_count", "op", "claim"):    1,
			key("idem_store_request_duration_seconds_count", "op", "complete"): 1,
			key("idem_store_errors_total", "op", "complete"):                   1,
		},
	}, {
		// fn ran for k but its outcome is not stored: unknown, so the
		// key reports ErrInterrupted.
		name: "interrupted",
		do: func(t *testing.T) {
			_, err := e.Do(ctx, "k", nil, value("v"))
			require.ErrorIs(t, err, idem.ErrInterrupted)
		},
		want: map[string]float64{
			"idem_calls_total":       1,
			"idem_interrupted_total": 1,
			key("idem_call_duration_seconds_count", "outcome", "interrupted"): 1,
			key("idem_store_request_duration_seconds_count", "op", "read"):    1,
		},
	}}
	before := parse(t, scrape(t, url))
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.do(t)
			after := parse(t, scrape(t, url))
			moved(t, before, after, s.want, nil)
			before = after
		})
	}
	for _, name := range []string{"idem_disk_usage_bytes", "idem_compactions_total", "idem_read_amplification"} {
		require.Zero(t, before[name], name)
	}
}

// A scrape does not wait for a Do call: one completes while fn holds its
// key, and shows the call begun but not ended.
func TestScrapeDoesNotWaitForDo(t *testing.T) {
	mx := idemprom.New(nil)
	e := openEngine(t, mx, idem.Options{})
	url := serve(t, mx.Collector(e))
	h := hold(e, "k")
	f := parse(t, scrape(t, url))
	require.Equal(t, 1.0, f["idem_calls_total"])
	require.Equal(t, 1.0, f["idem_executions_total"])
	require.Zero(t, f["idem_fn_duration_seconds_count"])
	require.Zero(t, f[key("idem_call_duration_seconds_count", "outcome", "executed")])
	h.finish(t)
	f = parse(t, scrape(t, url))
	require.Equal(t, 1.0, f["idem_fn_duration_seconds_count"])
	require.Equal(t, 1.0, f[key("idem_call_duration_seconds_count", "outcome", "executed")])
}

// The output of fresh Metrics, with the options set, passes the linter,
// and the options are used.
func TestOptions(t *testing.T) {
	buckets := []float64{0.5, 1}
	mx := idemprom.New(&idemprom.Options{
		Namespace:    "svc_idem",
		ConstLabels:  prometheus.Labels{"engine": "orders"},
		Buckets:      buckets,
		StoreBuckets: []float64{0.25},
	})
	buckets[0] = 7 // New copied them
	e := openEngine(t, mx, idem.Options{})
	_, err := e.Do(context.Background(), "k", nil, value("v"))
	require.NoError(t, err)
	body := scrape(t, serve(t, mx.Collector(e)))
	lint(t, body)
	require.Contains(t, string(body), `svc_idem_calls_total{engine="orders"} 1`)
	require.Contains(t, string(body), `svc_idem_fn_duration_seconds_bucket{engine="orders",le="0.5"} 1`)
	require.Contains(t, string(body), `svc_idem_store_request_duration_seconds_bucket{engine="orders",op="claim",le="0.25"} 1`)
	require.NotContains(t, string(body), `le="7"`)
	require.NotContains(t, string(body), "\nidem_")
}

// A Metrics serves one engine: Collector refuses a second, and a registry
// refuses two Metrics that no label tells apart.
func TestOneMetricsOneEngine(t *testing.T) {
	m1, m2 := idemprom.New(nil), idemprom.New(nil)
	e1 := openEngine(t, m1, idem.Options{})
	e2 := openEngine(t, m2, idem.Options{})
	c1 := m1.Collector(e1)
	require.NotPanics(t, func() { m1.Collector(e1) })
	require.Panics(t, func() { m1.Collector(e2) })

	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(c1))
	require.Error(t, reg.Register(m2.Collector(e2)))
}

// Scrapes while calls run, from several goroutines, under the race
// detector; once the calls end, the figures add up.
func TestScrapesDuringCalls(t *testing.T) {
	mx := idemprom.New(nil)
	e := openEngine(t, mx, idem.Options{Durability: idem.SyncNone})
	url := serve(t, mx.Collector(e))
	const callers, calls, keys = 4, 50, 20
	stop := make(chan struct{})
	scraped := make(chan int)
	go func() { // not the test's goroutine: no require here
		n := 0
		for {
			select {
			case <-stop:
				scraped <- n
				return
			default:
			}
			resp, err := http.Get(url)
			if err != nil {
				t.Error(err)
			} else {
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				problems, lintErr := promlint.New(bytes.NewReader(body)).Lint()
				if err != nil || resp.StatusCode != http.StatusOK || lintErr != nil || len(problems) > 0 {
					t.Errorf("scrape: %v, status %d, lint: %v %v", err, resp.StatusCode, lintErr, problems)
				}
			}
			n++
		}
	}()
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < calls; i++ {
				if _, err := e.Do(context.Background(), strconv.Itoa(i%keys), nil, value("v")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	require.Positive(t, <-scraped)
	require.False(t, t.Failed())

	f := parse(t, scrape(t, url))
	var byOutcome float64
	for o := idem.OutcomeExecuted; o <= idem.OutcomeError; o++ {
		byOutcome += f[key("idem_call_duration_seconds_count", "outcome", o.String())]
	}
	require.Equal(t, float64(callers*calls), f["idem_calls_total"])
	require.Equal(t, float64(callers*calls), byOutcome)
	require.Equal(t, float64(keys), f["idem_executions_total"])
	require.Equal(t, float64(keys), f[key("idem_call_duration_seconds_count", "outcome", "executed")])
	require.Equal(t, float64(callers*calls-keys), f["idem_replays_total"])
}

// A closed engine's collector still serves its last counts, and Pebble's
// figures as 0.
func TestScrapeAfterClose(t *testing.T) {
	mx := idemprom.New(nil)
	e := openEngine(t, mx, idem.Options{})
	url := serve(t, mx.Collector(e))
	_, err := e.Do(context.Background(), "k", nil, value("v"))
	require.NoError(t, err)
	require.Positive(t, parse(t, scrape(t, url))["idem_disk_usage_bytes"])
	require.NoError(t, e.Close())
	f := parse(t, scrape(t, url))
	require.Equal(t, 1.0, f["idem_calls_total"])
	require.Zero(t, f["idem_disk_usage_bytes"])
}

// Buckets out of order make New panic; names that Prometheus refuses make
// the collector's registration fail.
func TestInvalidOptions(t *testing.T) {
	require.Panics(t, func() { idemprom.New(&idemprom.Options{Buckets: []float64{2, 1}}) })
	require.Panics(t, func() { idemprom.New(&idemprom.Options{StoreBuckets: []float64{1, 1}}) })
	for _, o := range []*idemprom.Options{
		{Namespace: "\xff"}, // not UTF-8
		{ConstLabels: prometheus.Labels{"__name__": "x"}},
		{ConstLabels: prometheus.Labels{"op": "x"}}, // a label of the metrics' own
	} {
		mx := idemprom.New(o)
		e := openEngine(t, mx, idem.Options{})
		require.Error(t, prometheus.NewRegistry().Register(mx.Collector(e)), "%+v", o)
	}
}
