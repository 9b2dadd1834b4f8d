package idemgrpc_test

import (
	"strconv"
	"sync/atomic"
	"testing"
)

// benchKeys numbers the new keys of every run of the benchmark.
var benchKeys atomic.Int64

// BenchmarkInterceptor measures a unary call over loopback through the
// interceptor, with a new key (the handler runs, and its response is
// stored: under idem.SyncAll, the default, a durable marker and a durable
// result) and with a key whose response is stored (a replay), against the
// same call to the same service without the interceptor. x-direct is the
// ratio to the latter, measured in the same run.
func BenchmarkInterceptor(b *testing.B) {
	e := openEngine(b, nil)
	direct := serve(b)
	through := newEnv(b, e, nil)
	var directNs float64 // ns/op of the direct case's last run
	ratio := func(b *testing.B) {
		if directNs > 0 {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/directNs, "x-direct")
		}
	}
	must := func(b *testing.B, r result) {
		if r.err != nil {
			b.Fatal(r.err)
		}
	}

	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			must(b, direct.do(call{value: "a"}))
		}
		directNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("new-key", func(b *testing.B) {
		for b.Loop() {
			must(b, through.do(call{key: "n" + strconv.FormatInt(benchKeys.Add(1), 10), value: "a"}))
		}
		ratio(b)
	})
	b.Run("replay", func(b *testing.B) {
		must(b, through.do(call{key: "r", value: "a"}))
		for b.Loop() {
			must(b, through.do(call{key: "r", value: "a"}))
		}
		ratio(b)
	})
}
