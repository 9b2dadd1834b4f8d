package idem_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemtest"
)

// obsCallKey is the context key of a call's id in the recorder's contexts.
type obsCallKey struct{}

// obsFnKey marks fn's context, as FnStart returns it.
type obsFnKey struct{}

// recorder is an Observer that records, for each call, what the engine told
// it, in order, as words: "start", "read", "claim", "complete", "release",
// "fn", "fnend", then the outcome. It checks as it goes that each method
// gets the context DoStart (or FnStart) returned.
type recorder struct {
	t      testing.TB
	nextID atomic.Int64

	mu    sync.Mutex // guards calls, infos and fnCtx
	calls map[int64][]string
	infos map[int64]idem.DoInfo
	fnErr map[int64]error
}

func newRecorder(t testing.TB) *recorder {
	return &recorder{t: t, calls: make(map[int64][]string), infos: make(map[int64]idem.DoInfo), fnErr: make(map[int64]error)}
}

func (r *recorder) id(ctx context.Context) int64 {
	id, ok := ctx.Value(obsCallKey{}).(int64)
	if !ok {
		r.t.Errorf("an Observer method got a context that DoStart did not return")
	}
	return id
}

func (r *recorder) add(id int64, word string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[id] = append(r.calls[id], word)
}

func (r *recorder) DoStart(ctx context.Context, key string) context.Context {
	id := r.nextID.Add(1)
	r.add(id, "start")
	return context.WithValue(ctx, obsCallKey{}, id)
}

func (r *recorder) StoreDone(ctx context.Context, op idem.StoreOp, took time.Duration, err error) {
	if took < 0 {
		r.t.Errorf("StoreDone: negative duration %v", took)
	}
	word := op.String()
	if err != nil {
		word += "!"
	}
	r.add(r.id(ctx), word)
}

func (r *recorder) FnStart(ctx context.Context) context.Context {
	r.add(r.id(ctx), "fn")
	return context.WithValue(ctx, obsFnKey{}, true)
}

func (r *recorder) FnEnd(ctx context.Context, took time.Duration, err error) {
	if ctx.Value(obsFnKey{}) == nil {
		r.t.Errorf("FnEnd got a context that FnStart did not return")
	}
	id := r.id(ctx)
	r.mu.Lock()
	r.fnErr[id] = err
	r.mu.Unlock()
	r.add(id, "fnend")
}

func (r *recorder) DoEnd(ctx context.Context, info idem.DoInfo) {
	if info.Took < info.Waited || info.Waited < 0 {
		r.t.Errorf("DoEnd: Took %v, Waited %v", info.Took, info.Waited)
	}
	id := r.id(ctx)
	r.mu.Lock()
	r.infos[id] = info
	r.mu.Unlock()
	r.add(id, info.Outcome.String())
}

// last returns the words and the DoInfo of the call that began last.
func (r *recorder) last() (string, idem.DoInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.nextID.Load()
	return strings.Join(r.calls[id], " "), r.infos[id]
}

// sequences returns how many calls told each sequence of words.
func (r *recorder) sequences() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int)
	for _, words := range r.calls {
		m[strings.Join(words, " ")]++
	}
	return m
}

// fnWithCtx returns an fn that checks that its context is FnStart's and
// returns v.
func fnWithCtx(t *testing.T, v string) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		if ctx.Value(obsFnKey{}) == nil || ctx.Value(obsCallKey{}) == nil {
			t.Errorf("fn's context is not FnStart's, made from DoStart's")
		}
		return []byte(v), nil
	}
}

