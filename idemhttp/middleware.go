package idemhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/flights"
)

// Response headers the middleware sets.
const (
	// HeaderReplayed is set to "true" on a response replayed from the
	// store, for which the handler did not run (Stripe's header).
	HeaderReplayed = "Idempotent-Replayed"
	// HeaderBodyOmitted is set to "true" on a replay whose body was not
	// stored, because the response was over Options.MaxStoredSize.
	HeaderBodyOmitted = "Idempotent-Body-Omitted"
	// HeaderHeadersOmitted is set to "true" on a replay whose header fields
	// were not stored either, because they alone were over
	// Options.MaxStoredSize.
	HeaderHeadersOmitted = "Idempotent-Headers-Omitted"
)

// New returns a middleware that makes the requests of the covered methods
// (Options.Methods: POST and PATCH by default) idempotent by their
// Idempotency-Key header (or the key that Options.Key finds in them), with
// e as the store. A nil opts means the defaults. It panics if e is nil or
// an option is invalid.
//
// The middleware can wrap any http.Handler: a whole ServeMux, a router, or
// single routes. All the handlers wrapped by one middleware share its
// knowledge of the requests in progress, so wrap every route that shares a
// key space (an engine and a scope) with the same middleware; see the
// package documentation's caveats.
func New(e *idem.Engine, opts *Options) func(http.Handler) http.Handler {
	if e == nil {
		panic("idemhttp: New called with a nil *idem.Engine")
	}
	c := newConfig(opts)
	f := flights.New(c.Wait)
	return func(next http.Handler) http.Handler {
		return &middleware{e: e, c: c, flights: f, next: next}
	}
}

// middleware is the http.Handler New's result wraps around a handler.
type middleware struct {
	e       *idem.Engine
	c       *config
	flights *flights.Flights // shared by every handler one New wraps
	next    http.Handler
}

// notStoredError is what fn returns to the engine for a response that
// Options.Store refuses: an ordinary error, so the engine releases the key
// and hands the error to the requests waiting for this one, which write out
// its response.
type notStoredError struct {
	resp   *response // as recorded
	shared *response // the same with the header stored responses keep
}

func (e *notStoredError) Error() string {
	return fmt.Sprintf("idemhttp: the handler answered %d, which is not stored", e.resp.status)
}

// errAbandoned is what fn returns to the engine when the handler returned
// without writing anything after its request's context ended (a client
// gone, a timeout): its work was given up, not done, so nothing is stored
// and the key is released.
var errAbandoned = errors.New("idemhttp: the handler wrote no response after its request's context ended")

// Retry-After values, in seconds.
const (
	retryInFlight    = 1 // ProblemInFlight
	retryUnavailable = 5 // ProblemUnavailable: a restart, or a failover
)

// ServeHTTP implements http.Handler.
func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !m.c.methods[r.Method] {
		m.next.ServeHTTP(w, r)
		return
	}
	if m.c.Key != nil {
		m.serveKeyFunc(w, r)
		return
	}
	values := r.Header.Values(m.c.Header)
	if len(values) == 0 {
		if m.c.Required {
			writeProblem(w, http.StatusBadRequest, ProblemKeyRequired,
				fmt.Sprintf("The %s header is required for %s requests.", m.c.Header, r.Method), 0)
			return
		}
		m.next.ServeHTTP(w, r)
		return
	}
	key, err := parseKey(values, m.c.MaxKeyLength)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, ProblemKeyInvalid,
			fmt.Sprintf("The %s header is invalid: %v.", m.c.Header, err), 0)
		return
	}
	body, ok := m.readBody(w, r)
	if !ok {
		return
	}
	m.serveKey(w, r, key, body)
}

