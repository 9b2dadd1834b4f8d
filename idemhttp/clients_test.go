package idemhttp_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// What timeouts, cancelling clients and retrying clients meet in practice.

// abandoner is a handler whose first run waits for its request's context to
// end and returns without writing anything (the usual Go pattern: `if err :=
// doWork(r.Context()); err != nil { return }`); its later runs answer 201
// "run N". started receives once per run.
type abandoner struct {
	app
	started chan int64
}

func newAbandoner() *abandoner {
	a := &abandoner{started: make(chan int64, 100)}
	a.serve = func(w http.ResponseWriter, r *http.Request, run int64) {
		a.started <- run
		if run == 1 {
			w.Header().Set("X-Abandoned", "1") // set, never sent by the handler
			<-r.Context().Done()
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "run %d", run)
	}
	return a
}

// returned wraps h, sending on the channel once h's ServeHTTP has returned.
func returned(h http.Handler) (http.Handler, <-chan struct{}) {
	ch := make(chan struct{}, 100)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { ch <- struct{}{} }()
		h.ServeHTTP(w, r)
	}), ch
}

// requireReleased checks that key has no record and that a retry runs the
// handler again.
func requireReleased(t *testing.T, e *idem.Engine, h http.Handler, a *abandoner) {
	t.Helper()
	_, err := e.Lookup(idemhttp.EngineKey("", "k1"))
	require.ErrorIs(t, err, idem.ErrNotFound, "nothing is stored for an abandoned handler")
	resp := send(h, req{key: "k1"})
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "run 2", bodyOf(t, resp), "the key was released")
	require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed))
	require.Empty(t, resp.Header.Get("X-Abandoned"))
	require.Equal(t, int64(2), a.runs.Load())
}

// An http.TimeoutHandler around the middleware: it answers 503 when its
// timeout ends the request's context, the handler returns without writing,
// and nothing is stored.
func TestAbandonedHandlerTimeoutHandlerOutside(t *testing.T) {
	e := openEngine(t, nil)
	a := newAbandoner()
	mw := wrap(e, nil, a)
	inner, done := returned(mw)
	h := http.TimeoutHandler(inner, 10*time.Millisecond, "timed out")

	resp := send(h, req{key: "k1"})
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "timed out", bodyOf(t, resp))
	receive(t, done) // the middleware has finished with the request

	requireReleased(t, e, http.TimeoutHandler(mw, time.Hour, "timed out"), a)
}

// An http.TimeoutHandler inside the middleware answers 503, which is not
// stored.
func TestAbandonedHandlerTimeoutHandlerInside(t *testing.T) {
	e := openEngine(t, nil)
	a := newAbandoner()
	timeout := http.TimeoutHandler(a, 10*time.Millisecond, "timed out")
	h := wrap(e, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.runs.Load() == 0 {
			timeout.ServeHTTP(w, r) // the first run times out
			return
		}
		a.ServeHTTP(w, r)
	}))
	resp := send(h, req{key: "k1"})
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "timed out", bodyOf(t, resp))
	requireReleased(t, e, h, a)
}

// A client that gives up (its timeout, or a cancel) ends the request's
// context on a real server: nothing is stored.
func TestAbandonedHandlerClientCancels(t *testing.T) {
	e := openEngine(t, nil)
	a := newAbandoner()
	mw := wrap(e, nil, a)
	inner, done := returned(mw)
	srv := httptest.NewServer(inner)
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/orders", nil)
	require.NoError(t, err)
	r.Header.Set("Idempotency-Key", "k1")
	errc := make(chan error, 1)
	go func() {
		resp, err := srv.Client().Do(r)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	receive(t, a.started)
	cancel()
	require.ErrorIs(t, receive(t, errc), context.Canceled)
	receive(t, done) // the server saw the client go, and the middleware finished

	requireReleased(t, e, mw, a)
}

// The middleware writes nothing for an abandoned handler, as net/http's
// writer would have had nothing written: an outer middleware that answers
// after a timeout of its own (as chi's middleware.Timeout does with 504)
// still can.
func TestAbandonedHandlerLeavesTheResponseToOuterMiddleware(t *testing.T) {
	e := openEngine(t, nil)
	a := newAbandoner()
	mw := wrap(e, nil, a)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		go func() { <-a.started; cancel() }() // the outer timeout ends
		mw.ServeHTTP(w, r.WithContext(ctx))
		if ctx.Err() != nil {
			w.WriteHeader(http.StatusGatewayTimeout)
		}
	})
	resp := send(h, req{key: "k1"})
	require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("X-Abandoned"), "the handler's header fields are left in place, unsent")
	requireReleased(t, e, mw, a)
}

