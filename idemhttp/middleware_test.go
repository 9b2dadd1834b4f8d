package idemhttp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// The key is read from the header as a Structured Field string or a bare
// token; both forms name the same key.
func TestKeyForms(t *testing.T) {
	tests := []struct {
		name   string
		header string // the key header's name; Idempotency-Key if ""
		first  string // the header's value on the first request
		retry  string // on the retry, which must replay
	}{
		{name: "quoted", first: `"8e03978e-40d5-43e8-bc93-6894a57f9324"`, retry: `"8e03978e-40d5-43e8-bc93-6894a57f9324"`},
		{name: "bare", first: "8e03978e-40d5", retry: "8e03978e-40d5"},
		{name: "quoted then bare", first: `"abc"`, retry: "abc"},
		{name: "escapes", first: `"a\"b\\c"`, retry: `"a\"b\\c"`},
		{name: "space inside quotes", first: `"a b"`, retry: `"a b"`},
		{name: "surrounding whitespace", first: " \tabc ", retry: "abc"},
		{name: "custom header", header: "X-Request-Key", first: "k1", retry: `"k1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, &idemhttp.Options{Header: tt.header}, a)
			name := tt.header
			if name == "" {
				name = idemhttp.DefaultHeader
			}
			first := send(h, req{body: "x", header: http.Header{name: {tt.first}}})
			require.Equal(t, http.StatusCreated, first.StatusCode)
			require.Empty(t, first.Header.Get(idemhttp.HeaderReplayed))
			retry := send(h, req{body: "x", header: http.Header{name: {tt.retry}}})
			require.Equal(t, http.StatusCreated, retry.StatusCode)
			require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
			require.Equal(t, "run 1: x", bodyOf(t, retry))
			require.Equal(t, int64(1), a.runs.Load())
		})
	}
}

func TestInvalidKeysAre400(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		max    int
		detail string // in the problem's detail, if not ""
	}{
		{name: "empty", values: []string{""}},
		{name: "blank", values: []string{"   "}},
		{name: "empty quoted", values: []string{`""`}},
		{name: "too long", values: []string{strings.Repeat("k", 256)}},
		{name: "too long quoted", values: []string{`"` + strings.Repeat("k", 256) + `"`}},
		{name: "too long for MaxKeyLength", values: []string{"abcdefghijk"}, max: 10},
		{name: "control character", values: []string{"ab\x01c"}},
		{name: "control character quoted", values: []string{"\"ab\x7fc\""}},
		{name: "non-ASCII", values: []string{"clé"}},
		{name: "non-ASCII quoted", values: []string{`"clé"`}},
		{name: "space in a bare key", values: []string{"a b"}},
		{name: "unterminated quote", values: []string{`"abc`}},
		{name: "text after the quote", values: []string{`"abc";p=1`}},
		{name: "bad escape", values: []string{`"a\bc"`}},
		{name: "two header lines", values: []string{"a", "b"}, detail: "on 2 lines"},
		{name: "two header lines, one empty", values: []string{"a", ""}, detail: "on 2 lines"},
		{name: "lines merged", values: []string{"a, b"}, detail: "comma"},
		{name: "comma", values: []string{"a,b"}, detail: "comma"},
		{name: "quoted lines merged", values: []string{`"a", "b"`}, detail: "comma"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, &idemhttp.Options{MaxKeyLength: tt.max}, a)
			resp := send(h, req{header: http.Header{"Idempotency-Key": tt.values}})
			p := requireProblem(t, resp, http.StatusBadRequest, idemhttp.ProblemKeyInvalid)
			require.Contains(t, p.Detail, tt.detail)
			require.Equal(t, int64(0), a.runs.Load())
		})
	}
}

// The longest valid key is accepted.
func TestKeyOfMaxLength(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, nil, a)
	key := strings.Repeat("k", idemhttp.DefaultMaxKeyLength)
	require.Equal(t, http.StatusCreated, send(h, req{key: key}).StatusCode)
	require.Equal(t, "true", send(h, req{key: `"` + key + `"`}).Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, int64(1), a.runs.Load())
}

