package flights

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A duplicate's wait runs from when the handler it waits for starts, and
// stops when that handler returns: a later handler of the key starts a new
// wait, rather than letting the first one's run out.
func TestWaitStopsWithItsHandler(t *testing.T) {
	f := New(time.Hour)
	ctxA, cancelA := context.WithCancelCause(context.Background())
	defer cancelA(nil)
	ctxB, cancelB := context.WithCancelCause(context.Background())
	defer cancelB(nil)
	a := f.Enter("k", []byte("fp"), cancelA)
	b := f.Enter("k", []byte("fp"), cancelB)

	f.Start("k", a)
	if b.timer == nil {
		t.Fatal("no wait armed for the duplicate while a handler runs")
	}
	f.Stop("k", a)
	if b.timer != nil {
		t.Fatal("the duplicate's wait outlived the handler it waited for")
	}
	f.Leave("k", a)

	// The duplicate runs the handler itself now; a third call waits for it.
	ctxC, cancelC := context.WithCancelCause(context.Background())
	defer cancelC(nil)
	c := f.Enter("k", []byte("fp"), cancelC)
	f.Start("k", b)
	if c.timer == nil {
		t.Fatal("no wait armed for the third call")
	}
	f.Stop("k", b)
	f.Leave("k", b)
	f.Leave("k", c)
	if len(f.keys) != 0 {
		t.Fatalf("%d keys left after every call left", len(f.keys))
	}
	for _, ctx := range []context.Context{ctxA, ctxB, ctxC} {
		if err := context.Cause(ctx); err != nil {
			t.Fatalf("a context was cancelled: %v", err)
		}
	}
}

// Without a wait, a duplicate is cancelled with ErrRunning as soon as a
// handler of its key runs, or as it enters while one does; one with
// another fingerprint is left to the engine.
func TestNoWaitCancelsAtOnce(t *testing.T) {
	f := New(-1)
	ctxA, cancelA := context.WithCancelCause(context.Background())
	defer cancelA(nil)
	ctxB, cancelB := context.WithCancelCause(context.Background())
	defer cancelB(nil)
	ctxO, cancelO := context.WithCancelCause(context.Background())
	defer cancelO(nil)
	a := f.Enter("k", []byte("fp"), cancelA)
	b := f.Enter("k", []byte("fp"), cancelB)
	f.Start("k", a)
	if !errors.Is(context.Cause(ctxB), ErrRunning) {
		t.Fatalf("duplicate's cause: %v", context.Cause(ctxB))
	}
	o := f.Enter("k", []byte("other"), cancelO)
	if err := context.Cause(ctxO); err != nil {
		t.Fatalf("another fingerprint was cancelled: %v", err)
	}
	if err := context.Cause(ctxA); err != nil {
		t.Fatalf("the running call was cancelled: %v", err)
	}
	f.Stop("k", a)
	for _, w := range []*Waiter{a, b, o} {
		f.Leave("k", w)
	}
}
