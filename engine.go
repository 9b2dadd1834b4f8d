package idem

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"iter"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by the engine. Match them with errors.Is: the engine may
// wrap them with details.
var (
	// ErrClosed is returned by calls on a closed Engine.
	ErrClosed = errors.New("idem: engine closed")
	// ErrNotFound is returned by Lookup for a key with no record, or an
	// expired one.
	ErrNotFound = errors.New("idem: record not found")
	// ErrInvalidKey is returned for an empty key or one longer than
	// Options.MaxKeySize.
	ErrInvalidKey = errors.New("idem: invalid key")
	// ErrTooLarge is returned when fn's value, or the message of its
	// Permanent error, is longer than Options.MaxValueSize. Nothing is
	// stored and the key is released, as for any error of fn.
	ErrTooLarge = errors.New("idem: value too large")
	// ErrFingerprintMismatch is returned when a key is used again with a
	// different fingerprint: the key was reused for a different request.
	// fn does not run. (HTTP: 422.)
	ErrFingerprintMismatch = errors.New("idem: key reused with a different fingerprint")
	// ErrInFlight is returned when the key's fn is running in another call
	// and this call does not wait for it: with Options.NoWait, or when the
	// waiting call's context ends (the error then matches the context's
	// error too). With a shared store it is also returned for a key whose
	// claim by this engine failed with its outcome unknown, until the store
	// has resolved it: fn did not run, and a later retry runs it. (HTTP:
	// 409.)
	ErrInFlight = errors.New("idem: a call for this key is in flight")
	// ErrInterrupted is returned for a key whose fn was running when an
	// earlier process stopped: its outcome is unknown, so fn does not run
	// again (unless Options.RetryInterrupted). Reconcile the key, then call
	// Forget to let the next call run fn. (HTTP: 409.)
	ErrInterrupted = errors.New("idem: an earlier run of this key was interrupted; its outcome is unknown")
	// ErrLocked is returned by Open when another Engine, in this process or
	// another, has the directory open, whatever path it was opened by.
	ErrLocked = errors.New("idem: directory in use")
	// ErrCorrupt is returned for a stored record that cannot be decoded,
	// and by DoValue for a stored value that is not valid msgpack: the
	// bytes on disk are damaged. It concerns that key only; Forget removes
	// the record.
	ErrCorrupt = errors.New("idem: corrupt record")
	// ErrValueType is returned by DoValue for an intact stored value that
	// does not decode into the type asked for: the type changed since the
	// value was stored, or it is one that msgpack cannot decode (see
	// DoValue). The Result holds the stored bytes.
	ErrValueType = errors.New("idem: stored value does not decode into the type asked for")
	// ErrNotInterrupted is returned by ForgetInterrupted for a key whose
	// record is not interrupted.
	ErrNotInterrupted = errors.New("idem: record not interrupted")
	// ErrReadOnly is returned by the calls that write (Do, Forget, Sweep,
	// Compact) on an Engine opened with Options.ReadOnly.
	ErrReadOnly = errors.New("idem: engine opened read-only")
	// ErrNotDatabase is returned by Open for a directory that holds no idem
	// database: with Options.ReadOnly, one with no database at all, or an
	// empty one; always, a Pebble database with keys that idem did not
	// write, which Open leaves as it was, byte for byte. (A writable Open
	// makes an empty Pebble database an idem one. One whose Pebble options
	// do not match, a custom comparer say, is refused with Pebble's error,
	// also unchanged.)
	ErrNotDatabase = errors.New("idem: not an idem database")
)

// Result is the outcome of a Do call.
type Result struct {
	// Value is fn's value. It is owned by the caller.
	Value []byte
	// Replayed is true when the outcome was stored before this call: fn
	// did not run for it. The value is a stored result, or that of a
	// concurrent call for the same key.
	Replayed bool
	// CreatedAt is when the result was stored.
	CreatedAt time.Time
	// ExpiresAt is when the result expires: Options.TTL after it was
	// stored.
	ExpiresAt time.Time
}

// PermanentError is an error of fn that is stored and replayed like a value.
// When fn returns Permanent(err), Do returns fn's error as it is (a
// *PermanentError wrapping err, or whatever wrapped that) to the call that
// ran fn and to the concurrent duplicates that waited for it, and a
// *PermanentError whose Err has the same message to every replay. Match it
// with errors.As, which finds it in both cases.
type PermanentError struct {
	// Err is the error fn passed to Permanent, for the call that ran fn and
	// the duplicates that waited for it. For a replay it is an error that
	// has only the stored message (the message of the whole error fn
	// returned), so errors.Is against fn's original error matches only the
	// first call's.
	Err error
}

// Error returns the message of the wrapped error.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks an error returned by fn as the operation's outcome: its
// message is stored and replayed to every later call for the key, like a
// value. Without it, an error releases the key and the next call runs fn
// again. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// errNilFn is returned by Do when fn is nil.
var errNilFn = errors.New("idem: Do called with a nil fn")

// panicError is what waiting duplicates get when fn panicked; the panic
// itself reaches the caller whose fn panicked.
type panicError struct {
	value any
}

func (p *panicError) Error() string {
	return fmt.Sprintf("idem: fn panicked in a concurrent call for this key: %v", p.value)
}

// errGoexit is what waiting duplicates get when fn called runtime.Goexit.
var errGoexit = errors.New("idem: fn called runtime.Goexit in a concurrent call for this key")

// An inFlightError is returned to a caller that stopped waiting for a
// concurrent call because its context ended: it matches ErrInFlight and the
// context's error.
type inFlightError struct {
	ctxErr error
}

func (e *inFlightError) Error() string {
	return ErrInFlight.Error() + ": " + e.ctxErr.Error()
}

func (e *inFlightError) Unwrap() []error { return []error{ErrInFlight, e.ctxErr} }