func TestMethods(t *testing.T) {
	tests := []struct {
		name    string
		methods []string
		method  string
		covered bool
	}{
		{name: "POST by default", method: http.MethodPost, covered: true},
		{name: "PATCH by default", method: http.MethodPatch, covered: true},
		{name: "GET passes", method: http.MethodGet},
		{name: "PUT passes", method: http.MethodPut},
		{name: "DELETE passes", method: http.MethodDelete},
		{name: "custom: PUT covered", methods: []string{http.MethodPut}, method: http.MethodPut, covered: true},
		{name: "custom: POST passes", methods: []string{http.MethodPut}, method: http.MethodPost},
		{name: "methods are case-sensitive", method: "post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, &idemhttp.Options{Methods: tt.methods, Required: true}, a)
			for range 2 {
				resp := send(h, req{method: tt.method, key: "k1", body: "x"})
				require.Equal(t, http.StatusCreated, resp.StatusCode)
			}
			// Without the key: covered methods need it (Required).
			resp := send(h, req{method: tt.method})
			if tt.covered {
				require.Equal(t, int64(1), a.runs.Load(), "a covered method runs once per key")
				requireProblem(t, resp, http.StatusBadRequest, idemhttp.ProblemKeyRequired)
			} else {
				require.Equal(t, int64(3), a.runs.Load(), "other methods pass straight through")
				require.Equal(t, http.StatusCreated, resp.StatusCode)
			}
		})
	}
}

func TestMissingKey(t *testing.T) {
	t.Run("passes through", func(t *testing.T) {
		e := openEngine(t, nil)
		a := &app{}
		h := wrap(e, nil, a)
		for i := 1; i <= 2; i++ {
			resp := send(h, req{body: "x"})
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed))
			require.Equal(t, fmt.Sprintf("run %d: x", i), bodyOf(t, resp))
		}
	})
	t.Run("required", func(t *testing.T) {
		e := openEngine(t, nil)
		a := &app{}
		h := wrap(e, &idemhttp.Options{Required: true, Header: "X-Key"}, a)
		p := requireProblem(t, send(h, req{key: "k1"}), http.StatusBadRequest, idemhttp.ProblemKeyRequired)
		require.Contains(t, p.Detail, "X-Key header is required")
		require.Equal(t, int64(0), a.runs.Load())
	})
}

func TestDefaultFingerprint(t *testing.T) {
	tests := []struct {
		name  string
		retry req
		same  bool
	}{
		{name: "same request", retry: req{target: "/orders?a=1", body: "x"}, same: true},
		{name: "other body", retry: req{target: "/orders?a=1", body: "y"}},
		{name: "other path", retry: req{target: "/other?a=1", body: "x"}},
		{name: "other escaping of the path", retry: req{target: "/%6Frders?a=1", body: "x"}},
		{name: "other query", retry: req{target: "/orders?a=2", body: "x"}},
		{name: "no query", retry: req{target: "/orders", body: "x"}},
		{name: "other method", retry: req{method: http.MethodPatch, target: "/orders?a=1", body: "x"}},
		{name: "header fields do not count", retry: req{target: "/orders?a=1", body: "x", header: http.Header{"X-Other": {"1"}}}, same: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, nil, a)
			require.Equal(t, http.StatusCreated, send(h, req{target: "/orders?a=1", key: "k1", body: "x"}).StatusCode)
			tt.retry.key = "k1"
			resp := send(h, tt.retry)
			if tt.same {
				require.Equal(t, "true", resp.Header.Get(idemhttp.HeaderReplayed))
			} else {
				requireProblem(t, resp, http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
			}
			require.Equal(t, int64(1), a.runs.Load())
		})
	}
}

// A custom fingerprint over some JSON fields: the others may change between
// retries.
func TestCustomFingerprint(t *testing.T) {
	amountOnly := func(r *http.Request, body []byte) ([]byte, error) {
		var v struct {
			Amount *int `json:"amount"`
		}
		if err := json.Unmarshal(body, &v); err != nil || v.Amount == nil {
			return nil, errors.New("the body must be a JSON object with an amount")
		}
		// The function may read r.Body: the handler gets its own copy.
		b, err := io.ReadAll(r.Body)
		if err != nil || string(b) != string(body) {
			return nil, errors.New("r.Body differs from body")
		}
		return []byte(fmt.Sprint(*v.Amount)), nil
	}
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, &idemhttp.Options{Fingerprint: amountOnly}, a)

	first := send(h, req{key: "k1", body: `{"amount":42,"note":"a"}`})
	require.Equal(t, http.StatusCreated, first.StatusCode)
	require.Equal(t, `run 1: {"amount":42,"note":"a"}`, bodyOf(t, first), "the handler gets the whole body")

	retry := send(h, req{key: "k1", body: `{"note":"b","amount":42}`})
	require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, `run 1: {"amount":42,"note":"a"}`, bodyOf(t, retry))

	requireProblem(t, send(h, req{key: "k1", body: `{"amount":43}`}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	p := requireProblem(t, send(h, req{key: "k2", body: `not json`}), http.StatusBadRequest, idemhttp.ProblemFingerprint)
	require.Equal(t, "the body must be a JSON object with an amount", p.Detail)
	require.Equal(t, int64(1), a.runs.Load())
}

// The handler gets the request body intact, whether its length was known.
func TestRequestBodyHandedOn(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprint("chunked=", chunked), func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, nil, a)
			body := strings.Repeat("0123456789", 1000)
			r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
			if chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(strings.NewReader(body))
			}
			r.Header.Set("Idempotency-Key", "k1")
			rr := httptest.NewRecorder()
			h.ServeHTTP(rr, r)
			require.Equal(t, http.StatusCreated, rr.Code)
			require.Equal(t, "run 1: "+body, rr.Body.String())
		})
	}
}

