package idemhttp

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// response is a handler's response: recorded from the handler, or decoded
// from a stored record. Once built it is read-only: several requests may
// write it out at once.
type response struct {
	status int
	// header holds the header fields: for the response the handler wrote,
	// every field sent; for a stored response, the handler's part (see
	// storedFields), which write applies to the writer's fields: the
	// fields of replace replace the writer's (and remove them if they have
	// no value), the others are added to them.
	header  http.Header
	replace map[string]bool
	body    []byte

	// For a stored response: what was not kept because the response was
	// over Options.MaxStoredSize.
	bodyOmitted, headerOmitted bool
}

// recorder is the http.ResponseWriter the handler writes to, for a request
// of a covered method with a key. It buffers the whole response, with the
// semantics of net/http's own writer: the header map starts with the fields
// that the middleware outside this one set, the map is snapshotted by the
// first WriteHeader (later changes are ignored), Write without WriteHeader
// sends 200, later WriteHeader calls are ignored, informational (1xx) codes
// other than 101 are dropped, and writing a body for a status that allows
// none fails with http.ErrBodyNotAllowed.
//
// It supports http.ResponseController's SetReadDeadline and
// SetWriteDeadline, passed to the connection's writer; Flush, Hijack and
// EnableFullDuplex report http.ErrNotSupported, since nothing reaches the
// client before the response is stored.
type recorder struct {
	w      http.ResponseWriter // the connection's writer, for deadlines only
	outer  http.Header         // a copy of w's header fields before the handler ran
	header http.Header         // the map the handler sees: a copy of outer at first
	sent   http.Header         // header snapshotted by WriteHeader
	status int                 // 0 until WriteHeader
	body   bytes.Buffer
}

func newRecorder(w http.ResponseWriter) *recorder {
	outer := w.Header().Clone()
	if outer == nil {
		outer = make(http.Header)
	}
	return &recorder{w: w, outer: outer, header: outer.Clone()}
}

// Header returns the response header map.
func (r *recorder) Header() http.Header { return r.header }

// WriteHeader records the status and the header, once.
func (r *recorder) WriteHeader(code int) {
	if code < 100 || code > 999 {
		// As net/http: a programming error in the handler.
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if r.status != 0 {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		return // informational: not forwarded
	}
	r.status = code
	r.sent = r.header.Clone()
	if r.sent == nil {
		r.sent = make(http.Header)
	}
}

// Write records body bytes, sending 200 first if WriteHeader was not called.
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(r.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return r.body.Write(p)
}

// WriteString is Write for a string.
func (r *recorder) WriteString(s string) (int, error) {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(r.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return r.body.WriteString(s)
}

// SetReadDeadline sets the connection's read deadline, for
// http.ResponseController.
func (r *recorder) SetReadDeadline(t time.Time) error {
	return http.NewResponseController(r.w).SetReadDeadline(t)
}

// SetWriteDeadline sets the connection's write deadline, for
// http.ResponseController.
func (r *recorder) SetWriteDeadline(t time.Time) error {
	return http.NewResponseController(r.w).SetWriteDeadline(t)
}

// written reports whether the handler wrote anything: a status, or body
// bytes.
func (r *recorder) written() bool { return r.status != 0 }

// result returns the recorded response, with every header field it would
// be sent with, as net/http would have sent it: 200 if the handler wrote
// nothing, and a Content-Type sniffed from the body when the handler set
// none.
func (r *recorder) result() *response {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	resp := &response{status: r.status, header: r.sent, body: r.body.Bytes()}
	_, haveType := resp.header["Content-Type"]
	_, haveTE := resp.header["Transfer-Encoding"]
	if !haveType && !haveTE && len(resp.body) > 0 && bodyAllowed(resp.status) {
		resp.header.Set("Content-Type", http.DetectContentType(resp.body))
	}
	return resp
}

// bodyAllowed reports whether a response with the status may have a body.
func bodyAllowed(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}

// write writes resp to w: its header fields applied to w's (those of
// resp.replace replacing or removing w's fields of the same name, the
// others added to them), extra header fields, the status and the body.
func (resp *response) write(w http.ResponseWriter, extra ...string) {
	h := w.Header()
	for k, v := range resp.header {
		switch {
		case !resp.replace[k]:
			h[k] = append(slices.Clip(h[k]), v...)
		case len(v) == 0:
			delete(h, k)
		default:
			h[k] = slices.Clone(v)
		}
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	resp.send(w)
}

// writeWhole writes resp, whose header holds every field to send, to w: w's
// fields become resp.header's exactly (those that the handler removed from
// the outer middleware's are removed), then the status and the body.
func (resp *response) writeWhole(w http.ResponseWriter) {
	setHeader(w, resp.header)
	resp.send(w)
}

// send writes resp's status and body to w.
func (resp *response) send(w http.ResponseWriter) {
	w.WriteHeader(resp.status)
	if len(resp.body) > 0 {
		w.Write(resp.body)
	}
}

// setHeader makes w's header fields those of h.
func setHeader(w http.ResponseWriter, h http.Header) {
	wh := w.Header()
	clear(wh)
	for k, v := range h {
		wh[k] = v
	}
}
