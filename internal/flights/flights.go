// Package flights lets the adapters (idemhttp, idemgql, idemgrpc) bound how
// long a duplicate waits in the engine for the handler of another call of
// its key.
//
// The engine's Do waits for a concurrent call of the same key until its
// context ends. An adapter calls Do with a context of its own, derived from
// its call's, and Flights cancels it when the handler of another call with
// the same key and fingerprint is running: at once (a negative wait), or
// after the wait. Do then returns an error matching idem.ErrInFlight (or, if
// it had not claimed anything yet, the context's error), which the adapter
// answers as its protocol says (409, Aborted, IDEMPOTENCY_CONCURRENT_REQUEST);
// context.Cause tells ErrRunning from ErrWaitedLong. Calls with a different
// fingerprint are left alone: the engine refuses them at once with
// idem.ErrFingerprintMismatch. Only the call whose handler runs cancels the
// others, and only while its handler runs, so the call that is to run the
// handler is never cancelled before it has claimed the key (after that, the
// engine no longer looks at its context, and the handler runs with the
// call's own).
//
// A Flights knows the calls of one adapter in one process only: a
// duplicate in another process, or one through another adapter, waits in
// the engine until its own context ends.
package flights

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"
)

// Causes of the cancellation of a Waiter's context.
var (
	// ErrRunning: the handler of a call with the same key is running, and
	// the adapter does not wait.
	ErrRunning = errors.New("idem: the handler of a call with the same key is running")
	// ErrWaitedLong: the handler of a call with the same key is still
	// running after the adapter's wait.
	ErrWaitedLong = errors.New("idem: the handler of a call with the same key is still running after the wait")
)

// Flights tracks, by engine key, the calls of an adapter that are in Do, and
// the one whose handler runs. Its methods are safe for concurrent use.
type Flights struct {
	wait time.Duration // < 0: do not wait

	mu   sync.Mutex            // protects keys, and every keyFlight and Waiter in it
	keys map[string]*keyFlight // by engine key; absent when no call of the key is in Do
}

// keyFlight is the state of one engine key.
type keyFlight struct {
	running *Waiter              // the call whose handler runs, or nil
	calls   map[*Waiter]struct{} // the calls in Do for the key, running included
}

// Waiter is a call in Do.
type Waiter struct {
	fp     []byte
	cancel context.CancelCauseFunc // cancels the context given to Do
	timer  *time.Timer             // with a wait: armed once a handler runs
}

// New returns a Flights whose duplicates wait for wait before their context
// is cancelled with ErrWaitedLong, or not at all (ErrRunning at once) if
// wait is negative. (Adapters turn their zero Wait into their default
// before.)
func New(wait time.Duration) *Flights {
	return &Flights{wait: wait, keys: make(map[string]*keyFlight)}
}

// Enter registers a call of key with fingerprint fp that calls Do with a
// context that cancel cancels, and returns its Waiter, for Start, Stop and
// Leave. If a handler runs for the key already, the call is told at once.
func (f *Flights) Enter(key string, fp []byte, cancel context.CancelCauseFunc) *Waiter {
	w := &Waiter{fp: fp, cancel: cancel}
	f.mu.Lock()
	defer f.mu.Unlock()
	kf := f.keys[key]
	if kf == nil {
		kf = &keyFlight{calls: make(map[*Waiter]struct{})}
		f.keys[key] = kf
	}
	kf.calls[w] = struct{}{}
	if kf.running != nil {
		f.notify(kf.running, w)
	}
	return w
}

// Leave unregisters w, which entered for key.
func (f *Flights) Leave(key string, w *Waiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
	kf := f.keys[key]
	delete(kf.calls, w)
	if kf.running == w {
		kf.running = nil
	}
	if len(kf.calls) == 0 {
		delete(f.keys, key)
	}
}

// Start records that w's handler runs for key, and tells the other calls in
// Do for the key.
func (f *Flights) Start(key string, w *Waiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kf := f.keys[key]
	kf.running = w
	for o := range kf.calls {
		if o != w {
			f.notify(w, o)
		}
	}
}

// Stop records that w's handler, which runs for key, has returned. The
// other calls' waits stop with it: a call that tries again (its handler
// gave up) and finds another handler running waits for that one anew.
func (f *Flights) Stop(key string, w *Waiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kf := f.keys[key]
	if kf.running != w {
		return
	}
	kf.running = nil
	for o := range kf.calls {
		if o.timer != nil {
			o.timer.Stop()
			o.timer = nil
		}
	}
}

// notify tells w that running's handler runs for w's key. f.mu is held.
func (f *Flights) notify(running, w *Waiter) {
	switch {
	case !bytes.Equal(running.fp, w.fp):
		// The engine refuses w with ErrFingerprintMismatch at once.
	case f.wait < 0:
		w.cancel(ErrRunning)
	case w.timer == nil:
		cancel := w.cancel
		w.timer = time.AfterFunc(f.wait, func() { cancel(ErrWaitedLong) })
	}
}