func TestRequestBodyTooLarge(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		chunked  bool
		outerMax int64 // an http.MaxBytesReader set by an outer handler
		status   int
	}{
		{name: "at the limit", size: 10, status: http.StatusCreated},
		{name: "over the limit", size: 11, status: http.StatusRequestEntityTooLarge},
		{name: "over the limit, chunked", size: 11, chunked: true, status: http.StatusRequestEntityTooLarge},
		{name: "at the limit, chunked", size: 10, chunked: true, status: http.StatusCreated},
		{name: "over an outer MaxBytesReader", size: 8, chunked: true, outerMax: 5, status: http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			var h http.Handler = wrap(e, &idemhttp.Options{MaxRequestBody: 10}, a)
			if tt.outerMax > 0 {
				inner := h
				h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					r.Body = http.MaxBytesReader(w, r.Body, tt.outerMax)
					inner.ServeHTTP(w, r)
				})
			}
			body := strings.Repeat("b", tt.size)
			r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
			if tt.chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(strings.NewReader(body))
			}
			r.Header.Set("Idempotency-Key", "k1")
			rr := httptest.NewRecorder()
			h.ServeHTTP(rr, r)
			resp := rr.Result()
			if tt.status == http.StatusRequestEntityTooLarge {
				requireProblem(t, resp, tt.status, idemhttp.ProblemBodyTooLarge)
				require.Equal(t, int64(0), a.runs.Load())
				return
			}
			require.Equal(t, tt.status, resp.StatusCode)
			require.Equal(t, "run 1: "+body, bodyOf(t, resp))
		})
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestRequestBodyUnreadable(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, nil, a)
	r := httptest.NewRequest(http.MethodPost, "/orders", io.NopCloser(failingReader{}))
	r.Header.Set("Idempotency-Key", "k1")
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, r)
	requireProblem(t, rr.Result(), http.StatusBadRequest, idemhttp.ProblemBodyUnreadable)
	require.Equal(t, int64(0), a.runs.Load())
}

func TestScope(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	tenant := func(r *http.Request) string { return r.Header.Get("X-Tenant") }
	h := wrap(e, &idemhttp.Options{Scope: tenant}, a)
	sendAs := func(tenant, key string) *http.Response {
		return send(h, req{key: key, body: "x", header: http.Header{"X-Tenant": {tenant}}})
	}

	require.Empty(t, sendAs("acme", "k1").Header.Get(idemhttp.HeaderReplayed))
	require.Empty(t, sendAs("globex", "k1").Header.Get(idemhttp.HeaderReplayed), "another tenant's identical key is another key")
	require.Equal(t, "true", sendAs("acme", "k1").Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, int64(2), a.runs.Load())

	// Scope and key are combined without ambiguity.
	require.Empty(t, sendAs("a", "bc").Header.Get(idemhttp.HeaderReplayed))
	require.Empty(t, sendAs("ab", "c").Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, int64(4), a.runs.Load())

	require.Equal(t, "4:acmek1", idemhttp.EngineKey("acme", "k1"))
	require.Equal(t, "0:k1", idemhttp.EngineKey("", "k1"))
	for _, k := range []string{idemhttp.EngineKey("acme", "k1"), idemhttp.EngineKey("a", "bc"), idemhttp.EngineKey("ab", "c")} {
		rec, err := e.Lookup(k)
		require.NoError(t, err, k)
		require.Equal(t, idem.StateCompleted, rec.State)
	}
}

