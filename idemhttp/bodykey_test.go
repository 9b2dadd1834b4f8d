package idemhttp_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// payment is a body in the style of Shopify's REST payments, with the key
// as payment.unique_token.
func payment(token, amount string) string {
	return fmt.Sprintf(`{"payment": {"unique_token": %q, "amount": %q}}`, token, amount)
}

// bodyKeyOptions are the options of a middleware that takes the key from
// payment.unique_token.
func bodyKeyOptions() *idemhttp.Options {
	return &idemhttp.Options{Key: idemhttp.JSONKey("payment.unique_token")}
}

// A key in the body makes the handler run once, as one in the header does:
// a retry replays, another key runs it again, and the handler reads the
// whole body.
func TestBodyKeyRunsOnceAndReplays(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, bodyKeyOptions(), a)
	body := payment("tok-1", "10.00")

	resp := send(h, req{body: body})
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, "run 1: "+body, bodyOf(t, resp))

	retry := send(h, req{body: body})
	require.Equal(t, http.StatusCreated, retry.StatusCode)
	require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed))
	require.Equal(t, "run 1: "+body, bodyOf(t, retry))
	require.Equal(t, int64(1), a.runs.Load())

	// The same payload in other JSON spelling is another fingerprint, but
	// the same key, however it is escaped.
	p := requireProblem(t, send(h, req{body: `{"payment":{"unique_token":"tok\u002d1","amount":"10.00"}}`}),
		http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	require.Contains(t, p.Detail, "The idempotency key was used")

	other := send(h, req{body: payment("tok-2", "10.00")})
	require.Equal(t, "run 2: "+payment("tok-2", "10.00"), bodyOf(t, other))
	require.Equal(t, int64(2), a.runs.Load())

	// The record is where EngineKey says, as for a key from the header.
	_, err := e.Lookup(idemhttp.EngineKey("", "tok-1"))
	require.NoError(t, err)
}

