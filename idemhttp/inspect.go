package idemhttp

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Inspection: the middleware's records as tools show them. The middleware
// itself does not use these.

// StoredResponse is a response as the middleware stores it in an engine
// record: what a retry of its request is sent back (with
// Idempotent-Replayed: true added).
type StoredResponse struct {
	// Status is the response's status code.
	Status int
	// Header holds the header fields stored, under canonical names: those
	// the handler set, less the hop-by-hop ones and Options.ExcludeHeaders.
	Header http.Header
	// Body is the response's body; empty when BodyOmitted.
	Body []byte
	// BodyOmitted is true when the response was over Options.MaxStoredSize
	// and was stored without its body (and its Content-Length): retries get
	// an empty body with Idempotent-Body-Omitted: true.
	BodyOmitted bool
	// HeaderOmitted is true when even the header fields did not fit: only
	// the status was stored, and retries get Idempotent-Headers-Omitted:
	// true too.
	HeaderOmitted bool
}

// DecodeStoredResponse decodes value, the value of a completed engine record
// that the middleware stored (see Lookup and Records on idem.Engine), for a
// tool to show it. It returns an error for a value the middleware cannot have
// stored: the record of a plain Do call, in particular, almost always fails
// to decode. The returned Body aliases value.
func DecodeStoredResponse(value []byte) (*StoredResponse, error) {
	resp, err := decodeResponse(value)
	if err != nil {
		return nil, fmt.Errorf("idemhttp: not a stored response: %w", err)
	}
	return &StoredResponse{
		Status:        resp.status,
		Header:        resp.header,
		Body:          resp.body,
		BodyOmitted:   resp.bodyOmitted,
		HeaderOmitted: resp.headerOmitted,
	}, nil
}

// ParseEngineKey splits an engine key that EngineKey made into the scope
// and the client's key: ParseEngineKey("4:acmek-1") returns "acme", "k-1".
// ok is false for a key that EngineKey cannot have made for a request the
// middleware accepted: one that does not start with a length in decimal and
// a colon, whose scope would run past its end, or whose client key is empty
// or not printable ASCII. A key that parses may still be that of a plain Do
// call which happens to have this shape.
func ParseEngineKey(engineKey string) (scope, key string, ok bool) {
	digits, rest, found := strings.Cut(engineKey, ":")
	n, err := strconv.Atoi(digits)
	if !found || err != nil || n < 0 || n > len(rest) || strconv.Itoa(n) != digits {
		return "", "", false
	}
	scope, key = rest[:n], rest[n:]
	if key == "" {
		return "", "", false
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < ' ' || c > '~' {
			return "", "", false
		}
	}
	return scope, key, true
}
