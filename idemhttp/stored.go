package idemhttp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"sort"
	"strings"
)

// storedVersion is the version of the encoding of a stored response; it is
// the first byte of every record, so that a later version can read older
// ones.
//
// Version 1, all integers unsigned varints:
//
//	version (1 byte) | flags (1 byte: 1 = body omitted, 2 = headers omitted)
//	| status | number of header fields
//	| per field, in name order: len(name) name, number of values, per value: len(value) value
//	| body (the rest of the record)
const storedVersion = 1

const (
	flagBodyOmitted   = 1 << 0
	flagHeaderOmitted = 1 << 1
)

// hopByHop are the headers that concern one connection and are never stored
// (RFC 9110, section 7.6.1), with the obsolete ones proxies still send.
var hopByHop = map[string]bool{
	"Connection":          true,
	"Keep-Alive":          true,
	"Proxy-Connection":    true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// storedHeader returns the fields of h that are stored and replayed: all but
// the hop-by-hop ones, those that the Connection field names, and those of
// exclude (canonical names). Names are canonicalized.
func storedHeader(h http.Header, exclude map[string]bool) http.Header {
	named := map[string]bool{}
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				named[textproto.CanonicalMIMEHeaderKey(f)] = true
			}
		}
	}
	out := make(http.Header, len(h))
	for k, v := range h {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if hopByHop[ck] || named[ck] || exclude[ck] {
			continue
		}
		out[ck] = append(out[ck], v...)
	}
	return out
}

// encodeResponse encodes resp, whose header is already filtered by
// storedHeader, in at most limit bytes: whole if it fits, else without its
// body (and its Content-Length), else without its header fields too. The
// status alone always fits in minStoredSize bytes.
func encodeResponse(resp *response, limit int) []byte {
	h := resp.header
	if encodedSize(resp.status, h, resp.body) <= limit {
		return appendResponse(nil, 0, resp.status, h, resp.body)
	}
	if _, ok := h["Content-Length"]; ok {
		h = h.Clone()
		delete(h, "Content-Length")
	}
	if encodedSize(resp.status, h, nil) <= limit {
		return appendResponse(nil, flagBodyOmitted, resp.status, h, nil)
	}
	return appendResponse(nil, flagBodyOmitted|flagHeaderOmitted, resp.status, nil, nil)
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

func encodedSize(status int, h http.Header, body []byte) int {
	n := 2 + uvarintLen(uint64(status)) + uvarintLen(uint64(len(h)))
	for k, vs := range h {
		n += uvarintLen(uint64(len(k))) + len(k) + uvarintLen(uint64(len(vs)))
		for _, v := range vs {
			n += uvarintLen(uint64(len(v))) + len(v)
		}
	}
	return n + len(body)
}

func appendResponse(b []byte, flags byte, status int, h http.Header, body []byte) []byte {
	b = append(b, storedVersion, flags)
	b = binary.AppendUvarint(b, uint64(status))
	b = binary.AppendUvarint(b, uint64(len(h)))
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		b = appendString(b, k)
		b = binary.AppendUvarint(b, uint64(len(h[k])))
		for _, v := range h[k] {
			b = appendString(b, v)
		}
	}
	return append(b, body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errShort = errors.New("truncated record")

// decodeResponse decodes a stored response. Its body aliases b.
func decodeResponse(b []byte) (*response, error) {
	if len(b) < 2 {
		return nil, errShort
	}
	if b[0] != storedVersion {
		return nil, fmt.Errorf("unknown record version %d", b[0])
	}
	flags := b[1]
	if flags&^(flagBodyOmitted|flagHeaderOmitted) != 0 {
		return nil, fmt.Errorf("unknown record flags %#x", flags)
	}
	d := decoder{b: b[2:]}
	status := d.uvarint()
	n := d.uvarint()
	if d.err == nil && (status < 100 || status > 999) {
		return nil, fmt.Errorf("invalid status %d", status)
	}
	if d.err == nil && n > uint64(len(d.b)) { // each field takes 2 bytes or more
		return nil, errShort
	}
	h := make(http.Header, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		k := d.string()
		nv := d.uvarint()
		if d.err == nil && nv > uint64(len(d.b)) { // each value takes a byte or more
			return nil, errShort
		}
		vs := make([]string, 0, nv)
		for j := uint64(0); j < nv && d.err == nil; j++ {
			vs = append(vs, d.string())
		}
		h[k] = vs
	}
	if d.err != nil {
		return nil, d.err
	}
	return &response{
		status:        int(status),
		header:        h,
		body:          d.b,
		bodyOmitted:   flags&flagBodyOmitted != 0,
		headerOmitted: flags&flagHeaderOmitted != 0,
	}, nil
}

// decoder reads a record, keeping the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