// The default fingerprint covers the whole body, the key's member included:
// the same token with another amount is refused.
func TestBodyKeyMismatch(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	h := wrap(e, bodyKeyOptions(), a)
	require.Equal(t, http.StatusCreated, send(h, req{body: payment("tok-1", "10.00")}).StatusCode)
	requireProblem(t, send(h, req{body: payment("tok-1", "99.00")}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	requireProblem(t, send(h, req{target: "/other", body: payment("tok-1", "10.00")}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	require.Equal(t, int64(1), a.runs.Load())
}

// A request in which the key function finds no key passes through, with
// its body intact, or gets 400 with Required.
func TestBodyKeyMissing(t *testing.T) {
	bodies := []string{
		`{"payment": {"amount": "10.00"}}`,
		`{"payment": {"unique_token": null, "amount": "10.00"}}`,
		`{"payment": null}`,
		`{}`,
		"",
		" \n",
		"null",
	}
	for _, body := range bodies {
		t.Run(fmt.Sprintf("%q", body), func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, bodyKeyOptions(), a)
			for i := 1; i <= 2; i++ {
				resp := send(h, req{body: body})
				require.Equal(t, http.StatusCreated, resp.StatusCode)
				require.Empty(t, resp.Header.Get(idemhttp.HeaderReplayed))
				require.Equal(t, fmt.Sprintf("run %d: %s", i, body), bodyOf(t, resp))
			}

			o := bodyKeyOptions()
			o.Required = true
			h = wrap(e, o, a)
			p := requireProblem(t, send(h, req{body: body}), http.StatusBadRequest, idemhttp.ProblemKeyRequired)
			require.Equal(t, "An idempotency key is required for POST requests.", p.Detail)
			require.Equal(t, int64(2), a.runs.Load())
		})
	}
}

// A key function's error, and a key it returns that is too long or not
// printable ASCII, get 400 without running the handler.
func TestBodyKeyInvalid(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		detail string
	}{
		{name: "not JSON", body: `payment[unique_token]=tok-1`, detail: "not valid JSON: invalid character 'p' looking for beginning of value (at byte 1)"},
		{name: "truncated", body: `{"payment": {"unique_token": "tok-1"`, detail: "not valid JSON: unexpected end of JSON input"},
		{name: "trailing data", body: payment("tok-1", "1") + " {}", detail: "not valid JSON: invalid character '{' after top-level value"},
		{name: "a number", body: `{"payment": {"unique_token": 12}}`, detail: "payment.unique_token in the request body is a number, not a string"},
		{name: "an object", body: `{"payment": {"unique_token": {"v": "tok-1"}}}`, detail: "payment.unique_token in the request body is an object, not a string"},
		{name: "through an array", body: `{"payment": [{"unique_token": "tok-1"}]}`, detail: "payment in the request body is an array, not an object"},
		{name: "through a string", body: `{"payment": "tok-1"}`, detail: "payment in the request body is a string, not an object"},
		{name: "body an array", body: `[{"payment": {"unique_token": "tok-1"}}]`, detail: "the request body is an array, not a JSON object"},
		{name: "the empty string", body: payment("", "1"), detail: "payment.unique_token in the request body is the empty string"},
		{name: "twice", body: `{"payment": {"unique_token": "a", "unique_token": "b"}}`, detail: "payment.unique_token is in the request body twice"},
		{name: "too long", body: payment(strings.Repeat("k", 256), "1"), detail: "the key is 256 bytes long, above the limit of 255"},
		{name: "not ASCII", body: `{"payment": {"unique_token": "caf\u00e9"}}`, detail: "not printable ASCII at byte 3"},
		{name: "a control character", body: `{"payment": {"unique_token": "a\tb"}}`, detail: "not printable ASCII at byte 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := openEngine(t, nil)
			a := &app{}
			h := wrap(e, bodyKeyOptions(), a)
			p := requireProblem(t, send(h, req{body: tt.body}), http.StatusBadRequest, idemhttp.ProblemKeyInvalid)
			require.True(t, strings.HasPrefix(p.Detail, "The request's idempotency key is invalid: "), p.Detail)
			require.Contains(t, p.Detail, tt.detail)
			require.Equal(t, int64(0), a.runs.Load())
		})
	}

	t.Run("the longest key", func(t *testing.T) {
		e := openEngine(t, nil)
		a := &app{}
		o := bodyKeyOptions()
		o.MaxKeyLength = 8
		h := wrap(e, o, a)
		require.Equal(t, http.StatusCreated, send(h, req{body: payment("12345678", "1")}).StatusCode)
		require.Equal(t, "true", send(h, req{body: payment("12345678", "1")}).Header.Get(idemhttp.HeaderReplayed))
		requireProblem(t, send(h, req{body: payment("123456789", "1")}), http.StatusBadRequest, idemhttp.ProblemKeyInvalid)
		require.Equal(t, int64(1), a.runs.Load())
	})
}

// With Options.Key, the header is ignored: neither its presence nor its
// value changes what the body's key does.
func TestBodyKeyIgnoresHeader(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	o := bodyKeyOptions()
	o.Required = true
	h := wrap(e, o, a)
	body := payment("tok-1", "10.00")
	require.Equal(t, http.StatusCreated, send(h, req{key: "h1", body: body}).StatusCode)
	retry := send(h, req{key: "h2", body: body})
	require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed), "the same body key, another header")
	retry = send(h, req{body: body})
	require.Equal(t, "true", retry.Header.Get(idemhttp.HeaderReplayed), "the same body key, no header")
	requireProblem(t, send(h, req{key: "h1", body: `{"payment": {}}`}), http.StatusBadRequest, idemhttp.ProblemKeyRequired)
	// A header the middleware would refuse is ignored too.
	require.Equal(t, http.StatusCreated, send(h, req{key: "a, b", body: payment("tok-2", "1")}).StatusCode)
	require.Equal(t, int64(2), a.runs.Load())

	_, err := e.Lookup(idemhttp.EngineKey("", "h1"))
	require.ErrorIs(t, err, idem.ErrNotFound)
}

