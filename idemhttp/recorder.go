package idemhttp

import (
	"bytes"
	"fmt"
	"net/http"
	"time"
)

// response is a handler's response: recorded from the handler, or decoded
// from a stored record. Once built it is read-only: several requests may
// write it out at once.
type response struct {
	status int
	header http.Header
	body   []byte

	// For a stored response: what was not kept because the response was
	// over Options.MaxStoredSize.
	bodyOmitted, headerOmitted bool
}

// recorder is the http.ResponseWriter the handler writes to, for a request
// of a covered method with a key. It buffers the whole response, with the
// semantics of net/http's own writer: the header map is snapshotted by the
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
	header http.Header         // the map the handler sees
	sent   http.Header         // header snapshotted by WriteHeader
	status int                 // 0 until WriteHeader
	body   bytes.Buffer
}

func newRecorder(w http.ResponseWriter) *recorder {
	return &recorder{w: w, header: make(http.Header)}
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

// result returns the recorded response, as net/http would have sent it: 200
// if the handler wrote nothing, and a Content-Type sniffed from the body
// when the handler set none.
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

// write writes resp to w: its header (set over whatever w's header holds
// already), extra header fields, the status and the body.
func (resp *response) write(w http.ResponseWriter, extra ...string) {
	h := w.Header()
	for k, v := range resp.header {
		h[k] = append([]string(nil), v...)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h.Set(extra[i], extra[i+1])
	}
	w.WriteHeader(resp.status)
	if len(resp.body) > 0 {
		w.Write(resp.body)
	}
}