// serveKeyFunc serves a request of a covered method with Options.Key: the
// body is read first, for Key to find the key in.
func (m *middleware) serveKeyFunc(w http.ResponseWriter, r *http.Request) {
	body, ok := m.readBody(w, r)
	if !ok {
		return
	}
	key, err := m.c.Key(withBody(r, body), body)
	if err == nil && key != "" {
		err = checkKey(key, m.c.MaxKeyLength)
	}
	switch {
	case err != nil:
		writeProblem(w, http.StatusBadRequest, ProblemKeyInvalid,
			fmt.Sprintf("The request's idempotency key is invalid: %v.", err), 0)
	case key != "":
		m.serveKey(w, r, key, body)
	case m.c.Required:
		writeProblem(w, http.StatusBadRequest, ProblemKeyRequired,
			fmt.Sprintf("An idempotency key is required for %s requests.", r.Method), 0)
	default:
		m.next.ServeHTTP(w, withBody(r, body))
	}
}

// serveKey serves a request of a covered method with a valid key and its
// whole body.
func (m *middleware) serveKey(w http.ResponseWriter, r *http.Request, key string, body []byte) {
	fp, err := m.c.Fingerprint(withBody(r, body), body)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, ProblemFingerprint, err.Error(), 0)
		return
	}
	scope := ""
	if m.c.Scope != nil {
		scope = m.c.Scope(r)
	}
	m.serve(w, withBody(r, body), EngineKey(scope, key), fp)
}

// withBody returns a shallow copy of r, not to change the caller's request,
// whose Body reads body.
func withBody(r *http.Request, body []byte) *http.Request {
	r = r.WithContext(r.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	return r
}

// readBody reads r's body, up to Options.MaxRequestBody bytes. If it cannot
// (413 for a body over the limit, 400 for a read error), it answers the
// request itself and returns false.
func (m *middleware) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := readBody(r, m.c.MaxRequestBody)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeProblem(w, http.StatusRequestEntityTooLarge, ProblemBodyTooLarge,
				fmt.Sprintf("The request body is larger than %d bytes.", tooLarge.Limit), 0)
			return nil, false
		}
		writeProblem(w, http.StatusBadRequest, ProblemBodyUnreadable,
			"The request body could not be read.", 0)
		return nil, false
	}
	return body, true
}

// readBody reads r's body, up to limit bytes. A longer body is an error
// matching *http.MaxBytesError, as is one from an http.MaxBytesReader set by
// an outer handler.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return b, nil
}

