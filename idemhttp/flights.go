package idemhttp

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"
)

// flights tells the requests of a key that are calling the engine when a
// handler starts running for that key, so that a duplicate can stop waiting
// in the engine: after Options.Wait, or at once if it is negative.
//
// The engine's Do waits for a concurrent call of the same key until its
// context ends. The middleware calls Do with a context of its own, derived
// from the request's, and cancels it when the handler of another request
// with the same key and fingerprint is running: Do then returns an error
// matching idem.ErrInFlight (or, if it had not claimed anything yet, the
// context's error), and the request gets 409. Requests with a different
// fingerprint are left alone: the engine refuses them at once with
// idem.ErrFingerprintMismatch. Only the request whose handler runs cancels
// the others, and only while its handler runs, so the request that is to
// run the handler is never cancelled before it has claimed the key (after
// that, the engine no longer looks at its context, and the handler runs
// with the request's own).
//
// flights knows the requests that go through this middleware only; see the
// package documentation's caveats.
type flights struct {
	wait time.Duration // Options.Wait; <= 0: do not wait

	mu   sync.Mutex            // protects keys, and every keyFlight and waiter in it
	keys map[string]*keyFlight // by engine key; absent when no request of the key is in Do
}

// keyFlight is the state of one engine key.
type keyFlight struct {
	running *waiter              // the request whose handler runs, or nil
	calls   map[*waiter]struct{} // the requests in Do for the key, running included
}

// waiter is a request calling Do.
type waiter struct {
	fp     []byte
	cancel context.CancelCauseFunc // cancels the context given to Do
	timer  *time.Timer             // with Options.Wait: armed once a handler runs
}

// Causes of the cancellation of a waiter's context.
var (
	errRunning    = errors.New("idemhttp: the handler of a request with the same key is running")
	errWaitedLong = errors.New("idemhttp: the handler of a request with the same key is still running after Options.Wait")
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

// start records that w's handler runs for key, and tells the other requests
// in Do for the key.
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
	case f.wait <= 0:
		w.cancel(errRunning)
	case w.timer == nil:
		cancel := w.cancel
		w.timer = time.AfterFunc(f.wait, func() { cancel(errWaitedLong) })
	}
}