// Engine is an idempotency engine on a Store: Pebble's (Open), or any other
// (New). Its methods are safe for concurrent use.
type Engine struct {
	opts   Options
	logger *slog.Logger
	store  Store
	// local is the store when it is the built-in Pebble one, for what only
	// it has: the key filter, the sweep's expiry scans, compaction and
	// Pebble's figures. Nil for any other store.
	local *pebbleStore
	// shared is StoreInfo.Shared: other engines use the same records.
	shared bool
	// mix guesses, with a shared store, whether a lead had better read
	// its key or claim it first (order.go).
	mix          keyMix
	watcher      Watcher  // the store's, or nil
	liveness     Liveness // the store's, or nil
	storeSweeper Sweeper  // the store's, or nil (Pebble's sweeps through local)
	locks        lockTable
	owner        uint64 // StoreInfo.Owner: this engine's identity in its records
	ttl          int64  // opts.TTL in nanoseconds

	// state counts the calls in progress, with closedBit set once Close has
	// begun. drained is closed when the count falls to zero after that.
	state     atomic.Int64
	drainOnce sync.Once
	drained   chan struct{}
	closed    chan struct{} // closed when Close has finished
	closeErr  error         // Close's result; read after closed is closed

	// bgCtx is the context of the background work (the sweeper, filter
	// builds); stopBackground cancels it.
	bgCtx          context.Context
	stopBackground context.CancelFunc
	sweeperDone    sync.WaitGroup
	sweepMu        sync.Mutex // one sweep at a time

	filter keyFilter // the negative path (filter.go)

	// orphans holds the keys whose in-flight marker of this epoch outlived
	// its call, because storing the outcome failed. Their markers report
	// StateInterrupted, like an earlier process's.
	orphans sync.Map // string -> struct{}

	stats counters
}

const closedBit = 1 << 62

// New returns an Engine on s, which it owns from then on: Close closes it,
// also when New fails. A nil opts means the defaults. The options that only
// the Pebble store has (Durability, CacheSize, FS, ReadOnly) must be left
// zero, and RecordCacheSize too for a shared store (StoreInfo.Shared),
// whose records other engines may change: New returns an error naming the
// first that is set.
func New(s Store, opts *Options) (*Engine, error) {
	if s == nil {
		return nil, errors.New("idem: New called with a nil Store")
	}
	o, err := opts.withDefaults()
	if err == nil {
		err = o.checkGeneric(opts, s.Info().Shared)
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return newEngine(s, o), nil
}

// newEngine starts an engine with options o on s.
func newEngine(s Store, o Options) *Engine {
	info := s.Info()
	e := &Engine{
		opts:    o,
		logger:  o.Logger,
		store:   s,
		shared:  info.Shared,
		owner:   info.Owner,
		ttl:     int64(o.TTL),
		drained: make(chan struct{}),
		closed:  make(chan struct{}),
	}
	e.local, _ = s.(*pebbleStore)
	e.watcher, _ = s.(Watcher)
	e.liveness, _ = s.(Liveness)
	e.storeSweeper, _ = s.(Sweeper)
	cache := o.RecordCacheSize
	if e.shared {
		cache = -1 // another engine may Forget a record
	}
	e.locks.init(cache)
	e.bgCtx, e.stopBackground = context.WithCancel(context.Background())
	if !o.ReadOnly {
		if e.local != nil {
			e.filter.seed, e.filter.minKeys = maphash.MakeSeed(), filterMinKeys
			e.rebuildFilter()
		}
		if o.SweepInterval > 0 && (e.local != nil || e.storeSweeper != nil) {
			e.sweeperDone.Add(1)
			go e.sweeper(e.bgCtx, o.SweepInterval)
		}
	}
	return e
}

// enter registers a call in progress; it returns false once Close has begun.
// Every successful enter is paired with exit.
func (e *Engine) enter() bool {
	if e.state.Add(1)&closedBit != 0 {
		e.exit()
		return false
	}
	return true
}

func (e *Engine) exit() {
	if e.state.Add(-1) == closedBit {
		e.drainOnce.Do(func() { close(e.drained) })
	}
}

func (e *Engine) now() int64 { return e.opts.Now().UnixNano() }

func (e *Engine) checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > e.opts.MaxKeySize {
		return fmt.Errorf("%w: key of %d bytes is longer than MaxKeySize %d", ErrInvalidKey, len(key), e.opts.MaxKeySize)
	}
	return nil
}

// Do runs fn once for key and stores its outcome, or returns the outcome
// stored by an earlier call with the same key.
//
//   - The first call for a key runs fn. A value is stored, with Replayed
//     false; so is the error of fn if it is Permanent(err).
//   - A later call with the same fingerprint gets the stored outcome back,
//     with Replayed true, in this process or after a restart, until the
//     record expires.
//   - A call while fn runs for the key in another call waits for that call's
//     outcome and shares it (Replayed true if it was stored), or returns
//     ErrInFlight at once with Options.NoWait. A call whose ctx ends while it
//     waits returns an error matching both ErrInFlight and ctx.Err().
//   - A call whose fingerprint differs from the stored or running one
//     returns ErrFingerprintMismatch. Fingerprints compare exactly; nil
//     equals empty. The fingerprint is compared first: a key whose run was
//     interrupted returns ErrFingerprintMismatch, not ErrInterrupted, to a
//     call with another fingerprint.
//   - If fn returns an error that is not Permanent, nothing is stored: the
//     error is returned (to the calls waiting, too) and the next call runs
//     fn again. So it is if fn panics: the panic reaches this caller, and
//     waiting calls get an error saying that fn panicked.
//   - A key whose fn was cut off by a crash returns ErrInterrupted.
//
// fn runs with ctx. ctx ending while fn runs is fn's business: if fn then
// returns an error, that error releases the key like any other. fn must not
// call Close, nor Do for the same key: both would wait for fn itself.
func (e *Engine) Do(ctx context.Context, key string, fingerprint []byte, fn func(ctx context.Context) ([]byte, error)) (Result, error) {
	if fn == nil {
		return Result{}, errNilFn
	}
	if err := e.checkKey(key); err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if !e.enter() {
		return Result{}, ErrClosed
	}
	defer e.exit()
	if e.opts.ReadOnly {
		return Result{}, ErrReadOnly
	}
	e.stats.calls.Add(1)
	if o := e.opts.Observer; o != nil {
		return e.doObserved(ctx, o, key, fingerprint, fn)
	}
	return e.do(ctx, key, fingerprint, fn, nil)
}