// serve runs the handler once for key, or answers with the outcome of the
// request that did.
func (m *middleware) serve(w http.ResponseWriter, r *http.Request, key string, fp []byte) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	wt := m.flights.Enter(key, fp, cancel)
	defer m.flights.Leave(key, wt)

	var (
		own       *response // the response of the handler, if it ran for this request
		abandoned bool      // it ran and wrote nothing, the request's context ended
	)
	fn := func(context.Context) ([]byte, error) {
		// The handler runs with the request's context, not ctx: ctx is
		// only this request's patience as a duplicate.
		m.flights.Start(key, wt)
		defer m.flights.Stop(key, wt)
		rec := newRecorder(w)
		m.next.ServeHTTP(rec, r)
		if !rec.written() && r.Context().Err() != nil {
			own, abandoned = &response{header: rec.header}, true
			return nil, errAbandoned
		}
		own = rec.result()
		h, replace := storedFields(rec.outer, own.header, m.c.exclude)
		stored := &response{status: own.status, header: h, replace: replace, body: own.body}
		if !m.c.Store(own.status) {
			return nil, &notStoredError{resp: own, shared: stored}
		}
		return encodeResponse(stored, m.c.MaxStoredSize), nil
	}
	res, err := m.e.Do(ctx, key, fp, fn)
	for own == nil && errors.Is(err, errAbandoned) {
		// The handler this request waited for was abandoned, and the key
		// released: this request, whose client is still there, tries again
		// and may run the handler itself.
		res, err = m.e.Do(ctx, key, fp, fn)
	}

	var notStored *notStoredError
	switch {
	case abandoned:
		// Nothing to send: leave w as net/http's writer would be left,
		// with the handler's header fields and no status, for whatever
		// answers the ended request (http.TimeoutHandler has already).
		setHeader(w, own.header)
		return
	case own != nil:
		// The handler ran for this request: its client gets the response
		// as written, whatever became of storing it.
		if err != nil && !errors.As(err, &notStored) {
			m.c.Logger.ErrorContext(r.Context(), "idemhttp: the handler ran but its response could not be stored; a retry will run it again, or report its outcome as unknown",
				"key", key, "status", own.status, "error", err)
		}
		own.writeWhole(w)
		return
	}
	switch {
	case err == nil:
		resp, derr := decodeResponse(res.Value)
		if derr != nil {
			m.internalError(w, r, key, fmt.Errorf("%w: key %q: decoding the stored response: %w", idem.ErrCorrupt, key, derr))
			return
		}
		extra := []string{HeaderReplayed, "true"}
		if resp.bodyOmitted {
			extra = append(extra, HeaderBodyOmitted, "true")
		}
		if resp.headerOmitted {
			extra = append(extra, HeaderHeadersOmitted, "true")
		}
		resp.write(w, extra...)
	case errors.As(err, &notStored):
		// This request waited for one whose response is not stored (a 5xx
		// by default): it gets that response, which is not a replay. The
		// key is free again, so its client's retry runs the handler.
		notStored.shared.write(w)
	case errors.Is(err, idem.ErrFingerprintMismatch):
		writeProblem(w, http.StatusUnprocessableEntity, ProblemKeyMismatch,
			fmt.Sprintf("The %s was used for a request with a different method, path or payload.", m.keyName()), 0)
	case errors.Is(err, idem.ErrInterrupted):
		writeProblem(w, http.StatusConflict, ProblemOutcomeUnknown,
			"A request with this key was being processed when the server stopped; whether it took effect is unknown, so it will not be processed again.", 0)
	case errors.Is(err, idem.ErrInFlight), ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		detail := "A request with this key is still being processed; retry later."
		if errors.Is(context.Cause(ctx), flights.ErrWaitedLong) {
			detail = fmt.Sprintf("A request with this key is still being processed after waiting %v; retry later.", m.c.Wait)
		}
		writeProblem(w, http.StatusConflict, ProblemInFlight, detail, retryInFlight)
	case errors.Is(err, idem.ErrInvalidKey):
		// The key passed Options.MaxKeyLength: the scope is too long for
		// the engine's MaxKeySize, which is the server's doing.
		m.c.Logger.ErrorContext(r.Context(), "idemhttp: the engine key of a valid key is too long for the engine: shorten the scope, lower Options.MaxKeyLength, or raise the engine's MaxKeySize",
			"key", key, "error", err)
		writeProblem(w, http.StatusInternalServerError, ProblemInternal,
			"The server's idempotency store cannot hold this request's key with its scope: a server configuration error.", 0)
	case errors.Is(err, idem.ErrClosed):
		writeProblem(w, http.StatusServiceUnavailable, ProblemUnavailable,
			"The idempotency store is closed.", retryUnavailable)
	case errors.Is(err, idem.ErrReadOnly):
		writeProblem(w, http.StatusServiceUnavailable, ProblemUnavailable,
			"The idempotency store is read-only.", retryUnavailable)
	default:
		m.internalError(w, r, key, err)
	}
}

// keyName names the key in problem details: the header, or "idempotency
// key" when Options.Key takes it from elsewhere.
func (m *middleware) keyName() string {
	if m.c.Key != nil {
		return "idempotency key"
	}
	return m.c.Header
}

// internalError logs err and answers 500.
func (m *middleware) internalError(w http.ResponseWriter, r *http.Request, key string, err error) {
	m.c.Logger.ErrorContext(r.Context(), "idemhttp: engine error", "key", key, "error", err)
	writeProblem(w, http.StatusInternalServerError, ProblemInternal,
		"The idempotency store failed; retry later.", 0)
}
