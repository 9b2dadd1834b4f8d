package idem

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"
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

// Record is a stored record, as Lookup and Interrupted report it.
type Record struct {
	Key       string
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

type encodeBuffer struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

var encodePool = sync.Pool{New: func() any {
	b := new(encodeBuffer)
	b.enc = msgpack.NewEncoder(&b.buf)
	return b
}}

// encode appends r's encoding to a pooled buffer; the caller returns it with
// encodePool.Put once the bytes are no longer needed (a Pebble batch copies
// them).
func (r *record) encode() *encodeBuffer {
	b := encodePool.Get().(*encodeBuffer)
	b.buf.Reset()
	e := b.enc
	// Writes to a bytes.Buffer cannot fail.
	_ = e.EncodeArrayLen(recordFields)
	_ = e.EncodeUint(recordVersion)
	_ = e.EncodeUint(uint64(r.state))
	_ = e.EncodeBytes(r.fp.bytes())
	_ = e.EncodeUint(r.epoch)
	_ = e.EncodeInt(r.created)
	_ = e.EncodeInt(r.expires)
	_ = e.EncodeBytes(r.value)
	_ = e.EncodeString(r.errMsg)
	return b
}

// decodeRecord decodes a record. It never panics and never allocates more
// than the input's length, whatever the input: msgpack's own DecodeBytes
// trusts the length prefix, so lengths are checked against what is left.
func decodeRecord(b []byte) (record, error) {
	var r record
	rd := bytes.NewReader(b)
	d := msgpack.GetDecoder()
	defer msgpack.PutDecoder(d)
	d.Reset(rd)

	n, err := d.DecodeArrayLen()
	if err != nil {
		return r, err
	}
	if n != recordFields {
		return r, fmt.Errorf("record has %d fields, want %d", n, recordFields)
	}
	version, err := d.DecodeUint64()
	if err != nil {
		return r, err
	}
	if version != recordVersion {
		return r, fmt.Errorf("unknown record version %d", version)
	}
	state, err := d.DecodeUint64()
	if err != nil {
		return r, err
	}
	switch state {
	case uint64(StateInFlight), uint64(StateCompleted), uint64(StateFailed):
		r.state = State(state)
	default:
		return r, fmt.Errorf("invalid stored state %d", state)
	}
	fp, err := readBytes(d, rd)
	if err != nil {
		return r, err
	}
	if len(fp) > sha256.Size {
		return r, fmt.Errorf("fingerprint of %d bytes", len(fp))
	}
	if len(fp) == sha256.Size {
		r.fp.n = sha256.Size
	} else {
		r.fp.n = uint8(len(fp))
	}
	copy(r.fp.b[:], fp)
	if r.epoch, err = d.DecodeUint64(); err != nil {
		return r, err
	}
	if r.created, err = d.DecodeInt64(); err != nil {
		return r, err
	}
	if r.expires, err = d.DecodeInt64(); err != nil {
		return r, err
	}
	if r.value, err = readBytes(d, rd); err != nil {
		return r, err
	}
	msg, err := readBytes(d, rd)
	if err != nil {
		return r, err
	}
	r.errMsg = string(msg)
	if rd.Len() != 0 {
		return r, fmt.Errorf("%d bytes after the record", rd.Len())
	}
	return r, nil
}

// readBytes reads a msgpack bin or str into a new slice (nil for msgpack nil),
// refusing a length longer than the input that is left.
func readBytes(d *msgpack.Decoder, rd *bytes.Reader) ([]byte, error) {
	n, err := d.DecodeBytesLen()
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, nil
	}
	if n > rd.Len() {
		return nil, fmt.Errorf("length %d exceeds the %d bytes left", n, rd.Len())
	}
	out := make([]byte, n)
	if _, err := io.ReadFull(rd, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Key layout. Every key starts with a one-byte prefix:
//
//	r<key>                      a key's record
//	x<expiry, 8 bytes BE><key>  the expiry index (ttl.go)
//	m<name>                     engine metadata
const (
	prefixRecord = 'r'
	prefixIndex  = 'x'
	prefixMeta   = 'm'
)

var (
	metaFormat = []byte("mformat")
	metaEpoch  = []byte("mepoch")
)

// formatName identifies a directory written by this engine.
const formatName = "idem/1"

func recordKey(key string) []byte {
	k := make([]byte, 1+len(key))
	k[0] = prefixRecord
	copy(k[1:], key)
	return k
}

// store is the engine's storage: every Pebble read and write of records and
// metadata goes through it (and through the index functions in ttl.go).
type store struct {
	db *pebble.DB
}

// get returns key's record, or false if there is none. Expiry is the
// caller's business.
func (s *store) get(key string) (record, bool, error) {
	raw, closer, err := s.db.Get(recordKey(key))
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

// put stores rec for key and indexes its expiry, in one batch. If the key
// had an index entry at expiry oldExpires (oldExpires > 0), that entry is
// dropped in the same batch; if that is rec's expiry already, the index is
// left as it is.
func (s *store) put(key string, rec *record, oldExpires int64, sync bool) error {
	b := s.db.NewBatch()
	defer b.Close()
	enc := rec.encode()
	err := b.Set(recordKey(key), enc.buf.Bytes(), nil)
	encodePool.Put(enc)
	if err != nil {
		return err
	}
	if oldExpires != rec.expires {
		if oldExpires > 0 {
			if err := b.Delete(indexKey(oldExpires, key), nil); err != nil {
				return err
			}
		}
		if err := b.Set(indexKey(rec.expires, key), nil, nil); err != nil {
			return err
		}
	}
	return b.Commit(writeOpts(sync))
}

// remove deletes key's record and its index entry at expiry expires.
func (s *store) remove(key string, expires int64, sync bool) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.Delete(recordKey(key), nil); err != nil {
		return err
	}
	if err := b.Delete(indexKey(expires, key), nil); err != nil {
		return err
	}
	return b.Commit(writeOpts(sync))
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
	lower := recordKey(prefix)
	if after != nil {
		lower = successor(after)
	}
	upper := prefixEnd(recordKey(prefix))
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	var last []byte
	n := 0
	for valid := it.First(); valid && n < limit; valid = it.Next() {
		k := it.Key()
		key := string(k[1:])
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return nil, err
		}
		rec, err := decodeRecord(v)
		if err != nil {
			err = fmt.Errorf("%w: key %q: %w", ErrCorrupt, key, err)
		}
		fn(key, rec, err)
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
			return 0, notDatabase("an empty Pebble database")
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
	case string(format) != formatName:
		return 0, fmt.Errorf("idem: unsupported data format %q (this version reads %q)", format, formatName)
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
	if err := b.Commit(pebble.Sync); err != nil {
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

func (e *notDatabaseError) Error() string { return ErrNotDatabase.Error() + ": " + e.reason }

func (e *notDatabaseError) Is(target error) bool { return target == ErrNotDatabase }
