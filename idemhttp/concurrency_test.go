package idemhttp_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// A duplicate of a request whose handler runs: a replay when it waits long
// enough, 409 after Wait, or at once with a negative Wait.
func TestConcurrentDuplicate(t *testing.T) {
	tests := []struct {
		name       string
		wait       time.Duration
		noWait     bool // the engine's Options.NoWait
		replay     bool // the duplicate waits and replays; else 409 while the first runs
		waitDetail bool // the 409's detail says it waited
	}{
		{name: "409 at once with a negative Wait", wait: -1},
		{name: "409 at once, engine NoWait", wait: -1, noWait: true},
		{name: "default Wait needs an engine that waits", wait: 0, noWait: true},
		{name: "Wait needs an engine that waits", wait: time.Hour, noWait: true},
		{name: "409 after Wait", wait: time.Millisecond, waitDetail: true},
		{name: "replay within Wait", wait: time.Hour, replay: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, &idem.Options{NoWait: tt.noWait})
			g := newGate()
			defer g.open()
			h := wrap(e, &idemhttp.Options{Wait: tt.wait}, g)
			first := goSend(h, req{key: "k1", body: "x"})
			receive(t, g.started)

			// Another fingerprint is refused at once, whatever Wait says.
			requireProblem(t, send(h, req{key: "k1", body: "y"}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)

			var dup *http.Response
			if tt.replay {
				waits := e.Stats().Waits
				ch := goSend(h, req{key: "k1", body: "x"})
				eventually(t, func() bool { return e.Stats().Waits > waits }, "the duplicate waits")
				g.open()
				dup = receive(t, ch).(*http.Response)
				require.Equal(t, http.StatusCreated, dup.StatusCode)
				require.Equal(t, "true", dup.Header.Get(idemhttp.HeaderReplayed))
				require.Equal(t, "done 1", bodyOf(t, dup))
			} else {
				dup = send(h, req{key: "k1", body: "x"})
				p := requireProblem(t, dup, http.StatusConflict, idemhttp.ProblemInFlight)
				require.Equal(t, "1", dup.Header.Get("Retry-After"))
				require.Equal(t, tt.waitDetail, strings.Contains(p.Detail, "after waiting"), p.Detail)
				g.open()
			}

			resp := receive(t, first).(*http.Response)
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed))
			require.Equal(t, "done 1", bodyOf(t, resp))

			retry := send(h, req{key: "k1", body: "x"})
			require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
			require.Equal(t, "done 1", bodyOf(t, retry))
			require.Equal(t, int64(1), g.runs.Load())
		})
	}
}

// By default a duplicate waits for the running request's response, rather
// than get 409 at once: it replays the response, or, if the handler is still
// running after DefaultWait, gets a 409 that says it waited.
func TestDefaultWait(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	h := wrap(e, nil, g)
	first := goSend(h, req{key: "k1"})
	receive(t, g.started)
	dup := goSend(h, req{key: "k1"})
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	g.open()
	require.Equal(t, http.StatusCreated, receive(t, first).(*http.Response).StatusCode)

	resp := receive(t, dup).(*http.Response)
	if resp.StatusCode == http.StatusConflict { // the handler took over DefaultWait to return
		p := requireProblem(t, resp, http.StatusConflict, idemhttp.ProblemInFlight)
		require.Contains(t, p.Detail, "after waiting 5s")
	} else {
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		require.Equal(t, "true", resp.Header.Get(idemhttp.HeaderReplayed))
		require.Equal(t, "done 1", bodyOf(t, resp))
	}
	require.Equal(t, int64(1), g.runs.Load())
}

// A request for another key does not wait for a running one.
func TestOtherKeysDoNotWait(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	a := &app{}
	h := wrap(e, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "slow" {
			g.ServeHTTP(w, r)
			return
		}
		a.ServeHTTP(w, r)
	}))
	first := goSend(h, req{key: "slow"})
	receive(t, g.started)
	require.Equal(t, http.StatusCreated, send(h, req{key: "fast"}).StatusCode)
	g.open()
	require.Equal(t, http.StatusCreated, receive(t, first).(*http.Response).StatusCode)
}

// A request that waited for one whose response is not stored (a 5xx) gets
// that response, not marked as replayed, and the next retry runs the
// handler again.
func TestWaitersOfAResponseNotStored(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	g.respond = func(w http.ResponseWriter, r *http.Request, run int64) {
		w.Header().Set("Set-Cookie", "first=1")
		w.Header().Set("X-Run", fmt.Sprint(run))
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "busy %d", run)
	}
	h := wrap(e, &idemhttp.Options{Wait: time.Hour}, g)
	first := goSend(h, req{key: "k1", body: "x"})
	receive(t, g.started)
	dups := make([]<-chan any, 3)
	for i := range dups {
		dups[i] = goSend(h, req{key: "k1", body: "x"})
	}
	eventually(t, func() bool { return e.Stats().Waits >= uint64(len(dups)) }, "the duplicates wait")
	g.open()

	resp := receive(t, first).(*http.Response)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "busy 1", bodyOf(t, resp))
	require.Equal(t, "first=1", resp.Header.Get("Set-Cookie"))
	for _, ch := range dups {
		dup := receive(t, ch).(*http.Response)
		require.Equal(t, http.StatusServiceUnavailable, dup.StatusCode)
		require.Equal(t, "busy 1", bodyOf(t, dup))
		require.Equal(t, "1", dup.Header.Get("X-Run"))
		require.Empty(t, dup.Header.Get("Set-Cookie"), "waiters get the header a stored response would keep")
		require.Empty(t, dup.Header.Get(idemhttp.HeaderReplayed), "nothing was replayed from the store")
	}
	require.Equal(t, int64(1), g.runs.Load())

	// The key was released: the next retry runs the handler.
	resp = send(h, req{key: "k1", body: "x"})
	require.Equal(t, "busy 2", bodyOf(t, resp))
	require.Equal(t, int64(2), g.runs.Load())
}

