package idemprom_test

import (
	"context"
	"fmt"
	"log"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemprom"
)

// The Metrics are the engine's Observer, set before it opens; their
// collector, for that engine, is registered once it has. A service serves
// the registry with promhttp:
//
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
func Example() {
	m := idemprom.New(nil)
	// A real service opens a directory on disk: idem.Open(dir, &idem.Options{Observer: m}).
	e, err := idem.Open("payments", &idem.Options{FS: vfs.NewMem(), Observer: m})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector(e))

	charge := func(ctx context.Context) ([]byte, error) { return []byte("receipt #1"), nil }
	for attempt := 0; attempt < 3; attempt++ {
		if _, err := e.Do(context.Background(), "order-1001", nil, charge); err != nil {
			log.Fatal(err)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range families {
		switch mf.GetName() {
		case "idem_calls_total", "idem_executions_total", "idem_replays_total":
			fmt.Println(mf.GetName(), mf.GetMetric()[0].GetCounter().GetValue())
		case "idem_fn_duration_seconds":
			fmt.Println(mf.GetName()+"_count", mf.GetMetric()[0].GetHistogram().GetSampleCount())
		}
	}
	// Output:
	// idem_calls_total 3
	// idem_executions_total 1
	// idem_fn_duration_seconds_count 1
	// idem_replays_total 2
}

// Several engines in one process: one Metrics each, told apart by a label,
// in one registry.
func Example_severalEngines() {
	reg := prometheus.NewRegistry()
	for _, name := range []string{"payments", "refunds"} {
		m := idemprom.New(&idemprom.Options{ConstLabels: prometheus.Labels{"engine": name}})
		e, err := idem.Open(name, &idem.Options{FS: vfs.NewMem(), Observer: m})
		if err != nil {
			log.Fatal(err)
		}
		defer e.Close()
		reg.MustRegister(m.Collector(e))
	}
	families, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() == "idem_calls_total" {
			for _, metric := range mf.GetMetric() {
				fmt.Println(mf.GetName(), metric.GetLabel()[0].GetValue(), metric.GetCounter().GetValue())
			}
		}
	}
	// Output:
	// idem_calls_total payments 0
	// idem_calls_total refunds 0
}