// With Options.Key, every covered request's body is read before its key is
// known: one over MaxRequestBody gets 413, key or not; other methods pass
// straight through, their bodies unread.
func TestBodyKeyBodyLimits(t *testing.T) {
	body := payment("tok-1", "10.00")
	noKey := `{"payment": {"amount": "10.00"}}`
	noKey += strings.Repeat(" ", len(body)-len(noKey)) // as long as body
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprint("chunked=", chunked), func(t *testing.T) {
			newReq := func(method, body string) *http.Request {
				r := httptest.NewRequest(method, "/orders", strings.NewReader(body))
				if chunked {
					r.ContentLength = -1
					r.Body = io.NopCloser(strings.NewReader(body))
				}
				return r
			}
			e := openEngine(t, nil)
			a := &app{}
			o := bodyKeyOptions()
			o.MaxRequestBody = int64(len(body))
			h := wrap(e, o, a)

			serve := func(r *http.Request) *http.Response {
				rr := httptest.NewRecorder()
				h.ServeHTTP(rr, r)
				return rr.Result()
			}
			require.Equal(t, "run 1: "+body, bodyOf(t, serve(newReq(http.MethodPost, body))), "at the limit")
			require.Equal(t, "run 2: "+noKey, bodyOf(t, serve(newReq(http.MethodPost, noKey))), "at the limit, no key")
			requireProblem(t, serve(newReq(http.MethodPost, body+" ")), http.StatusRequestEntityTooLarge, idemhttp.ProblemBodyTooLarge)
			requireProblem(t, serve(newReq(http.MethodPost, noKey+" ")), http.StatusRequestEntityTooLarge, idemhttp.ProblemBodyTooLarge)
			require.Equal(t, int64(2), a.runs.Load())

			// A method not covered: no key looked for, no body read.
			resp := serve(newReq(http.MethodPut, body+" "))
			require.Equal(t, "run 3: "+body+" ", bodyOf(t, resp))
		})
	}
}

func TestBodyKeyBodyUnreadable(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	called := false
	h := wrap(e, &idemhttp.Options{Key: func(*http.Request, []byte) (string, error) {
		called = true
		return "k1", nil
	}}, a)
	r := httptest.NewRequest(http.MethodPost, "/orders", io.NopCloser(failingReader{}))
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, r)
	requireProblem(t, rr.Result(), http.StatusBadRequest, idemhttp.ProblemBodyUnreadable)
	require.False(t, called)
	require.Equal(t, int64(0), a.runs.Load())
}

// A key function of one's own: it gets the whole body, and a request whose
// Body it may read; its error's message reaches the client; the key is
// scoped as a header's would be.
func TestCustomKeyFunc(t *testing.T) {
	e := openEngine(t, nil)
	a := &app{}
	var seen []string
	key := func(r *http.Request, body []byte) (string, error) {
		b, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		require.Equal(t, body, b)
		seen = append(seen, r.URL.Path)
		k, found := strings.CutPrefix(string(body), "key=")
		switch {
		case !found:
			return "", nil
		case k == "bad":
			return "", errors.New("the key may not be bad")
		}
		return k, nil
	}
	tenant := func(r *http.Request) string { return r.Header.Get("X-Tenant") }
	h := wrap(e, &idemhttp.Options{Key: key, Scope: tenant, Methods: []string{http.MethodPut}}, a)
	sendAs := func(tenant, body string) *http.Response {
		return send(h, req{method: http.MethodPut, body: body, header: http.Header{"X-Tenant": {tenant}}})
	}

	require.Equal(t, "run 1: key=k1", bodyOf(t, sendAs("acme", "key=k1")))
	require.Equal(t, "run 1: key=k1", bodyOf(t, sendAs("acme", "key=k1")))
	require.Equal(t, "run 2: key=k1", bodyOf(t, sendAs("umbrella", "key=k1")), "another scope")
	require.Equal(t, "run 3: k1", bodyOf(t, sendAs("acme", "k1")), "no key")
	p := requireProblem(t, sendAs("acme", "key=bad"), http.StatusBadRequest, idemhttp.ProblemKeyInvalid)
	require.Equal(t, "The request's idempotency key is invalid: the key may not be bad.", p.Detail)
	require.Equal(t, int64(3), a.runs.Load())
	require.Len(t, seen, 5)
	_, err := e.Lookup(idemhttp.EngineKey("umbrella", "k1"))
	require.NoError(t, err)

	// Not called for the methods not covered.
	require.Equal(t, "run 4: key=k1", bodyOf(t, send(h, req{body: "key=k1"})))
	require.Len(t, seen, 5)
}

