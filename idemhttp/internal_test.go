package idemhttp

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The record encoding round-trips, and degrades to fit its limit.
func TestEncodeResponse(t *testing.T) {
	resp := &response{
		status: 201,
		header: http.Header{"Content-Type": {"text/plain"}, "X-Multi": {"a", "", "b"}, "X-Empty": {}},
		body:   []byte("hello"),
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
			require.Empty(t, got.body)
		case tt.bodyOmitted:
			require.Equal(t, resp.header, got.header)
			require.Empty(t, got.body)
		default:
			require.Equal(t, resp.header, got.header)
			require.Equal(t, resp.body, got.body)
		}
	}
	// The largest status-only record fits in minStoredSize.
	require.LessOrEqual(t, len(encodeResponse(&response{status: 999, body: []byte(strings.Repeat("x", 100))}, 0)), minStoredSize)
}

// Decoding arbitrary bytes fails cleanly or yields a valid response that
// encodes back to the same bytes.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(encodeResponse(&response{status: 200, header: http.Header{"A": {"b"}}, body: []byte("x")}, 1<<20))
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
		again, err := decodeResponse(appendResponse(nil, flags, resp.status, resp.header, resp.body))
		require.NoError(t, err)
		require.Equal(t, resp, again)
	})
}