// do is Do's work once its arguments are checked, for the call whose
// Observer record is co (nil without an Observer).
func (e *Engine) do(ctx context.Context, key string, fingerprint []byte, fn func(ctx context.Context) ([]byte, error), co *callObs) (Result, error) {
	fp := digest(fingerprint)
	c := newLeaderCall(fp)
	for {
		now := e.now()
		hit, hitOK, f, owner := e.locks.acquire(key, c, now)
		switch {
		case owner:
			return e.lead(ctx, key, c, now, fn, co)
		case hitOK:
			leaderCalls.Put(c) // never registered
			return e.replayCached(&hit, fp)
		}
		res, err, retry := e.follow(ctx, f, fp, co)
		if !retry {
			leaderCalls.Put(c)
			return res, err
		}
	}
}

// replayCached answers a call from a cached record.
func (e *Engine) replayCached(r *cachedRecord, fp Fingerprint) (Result, error) {
	if r.fp != fp {
		e.stats.mismatches.Add(1)
		return Result{}, ErrFingerprintMismatch
	}
	e.stats.replays.Add(1)
	res := Result{Replayed: true, CreatedAt: time.Unix(0, r.created), ExpiresAt: time.Unix(0, r.expires)}
	if r.failed {
		return res, &PermanentError{Err: errors.New(r.errMsg)}
	}
	res.Value = cloneBytes(r.value)
	return res, nil
}

// leadState is what lead and complete know of their call, for the guard that
// releases the key however they end.
type leadState struct {
	finished bool     // the key has been released
	marked   bool     // the in-flight marker is stored
	fnDone   bool     // fn has returned normally
	stored   bool     // fn's outcome is stored
	claimed  int64    // when the key was claimed
	rev      uint64   // the store's revision of the marker, if marked
	obs      *callObs // the call's Observer record, or nil
}

// lead handles a call that owns its key since now: it reads the record,
// replays it or claims the key and runs fn, and releases the key with the
// outcome.
//
// A deferred guard releases the key if anything panics, in fn or after it
// (a user error's Error method, a fatal Pebble error): a panic in fn deletes
// the in-flight marker, as an error would; one after fn returned keeps it,
// since fn's effects happened, and the key reports ErrInterrupted.
func (e *Engine) lead(ctx context.Context, key string, c *call, now int64, fn func(context.Context) ([]byte, error), co *callObs) (res Result, err error) {
	st := leadState{obs: co}
	defer func() {
		if st.finished {
			return
		}
		// Something panicked, or fn called runtime.Goexit: release the
		// key, tell the followers, and let the panic (or Goexit) go on.
		// (guardPanics makes a panic(nil) a non-nil panic, so nil here
		// means Goexit.)
		r := recover()
		var err error = errGoexit
		if r != nil {
			err = &panicError{value: r}
		}
		func() {
			// The key is released even if the Observer's FnEnd panics.
			defer func() {
				switch {
				case st.stored:
					// fn's outcome is stored: nothing to undo.
				case st.fnDone:
					e.orphan(&st, key, c)
				case st.marked:
					e.releaseQuietly(&st, key)
				}
				e.finish(&st, key, c, outcome{share: true, err: err}, nil)
			}()
			st.obs.fnPanicked() // if fn is what panicked
		}()
		if r != nil {
			panic(r)
		}
	}()
	guardPanics(func() { res, err = e.leadOwned(ctx, key, c, now, fn, &st) }, nil)
	return res, err
}