// Concurrent duplicates whose key is in the body run the handler once, and
// all get its response.
func TestBodyKeyConcurrentDuplicates(t *testing.T) {
	e := openEngine(t, nil)
	g := newGate()
	defer g.open()
	o := bodyKeyOptions()
	o.Wait = time.Hour // never rely on timing: the duplicates wait for the gate
	h := wrap(e, o, g)
	body := payment("tok-1", "10.00")

	first := goSend(h, req{body: body})
	receive(t, g.started)
	dups := make([]<-chan any, 8)
	for i := range dups {
		dups[i] = goSend(h, req{body: body})
	}
	eventually(t, func() bool { return e.Stats().Waits >= uint64(len(dups)) }, "the duplicates wait")
	requireProblem(t, send(h, req{body: payment("tok-1", "99.00")}), http.StatusUnprocessableEntity, idemhttp.ProblemKeyMismatch)
	g.open()

	resp := receive(t, first).(*http.Response)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "done 1", bodyOf(t, resp))
	for _, ch := range dups {
		dup := receive(t, ch).(*http.Response)
		require.Equal(t, http.StatusCreated, dup.StatusCode)
		require.Equal(t, "true", dup.Header.Get(idemhttp.HeaderReplayed))
		require.Equal(t, "done 1", bodyOf(t, dup))
	}
	require.Equal(t, int64(1), g.runs.Load())
}

func TestJSONKey(t *testing.T) {
	tests := []struct {
		path string
		body string
		key  string
		err  string // a part of the error's message; no error if ""
	}{
		{path: "unique_token", body: `{"unique_token": "k"}`, key: "k"},
		{path: "payment.unique_token", body: `{"payment": {"unique_token": "k", "amount": "10.00"}}`, key: "k"},
		{path: "a.b.c", body: `{"x": {"c": 1}, "a": {"c": "no", "b": {"b": "no", "c": "k"}}}`, key: "k"},
		{path: "a.b.c", body: `{"a": {"b": {"b": "no"}}}`},
		{path: "a.b.c", body: `{"a": {"b": null}}`},
		{path: "a.b.c", body: `{"a": {"b": 1.5}}`, err: "a.b in the request body is a number, not an object"},
		{path: "a.b.c", body: `{"a": {"b": true}}`, err: "a.b in the request body is a boolean, not an object"},
		{path: "a.b.c", body: `{"a": {"b": {"c": false}}}`, err: "a.b.c in the request body is a boolean, not a string"},
		{path: "a.b.c", body: `{"a": {"b": {"c": [1]}}}`, err: "a.b.c in the request body is an array, not a string"},
		{path: "a", body: `"k"`, err: "the request body is a string, not a JSON object"},
		{path: "a", body: `12`, err: "the request body is a number, not a JSON object"},

		// Escapes are decoded, in the key and in the names.
		{path: "k", body: `{"k": "caf\u00e9"}`, key: "café"},
		{path: "k", body: `{"k": "say \"hi\"\\\/"}`, key: `say "hi"\/`},
		{path: "k", body: `{"k": "\ud83d\ude00"}`, key: "😀"},
		{path: "k", body: "{\"k\": \"\xff\"}", key: "\ufffd"},
		{path: "unique_token", body: `{"unique\u005ftoken": "k"}`, key: "k"},
		{path: "p.k", body: `{"\u0070": {"\"k": "no", "k\\": "no", "k": "yes"}}`, key: "yes"},
		{path: "é", body: `{"\u00e9": "k"}`, key: "k"},
		{path: "k", body: `{"k\u0000": "no"}`},

		// Names compare exactly.
		{path: "k", body: `{"K": "no"}`},
		{path: "k", body: `{"k ": "no"}`},

		// Values off the path are skipped, however they look.
		{path: "k", body: ` { "a" : [ 1 , -2.5e-3 , true , false , null , "}" , [ ] , { } , {"k": "no"} ] , "k" : "yes" } `, key: "yes"},
		{path: "k", body: `{"a": "\"}", "b": "\\", "k": "yes"}`, key: "yes"},
		{path: "k", body: `{"a": {"k": "no"}}`},

		// Duplicates on the path are refused; off it, they are not looked at.
		{path: "a.k", body: `{"a": {"k": "1"}, "a": {"k": "2"}}`, err: "a is in the request body twice"},
		{path: "a.k", body: `{"a": null, "a": {"k": "2"}}`, err: "a is in the request body twice"},
		{path: "a.k", body: `{"a": {"k": "1", "k": "1"}}`, err: "a.k is in the request body twice"},
		{path: "a.k", body: `{"a": {"k": "1", "\u006b": "2"}}`, err: "a.k is in the request body twice"},
		{path: "a.k", body: `{"a": {"k": "1", "x": 1, "x": 2}, "b": 1, "b": 2}`, key: "1"},

		// Not JSON.
		{path: "k", body: `k=v`, err: "not valid JSON: invalid character 'k' looking for beginning of value (at byte 1)"},
		{path: "k", body: `{"k": "v",}`, err: "not valid JSON: invalid character '}' looking for beginning of object key string"},
		{path: "k", body: `{"k": "v"} {"k": "w"}`, err: "not valid JSON: invalid character '{' after top-level value"},
		{path: "k", body: `{"k": "v"`, err: "not valid JSON: unexpected end of JSON input"},
		{path: "k", body: `{"k": "v", "x": [1, 2}`, err: "not valid JSON"},
		{path: "k", body: "{\"k\": \"a\nb\"}", err: "not valid JSON: invalid character '\\n' in string literal"},
		{path: "k", body: `{"k": "\x"}`, err: "not valid JSON: invalid character 'x' in string escape code"},

		// No body, or null.
		{path: "k", body: ""},
		{path: "k", body: " \t\r\n"},
		{path: "k", body: "null"},
	}
	for _, tt := range tests {
		t.Run(tt.path+" "+tt.body, func(t *testing.T) {
			key, err := idemhttp.JSONKey(tt.path)(nil, []byte(tt.body))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				require.Empty(t, key)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.key, key)
		})
	}
}

