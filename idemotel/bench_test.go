package idemotel_test

// What tracing costs a Do call: each path with no Observer; with an
// Observer whose methods do nothing (the hook's own cost: the engine's clock
// reads); then with this Observer on a no-op provider (OpenTelemetry's API
// with no SDK), on an SDK provider that samples nothing, and on one that
// samples everything and hands the spans to a batch processor (whose
// exporter discards them):
//
//	go test -run '^$' -bench . -benchmem -count 6 | tee new.txt
//	benchstat new.txt
//
// New keys run under SyncNone, so that an fsync per call does not hide the
// Observer's cost; replays are of one key, answered from the engine's cache
// of records: the cheapest call there is.

import (
	"context"
	"strconv"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemotel"
)

// benchObservers are the Observers compared.
var benchObservers = []struct {
	name     string
	provider func(b *testing.B) trace.TracerProvider // nil: no idemotel.Observer
	empty    bool                                    // an Observer that does nothing
}{
	{"observer=none", nil, false},
	{"observer=empty", nil, true},
	{"observer=noop", func(*testing.B) trace.TracerProvider { return noop.NewTracerProvider() }, false},
	{"observer=sdk-never", func(b *testing.B) trace.TracerProvider {
		return sdkProvider(b, sdktrace.WithSampler(sdktrace.NeverSample()))
	}, false},
	{"observer=sdk-always", func(b *testing.B) trace.TracerProvider {
		return sdkProvider(b, sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	}, false},
}

// emptyObserver is an Observer that does nothing: the floor.
type emptyObserver struct{}

func (emptyObserver) DoStart(ctx context.Context, _ string) context.Context         { return ctx }
func (emptyObserver) StoreDone(context.Context, idem.StoreOp, time.Duration, error) {}
func (emptyObserver) FnStart(ctx context.Context) context.Context                   { return ctx }
func (emptyObserver) FnEnd(context.Context, time.Duration, error)                   {}
func (emptyObserver) DoEnd(context.Context, idem.DoInfo)                            {}

func sdkProvider(b *testing.B, opts ...sdktrace.TracerProviderOption) trace.TracerProvider {
	tp := sdktrace.NewTracerProvider(opts...)
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	return tp
}

func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	v := []byte("receipt")
	fn := func(context.Context) ([]byte, error) { return v, nil }
	for _, path := range []string{"new", "replay"} {
		for _, obs := range benchObservers {
			b.Run("path="+path+"/"+obs.name, func(b *testing.B) {
				opts := &idem.Options{Durability: idem.SyncNone, SweepInterval: -1}
				switch {
				case obs.empty:
					opts.Observer = emptyObserver{}
				case obs.provider != nil:
					opts.Observer = idemotel.NewObserver(&idemotel.Options{TracerProvider: obs.provider(b)})
				}
				e, err := idem.Open(b.TempDir(), opts)
				if err != nil {
					b.Fatal(err)
				}
				defer e.Close()
				keys := make([]string, b.N)
				for i := range keys {
					keys[i] = "key-" + strconv.Itoa(i)
				}
				if path == "replay" {
					for i := range keys {
						keys[i] = "key"
					}
					for range 3 { // the third replay caches the record
						if _, err := e.Do(ctx, "key", nil, fn); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					if _, err := e.Do(ctx, keys[i], nil, fn); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkStoreRequests compares the two ways of tracing a call's store
// requests: as events on its span, as the Observer does, and as child
// spans, on a call with three requests (a read, a claim, a completion),
// sampled and not.
func BenchmarkStoreRequests(b *testing.B) {
	ops := []idem.StoreOp{idem.StoreRead, idem.StoreClaim, idem.StoreComplete}
	for _, sampled := range []bool{true, false} {
		sampler := sdktrace.NeverSample()
		if sampled {
			sampler = sdktrace.AlwaysSample()
		}
		tp := sdkProvider(b, sdktrace.WithSampler(sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		o := idemotel.NewObserver(&idemotel.Options{TracerProvider: tp})
		tracer := tp.Tracer("reference")
		info := idem.DoInfo{Outcome: idem.OutcomeExecuted}
		b.Run("sampled="+strconv.FormatBool(sampled)+"/as=events", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				ctx := o.DoStart(context.Background(), "key")
				for _, op := range ops {
					o.StoreDone(ctx, op, time.Millisecond, nil)
				}
				o.DoEnd(ctx, info)
			}
		})
		b.Run("sampled="+strconv.FormatBool(sampled)+"/as=spans", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				ctx := o.DoStart(context.Background(), "key")
				for _, op := range ops {
					t0 := time.Now()
					_, span := tracer.Start(ctx, "idem.store", trace.WithTimestamp(t0))
					if span.IsRecording() {
						span.SetAttributes(idemotel.AttrStoreOp.String(op.String()))
					}
					span.End()
				}
				o.DoEnd(ctx, info)
			}
		})
	}
}
