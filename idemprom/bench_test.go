package idemprom_test

// What the Prometheus metrics cost a Do call: the same calls on engines with
// no Observer, a no-op Observer (the engine's own cost of the hook) and
// Metrics, in one run:
//
//	GOWORK=off go test -run '^$' -bench . -benchmem -count 6 | tee new.txt
//	benchstat -col /observer new.txt

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemprom"
)

// noop is an Observer that does nothing: what the engine pays for the hook
// itself.
type noop struct{}

func (noop) DoStart(ctx context.Context, key string) context.Context       { return ctx }
func (noop) StoreDone(context.Context, idem.StoreOp, time.Duration, error) {}
func (noop) FnStart(ctx context.Context) context.Context                   { return ctx }
func (noop) FnEnd(context.Context, time.Duration, error)                   {}
func (noop) DoEnd(context.Context, idem.DoInfo)                            {}

// observers are the cases compared: the name and a maker of the Observer
// (nil for none).
var observers = []struct {
	name string
	make func() idem.Observer
}{
	{"nil", func() idem.Observer { return nil }},
	{"noop", func() idem.Observer { return noop{} }},
	{"prometheus", func() idem.Observer { return idemprom.New(nil) }},
}

var benchValue = make([]byte, 100)

func benchFn(context.Context) ([]byte, error) { return benchValue, nil }

func benchKey(i int) string { return "key-" + strconv.Itoa(i) }

// benchEngine opens an engine in a temporary directory with o as its
// Observer; Metrics are registered, as in a service.
func benchEngine(b *testing.B, o idem.Observer, d idem.Durability) *idem.Engine {
	b.Helper()
	e, err := idem.Open(b.TempDir(), &idem.Options{Observer: o, Durability: d, SweepInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	if m, ok := o.(*idemprom.Metrics); ok {
		prometheus.NewRegistry().MustRegister(m.Collector(e))
	}
	return e
}

// BenchmarkDo: a new key (SyncNone, which leaves the CPU's cost in view,
// and SyncAll, the default, which waits for fsyncs), and a replay from the
// engine's cache, its fastest path, from one caller and from GOMAXPROCS
// callers at once.
func BenchmarkDo(b *testing.B) {
	const replayKeys = 1000
	ctx := context.Background()
	for _, d := range []idem.Durability{idem.SyncNone, idem.SyncAll} {
		for _, o := range observers {
			b.Run(fmt.Sprintf("new/%v/observer=%s", d, o.name), func(b *testing.B) {
				e := benchEngine(b, o.make(), d)
				keys := make([]string, b.N)
				for i := range keys {
					keys[i] = benchKey(i)
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := e.Do(ctx, keys[i], nil, benchFn); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
	for _, parallel := range []bool{false, true} {
		for _, o := range observers {
			name := "replay/callers=1"
			if parallel {
				name = "replay/callers=procs"
			}
			b.Run(name+"/observer="+o.name, func(b *testing.B) {
				e := benchEngine(b, o.make(), idem.SyncNone)
				keys := make([]string, replayKeys)
				for i := range keys {
					keys[i] = benchKey(i)
					// The first call stores, the second replay caches.
					for j := 0; j < 3; j++ {
						if _, err := e.Do(ctx, keys[i], nil, benchFn); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				if !parallel {
					for i := 0; i < b.N; i++ {
						if res, err := e.Do(ctx, keys[i%replayKeys], nil, benchFn); err != nil || !res.Replayed {
							b.Fatal(err, res.Replayed)
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					for i := 0; pb.Next(); i++ {
						if res, err := e.Do(ctx, keys[i%replayKeys], nil, benchFn); err != nil || !res.Replayed {
							b.Error(err, res.Replayed)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkObserve: the Metrics' own work for a call, without an engine:
// for a replay (DoStart, DoEnd) and for a call that runs fn on a new key
// (a read, a claim, fn, a completion).
func BenchmarkObserve(b *testing.B) {
	m := idemprom.New(nil)
	ctx := context.Background()
	b.Run("replay", func(b *testing.B) {
		info := idem.DoInfo{Outcome: idem.OutcomeReplayed, Took: 2 * time.Microsecond, Replayed: true}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			m.DoEnd(m.DoStart(ctx, "k"), info)
		}
	})
	b.Run("new", func(b *testing.B) {
		info := idem.DoInfo{Outcome: idem.OutcomeExecuted, Took: time.Millisecond}
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			c := m.DoStart(ctx, "k")
			m.StoreDone(c, idem.StoreRead, 3*time.Microsecond, nil)
			m.StoreDone(c, idem.StoreClaim, 400*time.Microsecond, nil)
			f := m.FnStart(c)
			m.FnEnd(f, 50*time.Microsecond, nil)
			m.StoreDone(c, idem.StoreComplete, 400*time.Microsecond, nil)
			m.DoEnd(c, info)
		}
	})
}

// BenchmarkScrape: a whole scrape's gathering of one engine's figures (not
// its encoding), Pebble's metrics included.
func BenchmarkScrape(b *testing.B) {
	m := idemprom.New(nil)
	e := benchEngine(b, m, idem.SyncNone)
	for i := 0; i < 1000; i++ {
		if _, err := e.Do(context.Background(), benchKey(i), nil, benchFn); err != nil {
			b.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector(e))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
