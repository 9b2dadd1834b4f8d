package idem

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
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

// fingerprint is the at most 32 bytes stored for a request fingerprint: the
// fingerprint itself when it is shorter than 32 bytes, its SHA-256 otherwise.
// The two forms never collide, since they differ in length. It is a value, so
// a call can keep it after the caller's slice changes.
type fingerprint struct {
	n uint8
	b [sha256.Size]byte
}

func digest(fp []byte) fingerprint {
	var d fingerprint
	if len(fp) < sha256.Size {
		d.n = uint8(copy(d.b[:], fp))
		return d
	}
	d.n = sha256.Size
	d.b = sha256.Sum256(fp)
	return d
}

func (f *fingerprint) bytes() []byte { return f.b[:f.n] }

// record is a key's stored state.
type record struct {
	state   State // StateInFlight, StateCompleted or StateFailed
	fp      fingerprint
	epoch   uint64 // the epoch of the process that wrote it
	created int64  // unix nanoseconds
	expires int64  // unix nanoseconds
	value   []byte // StateCompleted: fn's value (nil and empty differ)
	errMsg  string // StateFailed: the stored error's message

	size uint32 // the encoded size, as read; not encoded
}

func (r *record) expired(now int64) bool { return r.expires <= now }

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
func (r *record) encodedSize() int {
	return 1 + uintSize(recordVersion) + uintSize(uint64(r.state)) +
		1 + lenSize(int(r.fp.n)) + int(r.fp.n) +
		uintSize(r.epoch) + intSize(r.created) + intSize(r.expires) +
		binSize(r.value) + strSize(len(r.errMsg))
}

// appendTo appends r's encoding to dst.
func (r *record) appendTo(dst []byte) []byte {
	dst = append(dst, mpFixArray|recordFields)
	dst = appendUint(dst, recordVersion)
	dst = appendUint(dst, uint64(r.state))
	dst = appendBin(dst, r.fp.bytes())
	dst = appendUint(dst, r.epoch)
	dst = appendInt(dst, r.created)
	dst = appendInt(dst, r.expires)
	dst = appendBin(dst, r.value)
	dst = appendLen(dst, mpFixStr, mpStr8, mpStr16, mpStr32, len(r.errMsg))
	return append(dst, r.errMsg...)
}

// encode returns r's encoding in a new slice.
func (r *record) encode() []byte {
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
func decodeRecord(b []byte) (record, error) {
	var r record
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
		r.state = State(state)
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
	r.fp.n = uint8(copy(r.fp.b[:], fp))
	if r.epoch, err = d.uint(); err != nil {
		return r, err
	}
	if r.created, err = d.int(); err != nil {
		return r, err
	}
	if r.expires, err = d.int(); err != nil {
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
		r.value = append(make([]byte, 0, len(value)), value...)
	}
	r.errMsg = string(msg)
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

// Key layout. Every key starts with a one-byte prefix:
//
//	r<key>   a key's record
//	m<name>  engine metadata
//
// Directories written by earlier versions may also hold an expiry index,
// x<expiry, 8 bytes BE><key>, which Open deletes (ttl.go).
const (
	prefixRecord = 'r'
	prefixIndex  = 'x'
	prefixMeta   = 'm'
)

var (
	metaFormat = []byte("mformat")
	metaEpoch  = []byte("mepoch")
)

// formatName identifies a directory written by this engine. "idem/1"
// directories (records, plus an expiry index) are read as they are, and
// upgraded by a writable Open, which drops the index; a version that reads
// only "idem/1" refuses "idem/2", whose records have no index entries for
// it to sweep by.
const (
	formatName   = "idem/2"
	formatIdemV1 = "idem/1"
)

func recordKey(key string) []byte {
	k := make([]byte, 1+len(key))
	k[0] = prefixRecord
	copy(k[1:], key)
	return k
}

// store is the engine's storage: every Pebble read and write of records and
// metadata goes through it (and through the sweep's scans in ttl.go).
type store struct {
	db  *pebble.DB
	log pebbleLogger
}

// commit commits b. Pebble panics in a commit whose WAL write fails (the
// writer keeps the error of an earlier failed write or fsync), and it
// panics holding its commit pipeline's mutex: a caller that recovered the
// panic would leave every later commit, and Close, blocked forever. So a
// panic in the commit goes the way of Pebble's own fatal errors
// (pebbleLogger.Fatalf): it stops the process, whatever the callers
// recover, and whichever of the two a failing WAL reports first.
func (s *store) commit(b *pebble.Batch, opts *pebble.WriteOptions) error {
	defer func() {
		if r := recover(); r != nil {
			s.log.Fatalf("pebble: commit panicked: %v", r)
		}
	}()
	return b.Commit(opts)
}

// keyBufs recycles the buffers of the Pebble keys that get reads.
var keyBufs = sync.Pool{New: func() any { return new([]byte) }}

// get returns key's record, or false if there is none. Expiry is the
// caller's business.
func (s *store) get(key string) (record, bool, error) {
	// The Pebble key is built in a pooled buffer: Get keeps it until the
	// value's closer is closed.
	kb := keyBufs.Get().(*[]byte)
	k := append(append((*kb)[:0], prefixRecord), key...)
	defer func() {
		*kb = k
		keyBufs.Put(kb)
	}()
	raw, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, fmt.Errorf("idem: reading a record: %w", err)
	}
	rec, err := decodeRecord(raw)
	rec.size = uint32(min(len(raw), math.MaxUint32))
	closer.Close()
	if err != nil {
		return record{}, false, fmt.Errorf("%w: key %q: %w", ErrCorrupt, key, err)
	}
	return rec, true, nil
}

// put stores rec for key, in a batch of its own.
func (s *store) put(key string, rec *record, sync bool) error {
	b := s.db.NewBatch()
	defer b.Close()
	// The record is encoded in place in the batch.
	op := b.SetDeferred(1+len(key), rec.encodedSize())
	op.Key[0] = prefixRecord
	copy(op.Key[1:], key)
	if v := rec.appendTo(op.Value[:0]); len(v) != len(op.Value) {
		panic(fmt.Sprintf("idem: record encoded in %d bytes, not %d", len(v), len(op.Value)))
	}
	if err := op.Finish(); err != nil {
		return err
	}
	return s.commit(b, writeOpts(sync))
}

// remove deletes key's record. size is the record's encoded size if known
// (a DeleteSized tombstone lets Pebble's compactions see how much space the
// delete frees), or 0.
func (s *store) remove(key string, size uint32, sync bool) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteSized(recordKey(key), size, nil); err != nil {
		return err
	}
	return s.commit(b, writeOpts(sync))
}

