package idemotel_test

import (
	"context"
	"fmt"
	"log"

	"github.com/cockroachdb/pebble/v2/vfs"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemotel"
)

// A payment and its retry, traced: the first call's span has fn's span as a
// child, the retry's span says it was replayed. A service would export the
// spans (sdktrace.WithBatcher and an OTLP exporter), set its provider with
// otel.SetTracerProvider, and pass nil options to NewObserver.
func Example() {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	defer tp.Shutdown(context.Background())

	// A real service opens a directory on disk: idem.Open(dir, opts).
	e, err := idem.Open("payments", &idem.Options{
		FS:       vfs.NewMem(),
		Observer: idemotel.NewObserver(&idemotel.Options{TracerProvider: tp}),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	charge := func(ctx context.Context) ([]byte, error) {
		// Spans started from ctx here are children of idem.fn.
		return []byte("receipt #1"), nil
	}
	for range 2 {
		if _, err := e.Do(context.Background(), "order-1001", nil, charge); err != nil {
			log.Fatal(err)
		}
	}

	for _, s := range spans.GetSpans() { // in the order they ended
		fmt.Print(s.Name)
		for _, kv := range s.Attributes {
			switch kv.Key {
			case idemotel.AttrOutcome, idemotel.AttrReplayed, idemotel.AttrKeyLength:
				fmt.Printf(" %s=%s", kv.Key, kv.Value.String())
			}
		}
		fmt.Println()
	}
	// Output:
	// idem.fn
	// idem.Do idem.key.length=10 idem.outcome=executed idem.replayed=false
	// idem.Do idem.key.length=10 idem.outcome=replayed idem.replayed=true
}
