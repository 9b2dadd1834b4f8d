package idemotel_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemotel"
)

// tracing is an SDK tracer provider whose spans a SpanRecorder keeps.
type tracing struct {
	tp *sdktrace.TracerProvider
	sr *tracetest.SpanRecorder
}

// newTracing returns a provider that samples every span, or as sampler says
// if it is given. When the test ends, it checks that every span that was
// started has ended.
func newTracing(t testing.TB, sampler ...sdktrace.Sampler) *tracing {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(sr)}
	if len(sampler) > 0 {
		opts = append(opts, sdktrace.WithSampler(sampler[0]))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.Cleanup(func() {
		require.Len(t, sr.Ended(), len(sr.Started()), "spans started but not ended")
		require.NoError(t, tp.Shutdown(context.Background()))
	})
	return &tracing{tp: tp, sr: sr}
}

// observer returns an Observer on tr's provider, with opts' other fields.
func (tr *tracing) observer(opts *idemotel.Options) *idemotel.Observer {
	var o idemotel.Options
	if opts != nil {
		o = *opts
	}
	o.TracerProvider = tr.tp
	return idemotel.NewObserver(&o)
}

// ended returns the spans that have ended, in the order they ended.
func (tr *tracing) ended() []sdktrace.ReadOnlySpan { return tr.sr.Ended() }

// named returns the ended spans called name, in the order they ended.
func (tr *tracing) named(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tr.sr.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// open opens an engine in a temporary directory, with the sweeper off, and
// closes it when the test ends.
func open(t testing.TB, opts *idem.Options) *idem.Engine {
	t.Helper()
	o := *opts
	o.SweepInterval = -1
	e, err := idem.Open(t.TempDir(), &o)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

// attrs returns a span's attributes by key.
func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value)
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// storeOps returns the idem.store.op of each store event on s, in order,
// joined by spaces, and checks each event's other attributes.
func storeOps(t testing.TB, s sdktrace.ReadOnlySpan) string {
	t.Helper()
	var ops []string
	for _, ev := range s.Events() {
		require.Equal(t, idemotel.StoreEventName, ev.Name)
		m := make(map[attribute.Key]attribute.Value)
		for _, kv := range ev.Attributes {
			m[kv.Key] = kv.Value
		}
		d, ok := m[idemotel.AttrStoreDuration]
		require.True(t, ok, "store event without a duration")
		require.GreaterOrEqual(t, d.AsFloat64(), 0.0)
		require.NotContains(t, m, attribute.Key("error.type"))
		ops = append(ops, m[idemotel.AttrStoreOp].AsString())
	}
	return strings.Join(ops, " ")
}

// requireNoKey checks that key appears nowhere in the spans: not in an
// attribute, an event's attribute or a status.
func requireNoKey(t testing.TB, spans []sdktrace.ReadOnlySpan, key string) {
	t.Helper()
	for _, s := range spans {
		kvs := append([]attribute.KeyValue(nil), s.Attributes()...)
		for _, ev := range s.Events() {
			kvs = append(kvs, ev.Attributes...)
		}
		for _, kv := range kvs {
			require.NotContains(t, kv.Value.String(), key, "span %s, attribute %s", s.Name(), kv.Key)
		}
		require.NotContains(t, s.Status().Description, key)
	}
}

// value returns an fn that returns v.
func value(v string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return []byte(v), nil }
}
