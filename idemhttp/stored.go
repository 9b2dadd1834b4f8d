package idemhttp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"
	"sort"
	"strings"
)

// storedVersion is the version of the encoding of a stored response; it is
// the first byte of every record, so that a later version can read older
// ones.
//
// Version 2, all integers unsigned varints:
//
//	version (1 byte) | flags (1 byte: 1 = body omitted, 2 = headers omitted)
//	| status | number of header fields
//	| per field, in name order: len(name) name, mode (1 byte: 0 = added to
//	  the writer's field, 1 = replaces it), number of values, per value:
//	  len(value) value
//	| body (the rest of the record)
//
// Version 1, from before the middleware let the handler see the fields set
// by the middleware outside it, has no mode byte: every field replaces the
// writer's.
const storedVersion = 2

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

// storedFields returns the handler's part of final, the header fields a
// response is sent with, given outer, the fields set before the handler
// ran (by middleware outside this one, for this request only). A replay
// applies them to the fields the outer middleware set for its own request,
// so that it is sent what net/http would send if the handler ran again and
// did the same:
//
//   - A field the handler set that outer did not have, or values it added
//     to outer's (Header.Add: Vary: Accept-Encoding after an outer Vary:
//     Origin), are added. A field set with no value (as a nil Content-Type
//     is, to keep net/http from sniffing one) is added with no value.
//   - A field of outer's that the handler replaced (Header.Set) replaces
//     the field (replace[name] is true). One it removed, or replaced with
//     no value, is stored with no value, and removes the field.
//   - A field of outer's that the handler left alone is not stored.
//
// The hop-by-hop fields, those that the Connection field names, and those
// of exclude (canonical names) are not stored. Names are canonicalized.
func storedFields(outer, final http.Header, exclude map[string]bool) (h http.Header, replace map[string]bool) {
	named := map[string]bool{}
	for _, v := range final.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				named[textproto.CanonicalMIMEHeaderKey(f)] = true
			}
		}
	}
	skip := func(k string) bool { return hopByHop[k] || named[k] || exclude[k] }
	h, replace = make(http.Header, len(final)), map[string]bool{}
	for k, v := range final {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if skip(ck) {
			continue
		}
		o, had := outer[k]
		switch {
		case had && slices.Equal(v, o):
			// The outer middleware's, left alone.
		case had && len(v) > len(o) && slices.Equal(v[:len(o)], o):
			h[ck] = append(h[ck], v[len(o):]...)
		case had:
			h[ck] = append(nonNil(h[ck]), v...)
			replace[ck] = true
		default:
			h[ck] = append(nonNil(h[ck]), v...)
		}
	}
	for k := range outer {
		if _, kept := final[k]; kept {
			continue
		}
		if ck := textproto.CanonicalMIMEHeaderKey(k); !skip(ck) {
			h[ck] = nonNil(h[ck]) // removed by the handler
			replace[ck] = true
		}
	}
	return h, replace
}

// nonNil returns v, or an empty slice if it is nil.
func nonNil(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}

// encodeResponse encodes resp, whose fields are those storedFields
// returned, in at most limit bytes: whole if it fits, else without its body
// (and its Content-Length), else without its header fields too. The status
// alone always fits in minStoredSize bytes.
func encodeResponse(resp *response, limit int) []byte {
	h := resp.header
	if encodedSize(resp.status, h, resp.body) <= limit {
		return appendResponse(nil, 0, resp.status, h, resp.replace, resp.body)
	}
	if _, ok := h["Content-Length"]; ok {
		h = h.Clone()
		delete(h, "Content-Length")
	}
	if encodedSize(resp.status, h, nil) <= limit {
		return appendResponse(nil, flagBodyOmitted, resp.status, h, resp.replace, nil)
	}
	return appendResponse(nil, flagBodyOmitted|flagHeaderOmitted, resp.status, nil, nil, nil)
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
		n += uvarintLen(uint64(len(k))) + len(k) + 1 + uvarintLen(uint64(len(vs)))
		for _, v := range vs {
			n += uvarintLen(uint64(len(v))) + len(v)
		}
	}
	return n + len(body)
}

// Modes of a stored header field.
const (
	modeAdd     = 0
	modeReplace = 1
)

func appendResponse(b []byte, flags byte, status int, h http.Header, replace map[string]bool, body []byte) []byte {
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
		mode := byte(modeAdd)
		if replace[k] {
			mode = modeReplace
		}
		b = append(b, mode)
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

// decodeResponse decodes a stored response, of this version or an earlier
// one. Its body aliases b.
func decodeResponse(b []byte) (*response, error) {
	if len(b) < 2 {
		return nil, errShort
	}
	version := b[0]
	if version != 1 && version != storedVersion {
		return nil, fmt.Errorf("unknown record version %d", version)
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
	replace := map[string]bool{}
	for i := uint64(0); i < n && d.err == nil; i++ {
		k := d.string()
		mode := byte(modeReplace) // version 1
		if version >= 2 {
			mode = d.byte()
		}
		nv := d.uvarint()
		switch {
		case d.err != nil:
		case mode != modeAdd && mode != modeReplace:
			return nil, fmt.Errorf("unknown header field mode %d", mode)
		case nv > uint64(len(d.b)): // each value takes a byte or more
			return nil, errShort
		}
		vs := make([]string, 0, nv)
		for j := uint64(0); j < nv && d.err == nil; j++ {
			vs = append(vs, d.string())
		}
		h[k] = vs
		if mode == modeReplace {
			replace[k] = true
		} else {
			delete(replace, k)
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return &response{
		status:        int(status),
		header:        h,
		replace:       replace,
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

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errShort
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
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