// A request that waited for one whose handler was abandoned runs the
// handler itself, since the key is free again.
func TestWaiterOfAnAbandonedHandler(t *testing.T) {
	e := openEngine(t, nil)
	a := newAbandoner()
	h := wrap(e, &idemhttp.Options{Wait: time.Hour}, a)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := httptest.NewRequest(http.MethodPost, "/orders", nil).WithContext(ctx)
	r.Header.Set("Idempotency-Key", "k1")
	first := make(chan struct{})
	go func() {
		defer close(first)
		h.ServeHTTP(httptest.NewRecorder(), r)
	}()
	receive(t, a.started)
	dup := goSend(h, req{key: "k1"})
	eventually(t, func() bool { return e.Stats().Waits >= 1 }, "the duplicate waits")
	cancel()
	receive(t, first)

	resp := receive(t, dup).(*http.Response)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "run 2", bodyOf(t, resp))
	require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed), "the duplicate ran the handler")
	require.Equal(t, int64(2), a.runs.Load())

	retry := send(h, req{key: "k1"})
	require.Equal(t, "run 2", bodyOf(t, retry))
	require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, int64(2), a.runs.Load())
}

// retryingPost sends a POST as hashicorp/go-retryablehttp's default policy
// would: again on a connection error, 429 or a 5xx other than 501; not on
// 409. It returns the last status and body.
func retryingPost(c *http.Client, url, key string) (int, string, error) {
	for attempt := 0; ; attempt++ {
		o, err := post(c, url, key, "x")
		retry := err != nil || o.status == http.StatusTooManyRequests ||
			o.status >= 500 && o.status != http.StatusNotImplemented
		if !retry || attempt == 4 {
			return o.status, o.body, err
		}
	}
}

// Clients that retry a slow first request with a policy that does not retry
// 409 (go-retryablehttp's default): with a Wait longer than the handler
// takes, every retry gets the first response; with a negative Wait (the
// draft's bare 409), every one ends with 409.
func TestRetryingClientsOfASlowRequest(t *testing.T) {
	const clients = 20
	for _, tt := range []struct {
		name   string
		wait   time.Duration
		status int
	}{
		{name: "Wait", wait: time.Hour, status: http.StatusCreated},
		{name: "negative Wait", wait: -1, status: http.StatusConflict},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			g := newGate()
			srv := httptest.NewServer(wrap(e, &idemhttp.Options{Wait: tt.wait}, g))
			defer srv.Close()
			defer g.open() // before srv.Close, which waits for the handlers
			srv.Client().Transport.(*http.Transport).MaxIdleConnsPerHost = clients

			first := make(chan outcome, 1)
			go func() {
				o, _ := post(srv.Client(), srv.URL+"/orders", "k1", "x")
				first <- o
			}()
			receive(t, g.started)

			var (
				wg       sync.WaitGroup
				mu       sync.Mutex // protects statuses
				statuses = map[int]int{}
				errs     = make(chan error, clients)
			)
			waits := e.Stats().Waits
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					status, body, err := retryingPost(srv.Client(), srv.URL+"/orders", "k1")
					if err == nil && status == http.StatusCreated && body != "done 1" {
						err = fmt.Errorf("body %q, not the first response's", body)
					}
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					statuses[status]++
					mu.Unlock()
				}()
			}
			if tt.status == http.StatusCreated {
				eventually(t, func() bool { return e.Stats().Waits >= waits+clients }, "the retries wait")
			} else {
				wg.Wait()
			}
			g.open()
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			require.Equal(t, map[int]int{tt.status: clients}, statuses)
			require.Equal(t, http.StatusCreated, receive(t, first).status)
			require.Equal(t, int64(1), g.runs.Load())
		})
	}
}

// A 409 always tells the client when to retry.
func TestConflictHasRetryAfter(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	h := wrap(e, &idemhttp.Options{Wait: -1}, g)
	first := goSend(h, req{key: "k1"})
	receive(t, g.started)
	resp := send(h, req{key: "k1"})
	requireProblem(t, resp, http.StatusConflict, idemhttp.ProblemInFlight)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	g.open()
	receive(t, first)
}
