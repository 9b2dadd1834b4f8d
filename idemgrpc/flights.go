package idemgrpc

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"
)

// flights tells the calls of a key that are in the engine's Do when a
// handler starts running for that key, so that a duplicate stops waiting in
// the engine: after Options.Wait, or at once if it is negative. It is
// idemhttp's design, for the same reasons.
//
// The engine's Do waits for a concurrent call of the same key until its
// context ends. The interceptor calls Do with a context of its own, derived
// from the call's, and cancels it when the handler of another call with the
// same key and fingerprint is running: Do then returns an error matching
// idem.ErrInFlight (or, if it had not claimed anything yet, the context's
// error), and the call fails with Aborted. Calls with another fingerprint
// are left alone: the engine refuses them at once with
// idem.ErrFingerprintMismatch. Only the call whose handler runs cancels the
// others, and only while its handler runs, so the call that is to run the
// handler is never cancelled before it has claimed the key (after that, the
// engine no longer looks at its context, and the handler runs with the
// call's own).
//
// flights knows the calls through this interceptor only; see the package
// documentation's caveats.
type flights struct {
	wait time.Duration // Options.Wait; < 0: do not wait

	mu   sync.Mutex            // protects keys, and every keyFlight and waiter in it
	keys map[string]*keyFlight // by engine key; absent when no call of the key is in Do
}

// keyFlight is the state of one engine key.
type keyFlight struct {
	running *waiter              // the call whose handler runs, or nil
	calls   map[*waiter]struct{} // the calls in Do for the key, running included
}

// waiter is a call in Do.
type waiter struct {
	fp     []byte
	cancel context.CancelCauseFunc // cancels the context given to Do
	timer  *time.Timer             // with a wait: armed once a handler runs
}

// Causes of the cancellation of a waiter's context.
var (
	errRunning    = errors.New("idemgrpc: the handler of a call with the same key is running")
	errWaitedLong = errors.New("idemgrpc: the handler of a call with the same key is still running after Options.Wait")
)

func newFlights(wait time.Duration) *flights {
	return &flights{wait: wait, keys: make(map[string]*keyFlight)}
}

// enter registers w as calling Do for key. If a handler runs for the key
// already, w is told at once.
func (f *flights) enter(key string, w *waiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kf := f.keys[key]
	if kf == nil {
		kf = &keyFlight{calls: make(map[*waiter]struct{})}
		f.keys[key] = kf
	}
	kf.calls[w] = struct{}{}
	if kf.running != nil {
		f.notify(kf.running, w)
	}
}

// leave unregisters w, which entered for key.
func (f *flights) leave(key string, w *waiter) {
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

// start records that w's handler runs for key, and tells the other calls in
// Do for the key.
func (f *flights) start(key string, w *waiter) {
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

// stop records that w's handler, which runs for key, has returned.
func (f *flights) stop(key string, w *waiter) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if kf := f.keys[key]; kf.running == w {
		kf.running = nil
	}
}

// notify tells w that running's handler runs for w's key. f.mu is held.
func (f *flights) notify(running, w *waiter) {
	switch {
	case !bytes.Equal(running.fp, w.fp):
		// The engine refuses w with ErrFingerprintMismatch at once.
	case f.wait < 0:
		w.cancel(errRunning)
	case w.timer == nil:
		cancel := w.cancel
		w.timer = time.AfterFunc(f.wait, func() { cancel(errWaitedLong) })
	}
}