// A scope and key too long together for the engine's MaxKeySize: the key
// passed Options.MaxKeyLength, so the server's configuration is at fault,
// not the client: 500, logged.
func TestEngineKeyTooLong(t *testing.T) {
	e := openEngine(t, &idem.Options{MaxKeySize: 64})
	a := &app{}
	scope := strings.Repeat("s", 40)
	var logs strings.Builder
	h := wrap(e, &idemhttp.Options{Scope: func(*http.Request) string { return scope }, Logger: slogTo(&logs)}, a)
	require.Equal(t, http.StatusCreated, send(h, req{key: strings.Repeat("k", 20)}).StatusCode)
	require.Empty(t, logs.String())
	p := requireProblem(t, send(h, req{key: strings.Repeat("k", 30)}), http.StatusInternalServerError, idemhttp.ProblemInternal)
	require.Contains(t, p.Detail, "server configuration", "the client is not at fault")
	require.Contains(t, logs.String(), idem.ErrInvalidKey.Error())
	require.Contains(t, logs.String(), "MaxKeyLength")
	require.Equal(t, int64(1), a.runs.Load())
}

// The first client gets the response as the handler wrote it; retries get
// the stored part of it.
func TestFirstResponseAndReplay(t *testing.T) {
	handler := func(w http.ResponseWriter, r *http.Request, run int64) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h["X-Multi"] = []string{"a", "b"}
		h["x-lower"] = []string{"kept"} // not canonical
		h.Set("Location", "/orders/1")
		h.Set("Set-Cookie", "session=1")
		h.Set("Connection", "X-Per-Hop")
		h.Set("X-Per-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Trailer", "X-Sum")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"run":%d}`, run)
	}
	stored := http.Header{
		"Content-Type": {"application/json"},
		"X-Multi":      {"a", "b"},
		"X-Lower":      {"kept"},
		"Location":     {"/orders/1"},
	}
	tests := []struct {
		name    string
		exclude []string
		want    http.Header // the replay's header, without the middleware's fields
	}{
		{name: "default: no Set-Cookie", want: stored},
		{
			name:    "custom exclude list",
			exclude: []string{"x-multi", "LOCATION"},
			want: http.Header{
				"Content-Type": {"application/json"},
				"X-Lower":      {"kept"},
				"Set-Cookie":   {"session=1"},
			},
		},
		{
			name:    "empty exclude list",
			exclude: []string{},
			want: http.Header{
				"Content-Type": {"application/json"},
				"X-Multi":      {"a", "b"},
				"X-Lower":      {"kept"},
				"Location":     {"/orders/1"},
				"Set-Cookie":   {"session=1"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{serve: handler}
			h := wrap(e, &idemhttp.Options{ExcludeHeaders: tt.exclude}, a)

			first := send(h, req{key: "k1"})
			require.Equal(t, http.StatusAccepted, first.StatusCode)
			require.Equal(t, `{"run":1}`, bodyOf(t, first))
			for _, k := range []string{"Set-Cookie", "Connection", "X-Per-Hop", "Keep-Alive", "Trailer", "Location", "Content-Type"} {
				require.NotEmpty(t, first.Header.Get(k), "the first client gets %s", k)
			}
			require.Equal(t, []string{"a", "b"}, first.Header["X-Multi"])
			//lint:ignore SA1008 the handler set this non-canonical key directly in the map, on purpose
			require.Equal(t, []string{"kept"}, first.Header["x-lower"])
			require.Empty(t, first.Header.Get(idemhttp.HeaderReplayed))

			for range 2 {
				retry := send(h, req{key: "k1"})
				require.Equal(t, http.StatusAccepted, retry.StatusCode)
				require.Equal(t, `{"run":1}`, bodyOf(t, retry))
				got := retry.Header.Clone()
				require.Equal(t, "true", got.Get(idemhttp.HeaderReplayed))
				require.Empty(t, got.Get(idemhttp.HeaderBodyOmitted))
				got.Del(idemhttp.HeaderReplayed)
				require.Equal(t, tt.want, got)
			}
			require.Equal(t, int64(1), a.runs.Load())
		})
	}
}

// Header fields set by a middleware outside this one merge with the
// handler's as net/http merges them: the first client gets what net/http
// alone would send, and a replay gets the handler's fields added to what
// the outer middleware set for the replay's own request.
func TestOuterHeaderFields(t *testing.T) {
	var requestID atomic.Int64
	outer := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f := w.Header()
			f.Set("Vary", "Origin")
			f.Set("X-Request-Id", fmt.Sprint("r", requestID.Add(1)))
			f.Set("Cache-Control", "no-store")
			f.Set("X-Frame-Options", "DENY")
			f.Set("Content-Type", "text/plain")
			h.ServeHTTP(w, r)
		})
	}
	handler := func(w http.ResponseWriter, r *http.Request, run int64) {
		f := w.Header()
		f.Add("Vary", "Accept-Encoding")          // added to the outer's
		f.Set("Cache-Control", "private")         // replaces the outer's
		f.Del("X-Frame-Options")                  // removes the outer's
		f.Set("Content-Type", "application/json") // replaces the outer's
		f.Set("Location", "/orders/1")            // the handler's own
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"run":%d}`, run)
	}
	want := func(id string) http.Header {
		return http.Header{
			"Vary":          {"Origin", "Accept-Encoding"},
			"X-Request-Id":  {id},
			"Cache-Control": {"private"},
			"Content-Type":  {"application/json"},
			"Location":      {"/orders/1"},
		}
	}

	// net/http alone.
	plain := send(outer(&app{serve: handler}), req{key: "k1"})
	require.Equal(t, want("r1"), plain.Header)

	e := openEngine(t, nil)
	a := &app{serve: handler}
	h := outer(wrap(e, nil, a))
	first := send(h, req{key: "k1"})
	require.Equal(t, http.StatusCreated, first.StatusCode)
	require.Equal(t, want("r2"), first.Header)
	for _, id := range []string{"r3", "r4"} {
		retry := send(h, req{key: "k1"})
		require.Equal(t, http.StatusCreated, retry.StatusCode)
		require.Equal(t, `{"run":1}`, bodyOf(t, retry))
		got := retry.Header.Clone()
		require.Equal(t, "true", got.Get(idemhttp.HeaderReplayed))
		got.Del(idemhttp.HeaderReplayed)
		require.Equal(t, want(id), got)
	}
	require.Equal(t, int64(1), a.runs.Load())

	// An outer field that the handler did not touch is the outer
	// middleware's for each request, not stored.
	rec, err := e.Lookup(idemhttp.EngineKey("", "k1"))
	require.NoError(t, err)
	require.NotContains(t, string(rec.Value), "X-Request-Id")
	require.NotContains(t, string(rec.Value), "Origin")
}

