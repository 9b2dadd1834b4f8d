package idem

// The record codec against msgpack/v5, its oracle: the hand-written encoder
// must write the bytes the library's Encoder writes, and the decoder must
// accept exactly what a decoder built on the library's Decoder accepts.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// encodeMsgpack encodes r with the library, field by field.
func encodeMsgpack(r *StoredRecord) []byte {
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	_ = e.EncodeArrayLen(recordFields)
	_ = e.EncodeUint(recordVersion)
	_ = e.EncodeUint(uint64(r.State))
	_ = e.EncodeBytes(r.Fingerprint.Bytes())
	_ = e.EncodeUint(r.Owner)
	_ = e.EncodeInt(r.Created)
	_ = e.EncodeInt(r.Expires)
	_ = e.EncodeBytes(r.Value)
	_ = e.EncodeString(r.Err)
	return buf.Bytes()
}

// decodeMsgpack decodes a record with the library's Decoder, with the same
// checks as decodeRecord.
func decodeMsgpack(b []byte) (StoredRecord, error) {
	var r StoredRecord
	rd := bytes.NewReader(b)
	d := msgpack.NewDecoder(rd)
	n, err := d.DecodeArrayLen()
	if err != nil {
		return r, err
	}
	if n != recordFields {
		return r, fmt.Errorf("record has %d fields", n)
	}
	version, err := d.DecodeUint64()
	if err != nil || version != recordVersion {
		return r, fmt.Errorf("version %d: %v", version, err)
	}
	state, err := d.DecodeUint64()
	if err != nil {
		return r, err
	}
	if state < uint64(StateInFlight) || state > uint64(StateFailed) || state == uint64(StateInterrupted) {
		return r, fmt.Errorf("state %d", state)
	}
	r.State = State(state)
	readBytes := func() ([]byte, error) {
		n, err := d.DecodeBytesLen()
		if err != nil || n < 0 {
			return nil, err
		}
		if n > rd.Len() {
			return nil, fmt.Errorf("length %d", n)
		}
		out := make([]byte, n)
		_, err = io.ReadFull(rd, out)
		return out, err
	}
	fp, err := readBytes()
	if err != nil {
		return r, err
	}
	if len(fp) > sha256.Size {
		return r, fmt.Errorf("fingerprint of %d bytes", len(fp))
	}
	r.Fingerprint.n = uint8(copy(r.Fingerprint.b[:], fp))
	if r.Owner, err = d.DecodeUint64(); err != nil {
		return r, err
	}
	if r.Created, err = d.DecodeInt64(); err != nil {
		return r, err
	}
	if r.Expires, err = d.DecodeInt64(); err != nil {
		return r, err
	}
	if r.Value, err = readBytes(); err != nil {
		return r, err
	}
	msg, err := readBytes()
	if err != nil {
		return r, err
	}
	r.Err = string(msg)
	if rd.Len() != 0 {
		return r, fmt.Errorf("%d bytes left", rd.Len())
	}
	return r, nil
}

// codecBoundaries are the integers at the edges of msgpack's encodings.
var codecBoundaries = []int64{
	0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, math.MaxInt64,
	-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64,
}

// codecLengths are the lengths at the edges of bin and str headers.
var codecLengths = []int{0, 1, 31, 32, 255, 256, 65535, 65536}

func TestRecordEncodingMatchesMsgpack(t *testing.T) {
	var recs []StoredRecord
	for _, n := range codecBoundaries {
		recs = append(recs,
			StoredRecord{State: StateInFlight, Owner: uint64(n), Created: n, Expires: n},
			StoredRecord{State: StateCompleted, Owner: uint64(n), Created: -n, Expires: n ^ 1, Value: []byte{}})
	}
	for _, n := range codecLengths {
		fp := bytes.Repeat([]byte{'f'}, n)
		recs = append(recs,
			StoredRecord{State: StateCompleted, Fingerprint: digest(fp), Value: bytes.Repeat([]byte{'v'}, n)},
			StoredRecord{State: StateFailed, Fingerprint: digest(fp), Err: string(bytes.Repeat([]byte{'e'}, n))})
	}
	for _, r := range recs {
		got := r.encode()
		require.Equal(t, encodeMsgpack(&r), got, "%+v", r)
		require.Len(t, got, r.encodedSize())
		// AppendRecord appends the same bytes.
		prefix := []byte("prefix")
		appended := AppendRecord(prefix, &r)
		require.Equal(t, append([]byte("prefix"), got...), appended)
		back, err := decodeRecord(got)
		require.NoError(t, err)
		require.Equal(t, r, back)
		lib, err := decodeMsgpack(got)
		require.NoError(t, err)
		require.Equal(t, r, lib)
	}
}

