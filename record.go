package idem

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// State is the state of a stored record.
type State uint8

// The states of a record. StateInterrupted is never stored: it is what an
// in-flight marker written by an earlier process (an earlier epoch) means.
const (
	// StateInFlight: fn is running for the key in this process.
	StateInFlight State = iota + 1
	// StateInterrupted: fn was running for the key when an earlier process
	// stopped (crashed, or was killed). Its outcome is unknown: its side
	// effects may or may not have happened.
	StateInterrupted
	// StateCompleted: fn returned a value, which replays.
	StateCompleted
	// StateFailed: fn returned a Permanent error, whose message replays.
	StateFailed
)

// String returns the state's name in lower case, as "in-flight".
func (s State) String() string {
	switch s {
	case StateInFlight:
		return "in-flight"
	case StateInterrupted:
		return "interrupted"
	case StateCompleted:
		return "completed"
	case StateFailed:
		return "failed"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Record is a stored record, as Lookup, Records and Interrupted report it.
type Record struct {
	// Key is the key as Do was given it. (idemhttp's middleware prefixes
	// the client's key with its scope: see idemhttp.EngineKey.)
	Key string
	// State is StateCompleted for a stored value, StateFailed for a stored
	// Permanent error, StateInFlight for a key whose fn a call of this
	// Engine is running, and StateInterrupted for one whose fn was cut off
	// (an earlier process's, or one of this process whose outcome could
	// not be stored: see Interrupted). Under SyncNone a running call writes
	// no marker, so its key has no record until fn returns.
	State     State
	CreatedAt time.Time // when the record was stored
	ExpiresAt time.Time // when it expires
	Value     []byte    // fn's value, for StateCompleted; owned by the caller
	Err       string    // the stored error's message, for StateFailed
}

// Fingerprint is what a record stores of a request fingerprint: the
// fingerprint itself when it is shorter than 32 bytes, its SHA-256
// otherwise. The two forms never collide, since they differ in length. It is
// a value, so a call can keep it after the caller's slice changes;
// fingerprints compare with ==.
type Fingerprint struct {
	n uint8
	b [sha256.Size]byte
}

// MakeFingerprint returns the Fingerprint stored for the request
// fingerprint fp, as Do computes it.
func MakeFingerprint(fp []byte) Fingerprint { return digest(fp) }

func digest(fp []byte) Fingerprint {
	var d Fingerprint
	if len(fp) < sha256.Size {
		d.n = uint8(copy(d.b[:], fp))
		return d
	}
	d.n = sha256.Size
	d.b = sha256.Sum256(fp)
	return d
}

// Bytes returns the stored bytes: the fingerprint, or its SHA-256.
func (f *Fingerprint) Bytes() []byte { return f.b[:f.n] }

// StoredRecord is a key's record as a Store keeps it. Stores that keep
// records as bytes use AppendRecord and DecodeRecord, the engine's own
// msgpack encoding.
type StoredRecord struct {
	// State is StateInFlight for a claim whose fn runs (or ran, if its
	// engine is gone), StateCompleted for a stored value, StateFailed for
	// a stored Permanent error. StateInterrupted is never stored.
	State State
	// Fingerprint is the fingerprint of the request that claimed the key.
	Fingerprint Fingerprint
	// Owner identifies the engine that wrote the record (StoreInfo.Owner;
	// for Pebble, the epoch of the Open that wrote it).
	Owner uint64
	// Created is when the record was written, in Unix nanoseconds.
	Created int64
	// Expires is when the record expires, in Unix nanoseconds: from then
	// on the engine treats the key as having no record, and a store may
	// delete it.
	Expires int64
	// Value is fn's value, for StateCompleted; nil and empty differ.
	Value []byte
	// Err is the Permanent error's message, for StateFailed.
	Err string
}

// Expired reports whether r has expired at now (Unix nanoseconds).
func (r *StoredRecord) Expired(now int64) bool { return r.Expires <= now }

// AppendRecord appends the engine's msgpack encoding of r to dst and returns
// the extended slice. It grows dst at most once.
func AppendRecord(dst []byte, r *StoredRecord) []byte {
	return r.appendTo(slices.Grow(dst, r.encodedSize()))
}

// DecodeRecord decodes a record that AppendRecord encoded. The value is
// copied out of b. Bytes that are not such a record are an error matching
// ErrCorrupt; it never panics, whatever b holds.
func DecodeRecord(b []byte) (StoredRecord, error) {
	r, err := decodeRecord(b)
	if err != nil {
		return StoredRecord{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return r, nil
}

// recordVersion is the version of the encoding below; it is the first field
// of every record, so a later version can read older ones.
//
// A record is a msgpack array of 8 elements:
//
//	[version, state, fingerprint (bin), epoch, created, expires, value (bin or nil), error (str)]
const (
	recordVersion = 1
	recordFields  = 8
)

// The record codec writes and reads msgpack by hand: the encoding goes
// straight into a Pebble batch (no buffer, no copy, nothing escapes to the
// heap), and decoding reads the bytes in place, allocating only the value.
// It writes exactly what msgpack/v5's Encoder writes for the same calls
// (EncodeArrayLen, EncodeUint, EncodeBytes, EncodeInt, EncodeString), and
// reads what its Decoder reads; the tests hold it to both.

// msgpack type codes.
const (
	mpNil      = 0xc0
	mpBin8     = 0xc4
	mpBin16    = 0xc5
	mpBin32    = 0xc6
	mpUint8    = 0xcc
	mpUint16   = 0xcd
	mpUint32   = 0xce
	mpUint64   = 0xcf
	mpInt8     = 0xd0
	mpInt16    = 0xd1
	mpInt32    = 0xd2
	mpInt64    = 0xd3
	mpStr8     = 0xd9
	mpStr16    = 0xda
	mpStr32    = 0xdb
	mpArray16  = 0xdc
	mpArray32  = 0xdd
	mpFixArray = 0x90 // to 0x9f
	mpFixStr   = 0xa0 // to 0xbf
	mpNegFix   = 0xe0 // to 0xff
)

// encodedSize returns the length of r's encoding.
func (r *StoredRecord) encodedSize() int {
	return 1 + uintSize(recordVersion) + uintSize(uint64(r.State)) +
		1 + lenSize(int(r.Fingerprint.n)) + int(r.Fingerprint.n) +
		uintSize(r.Owner) + intSize(r.Created) + intSize(r.Expires) +
		binSize(r.Value) + strSize(len(r.Err))
}

// appendTo appends r's encoding to dst.
func (r *StoredRecord) appendTo(dst []byte) []byte {
	dst = append(dst, mpFixArray|recordFields)
	dst = appendUint(dst, recordVersion)
	dst = appendUint(dst, uint64(r.State))
	dst = appendBin(dst, r.Fingerprint.Bytes())
	dst = appendUint(dst, r.Owner)
	dst = appendInt(dst, r.Created)
	dst = appendInt(dst, r.Expires)
	dst = appendBin(dst, r.Value)
	dst = appendLen(dst, mpFixStr, mpStr8, mpStr16, mpStr32, len(r.Err))
	return append(dst, r.Err...)
}

// encode returns r's encoding in a new slice.
func (r *StoredRecord) encode() []byte {
	return r.appendTo(make([]byte, 0, r.encodedSize()))
}

func uintSize(v uint64) int {
	switch {
	case v <= 0x7f:
		return 1
	case v <= math.MaxUint8:
		return 2
	case v <= math.MaxUint16:
		return 3
	case v <= math.MaxUint32:
		return 5
	}
	return 9
}

func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, mpUint8, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, mpUint16), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(dst, mpUint32), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, mpUint64), v)
}