// leadOwned is lead's work, under lead's guard.
//
// With a store of its own (Pebble's), the engine reads the key's record and
// then claims the key with a plain write: its lock table keeps every other
// call out. With a shared store it claims first, with Create (one request
// for a new key, two for a key with a record), while most of its recent
// leads found no record, and reads first (two and one) while most found
// one: e.mix keeps the count, and order.go says why one half is the
// break-even. A claim that another engine won, or a record that changed
// since it was read, is read then (or taken from the refusal) and decided
// on like any record. Either way every decision rests on the store's
// atomic writes (see Store), not on the order.
func (e *Engine) leadOwned(ctx context.Context, key string, c *call, now int64, fn func(context.Context) ([]byte, error), st *leadState) (Result, error) {
	var (
		rec   StoredRecord
		rev   uint64
		found bool // the key has a record, rec, expired or not
		known bool // rec and found are what the store holds
		waits int  // times this call waited for another engine's claim
		learn bool // claiming first: the first Create's answer is e.mix's sample
	)
	if !e.shared || e.mix.readFirst() {
		known = true
		if e.local == nil || !e.filter.absent(key) {
			var err error
			if rec, rev, found, err = e.read(ctx, key, st.obs); err != nil {
				return e.finish(st, key, c, outcome{share: true, err: err}, nil)
			}
		}
		if e.shared {
			e.mix.add(found)
		}
	} else {
		learn = true
	}
	for {
		if known && found && !rec.Expired(now) {
			if rec.Fingerprint != c.fp {
				e.stats.mismatches.Add(1)
				return e.finish(st, key, c, outcome{share: true, err: ErrFingerprintMismatch}, &rec)
			}
			switch rec.State {
			case StateCompleted:
				e.stats.replays.Add(1)
				return e.finish(st, key, c, outcome{share: true, res: rec.result(true)}, &rec)
			case StateFailed:
				e.stats.replays.Add(1)
				return e.finish(st, key, c, outcome{share: true, res: rec.result(true), err: &PermanentError{Err: errors.New(rec.Err)}}, &rec)
			}
			// An in-flight marker, found by the key's owner in this
			// engine: another engine's claim, if that engine is alive;
			// otherwise a claim whose fn was cut off (an earlier
			// process's, a dead engine's, or one of this engine whose
			// call could not store its outcome). Its outcome is unknown.
			if e.resolving(key, &rec) {
				// This engine's own claim, whose write failed with its
				// outcome unknown: fn did not run for it, and the store
				// takes it back once it knows (see Store.Create). Not
				// interrupted: a retry will run fn.
				e.stats.conflicts.Add(1)
				return e.finish(st, key, c, outcome{share: true, err: ErrInFlight}, nil)
			}
			live, err := e.claimAlive(ctx, &rec)
			if err != nil {
				return e.finish(st, key, c, outcome{share: true, err: err}, nil)
			}
			if live {
				if e.opts.NoWait {
					e.stats.conflicts.Add(1)
					return e.finish(st, key, c, outcome{share: true, err: ErrInFlight}, nil)
				}
				if waits == 0 {
					e.stats.waits.Add(1)
				}
				t0 := st.obs.begin()
				err := e.waitClaim(ctx, key, rev, waits)
				st.obs.waitedSince(t0)
				if err != nil {
					e.stats.conflicts.Add(1)
					// Not shared: the followers in this engine wait
					// with their own contexts.
					return e.finish(st, key, c, outcome{err: &inFlightError{ctxErr: err}}, nil)
				}
				waits++
				if rec, rev, found, err = e.read(ctx, key, st.obs); err != nil {
					return e.finish(st, key, c, outcome{share: true, err: err}, nil)
				}
				now = e.now()
				continue
			}
			e.stats.interrupted.Add(1)
			if !e.opts.RetryInterrupted {
				return e.finish(st, key, c, outcome{share: true, err: ErrInterrupted}, nil)
			}
		}
		st.claimed = now
		if err := ctx.Err(); err != nil {
			// This caller gave up; followers retry with their own contexts.
			return e.finish(st, key, c, outcome{err: err}, nil)
		}
		// An orphan of this engine (a marker whose call could not store its
		// outcome) keeps its flag until its marker is replaced: a call that
		// gives up before then leaves it reporting StateInterrupted.
		replacesOrphan := known && found && rec.State == StateInFlight && rec.Owner == e.owner
		if e.local != nil {
			e.filter.add(key) // before the key's first write
			if e.filter.full() {
				e.rebuildFilter()
			}
		}
		// The in-flight marker. Under SyncNone, which promises nothing
		// across a crash, Pebble's store does not write it: the lock table
		// alone keeps duplicates out. (But it is over an orphan's marker,
		// which this call must not leave behind if fn fails; and an
		// orphan's, see orphan.)
		if e.opts.Durability == SyncNone && !replacesOrphan {
			break
		}
		marker := StoredRecord{State: StateInFlight, Fingerprint: c.fp, Owner: e.owner, Created: now, Expires: e.expiry(now)}
		var err error
		t0 := st.obs.begin()
		if known && found {
			rev, err = e.store.Update(ctx, key, marker, rev, WriteClaim)
		} else {
			rev, err = e.store.Create(ctx, key, marker, WriteClaim)
			if learn && (err == nil || errors.Is(err, ErrStoreConflict)) {
				e.mix.add(err != nil)
			}
			learn = false
		}
		if err == nil {
			// Before the Observer hears of it: lead's guard releases
			// the marker if anything panics from here on.
			st.marked, st.rev = true, rev
		}
		st.obs.storeDone(StoreClaim, t0, err)
		if errors.Is(err, ErrStoreConflict) && e.shared {
			// Another engine wrote the key since it was read (or it has
			// a record Create did not know of): decide again on the
			// record the store found, or read it.
			var ce *ConflictError
			if errors.As(err, &ce) {
				rec, rev, found = ce.Record, ce.Rev, true
			} else if rec, rev, found, err = e.read(ctx, key, st.obs); err != nil {
				return e.finish(st, key, c, outcome{share: true, err: err}, nil)
			}
			known, now = true, e.now()
			continue
		}
		if err != nil {
			return e.finish(st, key, c, outcome{share: true, err: fmt.Errorf("idem: storing the in-flight marker: %w", err)}, nil)
		}
		if replacesOrphan || e.shared {
			// Its marker is this call's now. (In a shared store an
			// orphan's marker has owner 0, see orphan.)
			e.orphans.Delete(key)
		}
		break
	}
	e.locks.setRunning(key, c)
	e.stats.executions.Add(1)

	v, fnErr := fn(st.obs.fnStart(ctx))
	st.fnDone = true
	st.obs.fnEnd(fnErr)
	return e.complete(st, key, c, v, fnErr)
}

// read returns key's record and its revision, with found false if it has
// none. co, if not nil, is the Observer record of the call that reads.
func (e *Engine) read(ctx context.Context, key string, co *callObs) (rec StoredRecord, rev uint64, found bool, err error) {
	t0 := co.begin()
	rec, rev, err = e.store.Get(ctx, key)
	co.storeDone(StoreRead, t0, err)
	switch {
	case err == nil:
		return rec, rev, true, nil
	case errors.Is(err, ErrNotFound):
		return StoredRecord{}, 0, false, nil
	}
	return StoredRecord{}, 0, false, err
}

// resolving reports whether r, key's in-flight marker, is a claim of this
// engine in a shared store that no call holds and that is not an orphan:
// one whose write returned an error, and which the store may have stored
// after all. Its fn never ran. (With Pebble's store, whose failed writes
// store nothing, there is none.)
func (e *Engine) resolving(key string, r *StoredRecord) bool {
	if !e.shared || r.Owner != e.owner {
		return false
	}
	_, orphan := e.orphans.Load(key)
	return !orphan
}