func TestObserverSeesEachCallsParts(t *testing.T) {
	rec := newRecorder(t)
	e := open(t, nil, "db", &idem.Options{Observer: rec})
	ctx := context.Background()
	errBoom := errors.New("boom")

	steps := []struct {
		name, key, fp string
		fn            func(context.Context) ([]byte, error)
		want          string
		wantErr       error
		wantMsg       string
		replayed      bool
	}{
		// A new key: a read (none once the key filter, built in the
		// background, knows that the key has no record), the claim, fn,
		// the result.
		{name: "new", key: "k", fn: fnWithCtx(t, "v"), want: "start (read )?claim fn fnend complete executed"},
		// The first replays read the store; the second caches the record.
		{name: "replay", key: "k", want: "start read replayed", replayed: true},
		{name: "replay again", key: "k", want: "start read replayed", replayed: true},
		{name: "cached replay", key: "k", want: "start replayed", replayed: true},
		{name: "mismatch", key: "k", fp: "other", want: "start mismatch", wantErr: idem.ErrFingerprintMismatch},
		// fn's error releases the key: the marker is deleted.
		{name: "failed", key: "f", fn: func(context.Context) ([]byte, error) { return nil, errBoom },
			want: "start (read )?claim fn fnend release failed", wantErr: errBoom},
		{name: "permanent", key: "p", fn: func(context.Context) ([]byte, error) { return nil, idem.Permanent(errBoom) },
			want: "start (read )?claim fn fnend complete executed", wantErr: errBoom},
		// A replayed Permanent error has fn's message, not its identity.
		{name: "permanent replay", key: "p", want: "start read replayed", wantMsg: "boom", replayed: true},
	}
	for _, s := range steps {
		fn := s.fn
		if fn == nil {
			fn = func(context.Context) ([]byte, error) { t.Errorf("%s: fn ran", s.name); return nil, nil }
		}
		res, err := e.Do(ctx, s.key, []byte(s.fp), fn)
		switch {
		case s.wantErr != nil:
			require.ErrorIs(t, err, s.wantErr, s.name)
		case s.wantMsg != "":
			require.EqualError(t, err, s.wantMsg, s.name)
		default:
			require.NoError(t, err, s.name)
		}
		got, info := rec.last()
		require.Regexp(t, "^"+s.want+"$", got, s.name)
		require.Equal(t, s.replayed, res.Replayed, s.name)
		require.Equal(t, res.Replayed, info.Replayed, s.name)
		require.Equal(t, err, info.Err, s.name)
		require.Zero(t, info.Waited, s.name)
	}
	require.ErrorIs(t, rec.fnErr[6], errBoom)
}

func TestObserverUnderSyncNoneSeesNoClaim(t *testing.T) {
	rec := newRecorder(t)
	e := open(t, nil, "db", &idem.Options{Observer: rec, Durability: idem.SyncNone})
	_, err := e.Do(context.Background(), "k", nil, fnWithCtx(t, "v"))
	require.NoError(t, err)
	got, _ := rec.last()
	require.Regexp(t, "^start (read )?fn fnend complete executed$", got)
}

func TestObserverSeesAPanicInFn(t *testing.T) {
	rec := newRecorder(t)
	e := open(t, nil, "db", &idem.Options{Observer: rec})
	func() {
		defer func() { require.Equal(t, "oops", recover()) }()
		e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { panic("oops") })
	}()
	got, info := rec.last()
	require.Regexp(t, "^start (read )?claim fn fnend release failed$", got)
	require.ErrorIs(t, info.Err, idem.ErrFnPanicked)
	require.ErrorIs(t, rec.fnErr[1], idem.ErrFnPanicked)

	// The key is free again.
	_, err := e.Do(context.Background(), "k", nil, fnWithCtx(t, "v"))
	require.NoError(t, err)
}

// A panic in the Observer after fn returned leaves the key interrupted:
// fn's effects happened.
func TestObserverPanicAfterFnLeavesTheKeyInterrupted(t *testing.T) {
	e := open(t, nil, "db", &idem.Options{Observer: panicky{}})
	var runs atomic.Int32
	fn := func(context.Context) ([]byte, error) { runs.Add(1); return []byte("v"), nil }
	func() {
		defer func() { require.Equal(t, "observer", recover()) }()
		e.Do(context.Background(), "k", nil, fn)
	}()
	_, err := e.Do(context.Background(), "k", nil, fn)
	require.ErrorIs(t, err, idem.ErrInterrupted)
	require.Equal(t, int32(1), runs.Load())
}

