// Package idemtest is the conformance suite of the idem engine's contract:
// the behaviours of Do, DoValue, Lookup, Records, Interrupted, Forget, Stats
// and Close that every backend of the engine must show, as go-cloud's
// drivertest packages are for its drivers. A backend is done when Run passes
// on it.
//
// A backend's tests implement Harness, which opens an *idem.Engine on a
// fresh, empty store, and call Run:
//
//	type harness struct{}
//
//	func (harness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
//		e, err := idemnats.Open(newStream(t), opts) // a fresh store
//		require.NoError(t, err)
//		t.Cleanup(func() { e.Close() })
//		return e
//	}
//
//	func TestConformance(t *testing.T) { idemtest.Run(t, harness{}) }
//
// A harness that can do more says so by implementing optional interfaces,
// discovered by type assertion: Reopener (close an engine and open its store
// again, a restart), Sharer (open another engine on the same store, for
// backends where several engines share one), Durabilities (the
// Options.Durability values to run the suite under) and SelfSweeping (a
// store that removes expired records itself). The cases that need a
// capability the harness lacks are skipped.
//
// Each case opens its own engines, with a clock that it moves by hand
// (Options.Now) and the background sweeper off, and runs in parallel with
// the others: the harness must be safe for concurrent use. The cases
// synchronise with channels and exact counts, never with sleeps; where one
// waits for the engine to reach a state (a call waiting for another), it
// polls Stats with a generous deadline that only guards against hangs.
package idemtest

import (
	"sync"
	"testing"
	"time"

	"github.com/idemkv/idem"
)

// Harness opens engines for the suite on a backend.
type Harness interface {
	// Open opens an engine on a fresh, empty store, with opts, and closes
	// it when t ends (t.Cleanup; the suite may have closed it already, and
	// Close returns nil when called again). opts is never nil: the harness
	// must honour every field the suite sets (TTL, Durability, NoWait,
	// RetryInterrupted, MaxKeySize, MaxValueSize, SweepInterval, Now), and
	// may set the fields of its own backend (FS, say) in a copy. Open fails
	// t if it cannot open the engine. It is called from parallel tests.
	Open(t *testing.T, opts *idem.Options) *idem.Engine
}

// Reopener is a Harness whose stores outlive their engines.
type Reopener interface {
	Harness
	// Reopen closes e, which this harness opened, and opens a new engine
	// on the same store with opts, as a restarted process would: what e
	// stored is there, and e's in-flight markers report StateInterrupted.
	// The new engine is closed when t ends.
	Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine
}

// Sharer is a Harness for a backend where several engines (in several
// processes, say) can share one store and keep its contract together: fn
// runs once per key across all of them.
type Sharer interface {
	Harness
	// OpenShared opens another engine on the store of e, which this
	// harness opened, with opts, while e stays open. The new engine is
	// closed when t ends.
	OpenShared(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine
}

// SelfSweeping is a Harness whose store removes expired records by itself
// (it implements no idem.Sweeper, as a JetStream bucket with per-message
// TTLs): Sweep returns 0 for it, and the suite checks that rather than a
// count of records swept.
type SelfSweeping interface {
	Harness
	// SelfSweeping is a marker; it is never called.
	SelfSweeping()
}

// Durabilities is a Harness whose backend supports more than the default
// durability. The suite runs once per value returned, in a subtest named
// after it; without this interface it runs once, under idem.SyncAll.
type Durabilities interface {
	Harness
	// Durabilities returns the Options.Durability values to run under.
	Durabilities() []idem.Durability
}

// Run runs the conformance suite on h's backend, as subtests of t.
func Run(t *testing.T, h Harness) {
	ds := []idem.Durability{idem.SyncAll}
	if dh, ok := h.(Durabilities); ok {
		ds = dh.Durabilities()
	}
	for _, d := range ds {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			s := &suite{h: h, d: d}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					c.fn(t, s)
				})
			}
		})
	}
}

// suite is what the cases know of the run: the harness and the durability.
type suite struct {
	h Harness
	d idem.Durability
}

// env is one case's engine, its options and its clock.
type env struct {
	t    *testing.T
	s    *suite
	e    *idem.Engine
	opts idem.Options
	clk  *clock
}

// open opens an engine on a fresh store, with the suite's options changed
// by mod (if not nil).
func (s *suite) open(t *testing.T, mod func(*idem.Options)) *env {
	t.Helper()
	clk := newClock()
	opts := idem.Options{
		Durability:    s.d,
		SweepInterval: -1,
		Now:           clk.Now,
	}
	if mod != nil {
		mod(&opts)
	}
	o := opts
	e := s.h.Open(t, &o)
	if e == nil {
		t.Fatal("idemtest: Harness.Open returned nil")
	}
	return &env{t: t, s: s, e: e, opts: opts, clk: clk}
}

// reopen restarts v's engine on its store, or skips the test if the harness
// cannot.
func (v *env) reopen() {
	v.t.Helper()
	r, ok := v.s.h.(Reopener)
	if !ok {
		v.t.Skip("idemtest: the harness does not implement Reopener")
	}
	o := v.opts
	v.e = r.Reopen(v.t, v.e, &o)
}

// shared opens another engine on v's store, or skips the test if the
// harness cannot.
func (v *env) shared() *idem.Engine {
	v.t.Helper()
	sh, ok := v.s.h.(Sharer)
	if !ok {
		v.t.Skip("idemtest: the harness does not implement Sharer")
	}
	o := v.opts
	return sh.OpenShared(v.t, v.e, &o)
}

// clock is a clock that the cases move by hand.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func newClock() *clock {
	return &clock{now: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