// A panic of the handler reaches net/http; the key is released and nothing
// is stored.
func TestPanicPropagates(t *testing.T) {
	for _, v := range []any{"boom", http.ErrAbortHandler} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if a.runs.Load() == 0 {
					a.runs.Add(1)
					w.WriteHeader(http.StatusCreated) // recorded, never sent
					panic(v)
				}
				a.ServeHTTP(w, r)
			}))
			rr := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("x"))
			r.Header.Set("Idempotency-Key", "k1")
			require.PanicsWithValue(t, v, func() { h.ServeHTTP(rr, r) })
			require.False(t, rr.Flushed)
			require.Empty(t, rr.Body.String(), "nothing was written")
			require.Empty(t, rr.Header(), "nothing was written")

			_, err := e.Lookup(idemhttp.EngineKey("", "k1"))
			require.ErrorIs(t, err, idem.ErrNotFound, "nothing is stored")
			resp := send(h, req{key: "k1", body: "x"})
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			require.Equal(t, "run 2: x", bodyOf(t, resp), "the key was released")
		})
	}
}

// Over a real server: net/http aborts the connection, the client retries.
func TestPanicOverRealServer(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	srv := httptest.NewUnstartedServer(wrap(e, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.runs.Load() == 0 {
			a.runs.Add(1)
			panic("boom")
		}
		a.ServeHTTP(w, r)
	})))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // net/http logs the panic
	srv.Start()
	defer srv.Close()
	post := func() (*http.Response, error) {
		r, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader("x"))
		require.NoError(t, err)
		r.Header.Set("Idempotency-Key", "k1")
		return srv.Client().Do(r)
	}
	_, err := post()
	require.Error(t, err, "the connection is aborted")
	resp, err := post()
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "run 2: x", bodyOf(t, resp))
}

// A request waiting for a handler that panics gets 500.
func TestWaiterOfAPanic(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	g.respond = func(http.ResponseWriter, *http.Request, int64) { panic("boom") }
	h := wrap(e, &idemhttp.Options{Wait: time.Hour}, g)
	first := goSend(h, req{key: "k1"})
	receive(t, g.started)
	dup := goSend(h, req{key: "k1"})
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	g.open()
	require.Equal(t, "boom", receive(t, first))
	requireProblem(t, receive(t, dup).(*http.Response), http.StatusInternalServerError, idemhttp.ProblemInternal)
}

// A key whose handler was running when the process stopped: 409, the
// outcome is unknown, the handler does not run again until the key is
// forgotten.
func TestInterruptedKey(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e1, err := idem.Open("db", &idem.Options{FS: fs, SweepInterval: -1, Logger: quietLogger()})
	require.NoError(t, err)
	g := newGate()
	first := goSend(wrap(e1, nil, g), req{key: "k1", body: "x"})
	receive(t, g.started)
	img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0}) // a crash while the handler runs
	g.open()
	receive(t, first)
	require.NoError(t, e1.Close())

	e2 := openEngine(t, &idem.Options{FS: img})
	a := &app{}
	h := wrap(e2, nil, a)
	for range 2 {
		resp := send(h, req{key: "k1", body: "x"})
		p := requireProblem(t, resp, http.StatusConflict, idemhttp.ProblemOutcomeUnknown)
		require.Contains(t, p.Detail, "unknown")
		require.Empty(t, resp.Header.Get("Retry-After"))
	}
	requireProblem(t, send(h, req{key: "k1", body: "y"}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	require.Equal(t, int64(0), a.runs.Load())

	// Reconciled by an operator: the handler may run.
	require.NoError(t, e2.Forget(idemhttp.EngineKey("", "k1")))
	resp := send(h, req{key: "k1", body: "x"})
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, int64(1), a.runs.Load())
}

// The client's context ending while it waits: the request stops waiting.
func TestWaitingClientGoesAway(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	h := wrap(e, &idemhttp.Options{Wait: time.Hour}, g)
	first := goSend(h, req{key: "k1"})
	receive(t, g.started)

	ctx, cancel := context.WithCancel(context.Background())
	r := httptest.NewRequest(http.MethodPost, "/orders", nil).WithContext(ctx)
	r.Header.Set("Idempotency-Key", "k1")
	rr := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(rr, r)
	}()
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	cancel()
	receive(t, done)
	requireProblem(t, rr.Result(), http.StatusConflict, idemhttp.ProblemInFlight)

	g.open()
	require.Equal(t, http.StatusCreated, receive(t, first).(*http.Response).StatusCode)
	require.Equal(t, int64(1), g.runs.Load())
}