// A panic after fn returned, in a method of fn's error here, is not fn's:
// the call has no outcome of fn's, and the key is interrupted.
func TestObserverSeesAPanicAfterFn(t *testing.T) {
	rec := newRecorder(t)
	e := open(t, nil, "db", &idem.Options{Observer: rec})
	func() {
		defer func() { require.Equal(t, "Error", recover()) }()
		e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return nil, idem.Permanent(panickyError{}) })
	}()
	got, info := rec.last()
	require.Regexp(t, "^start (read )?claim fn fnend error$", got)
	require.ErrorIs(t, info.Err, idem.ErrFnPanicked)
	require.Error(t, rec.fnErr[1]) // fn's own error, a Permanent one
	_, err := e.Do(context.Background(), "k", nil, fnWithCtx(t, "v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
}

// panickyError is an error whose Error method panics.
type panickyError struct{}

func (panickyError) Error() string { panic("Error") }

// panicky is an Observer whose FnEnd panics.
type panicky struct{}

func (panicky) DoStart(ctx context.Context, key string) context.Context       { return ctx }
func (panicky) StoreDone(context.Context, idem.StoreOp, time.Duration, error) {}
func (panicky) FnStart(ctx context.Context) context.Context                   { return ctx }
func (panicky) FnEnd(context.Context, time.Duration, error)                   { panic("observer") }
func (panicky) DoEnd(context.Context, idem.DoInfo)                            {}

// Concurrent duplicates: one call runs fn, the others wait for it and share
// its outcome, and each says how long it waited.
func TestObserverSeesDuplicatesWait(t *testing.T) {
	rec := newRecorder(t)
	e := open(t, nil, "db", &idem.Options{Observer: rec})
	const n = 8
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
				<-release
				return []byte("v"), nil
			})
			require.NoError(t, err)
		}()
	}
	require.Eventually(t, func() bool { return e.Stats().Waits == n-1 }, 10*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	seqs := rec.sequences()
	require.Equal(t, n-1, seqs["start waited"], "%v", seqs)
	require.Equal(t, 1, seqs["start claim fn fnend complete executed"]+seqs["start read claim fn fnend complete executed"], "%v", seqs)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, info := range rec.infos {
		if info.Outcome == idem.OutcomeWaited {
			require.True(t, info.Replayed)
			require.Positive(t, info.Waited)
		}
	}
}

// A duplicate that does not wait (NoWait), and one whose context ends while
// it waits, are conflicts.
func TestObserverSeesConflicts(t *testing.T) {
	for _, noWait := range []bool{true, false} {
		t.Run(fmt.Sprintf("NoWait=%v", noWait), func(t *testing.T) {
			rec := newRecorder(t)
			e := open(t, nil, "db", &idem.Options{Observer: rec, NoWait: noWait})
			running, release := make(chan struct{}), make(chan struct{})
			done := make(chan error)
			go func() {
				_, err := e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
					close(running)
					<-release
					return []byte("v"), nil
				})
				done <- err
			}()
			<-running
			ctx, cancel := context.WithCancel(context.Background())
			if !noWait {
				go func() {
					for e.Stats().Waits == 0 {
						time.Sleep(time.Millisecond)
					}
					cancel()
				}()
			}
			_, err := e.Do(ctx, "k", nil, fnWithCtx(t, "w"))
			cancel()
			require.ErrorIs(t, err, idem.ErrInFlight)
			got, info := rec.last()
			require.Equal(t, "start conflict", got)
			if !noWait {
				require.Positive(t, info.Waited)
			}
			close(release)
			require.NoError(t, <-done)
		})
	}
}

// A key left in flight by a crash: the call after the restart reads the
// marker and reports the key interrupted.
func TestObserverSeesInterrupted(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := open(t, fs, "db", nil)
	running, release := make(chan struct{}), make(chan struct{})
	go e.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) {
		close(running)
		<-release
		return nil, nil
	})
	<-running
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	close(release)

	rec := newRecorder(t)
	e2 := open(t, crashed, "db", &idem.Options{Observer: rec})
	_, err := e2.Do(context.Background(), "k", nil, fnWithCtx(t, "v"))
	require.ErrorIs(t, err, idem.ErrInterrupted)
	got, _ := rec.last()
	require.Equal(t, "start read interrupted", got)
}