// The recorder behaves as net/http's own writer; the first client and the
// replays see the same thing.
func TestResponseWriterSemantics(t *testing.T) {
	tests := []struct {
		name   string
		serve  func(w http.ResponseWriter, r *http.Request)
		status int
		body   string
		header http.Header // fields expected (others may be present)
		absent []string    // fields expected absent
	}{
		{
			name:   "nothing written: 200",
			serve:  func(http.ResponseWriter, *http.Request) {},
			status: http.StatusOK,
		},
		{
			name:   "Write without WriteHeader: 200, sniffed type",
			serve:  func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>hi</html>")) },
			status: http.StatusOK,
			body:   "<html>hi</html>",
			header: http.Header{"Content-Type": {"text/html; charset=utf-8"}},
		},
		{
			name: "a nil Content-Type suppresses sniffing",
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = nil
				io.WriteString(w, "<html>hi</html>")
			},
			status: http.StatusOK,
			body:   "<html>hi</html>",
			absent: []string{"Content-Type"},
		},
		{
			name: "later WriteHeader calls are ignored",
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusCreated)
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, "a")
				w.WriteHeader(http.StatusConflict)
				io.WriteString(w, "b")
			},
			status: http.StatusCreated,
			body:   "ab",
		},
		{
			name: "header changes after WriteHeader are ignored",
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Before", "1")
				w.WriteHeader(http.StatusCreated)
				w.Header().Set("X-After", "1")
				w.Header().Del("X-Before")
			},
			status: http.StatusCreated,
			header: http.Header{"X-Before": {"1"}},
			absent: []string{"X-After"},
		},
		{
			name: "header changes after an implicit WriteHeader are ignored",
			serve: func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "a")
				w.Header().Set("X-After", "1")
			},
			status: http.StatusOK,
			body:   "a",
			absent: []string{"X-After"},
		},
		{
			name: "informational responses are dropped",
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Link", "</style.css>; rel=preload")
				w.WriteHeader(http.StatusEarlyHints)
				w.WriteHeader(http.StatusCreated)
			},
			status: http.StatusCreated,
			header: http.Header{"Link": {"</style.css>; rel=preload"}},
		},
		{
			name: "no body for 204",
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusNoContent)
				if _, err := io.WriteString(w, "x"); !errors.Is(err, http.ErrBodyNotAllowed) {
					panic(fmt.Sprint("Write for a 204 returned ", err))
				}
			},
			status: http.StatusNoContent,
		},
		{
			name: "the handler may set Content-Length",
			serve: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "5")
				io.WriteString(w, "hello")
			},
			status: http.StatusOK,
			body:   "hello",
			header: http.Header{"Content-Length": {"5"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{serve: func(w http.ResponseWriter, r *http.Request, _ int64) { tt.serve(w, r) }}
			h := wrap(e, nil, a)
			for i := range 2 {
				resp := send(h, req{key: "k1"})
				require.Equal(t, tt.status, resp.StatusCode)
				require.Equal(t, tt.body, bodyOf(t, resp))
				for k, v := range tt.header {
					require.Equal(t, v, resp.Header[k], k)
				}
				for _, k := range tt.absent {
					require.Empty(t, resp.Header.Get(k), k)
				}
				require.Equal(t, i == 1, resp.Header.Get(idemhttp.HeaderReplayed) == "true")
			}
			require.Equal(t, int64(1), a.runs.Load())
		})
	}
}