// claimAlive reports whether r, an in-flight marker that has not expired and
// that no call of this engine holds, is the claim of another engine that is
// still running: one that the store's Liveness says is alive. A marker of
// owner 0 (a claim whose engine could not store its outcome, see orphan) is
// never alive, nor is one of this engine's own.
func (e *Engine) claimAlive(ctx context.Context, r *StoredRecord) (bool, error) {
	if r.Owner == e.owner || r.Owner == 0 || e.liveness == nil {
		return false, nil
	}
	alive, err := e.liveness.Alive(ctx, r.Owner)
	if err != nil {
		return false, fmt.Errorf("idem: asking whether the engine that claimed the key is alive: %w", err)
	}
	return alive, nil
}

// waitClaim waits until key's record may no longer be at revision rev,
// another engine's claim: through the store's Watcher, or else by sleeping
// a while, longer each time (the call's waits so far). It returns ctx's
// error if ctx ends first.
func (e *Engine) waitClaim(ctx context.Context, key string, rev uint64, waits int) error {
	if e.watcher != nil {
		return e.watcher.Watch(ctx, key, rev)
	}
	t := time.NewTimer(min(10*time.Millisecond<<min(waits, 7), time.Second))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// guardPanics calls f. A panic in f goes on (re-raised on the panicking
// stack, so that its trace shows where it began), unless absorb, if not nil,
// takes it by returning true; so does runtime.Goexit. A panic(nil) under
// GODEBUG=panicnil=1, for which recover returns nil as it does during
// Goexit, goes on as a panic with a *runtime.PanicNilError, as it is by
// default since Go 1.21: above guardPanics, a deferred recover that gets
// nil knows that the goroutine is exiting. As in x/sync/singleflight, the
// two are told apart by whether the inner function comes back: only a
// recovered panic does.
func guardPanics(f func(), absorb func(r any) bool) {
	returned, absorbed := false, false
	func() {
		defer func() {
			if returned {
				return
			}
			if r := recover(); r != nil {
				if absorb != nil && absorb(r) {
					absorbed = true
					return
				}
				panic(r)
			}
			// Goexit goes on from here; a panic(nil) stops here.
		}()
		f()
		returned = true
	}()
	if !returned && !absorbed {
		panic(new(runtime.PanicNilError))
	}
}

// complete stores the outcome of fn.
func (e *Engine) complete(st *leadState, key string, c *call, v []byte, fnErr error) (Result, error) {
	var tooLarge error
	switch {
	case fnErr != nil && !isPermanent(fnErr):
		if st.obs != nil {
			st.obs.failed = true
		}
		if st.marked {
			e.releaseQuietly(st, key)
		}
		return e.finish(st, key, c, outcome{share: true, err: fnErr}, nil)
	case fnErr != nil && len(fnErr.Error()) > e.opts.MaxValueSize:
		tooLarge = fmt.Errorf("%w: Permanent error message of %d bytes is above MaxValueSize %d", ErrTooLarge, len(fnErr.Error()), e.opts.MaxValueSize)
	case fnErr == nil && len(v) > e.opts.MaxValueSize:
		tooLarge = fmt.Errorf("%w: value of %d bytes is above MaxValueSize %d", ErrTooLarge, len(v), e.opts.MaxValueSize)
	}
	if tooLarge != nil {
		if st.obs != nil {
			st.obs.failed = true
		}
		if st.marked {
			e.releaseQuietly(st, key)
		}
		return e.finish(st, key, c, outcome{share: true, err: tooLarge}, nil)
	}

	stored := e.now()
	rec := StoredRecord{State: StateCompleted, Fingerprint: c.fp, Owner: e.owner, Created: stored, Expires: e.expiry(stored), Value: v}
	if fnErr != nil {
		rec.State, rec.Value, rec.Err = StateFailed, nil, fnErr.Error()
	}
	// The key stays claimed until this write has returned: Pebble makes a
	// synced commit visible before its fsync ends, and no duplicate may be
	// answered from a record that is not yet durable. (Context.Background:
	// fn has run, and its outcome is stored whatever the caller's ctx.)
	var err error
	t0 := st.obs.begin()
	if st.marked {
		_, err = e.store.Update(context.Background(), key, rec, st.rev, WriteResult)
	} else {
		_, err = e.store.Create(context.Background(), key, rec, WriteResult)
	}
	st.stored = err == nil
	st.obs.storeDone(StoreComplete, t0, err)
	if err != nil {
		// The marker stays: fn ran, but its outcome is not stored, so the
		// key reports ErrInterrupted from now on.
		e.orphan(st, key, c)
		return e.finish(st, key, c, outcome{share: true, res: Result{Value: v}, err: fmt.Errorf("idem: storing the result: %w", err)}, nil)
	}
	if st.obs != nil {
		st.obs.stored = true
	}
	// A new record is not cached: most keys are never retried, and caching
	// each would cost every new key an eviction. Replays read it from Pebble
	// (its memtable, while it is recent); the second caches it (lock.go).
	return e.finish(st, key, c, outcome{share: true, res: rec.result(false), err: fnErr}, nil)
}

// isPermanent reports whether err is, or wraps, a *PermanentError. (A
// function of its own, so that only calls whose fn failed pay errors.As's
// allocation.)
func isPermanent(err error) bool {
	var perm *PermanentError
	return errors.As(err, &perm)
}

// expiry returns the expiry of a record stored at now, saturating rather
// than overflowing for a huge TTL.
//
// This is the engine's one rule of expiry: a record lives TTL from when it
// was stored. An in-flight marker lives TTL from the claim, just before fn
// runs; a result (a value or a Permanent error) lives TTL from when it was
// stored, after fn returned, so that a caller who has seen an outcome can
// count on its replay for a whole TTL, however long fn ran.
func (e *Engine) expiry(now int64) int64 {
	if now > math.MaxInt64-e.ttl {
		return math.MaxInt64
	}
	return now + e.ttl
}

// orphan makes key, whose fn ran for c but whose outcome cannot be stored,
// report ErrInterrupted from now on: its in-flight marker stays, flagged as
// an orphan. Under SyncNone, which wrote no marker before fn, it writes one
// now (without fsync), so that the key's fn does not run again with no
// crash in between; if that write fails too, the key is released. In a
// shared store the marker is written again with owner 0, so that every
// engine, not only this one, sees the claim as interrupted.
func (e *Engine) orphan(st *leadState, key string, c *call) {
	switch {
	case e.shared && st.marked:
		marker := StoredRecord{State: StateInFlight, Fingerprint: c.fp, Created: st.claimed, Expires: e.expiry(st.claimed)}
		if _, err := e.store.Update(context.Background(), key, marker, st.rev, WriteClaim); err != nil && !errors.Is(err, ErrStoreConflict) {
			e.logger.Error("idem: fn ran, but storing its outcome failed and so did marking its claim interrupted; the store may yet store either, and if it stores neither, other engines wait for the key until it expires or this engine forgets it", "key_len", len(key), "error", err)
		}
	case !st.marked:
		marker := StoredRecord{State: StateInFlight, Fingerprint: c.fp, Owner: e.owner, Created: st.claimed, Expires: e.expiry(st.claimed)}
		rev, err := e.store.Create(context.Background(), key, marker, WriteClaim)
		if err != nil {
			e.logger.Error("idem: fn ran but neither its outcome nor a marker could be stored; a retry will run it again", "error", err)
			return
		}
		st.marked, st.rev = true, rev
	}
	e.orphans.Store(key, struct{}{})
}

// releaseQuietly deletes the in-flight marker of a call whose fn failed;
// under SyncAll durably, so that a crash cannot bring the
// marker back and make the key report ErrInterrupted. If the delete fails,
// or panics, the marker stays and the key reports ErrInterrupted: safe,
// since the outcome is then unknown to later calls. (A panic of Pebble's
// commit does not come back here: store.commit stops the process.)
func (e *Engine) releaseQuietly(st *leadState, key string) {
	var err error
	t0 := st.obs.begin()
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		err = e.store.Delete(context.Background(), key, st.rev, WriteRelease)
		if errors.Is(err, ErrStoreConflict) {
			err = nil // the claim is gone already: nothing to release
		}
	}()
	if err != nil {
		e.orphans.Store(key, struct{}{})
		e.logger.Error("idem: releasing a key failed; it will report ErrInterrupted", "error", err)
	}
	// Outside the recover: an Observer's panic reaches Do's caller.
	st.obs.storeDone(StoreRelease, t0, err)
}