func TestJSONKeyPanicsOnInvalidPath(t *testing.T) {
	for _, path := range []string{"", ".", "a.", ".a", "a..b"} {
		require.Panics(t, func() { idemhttp.JSONKey(path) }, "%q", path)
	}
}

// FuzzJSONKey checks JSONKey against encoding/json: the key it finds is
// the one json.Unmarshal finds, and it refuses what Unmarshal cannot read.
func FuzzJSONKey(f *testing.F) {
	for _, seed := range []struct{ path, body string }{
		{"payment.unique_token", `{"payment": {"unique_token": "k", "amount": "10.00"}}`},
		{"payment.unique_token", `{"payment": {"unique_token": "caf\u00e9 \"\\", "amount": [1, {"x": "}"}]}}`},
		{"payment.unique_token", `{"payment": {"unique_token": null}}`},
		{"payment.unique_token", `{"payment": [{"unique_token": "k"}]}`},
		{"payment.unique_token", `{"payment": {"unique_token": "a"}, "payment": {}}`},
		{"a", `{"a": 1e400}`},
		{"a", `{"\u0061": "k", "b": -0.5E+2, "c": true, "d": false}`},
		{"a", `{"a": "k"`},
		{"a", ``},
		{"a.b", ` null `},
		{"a.b", `[]`},
		{"a..b", `{}`},
	} {
		f.Add(seed.path, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		names := strings.Split(path, ".")
		for _, n := range names {
			if n == "" {
				require.Panics(t, func() { idemhttp.JSONKey(path) })
				return
			}
		}
		key, err := idemhttp.JSONKey(path)(nil, body)
		if len(bytes.TrimLeft(body, " \t\r\n")) == 0 {
			require.NoError(t, err)
			require.Empty(t, key)
			return
		}
		// The reference: encoding/json, which keeps the last of duplicate
		// members.
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var v any
		if derr := dec.Decode(&v); derr != nil || dec.InputOffset() != int64(len(bytes.TrimRight(body, " \t\r\n"))) {
			require.Error(t, err, "JSONKey accepts what encoding/json does not")
			require.Empty(t, key)
			return
		}
		var (
			want   string
			reason string // why JSONKey must refuse; "" if it must not
		)
		for i, n := range names {
			if v == nil {
				break
			}
			obj, ok := v.(map[string]any)
			if !ok {
				reason = "not an object"
				break
			}
			v = obj[n]
			if i < len(names)-1 {
				continue
			}
			switch s := v.(type) {
			case nil:
			case string:
				if s == "" {
					reason = "the empty string"
				}
				want = s
			default:
				reason = "not a string"
			}
		}
		switch {
		case err == nil:
			require.Empty(t, reason)
			require.Equal(t, want, key)
		case reason == "":
			// Only a duplicate member on the path is refused when
			// encoding/json reads the key.
			require.ErrorContains(t, err, "is in the request body twice")
		}
	})
}