// The same, through a real server and client, which see the framing too.
func TestResponseOverRealServer(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{serve: func(w http.ResponseWriter, r *http.Request, run int64) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			panic(err)
		}
		if err := rc.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
			panic(err)
		}
		if err := rc.Flush(); !errors.Is(err, http.ErrNotSupported) {
			panic(fmt.Sprint("Flush returned ", err))
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, strings.Repeat("z", 10000)) // more than net/http buffers before chunking
	}}
	srv := httptest.NewServer(wrap(e, nil, a))
	defer srv.Close()
	for i := range 2 {
		r, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader("x"))
		require.NoError(t, err)
		r.Header.Set("Idempotency-Key", `"k1"`)
		resp, err := srv.Client().Do(r)
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		require.Equal(t, strings.Repeat("z", 10000), bodyOf(t, resp))
		resp.Body.Close()
		require.Equal(t, i == 1, resp.Header.Get(idemhttp.HeaderReplayed) == "true")
	}
	require.Equal(t, int64(1), a.runs.Load())
}

func TestFingerprintMismatch(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, nil, a)
	require.Equal(t, http.StatusCreated, send(h, req{key: "k1", body: `{"amount":42}`}).StatusCode)
	p := requireProblem(t, send(h, req{key: "k1", body: `{"amount":99}`}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	require.Equal(t, "Idempotency key reused for a different request", p.Title)
	require.Equal(t, int64(1), a.runs.Load())
	// The stored response is untouched.
	require.Equal(t, `run 1: {"amount":42}`, bodyOf(t, send(h, req{key: "k1", body: `{"amount":42}`})))
}

func TestStore(t *testing.T) {
	tests := []struct {
		name   string
		store  func(int) bool
		status int
		stored bool
	}{
		{name: "200 stored", status: 200, stored: true},
		{name: "201 stored", status: 201, stored: true},
		{name: "302 stored", status: 302, stored: true},
		{name: "400 stored", status: 400, stored: true},
		{name: "404 stored", status: 404, stored: true},
		{name: "409 stored", status: 409, stored: true},
		{name: "408 released", status: 408},
		{name: "425 released", status: 425},
		{name: "429 released", status: 429},
		{name: "422 stored", status: 422, stored: true},
		{name: "499 stored", status: 499, stored: true},
		{name: "500 released", status: 500},
		{name: "502 released", status: 502},
		{name: "503 released", status: 503},
		{name: "custom: 2xx only, 400 released", store: func(s int) bool { return s < 300 }, status: 400},
		{name: "custom: 2xx only, 201 stored", store: func(s int) bool { return s < 300 }, status: 201, stored: true},
		{name: "custom: everything, 503 stored", store: func(int) bool { return true }, status: 503, stored: true},
		{name: "custom: everything, 429 stored", store: func(int) bool { return true }, status: 429, stored: true},
		{name: "custom: DefaultStore and not 409, 409 released", store: func(s int) bool { return idemhttp.DefaultStore(s) && s != 409 }, status: 409},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{serve: func(w http.ResponseWriter, r *http.Request, run int64) {
				w.Header().Set("X-Run", fmt.Sprint(run))
				w.WriteHeader(tt.status)
				fmt.Fprintf(w, "run %d", run)
			}}
			h := wrap(e, &idemhttp.Options{Store: tt.store}, a)
			first := send(h, req{key: "k1"})
			require.Equal(t, tt.status, first.StatusCode)
			require.Equal(t, "run 1", bodyOf(t, first), "the first client gets the handler's response")
			require.Equal(t, "1", first.Header.Get("X-Run"))

			retry := send(h, req{key: "k1"})
			require.Equal(t, tt.status, retry.StatusCode)
			if tt.stored {
				require.Equal(t, "run 1", bodyOf(t, retry))
				require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
				require.Equal(t, int64(1), a.runs.Load())
			} else {
				require.Equal(t, "run 2", bodyOf(t, retry), "a response not stored releases the key")
				require.Empty(t, retry.Header.Get(idemhttp.HeaderReplayed))
				require.Equal(t, int64(2), a.runs.Load())
			}
		})
	}
}

