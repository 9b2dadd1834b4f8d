package idemhttp

import (
	"context"
	"math/bits"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/idemkv/idem"
)

// Admin is an idem.Observer that keeps latency histograms of an engine's Do
// calls, for the admin handler to show (see AdminHandler). Put it in the
// engine's Options.Observer before Open, then mount its Handler:
//
//	admin := idemhttp.NewAdmin(&idemhttp.AdminOptions{Authorize: checkToken})
//	e, err := idem.Open(dir, &idem.Options{Observer: admin})
//	...
//	mux.Handle("/idem/", http.StripPrefix("/idem", admin.Handler(e)))
//
// It keeps, since it was made: the duration of the calls by outcome, of fn,
// and of each kind of request to the store, each in a histogram of atomic
// counters (about 6% wide buckets), so that observing a call takes no lock
// and allocates nothing: a few atomic additions in DoEnd, FnEnd and
// StoreDone. Its memory (about 110 KiB) is fixed. It observes every engine
// whose Options.Observer it is, and adds their calls together: give each
// engine an Admin of its own.
type Admin struct {
	opts  AdminOptions
	calls [numOutcomes]latencyHist
	other latencyHist // calls of an outcome that this package does not know
	fn    latencyHist
	store [numStoreOps]latencyHist
}

// numOutcomes is the number of idem.Outcome values this package knows.
const numOutcomes = int(idem.OutcomeError) + 1

// numStoreOps is the number of idem.StoreOp values this package knows.
const numStoreOps = int(idem.StoreRelease) + 1

var _ idem.Observer = (*Admin)(nil)

// NewAdmin returns an Admin with opts (see AdminOptions; nil means the
// defaults, under which the handler refuses every request). It copies opts.
func NewAdmin(opts *AdminOptions) *Admin {
	a := &Admin{}
	if opts != nil {
		a.opts = *opts
	}
	return a
}

// Handler returns the admin handler of e (see AdminHandler), with the
// latencies that a has observed. a must be e's Options.Observer: the
// handler cannot check it, but then its latencies stay empty while the
// engine's Stats count calls, which is how idem top tells.
func (a *Admin) Handler(e *idem.Engine) http.Handler {
	return newAdminHandler(e, a, &a.opts)
}

// DoStart implements idem.Observer: it returns ctx.
func (a *Admin) DoStart(ctx context.Context, key string) context.Context {
	return ctx
}

// StoreDone implements idem.Observer: it records how long the request to the
// store took, whatever its error.
func (a *Admin) StoreDone(ctx context.Context, op idem.StoreOp, took time.Duration, err error) {
	if int(op) < numStoreOps {
		a.store[op].record(took)
	}
}

// FnStart implements idem.Observer: it returns ctx.
func (a *Admin) FnStart(ctx context.Context) context.Context {
	return ctx
}

// FnEnd implements idem.Observer: it records how long fn ran.
func (a *Admin) FnEnd(ctx context.Context, took time.Duration, err error) {
	a.fn.record(took)
}

// DoEnd implements idem.Observer: it records how long the call took, under
// its outcome.
func (a *Admin) DoEnd(ctx context.Context, info idem.DoInfo) {
	if int(info.Outcome) < numOutcomes {
		a.calls[info.Outcome].record(info.Took)
	} else {
		a.other.record(info.Took)
	}
}

// latency returns the histograms a has kept so far.
func (a *Admin) latency() *AdminLatency {
	l := &AdminLatency{
		Calls: make(map[string]*AdminHistogram),
		Fn:    a.fn.snapshot(),
		Store: make(map[string]*AdminHistogram),
	}
	for i := range a.calls {
		if h := a.calls[i].snapshot(); h.Count > 0 {
			l.Calls[idem.Outcome(i).String()] = h
		}
	}
	if h := a.other.snapshot(); h.Count > 0 {
		l.Calls["other"] = h
	}
	for i := range a.store {
		if h := a.store[i].snapshot(); h.Count > 0 {
			l.Store[idem.StoreOp(i).String()] = h
		}
	}
	return l
}

// latencyHist is a log-linear histogram of durations, safe for concurrent
// use: exact below 16 ns, and buckets 1/16 of a power of two wide above
// (about 6%). Each bucket is an atomic counter.
type latencyHist struct {
	counts [histBuckets]atomic.Uint64
	sum    atomic.Uint64 // nanoseconds; wraps after 584 years of calls
}

const (
	histSubBits = 4
	histSub     = 1 << histSubBits // buckets per power of two
	// histBuckets covers every uint64: the histSub values below histSub
	// have a bucket each, then each power of two from histSub up has
	// histSub buckets.
	histBuckets = (64 - histSubBits + 1) * histSub
)

// bucketOf returns the bucket of v nanoseconds.
func bucketOf(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1 // v>>shift is in [histSub, 2*histSub)
	return (shift+1)*histSub + int(v>>shift) - histSub
}

// bucketMax returns the largest value of bucket i.
func bucketMax(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	top := uint64(i%histSub + histSub)
	return (top+1)<<shift - 1
}

// record adds one duration; a negative one counts as 0.
func (h *latencyHist) record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)].Add(1)
	h.sum.Add(v)
}

// snapshot returns h's non-empty buckets. Durations recorded meanwhile may
// be in the sum and not in the buckets, or the other way round.
func (h *latencyHist) snapshot() *AdminHistogram {
	s := &AdminHistogram{Buckets: []AdminBucket{}, SumNs: h.sum.Load()}
	for i := range h.counts {
		if n := h.counts[i].Load(); n > 0 {
			s.Buckets = append(s.Buckets, AdminBucket{LeNs: bucketMax(i), Count: n})
			s.Count += n
		}
	}
	return s
}