// TestDecodeAcceptsEveryIntegerForm: the library reads any integer code for
// an integer field (and nil as 0); so does decodeRecord.
func TestDecodeAcceptsEveryIntegerForm(t *testing.T) {
	forms := map[string][]byte{
		"nil":    {mpNil},
		"fixint": {0x07},
		"uint8":  {mpUint8, 7},
		"int8":   {mpInt8, 7},
		"uint16": {mpUint16, 0, 7},
		"int16":  {mpInt16, 0, 7},
		"uint32": {mpUint32, 0, 0, 0, 7},
		"int32":  {mpInt32, 0, 0, 0, 7},
		"uint64": {mpUint64, 0, 0, 0, 0, 0, 0, 0, 7},
		"int64":  {mpInt64, 0, 0, 0, 0, 0, 0, 0, 7},
	}
	for name, form := range forms {
		// The epoch is the fifth element: array, version, state, empty fp.
		b := append([]byte{mpFixArray | recordFields, 1, byte(StateInFlight), mpBin8, 0}, form...)
		b = append(b, 0, 0, mpNil, mpFixStr)
		want, wantErr := decodeMsgpack(b)
		got, err := decodeRecord(b)
		require.Equal(t, wantErr == nil, err == nil, "%s: %v / %v", name, wantErr, err)
		require.Equal(t, want, got, name)
		if name != "nil" {
			require.EqualValues(t, 7, got.Owner, name)
		}
	}
}

// FuzzRecordCodec encodes records made of fuzzed fields with both encoders.
func FuzzRecordCodec(f *testing.F) {
	f.Add(uint8(1), []byte("fp"), uint64(3), int64(10), int64(20), []byte("v"), false, "")
	f.Add(uint8(3), bytes.Repeat([]byte("x"), 40), uint64(1<<40), int64(-200), int64(math.MinInt64), []byte(nil), true, "declined")
	f.Fuzz(func(t *testing.T, state uint8, fp []byte, epoch uint64, created, expires int64, value []byte, nilValue bool, errMsg string) {
		if nilValue {
			value = nil
		} else if value == nil {
			value = []byte{}
		}
		r := StoredRecord{State: State(state), Fingerprint: digest(fp), Owner: epoch, Created: created, Expires: expires, Value: value, Err: errMsg}
		got := r.encode()
		if want := encodeMsgpack(&r); !bytes.Equal(got, want) {
			t.Fatalf("encoding of %+v:\n got %x\nwant %x", r, got, want)
		}
		if len(got) != r.encodedSize() {
			t.Fatalf("encodedSize %d, encoded %d bytes", r.encodedSize(), len(got))
		}
		back, err := decodeRecord(got)
		if r.State != StateInFlight && r.State != StateCompleted && r.State != StateFailed {
			if err == nil {
				t.Fatalf("state %d decoded", r.State)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if !recordsEqual(r, back) {
			t.Fatalf("round trip: %+v != %+v", back, r)
		}
	})
}

// recordsEqual compares records as stored: nil and empty values differ.
func recordsEqual(a, b StoredRecord) bool {
	return a.State == b.State && a.Fingerprint == b.Fingerprint && a.Owner == b.Owner && a.Created == b.Created &&
		a.Expires == b.Expires && (a.Value == nil) == (b.Value == nil) && bytes.Equal(a.Value, b.Value) &&
		a.Err == b.Err
}