// The conformance suite with an Observer on every engine: it changes no
// outcome, and the engine tells it of every call once, with figures that
// agree with Stats.
func TestConformanceObserved(t *testing.T) {
	idemtest.Run(t, &observedHarness{newMemHarness()})
}

// observedHarness is memHarness with an Observer on each engine, which
// checks when the test ends that the engine told it of every call once.
type observedHarness struct{ *memHarness }

func (h *observedHarness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
	o := &tally{}
	e := h.memHarness.Open(t, o.on(opts))
	t.Cleanup(func() { o.check(t, e) }) // before the engine closes
	return e
}

func (h *observedHarness) Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	o := &tally{}
	e = h.memHarness.Reopen(t, e, o.on(opts))
	t.Cleanup(func() { o.check(t, e) })
	return e
}

// tally is an Observer that counts what it is told.
type tally struct {
	starts, ends, fnStarts, fnEnds, replayed atomic.Uint64
	outcomes                                 [idem.OutcomeError + 1]atomic.Uint64
}

// on returns a copy of opts with o as the Observer.
func (o *tally) on(opts *idem.Options) *idem.Options {
	c := *opts
	c.Observer = o
	return &c
}

func (o *tally) DoStart(ctx context.Context, key string) context.Context {
	o.starts.Add(1)
	return ctx
}
func (o *tally) StoreDone(context.Context, idem.StoreOp, time.Duration, error) {}
func (o *tally) FnStart(ctx context.Context) context.Context {
	o.fnStarts.Add(1)
	return ctx
}
func (o *tally) FnEnd(context.Context, time.Duration, error) { o.fnEnds.Add(1) }
func (o *tally) DoEnd(_ context.Context, info idem.DoInfo) {
	o.ends.Add(1)
	o.outcomes[info.Outcome].Add(1)
	if info.Replayed {
		o.replayed.Add(1)
	}
}

// check compares the counts with e's Stats.
func (o *tally) check(t *testing.T, e *idem.Engine) {
	s := e.Stats()
	require.Equal(t, s.Calls, o.starts.Load(), "DoStart calls")
	require.Equal(t, s.Calls, o.ends.Load(), "DoEnd calls")
	require.Equal(t, s.Executions, o.fnStarts.Load(), "FnStart calls")
	require.Equal(t, s.Executions, o.fnEnds.Load(), "FnEnd calls")
	require.Equal(t, s.Replays, o.replayed.Load(), "replayed calls")
	require.Equal(t, s.Mismatches, o.outcomes[idem.OutcomeMismatch].Load(), "mismatches")
	require.Equal(t, s.Conflicts, o.outcomes[idem.OutcomeConflict].Load(), "conflicts")
}