// A response over MaxStoredSize is stored without its body, and the
// handler does not run again.
func TestLargeResponse(t *testing.T) {
	tests := []struct {
		name        string
		headerValue string
		bodySize    int
		omitBody    bool
		omitHeaders bool
	}{
		{name: "fits", headerValue: "v", bodySize: 900},
		{name: "body too large", headerValue: "v", bodySize: 4096, omitBody: true},
		{name: "header fields too large", headerValue: strings.Repeat("v", 2000), bodySize: 10, omitBody: true, omitHeaders: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			body := strings.Repeat("b", tt.bodySize)
			a := &app{serve: func(w http.ResponseWriter, r *http.Request, run int64) {
				w.Header().Set("X-Big", tt.headerValue)
				w.Header().Set("Content-Length", fmt.Sprint(len(body)))
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, body)
			}}
			h := wrap(e, &idemhttp.Options{MaxStoredSize: 1024}, a)
			first := send(h, req{key: "k1"})
			require.Equal(t, http.StatusCreated, first.StatusCode)
			require.Equal(t, body, bodyOf(t, first), "the first client gets the whole response")
			require.Equal(t, tt.headerValue, first.Header.Get("X-Big"))

			for range 2 {
				retry := send(h, req{key: "k1"})
				require.Equal(t, http.StatusCreated, retry.StatusCode)
				require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
				got := bodyOf(t, retry)
				switch {
				case tt.omitHeaders:
					require.Empty(t, got)
					require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderBodyOmitted))
					require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderHeadersOmitted))
					require.Empty(t, retry.Header.Get("X-Big"))
				case tt.omitBody:
					require.Empty(t, got)
					require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderBodyOmitted))
					require.Empty(t, retry.Header.Get(idemhttp.HeaderHeadersOmitted))
					require.Equal(t, tt.headerValue, retry.Header.Get("X-Big"))
					require.Equal(t, "text/plain", retry.Header.Get("Content-Type"))
					require.NotEqual(t, fmt.Sprint(len(body)), retry.Header.Get("Content-Length"), "the handler's Content-Length is not replayed without the body")
				default:
					require.Equal(t, body, got)
					require.Empty(t, retry.Header.Get(idemhttp.HeaderBodyOmitted))
				}
			}
			require.Equal(t, int64(1), a.runs.Load(), "a response too large to keep does not run the handler again")
		})
	}
}

// With MaxStoredSize above the engine's MaxValueSize (a misconfiguration),
// the engine refuses the record after the handler ran: the first client
// still gets its response, the error is logged, and a retry runs the
// handler again.
func TestMaxStoredSizeAboveEngineLimit(t *testing.T) {
	e := openEngine(t, &idem.Options{MaxValueSize: 100})
	a := &app{}
	var logs strings.Builder
	h := wrap(e, &idemhttp.Options{Logger: slogTo(&logs)}, a)
	body := strings.Repeat("b", 500)
	first := send(h, req{key: "k1", body: body})
	require.Equal(t, http.StatusCreated, first.StatusCode)
	require.Equal(t, "run 1: "+body, bodyOf(t, first))
	require.Contains(t, logs.String(), "could not be stored")
	require.Contains(t, logs.String(), idem.ErrTooLarge.Error())

	retry := send(h, req{key: "k1", body: body})
	require.Equal(t, "run 2: "+body, bodyOf(t, retry))
}

