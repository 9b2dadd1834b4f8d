package idemhttp_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// openEngine opens an engine on a new in-memory file system with o (the
// defaults if nil), with the background sweeper off, and closes it when the
// test ends.
func openEngine(t testing.TB, o *idem.Options) *idem.Engine {
	t.Helper()
	var opts idem.Options
	if o != nil {
		opts = *o
	}
	if opts.FS == nil {
		opts.FS = vfs.NewMem()
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = -1
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	e, err := idem.Open("db", &opts)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// slogTo returns a logger that writes text records to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// wrap wraps h in the middleware on e with o (the defaults if nil, with a
// quiet logger unless o has one).
func wrap(e *idem.Engine, o *idemhttp.Options, h http.Handler) http.Handler {
	var opts idemhttp.Options
	if o != nil {
		opts = *o
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	return idemhttp.New(e, &opts)(h)
}

// app is a handler that counts its runs. Its default response is 201 with
// X-Run: the run's number, a cookie, and a body that repeats the request
// body.
type app struct {
	runs  atomic.Int64
	serve func(w http.ResponseWriter, r *http.Request, run int64)
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.runs.Add(1)
	if a.serve != nil {
		a.serve(w, r, n)
		return
	}
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Run", fmt.Sprint(n))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	http.SetCookie(w, &http.Cookie{Name: "session", Value: fmt.Sprint("s", n)})
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "run %d: %s", n, body)
}

// req describes a request to send.
type req struct {
	method string // POST if ""
	target string // /orders if ""
	key    string // the raw header value; no header if ""
	body   string
	header http.Header // more header fields
}

// send serves rq with h and returns the response.
func send(h http.Handler, rq req) *http.Response {
	if rq.method == "" {
		rq.method = http.MethodPost
	}
	if rq.target == "" {
		rq.target = "/orders"
	}
	r := httptest.NewRequest(rq.method, rq.target, strings.NewReader(rq.body))
	if rq.key != "" {
		r.Header.Set("Idempotency-Key", rq.key)
	}
	for k, v := range rq.header {
		r.Header[k] = v
	}
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, r)
	return rr.Result()
}

func bodyOf(t testing.TB, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// problemBody is an RFC 9457 problem as the middleware writes it.
type problemBody struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// requireProblem checks that resp is a problem of the status and type, and
// returns it.
func requireProblem(t testing.TB, resp *http.Response, status int, typ string) problemBody {
	t.Helper()
	require.Equal(t, status, resp.StatusCode)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	var p problemBody
	dec := json.NewDecoder(resp.Body)
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&p))
	require.Equal(t, typ, p.Type)
	require.Equal(t, status, p.Status)
	require.NotEmpty(t, p.Title)
	require.NotEmpty(t, p.Detail)
	require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed), "a problem is never a replay")
	return p
}

// gate is a handler whose runs block until released. started receives once
// per run, when the run has begun.
type gate struct {
	runs    atomic.Int64
	started chan int64
	release chan struct{}
	once    sync.Once
	respond func(w http.ResponseWriter, r *http.Request, run int64) // 201 "done N" if nil
}

func newGate() *gate {
	return &gate{started: make(chan int64, 100), release: make(chan struct{})}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := g.runs.Add(1)
	g.started <- n
	<-g.release
	if g.respond != nil {
		g.respond(w, r, n)
		return
	}
	w.Header().Set("X-Run", fmt.Sprint(n))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "done %d", n)
}

// open lets every blocked and future run finish.
func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// goSend serves rq with h in a new goroutine; the response arrives on the
// channel. A panic of the handler arrives as the panic value instead.
func goSend(h http.Handler, rq req) <-chan any {
	ch := make(chan any, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- p
			}
		}()
		ch <- send(h, rq)
	}()
	return ch
}

// receive returns the next value on ch, failing the test if none comes in a
// long time (a hang guard, not a timing assertion).
func receive[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatal("nothing arrived")
		var zero T
		return zero
	}
}

// eventually waits for cond, failing the test if it does not hold in a long
// time (a hang guard, not a timing assertion).
func eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, time.Millisecond, msg)
}