// Observers tells each Observer of its list everything, with the context
// that the whole chain made.
func TestObserversTellsEach(t *testing.T) {
	require.Nil(t, idem.Observers())
	require.Nil(t, idem.Observers(nil, nil))
	one := newRecorder(t)
	require.Same(t, one, idem.Observers(nil, one))

	a, b := newRecorder(t), &tally{}
	e := open(t, nil, "db", &idem.Options{Observer: idem.Observers(a, nil, b)})
	// fn's context has a's values: b returns the context it got.
	_, err := e.Do(context.Background(), "k", nil, fnWithCtx(t, "v"))
	require.NoError(t, err)
	_, err = e.Do(context.Background(), "k", []byte("other"), fnWithCtx(t, "v"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	got, _ := a.last()
	require.Equal(t, "start read mismatch", got)
	require.Len(t, a.sequences(), 2)
	b.check(t, e)
	require.Equal(t, uint64(1), b.outcomes[idem.OutcomeExecuted].Load())
}

// panicAt is an Observer that panics once, in one method: FnEnd, or
// StoreDone for one StoreOp.
type panicAt struct {
	fnEnd bool
	op    idem.StoreOp
	store bool
	armed atomic.Bool
}

func (p *panicAt) fire() {
	if p.armed.CompareAndSwap(true, false) {
		panic("observer")
	}
}

func (p *panicAt) DoStart(ctx context.Context, key string) context.Context { return ctx }
func (p *panicAt) StoreDone(_ context.Context, op idem.StoreOp, _ time.Duration, _ error) {
	if p.store && op == p.op {
		p.fire()
	}
}
func (p *panicAt) FnStart(ctx context.Context) context.Context { return ctx }
func (p *panicAt) FnEnd(context.Context, time.Duration, error) {
	if p.fnEnd {
		p.fire()
	}
}
func (p *panicAt) DoEnd(context.Context, idem.DoInfo) {}

// An Observer that panics must not leave its key held, nor report it
// interrupted when fn's outcome is known: after each such panic, the next
// call (with a deadline, so that a held key fails rather than hangs) gets
// what the key's state calls for.
func TestObserverPanicsLeaveTheKeyInAKnownState(t *testing.T) {
	for _, tc := range []struct {
		name     string
		obs      *panicAt
		fn       func(context.Context) ([]byte, error)
		runs     int32 // runs of fn in all, after the second call
		replayed bool  // the second call replays
	}{
		// fn panics and so does FnEnd: the key is released.
		{name: "FnEnd during fn's panic", obs: &panicAt{fnEnd: true},
			fn: func(context.Context) ([]byte, error) { panic("fn") }, runs: 2},
		// The claim is stored, then StoreDone panics: fn never ran, the
		// key is released.
		{name: "StoreDone after the claim", obs: &panicAt{store: true, op: idem.StoreClaim}, runs: 1},
		// The result is stored, then StoreDone panics: the key replays.
		{name: "StoreDone after the result", obs: &panicAt{store: true, op: idem.StoreComplete}, runs: 1, replayed: true},
		// fn failed, its marker is deleted, then StoreDone panics: the
		// key is released.
		{name: "StoreDone after the release", obs: &panicAt{store: true, op: idem.StoreRelease},
			fn: func(context.Context) ([]byte, error) { return nil, errors.New("no") }, runs: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.obs.armed.Store(true)
			e := open(t, nil, "db", &idem.Options{Observer: tc.obs})
			var runs atomic.Int32
			fn := tc.fn
			if fn == nil {
				fn = func(context.Context) ([]byte, error) { return []byte("v"), nil }
			}
			func() {
				defer func() { require.NotNil(t, recover()) }()
				e.Do(context.Background(), "k", nil, func(ctx context.Context) ([]byte, error) {
					runs.Add(1)
					return fn(ctx)
				})
			}()
			require.False(t, tc.obs.armed.Load(), "the Observer did not panic")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := e.Do(ctx, "k", nil, func(ctx context.Context) ([]byte, error) {
				runs.Add(1)
				return []byte("v"), nil
			})
			require.NoError(t, err, "the key is held, or reported interrupted")
			require.Equal(t, tc.replayed, res.Replayed)
			require.Equal(t, tc.runs, runs.Load())
		})
	}
}

// RecordsAfter yields only keys under its prefix, whatever the key after
// which it starts.
func TestRecordsAfterKeepsToItsPrefix(t *testing.T) {
	e := open(t, nil, "db", nil)
	for _, k := range []string{"a1", "aa", "b1", "b2", "c1"} {
		_, err := e.Do(context.Background(), k, nil, func(context.Context) ([]byte, error) { return nil, nil })
		require.NoError(t, err)
	}
	keys := func(prefix, after string) []string {
		var got []string
		for r, err := range e.RecordsAfter(prefix, after) {
			require.NoError(t, err)
			got = append(got, r.Key)
		}
		return got
	}
	require.Equal(t, []string{"b1", "b2"}, keys("b", "a"))
	require.Equal(t, []string{"b2"}, keys("b", "b1"))
	require.Empty(t, keys("b", "c"))
	require.Equal(t, []string{"aa", "b1", "b2", "c1"}, keys("", "a1"))
}
