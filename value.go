package idem

import (
	"context"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// DoValue is Do for a typed result: fn's value is msgpack-encoded to be
// stored, and decoded again on replays. The call that runs fn gets fn's own
// value back. T must be a type msgpack can encode and decode (structs with
// exported fields, maps, slices, numbers, strings...); if encoding fails, fn
// has run but nothing is stored, so choose T with care.
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
	var v T
	if err := msgpack.Unmarshal(res.Value, &v); err != nil {
		return v, res, fmt.Errorf("%w: key %q: decoding the stored value as %T: %w", ErrCorrupt, key, v, err)
	}
	return v, res, nil
}