func intSize(v int64) int {
	switch {
	case v >= 0:
		return uintSize(uint64(v))
	case v >= -32:
		return 1
	case v >= math.MinInt8:
		return 2
	case v >= math.MinInt16:
		return 3
	case v >= math.MinInt32:
		return 5
	}
	return 9
}

func appendInt(dst []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(dst, uint64(v))
	case v >= -32:
		return append(dst, byte(v))
	case v >= math.MinInt8:
		return append(dst, mpInt8, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(dst, mpInt16), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(dst, mpInt32), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, mpInt64), uint64(v))
}

// lenSize is the length of a bin header's length field.
func lenSize(n int) int {
	switch {
	case n <= math.MaxUint8:
		return 1
	case n <= math.MaxUint16:
		return 2
	}
	return 4
}

// binSize is the encoded length of b as bin, or nil if b is nil.
func binSize(b []byte) int {
	if b == nil {
		return 1
	}
	return 1 + lenSize(len(b)) + len(b)
}

func appendBin(dst, b []byte) []byte {
	if b == nil {
		return append(dst, mpNil)
	}
	return append(appendLen(dst, 0, mpBin8, mpBin16, mpBin32, len(b)), b...)
}

// strSize is the encoded length of a string of n bytes.
func strSize(n int) int {
	if n < 32 {
		return 1 + n
	}
	return 1 + lenSize(n) + n
}

