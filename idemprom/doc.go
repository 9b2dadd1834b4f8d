// Package idemprom exports an idem Engine's figures to Prometheus: the
// engine's own counters, read at each scrape, and latency histograms kept
// by an idem.Observer that sees each Do call.
//
// # Basics
//
// The histograms need the engine's cooperation, so setting up takes two
// steps: the Metrics are the engine's Options.Observer, set before the
// engine opens, and the collector for that engine is registered once it
// has.
//
//	m := idemprom.New(nil)
//	e, err := idem.Open(dir, &idem.Options{Observer: m})
//	...
//	prometheus.MustRegister(m.Collector(e))
//
// The same goes for an engine of New (idempg, idemnats). One Metrics serves
// one engine: for several engines in a process, make one Metrics each with a
// ConstLabels value that tells them apart ({"engine": "payments"}), and
// register their collectors in one registry. Collector panics if it is
// called for a second engine, and a registry refuses two collectors that no
// label tells apart.
//
// Observing a call takes no lock and allocates nothing: the histograms'
// label values are resolved once, by New. A scrape reads atomic counters and
// Engine.Stats, which takes no lock that Do takes, so neither waits for the
// other. The benchmarks (bench_test.go) measure the cost per call.
//
// # Metrics
//
// The names below are with the default Namespace, "idem". The counters that
// say "since the engine was opened" are Engine.Stats's: they start again
// from 0 when a process opens its engine, which Prometheus's rate and
// increase take as a counter reset.
//
//	Name                                 Type       Labels   Meaning
//	idem_calls_total                     counter             Do calls that passed validation, since the engine was opened
//	idem_executions_total                counter             times fn was called
//	idem_replays_total                   counter             calls answered with a stored outcome (read, or shared by a concurrent call that stored it)
//	idem_waits_total                     counter             calls that waited for a concurrent call of the same key
//	idem_mismatches_total                counter             calls refused with ErrFingerprintMismatch
//	idem_interrupted_total               counter             calls that found their key's earlier run cut off (ErrInterrupted, or a new run with RetryInterrupted)
//	idem_swept_total                     counter             expired records removed by sweeps
//	idem_disk_usage_bytes                gauge               bytes on disk of Pebble's database
//	idem_compactions_total               counter             Pebble's compactions since the engine was opened
//	idem_read_amplification              gauge               Pebble's read amplification
//	idem_conflicts_total                 counter    reason   calls that returned ErrInFlight (Observer)
//	idem_call_duration_seconds           histogram  outcome  time of Do calls; its _count is the calls by outcome (Observer)
//	idem_fn_duration_seconds             histogram           time fn ran (Observer)
//	idem_store_request_duration_seconds  histogram  op       time of Do's requests to the store (Observer)
//	idem_store_errors_total              counter    op       Do's requests to the store that failed (Observer)
//	idem_wait_duration_seconds           histogram           time a call waited for another call of its key, per call that waited (Observer)
//
// Pebble's three figures are 0 on other stores (idempg, idemnats), and once
// the engine is closed.
//
// The labels' values:
//
//   - outcome: executed (fn ran and its outcome is stored), replayed, waited
//     (shared a concurrent call's outcome), conflict, mismatch,
//     interrupted, failed (fn returned an error that is not Permanent, or
//     panicked: nothing stored), error (the store failed, the call's
//     context ended before fn ran, or fn's outcome could not be stored);
//     idem.Outcome says more.
//   - reason, of a conflict: no_wait, the call returned at once without
//     waiting (Options.NoWait; or, on a shared store, the key holds a claim
//     of this engine whose write failed with its outcome unknown, until the
//     store resolves it); canceled or deadline_exceeded, the call's context
//     ended while it waited for another call of the key. The reasons add up
//     to the engine's Stats.Conflicts.
//   - op: read, claim (the in-flight marker written before fn runs; none
//     under SyncNone), complete (fn's outcome), release (the marker of a
//     call whose fn failed is deleted). A request counts as failed when the
//     store returned an error; finding no record, or that another engine
//     wrote first, is an answer, not a failure.
//
// The figures from the Observer count calls when they end, those from
// Stats when they begin: with calls in flight, idem_calls_total is ahead of
// the sum of idem_call_duration_seconds_count by those calls, and
// idem_executions_total of idem_fn_duration_seconds_count. The count of
// idem_wait_duration_seconds is about idem_waits_total (a call that waited
// twice, for two owners of its key in turn, counts once here, twice there).
//
// # What to alert on
//
//   - increase(idem_interrupted_total[1h]) > 0, and more so a rising one:
//     keys whose fn was cut off by a crash, with an outcome nobody knows,
//     which report ErrInterrupted until an operator reconciles them and
//     calls Forget (idem's Interrupted lists them). Each is a crash, or a
//     store that failed after fn ran (idem_store_errors_total{op="complete"}).
//   - The conflict rate, rate(idem_conflicts_total[5m]) /
//     rate(idem_calls_total[5m]): clients retrying while the first call
//     still runs (no_wait), or giving up while they wait
//     (deadline_exceeded, canceled): fn is slower than the clients'
//     timeouts.
//   - idem_mismatches_total rising: clients reusing idempotency keys for
//     different requests, a client bug.
//   - Store latency, histogram_quantile(0.99,
//     rate(idem_store_request_duration_seconds_bucket[5m])) by op, and
//     any rate of idem_store_errors_total: every Do pays the store's
//     latency (under SyncAll, an fsync for the claim and one for the
//     completion), and a failing store fails calls.
//   - idem_disk_usage_bytes growing without bound: records are not expiring
//     (a long TTL, or the sweeper off) or not being compacted away.
package idemprom
