package idem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// DoValue is Do for a typed result: fn's value is msgpack-encoded to be
// stored, and decoded again on replays. The call that runs fn gets fn's own
// value back; replays, and concurrent duplicates, get the stored one decoded
// into a new T.
//
// T must be a type that msgpack (github.com/vmihailenco/msgpack/v5) encodes
// and decodes back to the same value: numbers, strings, bools, []byte,
// time.Time, slices, arrays, maps, pointers to those, and structs of them
// (their exported fields, by name or msgpack tag), or a type implementing
// msgpack.CustomEncoder and msgpack.CustomDecoder. What does not round-trip:
// a time.Time's location (a replay gets the same instant, in time.Local);
// unexported fields (dropped); fields or elements of an interface type with
// methods, such as error or fmt.Stringer (msgpack cannot tell which concrete
// type to decode into: every replay returns an error matching ErrValueType);
// any (decoded as msgpack's generic types, map[string]any, int8, ...);
// channels and funcs (not encoded).
//
// If encoding fn's value fails, fn has run but nothing is stored and the
// key is released, so choose T with care. A stored value that cannot be
// decoded into T (T changed between deploys, say) is an error matching
// ErrValueType, returned with the Result; bytes that are not valid msgpack
// are an error matching ErrCorrupt. A panic in T's own decoding method
// (msgpack.CustomDecoder) reaches the caller.
func DoValue[T any](ctx context.Context, e *Engine, key string, fingerprint []byte, fn func(ctx context.Context) (T, error)) (T, Result, error) {
	var (
		got T
		ran bool
	)
	res, err := e.Do(ctx, key, fingerprint, func(ctx context.Context) ([]byte, error) {
		v, err := fn(ctx)
		if err != nil {
			return nil, err
		}
		b, err := msgpack.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("idem: encoding the value of type %T: %w", v, err)
		}
		got, ran = v, true
		return b, nil
	})
	if err != nil || ran && !res.Replayed {
		return got, res, err
	}
	v, err := decodeValue[T](key, res.Value)
	return v, res, err
}

// decodeValue decodes the stored value b of key into a T.
func decodeValue[T any](key string, b []byte) (T, error) {
	var v T
	if err := checkBounds(b); err != nil {
		return v, fmt.Errorf("%w: key %q: the stored value is not valid msgpack: %w", ErrCorrupt, key, err)
	}
	var err error
	guardPanics(func() { err = msgpack.Unmarshal(b, &v) }, func(r any) bool {
		if !isReflectPanic(r) {
			return false // a custom decoder's: the caller's to see
		}
		err = fmt.Errorf("%v", r)
		return true
	})
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%w: key %q: decoding the stored value as %T: %w", ErrValueType, key, zero, err)
	}
	return v, nil
}

// isReflectPanic reports whether r, a recovered panic, is one of package
// reflect's: what msgpack's decoder raises for a type it cannot decode into
// (reflect.Set of a map into a field of an interface type with methods).
func isReflectPanic(r any) bool {
	switch r := r.(type) {
	case *reflect.ValueError:
		return true
	case string:
		return strings.HasPrefix(r, "reflect")
	}
	return false
}

// maxDepth bounds the nesting of a value checkBounds accepts.
const maxDepth = 256

// checkBounds walks the msgpack value in b and refuses one whose arrays,
// maps, strings, binaries or extensions claim more elements or bytes than b
// holds, or that nests deeper than maxDepth. msgpack v5's decoder trusts
// those lengths when it allocates (its allocation limit does not apply to
// slices), so a few corrupt bytes could otherwise ask for gigabytes.
func checkBounds(b []byte) error {
	rd := bytes.NewReader(b)
	d := msgpack.GetDecoder()
	defer msgpack.PutDecoder(d)
	d.Reset(rd)
	if err := checkValue(d, rd, 0); err != nil {
		return err
	}
	if rd.Len() != 0 {
		return fmt.Errorf("%d bytes after the value", rd.Len())
	}
	return nil
}

func checkValue(d *msgpack.Decoder, rd *bytes.Reader, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("nested deeper than %d", maxDepth)
	}
	c, err := d.PeekCode()
	if err != nil {
		return err
	}
	switch {
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := d.DecodeArrayLen()
		if err != nil {
			return err
		}
		if n > rd.Len() { // each element takes at least a byte
			return fmt.Errorf("array of %d elements in %d bytes", n, rd.Len())
		}
		for range n {
			if err := checkValue(d, rd, depth+1); err != nil {
				return err
			}
		}
		return nil
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := d.DecodeMapLen()
		if err != nil {
			return err
		}
		if n > rd.Len()/2 { // each entry takes at least two bytes
			return fmt.Errorf("map of %d entries in %d bytes", n, rd.Len())
		}
		for range 2 * n {
			if err := checkValue(d, rd, depth+1); err != nil {
				return err
			}
		}
		return nil
	case msgpcode.IsString(c) || msgpcode.IsBin(c):
		n, err := d.DecodeBytesLen()
		if err != nil {
			return err
		}
		return skip(rd, n)
	case msgpcode.IsExt(c):
		_, n, err := d.DecodeExtHeader()
		if err != nil {
			return err
		}
		return skip(rd, n)
	}
	return d.Skip() // a scalar: nil, bool, number
}

func skip(rd *bytes.Reader, n int) error {
	if n < 0 {
		return nil // nil
	}
	if n > rd.Len() {
		return fmt.Errorf("length %d exceeds the %d bytes left", n, rd.Len())
	}
	_, err := rd.Seek(int64(n), io.SeekCurrent)
	return err
}