// finish releases c's key, caching rec (the key's stored record, if it is
// to be cached), hands out to its followers, and returns out's result and
// error to c's own caller.
func (e *Engine) finish(st *leadState, key string, c *call, out outcome, rec *StoredRecord) (Result, error) {
	st.finished = true
	e.locks.release(key, c, out, rec)
	return out.res, out.err
}

// follow waits for the owner of a key. It returns the outcome to share, or
// retry true when the caller must try to own the key again: the owner was
// not a Do leader with the same fingerprint, or it left nothing to share.
func (e *Engine) follow(ctx context.Context, f follower, fp Fingerprint, co *callObs) (res Result, err error, retry bool) {
	c := f.c // only c.fp, c.maint and, after done, c.out may be read
	checkRunning := func() (Result, error, bool) {
		if c.fp != fp {
			e.stats.mismatches.Add(1)
			return Result{}, ErrFingerprintMismatch, true
		}
		if e.opts.NoWait {
			e.stats.conflicts.Add(1)
			return Result{}, ErrInFlight, true
		}
		return Result{}, nil, false
	}
	select {
	case <-f.done:
	default:
		if f.running {
			if res, err, stop := checkRunning(); stop {
				return res, err, false
			}
		}
		e.stats.waits.Add(1)
		t0 := co.begin()
		defer co.waitedSince(t0)
		running := f.runningCh // nil when never ready: maintenance, or already running
	wait:
		for {
			select {
			case <-f.done:
				break wait
			case <-running:
				running = nil
				select {
				case <-f.done:
					break wait
				default:
				}
				if res, err, stop := checkRunning(); stop {
					return res, err, false
				}
			case <-ctx.Done():
				e.stats.conflicts.Add(1)
				return Result{}, &inFlightError{ctxErr: ctx.Err()}, false
			}
		}
	}
	out := &c.out
	if c.maint || !out.share || c.fp != fp {
		return Result{}, nil, true
	}
	if co != nil {
		co.shared = true
	}
	if out.err != nil {
		// The leader's answer, which this call returns too.
		switch {
		case errors.Is(out.err, ErrFingerprintMismatch):
			e.stats.mismatches.Add(1)
		case errors.Is(out.err, ErrInterrupted):
			e.stats.interrupted.Add(1)
		case errors.Is(out.err, ErrInFlight):
			e.stats.conflicts.Add(1)
		}
	}
	res = out.res
	res.Value = cloneBytes(res.Value)
	if !res.CreatedAt.IsZero() {
		// A stored outcome: a value, or a Permanent error.
		res.Replayed = true
		e.stats.replays.Add(1)
	}
	return res, out.err, false
}

// result returns the Result a record stands for.
func (r *StoredRecord) result(replayed bool) Result {
	return Result{
		Value:     r.Value,
		Replayed:  replayed,
		CreatedAt: time.Unix(0, r.Created),
		ExpiresAt: time.Unix(0, r.Expires),
	}
}

// Lookup returns key's record, or ErrNotFound if it has none or it expired.
// It reads the database as it is: a result being stored may show as
// completed a moment before its fsync ends, while Do still holds the key.
func (e *Engine) Lookup(key string) (Record, error) {
	if err := e.checkKey(key); err != nil {
		return Record{}, err
	}
	if !e.enter() {
		return Record{}, ErrClosed
	}
	defer e.exit()
	rec, _, err := e.store.Get(context.Background(), key)
	if err != nil {
		return Record{}, err
	}
	if rec.Expired(e.now()) {
		return Record{}, ErrNotFound
	}
	return e.publicRecord(key, &rec, nil), nil
}