func writeOpts(sync bool) *pebble.WriteOptions {
	if sync {
		return pebble.Sync
	}
	return pebble.NoSync
}

// scanRecords calls fn for up to limit records whose keys start with prefix
// and come after the record key after (from the first when after is nil), in
// key order, and returns the record key to continue after, or nil at the
// end. Records that fail to decode are passed with their error.
func (s *store) scanRecords(prefix string, after []byte, limit int, fn func(key string, rec record, err error)) ([]byte, error) {
	return s.scanChunk(recordKey(prefix), prefixEnd(recordKey(prefix)), after, limit, func(k, v []byte) {
		key := string(k[1:])
		rec, err := decodeRecord(v)
		if err != nil {
			err = fmt.Errorf("%w: key %q: %w", ErrCorrupt, key, err)
		}
		fn(key, rec, err)
	})
}

// scanChunk calls fn with the key and the value (both valid during the call)
// of up to limit keys in [lower, upper) after the key after (from lower when
// after is nil), in key order, with an iterator of its own, and returns the
// key to continue after, or nil at the end.
func (s *store) scanChunk(lower, upper, after []byte, limit int, fn func(k, v []byte)) ([]byte, error) {
	if after != nil {
		lower = successor(after)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	var last []byte
	n := 0
	for valid := it.First(); valid && n < limit; valid = it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return nil, err
		}
		fn(k, v)
		last = append(last[:0], k...)
		n++
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	if n < limit {
		return nil, nil
	}
	return last, nil
}

// prefixEnd returns the smallest key after every key that starts with p,
// or nil if there is none.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i]++; end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// openMeta checks the directory's format marker, writing it in a new
// database, and advances the persisted epoch, returning the new one. A
// read-only engine writes nothing: its epoch is one past the stored one, so
// every marker reads as an earlier process's.
func (s *store) openMeta(readOnly bool) (uint64, error) {
	format, err := s.getMeta(metaFormat)
	if err != nil {
		return 0, err
	}
	if format == nil {
		// A new database, or a Pebble database that idem did not write.
		empty, err := s.empty()
		if err != nil {
			return 0, err
		}
		if !empty {
			return 0, notDatabase("a Pebble database with other data")
		}
		if readOnly {
			return 0, errEmptyDatabase
		}
	}
	var epoch uint64
	if raw, err := s.getMeta(metaEpoch); err != nil {
		return 0, err
	} else if raw != nil {
		if len(raw) != 8 {
			return 0, fmt.Errorf("%w: epoch of %d bytes", ErrCorrupt, len(raw))
		}
		epoch = binary.BigEndian.Uint64(raw)
	}
	switch {
	case format == nil && epoch == 0:
		// A new database.
	case string(format) != formatName && string(format) != formatIdemV1:
		return 0, fmt.Errorf("idem: unsupported data format %q (this version reads %q and %q)", format, formatName, formatIdemV1)
	}
	epoch++
	if readOnly {
		return epoch, nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], epoch)
	if err := b.Set(metaEpoch, buf[:], nil); err != nil {
		return 0, err
	}
	if err := b.Set(metaFormat, []byte(formatName), nil); err != nil {
		return 0, err
	}
	if err := s.commit(b, pebble.Sync); err != nil {
		return 0, err
	}
	return epoch, nil
}

// empty reports whether the database holds no key at all.
func (s *store) empty() (bool, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return false, err
	}
	valid := it.First()
	return !valid, it.Close()
}

func (s *store) getMeta(k []byte) ([]byte, error) {
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(v)
	closer.Close()
	return out, nil
}

// recordKeys calls add with the key of every record. It stops with ctx's
// error when ctx ends.
func (s *store) recordKeys(ctx context.Context, add func(string)) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
	if err != nil {
		return err
	}
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		add(string(it.Key()[1:]))
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				it.Close()
				return err
			}
		}
	}
	return it.Close()
}

// notDatabaseError is an ErrNotDatabase with its reason; Open adds the
// directory.
type notDatabaseError struct{ reason string }

func notDatabase(reason string) error { return &notDatabaseError{reason} }

// errEmptyDatabase is openMeta's error for a Pebble database with no key at
// all, read-only: one that an Open which died before its first commit
// left, or an empty one of another program. A writable Open makes it an
// idem database.
var errEmptyDatabase = notDatabase("an empty Pebble database")

func (e *notDatabaseError) Error() string { return ErrNotDatabase.Error() + ": " + e.reason }

func (e *notDatabaseError) Is(target error) bool { return target == ErrNotDatabase }