func TestEngineClosed(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, nil, a)
	require.NoError(t, e.Close())
	resp := send(h, req{key: "k1"})
	requireProblem(t, resp, http.StatusServiceUnavailable, idemhttp.ProblemUnavailable)
	require.Equal(t, "5", resp.Header.Get("Retry-After"))
	require.Equal(t, int64(0), a.runs.Load())
	// Requests without a key, or of other methods, still pass.
	require.Equal(t, http.StatusCreated, send(h, req{}).StatusCode)
	require.Equal(t, http.StatusCreated, send(h, req{method: http.MethodGet, key: "k1"}).StatusCode)
}

func TestEngineReadOnly(t *testing.T) {
	fs := vfs.NewMem()
	require.NoError(t, openEngine(t, &idem.Options{FS: fs}).Close())
	e := openEngine(t, &idem.Options{FS: fs, ReadOnly: true})
	a := &app{}
	h := wrap(e, nil, a)
	resp := send(h, req{key: "k1"})
	requireProblem(t, resp, http.StatusServiceUnavailable, idemhttp.ProblemUnavailable)
	require.Equal(t, "5", resp.Header.Get("Retry-After"))
	require.Equal(t, int64(0), a.runs.Load())
}

// A handler's invalid status code panics, as with net/http.
func TestInvalidStatusPanics(t *testing.T) {
	e := openEngine(t, nil)
	h := wrap(e, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(99) }))
	require.PanicsWithValue(t, "invalid WriteHeader code 99", func() { send(h, req{key: "k1"}) })
}

// A stored value the middleware cannot decode (written by something else
// under its key): 500, logged, the handler does not run.
func TestCorruptStoredResponse(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	var logs strings.Builder
	h := wrap(e, &idemhttp.Options{Logger: slogTo(&logs)}, a)
	r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("x"))
	fp, err := idemhttp.RequestFingerprint(r, []byte("x"))
	require.NoError(t, err)
	for i, v := range []string{"", "\x09garbage", "\x01\x00", "\x01\x00\xc8\x01\x05ab"} {
		key := fmt.Sprint("k", i)
		_, err = e.Do(context.Background(), idemhttp.EngineKey("", key), fp, func(context.Context) ([]byte, error) {
			return []byte(v), nil
		})
		require.NoError(t, err)
		requireProblem(t, send(h, req{key: key, body: "x"}), http.StatusInternalServerError, idemhttp.ProblemInternal)
	}
	require.Equal(t, int64(0), a.runs.Load())
	require.Contains(t, logs.String(), idem.ErrCorrupt.Error())
}

func TestProblemTypes(t *testing.T) {
	all := []string{
		idemhttp.ProblemKeyRequired, idemhttp.ProblemKeyInvalid, idemhttp.ProblemBodyTooLarge,
		idemhttp.ProblemBodyUnreadable, idemhttp.ProblemFingerprint, idemhttp.ProblemKeyMismatch,
		idemhttp.ProblemInFlight, idemhttp.ProblemOutcomeUnknown, idemhttp.ProblemUnavailable,
		idemhttp.ProblemInternal,
	}
	seen := map[string]bool{}
	for _, typ := range all {
		require.False(t, seen[typ], "duplicate type %s", typ)
		seen[typ] = true
		require.True(t, strings.HasPrefix(typ, "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#Problem"), typ)
	}
}

func TestNewPanicsOnInvalidOptions(t *testing.T) {
	e := openEngine(t, nil)
	require.Panics(t, func() { idemhttp.New(nil, nil) })
	for _, o := range []idemhttp.Options{
		{MaxKeyLength: -1},
		{MaxRequestBody: -1},
		{MaxStoredSize: -1},
		{MaxStoredSize: 15},
	} {
		require.Panics(t, func() { idemhttp.New(e, &o) }, "%+v", o)
	}
	require.NotPanics(t, func() { idemhttp.New(e, nil) })
	require.NotPanics(t, func() { idemhttp.New(e, &idemhttp.Options{Wait: -1}) }, "a negative Wait does not wait")
}

// New copies the options: later changes to the caller's do not matter.
func TestNewCopiesOptions(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	o := &idemhttp.Options{Methods: []string{http.MethodPost}, Logger: quietLogger()}
	h := idemhttp.New(e, o)(a)
	o.Methods[0] = http.MethodGet
	o.Header = "X-Other"
	require.Equal(t, http.StatusCreated, send(h, req{key: "k1"}).StatusCode)
	require.Equal(t, "true", send(h, req{key: "k1"}).Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, int64(1), a.runs.Load())
}