// interrupted reports whether r, key's record, is a marker whose call is
// gone: one of an earlier process or a dead engine, or an orphan of this
// one. alive, if not nil, caches the answers of Liveness by owner. An
// engine whose liveness cannot be learnt counts as alive: its claim is not
// reported interrupted on a guess.
func (e *Engine) interrupted(key string, r *StoredRecord, alive map[uint64]bool) bool {
	if r.State != StateInFlight {
		return false
	}
	if r.Owner != e.owner {
		live, ok := alive[r.Owner]
		if !ok {
			var err error
			if live, err = e.claimAlive(context.Background(), r); err != nil {
				live = true
			}
			if alive != nil {
				alive[r.Owner] = live
			}
		}
		return !live
	}
	_, orphan := e.orphans.Load(key)
	return orphan
}

// publicRecord returns r, key's record, as Lookup and Records report it;
// alive is as for interrupted.
func (e *Engine) publicRecord(key string, r *StoredRecord, alive map[uint64]bool) Record {
	state := r.State
	if e.interrupted(key, r, alive) {
		state = StateInterrupted
	}
	return Record{
		Key:       key,
		State:     state,
		CreatedAt: time.Unix(0, r.Created),
		ExpiresAt: time.Unix(0, r.Expires),
		Value:     r.Value,
		Err:       r.Err,
	}
}

// Forget deletes key's record, so that the next Do for it runs fn. It is the
// way to release a key that reports ErrInterrupted once its outcome has been
// reconciled (ForgetInterrupted does it only if the key still is). Forgetting
// a key with no record does nothing. A key that a Do
// call holds in this engine (fn running, or the call reading the key), or
// whose fn another engine on a shared store is running, cannot be
// forgotten: Forget returns ErrInFlight. On a shared store, the next Do on
// every engine sees that the record is gone.
func (e *Engine) Forget(key string) error { return e.forget(key, false) }

// ForgetInterrupted is Forget for a key that reports ErrInterrupted: it
// deletes key's record only if the record is interrupted when Forget holds
// the key, and returns an error matching ErrNotInterrupted for a record in
// another state (a corrupt one included), or ErrNotFound for none. Unlike
// Lookup followed by Forget, no call can store an outcome for the key between
// the check and the delete (one may, with Options.RetryInterrupted).
func (e *Engine) ForgetInterrupted(key string) error { return e.forget(key, true) }

// forget is Forget, and ForgetInterrupted if onlyInterrupted.
func (e *Engine) forget(key string, onlyInterrupted bool) error {
	if err := e.checkKey(key); err != nil {
		return err
	}
	if !e.enter() {
		return ErrClosed
	}
	defer e.exit()
	if e.opts.ReadOnly {
		return ErrReadOnly
	}
	c := newMaintCall()
	for {
		got, ownerDone := e.locks.tryAcquire(key, c)
		if got == claimed {
			break
		}
		if got == heldByDo {
			return ErrInFlight
		}
		<-ownerDone // a sweep or another Forget: brief, no user code
	}
	defer e.locks.releaseAll([]string{key}, c)
	ctx := context.Background()
	for {
		rec, rev, found, err := e.read(ctx, key, nil)
		if errors.Is(err, ErrCorrupt) {
			if onlyInterrupted {
				return fmt.Errorf("%w: the record is corrupt (%v)", ErrNotInterrupted, err)
			}
			// A corrupt record can be forgotten.
			return e.store.Delete(ctx, key, 0, WriteForget)
		}
		if err != nil {
			return err
		}
		if !found || rec.Expired(e.now()) {
			if onlyInterrupted {
				return ErrNotFound
			}
			if !found {
				return nil
			}
		}
		live := false
		if rec.State == StateInFlight && !rec.Expired(e.now()) {
			if live, err = e.claimAlive(ctx, &rec); err != nil {
				return err
			} else if live {
				return ErrInFlight // another engine runs fn
			}
		}
		if onlyInterrupted && !e.interrupted(key, &rec, map[uint64]bool{rec.Owner: live}) {
			return fmt.Errorf("%w: the record is %s", ErrNotInterrupted, rec.State)
		}
		err = e.store.Delete(ctx, key, rev, WriteForget)
		if errors.Is(err, ErrStoreConflict) && e.shared {
			continue // written again since it was read: decide again
		}
		if err != nil {
			return err
		}
		e.orphans.Delete(key)
		e.filter.removed.Add(1)
		return nil
	}
}

// rebuildFilter starts a build of the negative path's filter (filter.go).
func (e *Engine) rebuildFilter() {
	e.filter.rebuild(e.bgCtx, filterSource{e}, func(err error) {
		e.logger.Warn("idem: building the key filter failed; new keys read the database", "error", err)
	})
}

// filterSource gives a filter build the keys that have records.
type filterSource struct{ e *Engine }

func (s filterSource) owned(add func(string)) { s.e.locks.owned(add) }

func (s filterSource) scan(ctx context.Context, add func(string)) error {
	return s.e.local.recordKeys(ctx, add)
}

// scanChunk is how many records Records reads per Pebble iterator, so that
// it holds no iterator while the caller's loop body runs.
const scanChunk = 256

// errSkip marks a record that records does not yield.
var errSkip = errors.New("skip")

// Records returns the live records whose keys start with prefix (all of them
// for ""), in key order: the operator's view of the engine. Expired records
// are skipped, as everywhere else. A record that cannot be decoded is
// yielded with its key and an error matching ErrCorrupt, and iteration goes
// on; an error of the database ends it. Records that change during the
// iteration may or may not be seen. It reads the whole key range named by
// prefix: it is not meant for a request path.
func (e *Engine) Records(prefix string) iter.Seq2[Record, error] {
	return e.records(prefix, "", nil)
}

// RecordsAfter is Records from the first key after the key after: a page of
// a listing that goes on where the previous page ended, without reading the
// records before it.
func (e *Engine) RecordsAfter(prefix, after string) iter.Seq2[Record, error] {
	return e.records(prefix, after, nil)
}

