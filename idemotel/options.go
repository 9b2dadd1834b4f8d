package idemotel

import (
	"runtime/debug"
	"slices"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Options configure an Observer. A nil *Options, and every zero field, means
// the default. NewObserver copies the options; it never modifies the
// caller's.
type Options struct {
	// TracerProvider makes the Observer's tracer, of scope ScopeName. If
	// nil, otel.GetTracerProvider(): the global provider, which forwards
	// to the one that otel.SetTracerProvider sets, even later.
	TracerProvider trace.TracerProvider

	// RecordKey records the engine key on every Do span, as idem.key. A key
	// often identifies a client, or is one of the client's own
	// identifiers, and spans leave the process: by default (false) a span
	// records only the key's length.
	RecordKey bool

	// Attributes are added to every Do span: the name of the engine, say,
	// when a service runs several. If nil (the default), none. NewObserver
	// copies the slice.
	Attributes []attribute.KeyValue
}

// NewObserver returns an Observer that traces Do calls as opts say: put it
// in idem.Options.Observer. A nil opts means the defaults.
func NewObserver(opts *Options) *Observer {
	var o Options
	if opts != nil {
		o = *opts
	}
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	topts := []trace.TracerOption{trace.WithSchemaURL(semconv.SchemaURL)}
	if v := moduleVersion(); v != "" {
		topts = append(topts, trace.WithInstrumentationVersion(v))
	}
	return &Observer{
		tracer:    tp.Tracer(ScopeName, topts...),
		recordKey: o.RecordKey,
		attrs:     slices.Clone(o.Attributes),
		spanOpts:  []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal)},
	}
}

// moduleVersion returns this module's version as the program's build
// information records it, or "" if it records none: a module replaced by a
// directory, or the main module built from a checkout, has none.
var moduleVersion = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, m := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
		if m.Path != ScopeName {
			continue
		}
		if m.Replace != nil {
			m = m.Replace
		}
		if m.Version == "(devel)" {
			return ""
		}
		return m.Version
	}
	return ""
})
