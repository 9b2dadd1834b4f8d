package idemprom

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemkv/idem"
)

// Default bucket bounds, in seconds. A replay answered from the engine's
// cache takes microseconds, a new key under SyncAll an fsync or two
// (milliseconds), and fn whatever the application does; a Pebble read takes
// microseconds, a shared store's request a network round trip.
var (
	defaultBuckets      = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	defaultStoreBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}
)

// Options configure Metrics. A nil *Options, and every zero field, means
// the default. New copies what it keeps; it never modifies the caller's
// options.
type Options struct {
	// Namespace is the first part of every metric's name, as in
	// idem_calls_total. If "", "idem".
	Namespace string

	// ConstLabels are labels with fixed values on every metric. A process
	// with several engines gives each its own Metrics, told apart by a
	// label such as {"engine": "payments"}, and may register them all in
	// one registry. Default none.
	ConstLabels prometheus.Labels

	// Buckets are the upper bounds, in seconds and in increasing order, of
	// the buckets of idem_call_duration_seconds, idem_fn_duration_seconds
	// and idem_wait_duration_seconds. If empty, 100µs to 10s in 16 steps
	// (.0001, .00025, .0005, .001, ..., 2.5, 5, 10).
	Buckets []float64

	// StoreBuckets are the upper bounds, in seconds and in increasing
	// order, of the buckets of idem_store_request_duration_seconds. If
	// empty, 10µs to 1s in 16 steps (.00001, .000025, .00005, .0001, ...,
	// .25, .5, 1).
	StoreBuckets []float64
}

// Metrics is an idem.Observer that keeps Prometheus histograms and counters
// of one engine's Do calls. Set it as the engine's Options.Observer before
// the engine is opened, then register the collector that Collector returns
// for that engine:
//
//	m := idemprom.New(nil)
//	e, err := idem.Open(dir, &idem.Options{Observer: m})
//	...
//	prometheus.MustRegister(m.Collector(e))
//
// A Metrics serves one engine. For several, make one Metrics each, with a
// ConstLabels value that tells them apart: a Metrics that observed two
// engines would mix their calls, and Collector refuses a second engine.
//
// Its methods are safe for concurrent use. Observing a call adds no
// allocation and takes no lock: each method updates histograms and
// counters whose label values were resolved by New.
type Metrics struct {
	callVec     *prometheus.HistogramVec // idem_call_duration_seconds{outcome}
	calls       [numOutcomes]prometheus.Observer
	fn          prometheus.Histogram     // idem_fn_duration_seconds
	storeVec    *prometheus.HistogramVec // idem_store_request_duration_seconds{op}
	store       [numOps]prometheus.Observer
	storeErrVec *prometheus.CounterVec // idem_store_errors_total{op}
	storeErrs   [numOps]prometheus.Counter
	wait        prometheus.Histogram   // idem_wait_duration_seconds
	conflictVec *prometheus.CounterVec // idem_conflicts_total{reason}
	conflicts   [numReasons]prometheus.Counter

	stats statsDescs // the figures read from Engine.Stats

	mu     sync.Mutex   // guards engine
	engine *idem.Engine // the engine Collector was called with, or nil
}

// numOutcomes and numOps size the arrays of pre-resolved label values, one
// per value that idem defines.
const (
	numOutcomes = int(idem.OutcomeError) + 1
	numOps      = int(idem.StoreRelease) + 1
)

// The reasons of idem_conflicts_total.
const (
	reasonNoWait = iota
	reasonCanceled
	reasonDeadline
	numReasons
)

var reasonNames = [numReasons]string{
	reasonNoWait:   "no_wait",
	reasonCanceled: "canceled",
	reasonDeadline: "deadline_exceeded",
}