// appendLen appends a str or bin header for n bytes: fix|n if fix is not 0
// and n < 32, else the 8-, 16- or 32-bit form.
func appendLen(dst []byte, fix, c8, c16, c32 byte, n int) []byte {
	switch {
	case fix != 0 && n < 32:
		return append(dst, fix|byte(n))
	case n <= math.MaxUint8:
		return append(dst, c8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(dst, c16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, c32), uint32(n))
}

// decodeRecord decodes a record; the value is copied, nothing else is
// allocated. It never panics and never allocates more than the input's
// length, whatever the input: every length is checked against what is left.
func decodeRecord(b []byte) (StoredRecord, error) {
	var r StoredRecord
	d := mpReader{b: b}
	n, err := d.arrayLen()
	if err != nil {
		return r, err
	}
	if n != recordFields {
		return r, fmt.Errorf("record has %d fields, want %d", n, recordFields)
	}
	version, err := d.uint()
	if err != nil {
		return r, err
	}
	if version != recordVersion {
		return r, fmt.Errorf("unknown record version %d", version)
	}
	state, err := d.uint()
	if err != nil {
		return r, err
	}
	switch state {
	case uint64(StateInFlight), uint64(StateCompleted), uint64(StateFailed):
		r.State = State(state)
	default:
		return r, fmt.Errorf("invalid stored state %d", state)
	}
	fp, err := d.bytes()
	if err != nil {
		return r, err
	}
	if len(fp) > sha256.Size {
		return r, fmt.Errorf("fingerprint of %d bytes", len(fp))
	}
	r.Fingerprint.n = uint8(copy(r.Fingerprint.b[:], fp))
	if r.Owner, err = d.uint(); err != nil {
		return r, err
	}
	if r.Created, err = d.int(); err != nil {
		return r, err
	}
	if r.Expires, err = d.int(); err != nil {
		return r, err
	}
	value, err := d.bytes()
	if err != nil {
		return r, err
	}
	msg, err := d.bytes()
	if err != nil {
		return r, err
	}
	if left := len(d.b) - d.off; left != 0 {
		return r, fmt.Errorf("%d bytes after the record", left)
	}
	if value != nil {
		r.Value = append(make([]byte, 0, len(value)), value...)
	}
	r.Err = string(msg)
	return r, nil
}

// recordExpiry reads the expiry of an encoded record, without decoding the
// rest.
func recordExpiry(b []byte) (int64, error) {
	d := mpReader{b: b}
	n, err := d.arrayLen()
	if err != nil {
		return 0, err
	}
	if n != recordFields {
		return 0, fmt.Errorf("record has %d fields, want %d", n, recordFields)
	}
	if version, err := d.uint(); err != nil || version != recordVersion {
		return 0, fmt.Errorf("record version %d: %v", version, err)
	}
	if _, err := d.uint(); err != nil { // state
		return 0, err
	}
	if _, err := d.bytes(); err != nil { // fingerprint
		return 0, err
	}
	if _, err := d.uint(); err != nil { // epoch
		return 0, err
	}
	if _, err := d.int(); err != nil { // created
		return 0, err
	}
	return d.int()
}

// mpReader reads msgpack from a byte slice, accepting for each kind the
// codes msgpack/v5's Decoder accepts.
type mpReader struct {
	b   []byte
	off int
}

var errShort = errors.New("record ends early")

// next returns the next n bytes.
func (d *mpReader) next(n int) ([]byte, error) {
	if n > len(d.b)-d.off {
		return nil, errShort
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p, nil
}

func (d *mpReader) code() (byte, error) {
	p, err := d.next(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// sized reads the 1-, 2-, 4- or 8-byte big-endian number after a code.
func (d *mpReader) sized(n int) (uint64, error) {
	p, err := d.next(n)
	if err != nil {
		return 0, err
	}
	switch n {
	case 1:
		return uint64(p[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), nil
	}
	return binary.BigEndian.Uint64(p), nil
}

func (d *mpReader) arrayLen() (int, error) {
	c, err := d.code()
	switch {
	case err != nil:
		return 0, err
	case c == mpNil:
		return -1, nil
	case c&0xf0 == mpFixArray:
		return int(c & 0x0f), nil
	case c == mpArray16:
		n, err := d.sized(2)
		return int(n), err
	case c == mpArray32:
		n, err := d.sized(4)
		return int(n), err
	}
	return 0, fmt.Errorf("invalid code %#x for an array", c)
}

// int reads any msgpack integer (or nil, as 0), as int64 bits.
func (d *mpReader) int() (int64, error) {
	c, err := d.code()
	if err != nil {
		return 0, err
	}
	switch {
	case c == mpNil:
		return 0, nil
	case c <= 0x7f || c >= mpNegFix:
		return int64(int8(c)), nil
	}
	var n uint64
	switch c {
	case mpUint8, mpInt8:
		n, err = d.sized(1)
		if c == mpInt8 {
			return int64(int8(n)), err
		}
	case mpUint16, mpInt16:
		n, err = d.sized(2)
		if c == mpInt16 {
			return int64(int16(n)), err
		}
	case mpUint32, mpInt32:
		n, err = d.sized(4)
		if c == mpInt32 {
			return int64(int32(n)), err
		}
	case mpUint64, mpInt64:
		n, err = d.sized(8)
	default:
		return 0, fmt.Errorf("invalid code %#x for an integer", c)
	}
	return int64(n), err
}

// uint reads any msgpack integer (or nil, as 0) as an unsigned one.
func (d *mpReader) uint() (uint64, error) {
	n, err := d.int()
	return uint64(n), err
}

// bytes returns the contents of a bin or str in place (nil for msgpack nil).
func (d *mpReader) bytes() ([]byte, error) {
	c, err := d.code()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c == mpNil:
		return nil, nil
	case c&0xe0 == mpFixStr:
		n = uint64(c & 0x1f)
	case c == mpBin8 || c == mpStr8:
		n, err = d.sized(1)
	case c == mpBin16 || c == mpStr16:
		n, err = d.sized(2)
	case c == mpBin32 || c == mpStr32:
		n, err = d.sized(4)
	default:
		return nil, fmt.Errorf("invalid code %#x for bytes", c)
	}
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.b)-d.off) {
		return nil, fmt.Errorf("length %d exceeds the %d bytes left", n, len(d.b)-d.off)
	}
	return d.next(int(n))
}
