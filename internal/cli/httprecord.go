package cli

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// The records of the idemhttp middleware, as get shows them: the client's
// key and scope rather than the engine key alone, and the stored response
// rather than its encoding.

// An httpRecord is a record that the idemhttp middleware wrote, decoded.
type httpRecord struct {
	scope, key string                   // from the engine key (idemhttp.ParseEngineKey)
	resp       *idemhttp.StoredResponse // the stored response; nil for a record without one
}

// decodeHTTP decodes r as a record of the idemhttp middleware. A completed
// record is one if its key has the shape of idemhttp.EngineKey and its value
// decodes as a stored response; an in-flight or interrupted one if its key
// has that shape (it holds nothing else to tell). A failed record never is:
// the middleware stores no Permanent errors.
func decodeHTTP(r *idem.Record) (httpRecord, bool) {
	scope, key, ok := idemhttp.ParseEngineKey(r.Key)
	if !ok {
		return httpRecord{}, false
	}
	h := httpRecord{scope: scope, key: key}
	switch r.State {
	case idem.StateCompleted:
		resp, err := idemhttp.DecodeStoredResponse(r.Value)
		if err != nil {
			return httpRecord{}, false
		}
		h.resp = resp
	case idem.StateFailed:
		return httpRecord{}, false
	}
	return h, true
}

// writeKey writes the client's key and scope, after the engine key. For a
// record without a response, the key's shape is all there is to go on, so
// it says so.
func (h *httpRecord) writeKey(w io.Writer) {
	note := "the client's Idempotency-Key"
	if h.resp == nil {
		note = "if the idemhttp middleware wrote this record: " + note
	}
	fmt.Fprintf(w, "http key: %s (%s)\n", displayKey(h.key), note)
	if h.scope == "" {
		fmt.Fprint(w, "scope:    (none)\n")
	} else {
		fmt.Fprintf(w, "scope:    %s\n", displayKey(h.scope))
	}
}

// writeResponse writes the stored response: status, header fields, body.
func (h *httpRecord) writeResponse(w io.Writer) {
	resp := h.resp
	fmt.Fprintf(w, "status:   %d %s\n", resp.Status, http.StatusText(resp.Status))
	names := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	label := "header:   "
	switch {
	case resp.HeaderOmitted:
		fmt.Fprintf(w, "%snot stored: the response was too large (replays carry %s: true)\n", label, idemhttp.HeaderHeadersOmitted)
	case len(names) == 0:
		fmt.Fprintf(w, "%s(none)\n", label)
	}
	for _, k := range names {
		for _, v := range resp.Header[k] {
			if !isText([]byte(v)) {
				v = strconv.Quote(v)
			}
			fmt.Fprintf(w, "%s%s: %s\n", label, k, v)
			label = "          "
		}
	}
	n := len(resp.Body)
	switch {
	case resp.BodyOmitted:
		fmt.Fprintf(w, "body:     not stored: the response was over MaxStoredSize (replays carry %s: true)\n", idemhttp.HeaderBodyOmitted)
	case n == 0:
		fmt.Fprint(w, "body:     (empty)\n")
	case isText(resp.Body):
		fmt.Fprintf(w, "body:     %d %s, text:\n", n, plural(n, "byte", "bytes"))
		writeBlock(w, string(resp.Body))
	default:
		fmt.Fprintf(w, "body:     %d %s, base64:\n", n, plural(n, "byte", "bytes"))
		writeBlock(w, base64.StdEncoding.EncodeToString(resp.Body))
	}
}

// jsonHTTP is an idemhttp record in get --json: the admin handler's
// object.
type jsonHTTP = idemhttp.AdminHTTP

// toJSON returns h, which holds a response, for get --json.
func (h *httpRecord) toJSON() *jsonHTTP {
	j := &jsonHTTP{
		Key:           h.key,
		Scope:         h.scope,
		Status:        h.resp.Status,
		Header:        h.resp.Header,
		BodyOmitted:   h.resp.BodyOmitted,
		HeaderOmitted: h.resp.HeaderOmitted,
	}
	j.Body, j.BodyBase64 = textOrBase64(h.resp.Body)
	return j
}
