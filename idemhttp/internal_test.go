package idemhttp

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The record encoding round-trips, and degrades to fit its limit.
func TestEncodeResponse(t *testing.T) {
	resp := &response{
		status:  201,
		header:  http.Header{"Content-Type": {"text/plain"}, "X-Multi": {"a", "", "b"}, "X-Empty": {}, "X-Gone": {}},
		replace: map[string]bool{"Content-Type": true, "X-Gone": true},
		body:    []byte("hello"),
	}
	for _, tt := range []struct {
		limit                      int
		bodyOmitted, headerOmitted bool
	}{
		{limit: 1 << 20},
		{limit: encodedSize(201, resp.header, resp.body)},
		{limit: encodedSize(201, resp.header, resp.body) - 1, bodyOmitted: true},
		{limit: encodedSize(201, resp.header, nil), bodyOmitted: true},
		{limit: encodedSize(201, resp.header, nil) - 1, bodyOmitted: true, headerOmitted: true},
		{limit: minStoredSize, bodyOmitted: true, headerOmitted: true},
	} {
		b := encodeResponse(resp, tt.limit)
		require.LessOrEqual(t, len(b), max(tt.limit, minStoredSize))
		got, err := decodeResponse(b)
		require.NoError(t, err)
		require.Equal(t, 201, got.status)
		require.Equal(t, tt.bodyOmitted, got.bodyOmitted, "limit %d", tt.limit)
		require.Equal(t, tt.headerOmitted, got.headerOmitted, "limit %d", tt.limit)
		switch {
		case tt.headerOmitted:
			require.Empty(t, got.header)
			require.Empty(t, got.replace)
			require.Empty(t, got.body)
		case tt.bodyOmitted:
			require.Equal(t, resp.header, got.header)
			require.Equal(t, resp.replace, got.replace)
			require.Empty(t, got.body)
		default:
			require.Equal(t, resp.header, got.header)
			require.Equal(t, resp.replace, got.replace)
			require.Equal(t, resp.body, got.body)
		}
	}
	// The largest status-only record fits in minStoredSize.
	require.LessOrEqual(t, len(encodeResponse(&response{status: 999, body: []byte(strings.Repeat("x", 100))}, 0)), minStoredSize)
}

// Decoding arbitrary bytes fails cleanly or yields a valid response that
// encodes back to the same bytes.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(encodeResponse(&response{status: 200, header: http.Header{"A": {"b"}, "C": {"d", "e"}}, replace: map[string]bool{"C": true}, body: []byte("x")}, 1<<20))
	f.Add([]byte("\x01\x00\xc9\x01\x01\x04Vary\x01\x0fAccept-Encodingok"))
	f.Add(encodeResponse(&response{status: 204, header: http.Header{}}, 1<<20))
	f.Add([]byte{1, 3, 0xc8, 0x01, 0})
	f.Add([]byte{1, 0, 0xc8, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := decodeResponse(b)
		if err != nil {
			return
		}
		require.GreaterOrEqual(t, resp.status, 100)
		require.LessOrEqual(t, resp.status, 999)
		var flags byte
		if resp.bodyOmitted {
			flags |= flagBodyOmitted
		}
		if resp.headerOmitted {
			flags |= flagHeaderOmitted
		}
		again, err := decodeResponse(appendResponse(nil, flags, resp.status, resp.header, resp.replace, resp.body))
		require.NoError(t, err)
		require.Equal(t, resp, again)
	})
}

// Wait defaults to DefaultWait; a negative one does not wait.
func TestWaitOption(t *testing.T) {
	require.Equal(t, DefaultWait, newConfig(nil).Wait)
	require.Equal(t, 5*time.Second, newConfig(&Options{}).Wait)
	require.Equal(t, time.Minute, newConfig(&Options{Wait: time.Minute}).Wait)
	require.Equal(t, -time.Nanosecond, newConfig(&Options{Wait: -1}).Wait)
}

// A version 1 record, stored before the handler saw the outer middleware's
// fields, still decodes: its fields replace the writer's, as they did.
func TestDecodeVersion1(t *testing.T) {
	// 201, flags 0, 2 fields: "Content-Type": [], "Vary": ["Accept-Encoding"];
	// body "ok".
	b := []byte("\x01\x00\xc9\x01\x02\x0cContent-Type\x00\x04Vary\x01\x0fAccept-Encodingok")
	resp, err := decodeResponse(b)
	require.NoError(t, err)
	require.Equal(t, &response{
		status:  201,
		header:  http.Header{"Vary": {"Accept-Encoding"}, "Content-Type": {}},
		replace: map[string]bool{"Vary": true, "Content-Type": true},
		body:    []byte("ok"),
	}, resp)

	w := httptest.NewRecorder()
	w.Header().Set("Vary", "Origin")
	w.Header().Set("Content-Type", "text/plain")
	resp.write(w)
	require.Equal(t, http.Header{"Vary": {"Accept-Encoding"}}, w.Header(), "the stored fields replace the writer's")
}

// storedFields keeps the handler's part of the header: what it added to the
// outer middleware's fields, and what it replaced or removed. Applied to
// the outer fields of another request, it gives what the handler would
// have sent.
func TestStoredFields(t *testing.T) {
	outer := http.Header{
		"Vary":         {"Origin"},
		"X-Request-Id": {"r1"},
		"X-Frame":      {"DENY"},
		"Cache":        {"no-store"},
		"Set-Cookie":   {"outer=1"},
		"X-Gone":       {"1"},
	}
	final := http.Header{
		"Vary":         {"Origin", "Accept-Encoding"}, // added to
		"X-Request-Id": {"r1"},                        // untouched
		"Cache":        {"private"},                   // replaced
		"Content-Type": nil,                           // set with no value
		"Location":     {"/a"},                        // the handler's
		"x-lower":      {"v"},                         // the handler's, not canonical
		"Set-Cookie":   {"outer=1", "handler=1"},      // excluded
		"Connection":   {"X-Hop"},                     // hop-by-hop
		"X-Hop":        {"1"},                         // named by Connection
		"X-Frame":      {},                            // replaced with no value
	}
	h, replace := storedFields(outer, final, map[string]bool{"Set-Cookie": true})
	require.Equal(t, http.Header{
		"Vary":         {"Accept-Encoding"},
		"Cache":        {"private"},
		"Content-Type": {},
		"Location":     {"/a"},
		"X-Lower":      {"v"},
		"X-Frame":      {},
		"X-Gone":       {},
	}, h)
	require.Equal(t, map[string]bool{"Cache": true, "X-Frame": true, "X-Gone": true}, replace)

	// Through the encoding, over the outer fields of another request.
	stored, err := decodeResponse(encodeResponse(&response{status: 200, header: h, replace: replace}, 1<<20))
	require.NoError(t, err)
	w := httptest.NewRecorder()
	for k, v := range outer {
		w.Header()[k] = v
	}
	w.Header().Set("X-Request-Id", "r2")
	stored.write(w)
	require.Equal(t, http.Header{
		"Vary":         {"Origin", "Accept-Encoding"},
		"X-Request-Id": {"r2"},
		"Cache":        {"private"},
		"Content-Type": nil, // present: net/http sniffs no type
		"Location":     {"/a"},
		"X-Lower":      {"v"},
		"Set-Cookie":   {"outer=1"},
	}, w.Header())
}