// New returns Metrics with options opts (nil for the defaults). It panics if
// Buckets or StoreBuckets are not in increasing order, as
// prometheus.NewHistogram does; invalid names (a Namespace or ConstLabels
// that Prometheus refuses) are reported when the collector is registered.
func New(opts *Options) *Metrics {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Namespace == "" {
		o.Namespace = "idem"
	}
	if len(o.Buckets) == 0 {
		o.Buckets = defaultBuckets
	}
	if len(o.StoreBuckets) == 0 {
		o.StoreBuckets = defaultStoreBuckets
	}
	// Copies, so that the caller's slices and map may change afterwards.
	buckets := append([]float64(nil), o.Buckets...)
	storeBuckets := append([]float64(nil), o.StoreBuckets...)
	labels := make(prometheus.Labels, len(o.ConstLabels))
	for k, v := range o.ConstLabels {
		labels[k] = v
	}

	m := &Metrics{
		callVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: o.Namespace, Name: "call_duration_seconds", ConstLabels: labels, Buckets: buckets,
			Help: "Time Do calls took, by what they came to (outcome: executed, replayed, waited, conflict, mismatch, interrupted, failed, error). The count is the calls by outcome.",
		}, []string{"outcome"}),
		fn: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: o.Namespace, Name: "fn_duration_seconds", ConstLabels: labels, Buckets: buckets,
			Help: "Time fn ran, each time a Do call ran it.",
		}),
		storeVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: o.Namespace, Name: "store_request_duration_seconds", ConstLabels: labels, Buckets: storeBuckets,
			Help: "Time the store took to answer Do's requests, by op (read, claim, complete, release), failed ones included.",
		}, []string{"op"}),
		storeErrVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: o.Namespace, Name: "store_errors_total", ConstLabels: labels,
			Help: "Do's requests to the store that failed, by op (read, claim, complete, release).",
		}, []string{"op"}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: o.Namespace, Name: "wait_duration_seconds", ConstLabels: labels, Buckets: buckets,
			Help: "Time Do calls waited for another call of their key to finish, for each call that waited.",
		}),
		conflictVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: o.Namespace, Name: "conflicts_total", ConstLabels: labels,
			Help: "Do calls that returned ErrInFlight, by reason: no_wait (returned at once: Options.NoWait, or on a shared store this engine's own claim of unknown outcome), canceled or deadline_exceeded (the call's context ended while it waited).",
		}, []string{"reason"}),
		stats: newStatsDescs(o.Namespace, labels),
	}
	for i := range m.calls {
		m.calls[i] = m.callVec.WithLabelValues(idem.Outcome(i).String())
	}
	for i := range m.store {
		op := idem.StoreOp(i).String()
		m.store[i] = m.storeVec.WithLabelValues(op)
		m.storeErrs[i] = m.storeErrVec.WithLabelValues(op)
	}
	for i := range m.conflicts {
		m.conflicts[i] = m.conflictVec.WithLabelValues(reasonNames[i])
	}
	return m
}

// DoStart implements idem.Observer. It returns ctx: Metrics keeps nothing
// per call.
func (m *Metrics) DoStart(ctx context.Context, key string) context.Context { return ctx }

// StoreDone implements idem.Observer: it observes idem_store_request_duration_seconds,
// and counts idem_store_errors_total if err is not nil.
func (m *Metrics) StoreDone(ctx context.Context, op idem.StoreOp, took time.Duration, err error) {
	if int(op) >= numOps {
		// An op of a later version of idem.
		m.storeVec.WithLabelValues(op.String()).Observe(took.Seconds())
		if err != nil {
			m.storeErrVec.WithLabelValues(op.String()).Inc()
		}
		return
	}
	m.store[op].Observe(took.Seconds())
	if err != nil {
		m.storeErrs[op].Inc()
	}
}

// FnStart implements idem.Observer. It returns ctx.
func (m *Metrics) FnStart(ctx context.Context) context.Context { return ctx }

// FnEnd implements idem.Observer: it observes idem_fn_duration_seconds.
func (m *Metrics) FnEnd(ctx context.Context, took time.Duration, err error) {
	m.fn.Observe(took.Seconds())
}

// DoEnd implements idem.Observer: it observes idem_call_duration_seconds,
// idem_wait_duration_seconds for a call that waited, and counts
// idem_conflicts_total for a conflict.
func (m *Metrics) DoEnd(ctx context.Context, info idem.DoInfo) {
	if int(info.Outcome) < numOutcomes {
		m.calls[info.Outcome].Observe(info.Took.Seconds())
	} else {
		// An outcome of a later version of idem.
		m.callVec.WithLabelValues(info.Outcome.String()).Observe(info.Took.Seconds())
	}
	if info.Waited > 0 {
		m.wait.Observe(info.Waited.Seconds())
	}
	if info.Outcome == idem.OutcomeConflict {
		m.conflicts[conflictReason(info.Err)].Inc()
	}
}

// conflictReason says why a call returned err, an ErrInFlight. A call whose
// context ended while it waited returns an error that matches the
// context's error too (see idem.ErrInFlight); any other did not wait.
func conflictReason(err error) int {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return reasonDeadline
	case errors.Is(err, context.Canceled):
		return reasonCanceled
	}
	return reasonNoWait
}

// Collector returns the prometheus.Collector of m's figures and of e's own
// counters (Engine.Stats, read at each scrape), for the caller to register.
// e must be the engine whose Options.Observer is m. Collector panics if it
// was called before with another engine: a Metrics serves one engine (make
// one per engine, and a new one for an engine opened again).
//
// Collecting reads atomic counters and Engine.Stats, which takes no lock
// that Do takes: a scrape never waits for a Do call, nor a Do call for a
// scrape. (On Pebble's store, Stats asks Pebble for its metrics, under
// Pebble's mutex for a moment; a commit takes that mutex only when it
// rotates Pebble's memtable.)
func (m *Metrics) Collector(e *idem.Engine) prometheus.Collector {
	if e == nil {
		panic("idemprom: Collector called with a nil engine")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.engine != nil && m.engine != e {
		panic("idemprom: Metrics.Collector called for a second engine; a Metrics serves one engine: make one per engine, with ConstLabels that tell them apart")
	}
	m.engine = e
	return &collector{m: m, e: e}
}