// Interrupted returns the records left in flight by earlier processes: keys
// whose fn was running when a process stopped, and whose outcome is unknown
// (and, rarer, keys of this process whose fn ran but whose outcome could not
// be stored). They report ErrInterrupted until they expire or are forgotten.
// It yields them as Records does, and reads every record to find them.
func (e *Engine) Interrupted() iter.Seq2[Record, error] {
	return e.records("", "", func(r *Record) bool { return r.State == StateInterrupted })
}

// records yields the live records under prefix after the key after (from
// the first if "") that keep accepts (all if keep is nil), and the records
// that fail to decode.
func (e *Engine) records(prefix, after string, keep func(*Record) bool) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		after := after
		alive := make(map[uint64]bool) // owners' liveness, asked once a listing
		for {
			var (
				keys  []string
				recs  []StoredRecord
				errs  []error
				chunk []Record
			)
			if !e.enter() {
				yield(Record{}, ErrClosed)
				return
			}
			now := e.now()
			next, err := e.store.Scan(context.Background(), prefix, after, scanChunk, func(key string, rec StoredRecord, err error) {
				if err == nil && rec.Expired(now) {
					return
				}
				keys, recs, errs = append(keys, key), append(recs, rec), append(errs, err)
			})
			for i := range recs {
				r := Record{Key: keys[i]}
				if errs[i] == nil {
					r = e.publicRecord(keys[i], &recs[i], alive)
					if keep != nil && !keep(&r) {
						errs[i] = errSkip
					}
				}
				chunk = append(chunk, r)
			}
			e.exit()
			for i := range chunk {
				if errs[i] != errSkip && !yield(chunk[i], errs[i]) {
					return
				}
			}
			if err != nil {
				yield(Record{}, fmt.Errorf("idem: listing records: %w", err))
				return
			}
			if next == "" {
				return
			}
			after = next
		}
	}
}

// Sweep removes the records that have expired, now, and returns how many it
// removed. It reads every record (and decodes the start of each), so its
// cost grows with the number of records, not with the number expired. The background
// sweeper does the same a slice at a time (Options.SweepInterval). Expired
// records are invisible whether or not they have been swept; Sweep frees
// their space. A record whose key a call holds meanwhile is left to a later
// sweep. It stops early, with ctx's error, when ctx ends. On a store other
// than Pebble's it calls the store's Sweeper, if it has one, and otherwise
// does nothing: the store removes expired records itself.
func (e *Engine) Sweep(ctx context.Context) (int, error) {
	if !e.enter() {
		return 0, ErrClosed
	}
	defer e.exit()
	if e.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	return e.sweep(ctx)
}

// Compact compacts the whole database now, so that the space of swept and
// forgotten records is reclaimed at once rather than by Pebble's background
// compactions. It can take long on a large database; ctx ends it early. On
// any other store it does nothing.
func (e *Engine) Compact(ctx context.Context) error {
	if !e.enter() {
		return ErrClosed
	}
	defer e.exit()
	if e.opts.ReadOnly {
		return ErrReadOnly
	}
	if e.local == nil {
		return nil
	}
	if err := e.local.db.Compact(ctx, []byte{0}, []byte{0xff}, false); err != nil {
		return fmt.Errorf("idem: compact: %w", err)
	}
	return nil
}

// Stats are counters of an Engine's activity since Open.
type Stats struct {
	Calls       uint64 // Do calls that passed validation
	Executions  uint64 // times fn was called
	Replays     uint64 // calls answered with a stored outcome or a concurrent call's
	Waits       uint64 // calls that waited for a concurrent call of the same key
	Conflicts   uint64 // calls that returned ErrInFlight
	Mismatches  uint64 // calls that returned ErrFingerprintMismatch
	Interrupted uint64 // calls that met a key left in flight by a crash
	Swept       uint64 // expired records removed by sweeps

	// Figures of the Pebble database (0 once closed, and on other stores).
	DiskUsage   uint64 // bytes on disk
	Compactions uint64 // compactions since Open
	// ReadAmplification is Pebble's read amplification: the sstables a
	// read may have to look in, one per non-empty level and one per
	// sublevel of L0 (the memtables come on top). Pebble does not work out
	// L0's sublevels on a read-only open, so there each L0 table counts as
	// one: an upper bound.
	ReadAmplification uint64
}

type counters struct {
	calls, executions, replays, waits, conflicts, mismatches, interrupted, swept atomic.Uint64
}

// Stats returns the engine's counters. It takes no lock that Do takes.
func (e *Engine) Stats() Stats {
	s := Stats{
		Calls:       e.stats.calls.Load(),
		Executions:  e.stats.executions.Load(),
		Replays:     e.stats.replays.Load(),
		Waits:       e.stats.waits.Load(),
		Conflicts:   e.stats.conflicts.Load(),
		Mismatches:  e.stats.mismatches.Load(),
		Interrupted: e.stats.interrupted.Load(),
		Swept:       e.stats.swept.Load(),
	}
	if e.local != nil && e.enter() {
		m := e.local.db.Metrics()
		e.exit()
		s.DiskUsage = m.DiskSpaceUsage()
		s.Compactions = uint64(max(m.Compact.Count, 0))
		s.ReadAmplification = readAmp(m)
	}
	return s
}

// Close closes the engine. New calls return ErrClosed from the moment Close
// begins; calls in progress, fn included, are waited for, so that every
// outcome is stored. Then the background sweeper stops and the store is
// closed. Close returns nil when called again. Close must not be called from
// fn: it would wait for fn itself.
func (e *Engine) Close() error {
	if e.state.Or(closedBit)&closedBit != 0 {
		<-e.closed
		return nil
	}
	e.stopBackground()
	if e.state.Load() == closedBit {
		e.drainOnce.Do(func() { close(e.drained) })
	}
	<-e.drained
	e.sweeperDone.Wait()
	e.filter.wait() // no call is left to start another build
	if err := e.store.Close(); err != nil {
		e.closeErr = fmt.Errorf("idem: close: %w", err)
	}
	close(e.closed)
	return e.closeErr
}
