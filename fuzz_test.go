package idem_test

// Fuzz targets. `go test` runs their seeds and testdata/fuzz as tests;
// `go test -fuzz=FuzzKeyRoundTrip` (one target per run) fuzzes. The record
// decoder's target, FuzzDecodeRecord, is in internal_test.go.

import (
	"context"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

// FuzzKeyRoundTrip: any byte string is a key. One of 1 to MaxKeySize bytes
// is stored by Do, replays, reads back through Lookup and Records under its
// own prefix, and is forgotten; any other is refused with ErrInvalidKey by
// every call, and nothing is stored.
func FuzzKeyRoundTrip(f *testing.F) {
	for _, k := range []string{
		"", "a", "\x00", "\xff\xff\xff", "key with spaces", "ünïcödé", "\xc3\x28", // invalid UTF-8
		"mepoch", "mformat", "r", "x", "x\x00\x00\x00\x00\x00\x00\x00\x00", "\x00\x00\x00\x00\x00\x00\x00\x00k",
		strings.Repeat("k", idem.DefaultMaxKeySize), strings.Repeat("k", idem.DefaultMaxKeySize+1),
		strings.Repeat("\xff", idem.DefaultMaxKeySize),
	} {
		f.Add([]byte(k))
	}
	e := open(f, nil, "db", nil) // once per fuzzing process
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, raw []byte) {
		key := string(raw)
		value := []byte("value of " + key)
		runs := 0
		fn := func(context.Context) ([]byte, error) { runs++; return value, nil }
		res, err := e.Do(ctx, key, raw, fn)
		if len(key) == 0 || len(key) > idem.DefaultMaxKeySize {
			require.ErrorIs(t, err, idem.ErrInvalidKey)
			_, err = e.Lookup(key)
			require.ErrorIs(t, err, idem.ErrInvalidKey)
			require.ErrorIs(t, e.Forget(key), idem.ErrInvalidKey)
			require.Zero(t, runs)
			for r, err := range e.Records("") {
				t.Fatalf("an invalid key stored something: %+v, %v", r, err)
			}
			return
		}
		require.NoError(t, err)
		require.False(t, res.Replayed)
		require.Equal(t, value, res.Value)
		res, err = e.Do(ctx, key, raw, fn)
		require.NoError(t, err)
		require.True(t, res.Replayed)
		require.Equal(t, value, res.Value)
		require.Equal(t, 1, runs)

		rec, err := e.Lookup(key)
		require.NoError(t, err)
		require.Equal(t, key, rec.Key)
		require.Equal(t, idem.StateCompleted, rec.State)
		require.Equal(t, value, rec.Value)
		n := 0
		for r, err := range e.Records(key) {
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(r.Key, key))
			if n == 0 {
				require.Equal(t, key, r.Key, "a key is the first record under its own prefix")
			}
			n++
		}
		require.Equal(t, 1, n)

		require.NoError(t, e.Forget(key))
		_, err = e.Lookup(key)
		require.ErrorIs(t, err, idem.ErrNotFound)
		for r, err := range e.Records("") {
			t.Fatalf("a forgotten key is still stored: %+v, %v", r, err)
		}
	})
}

// FuzzDoSequence is TestModel driven by the fuzzer's bytes: each byte
// chooses an operation or its argument (see runModelSequence), so the
// fuzzer explores sequences of Do, Forget, Sweep, clock moves, reopens and
// crashes, and every result is checked against the model.
func FuzzDoSequence(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("do do do crash do lookup sweep reopen"))
	for i := range 8 {
		rng := rand.New(rand.NewPCG(uint64(i), 0))
		b := make([]byte, 64+rng.IntN(128))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1024 {
			data = data[:1024] // bound a run
		}
		h := fnv.New64a()
		h.Write(data)
		var figures modelFigures
		if err := runModelSequence(&byteModelChooser{b: data}, h.Sum64(), &figures); err != nil {
			t.Fatal(err)
		}
	})
}
