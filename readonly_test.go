package idem_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
)

// snapshot returns every file under dir with a hash of its contents.
func snapshot(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	files := map[string][32]byte{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files[path] = sha256.Sum256(b)
		return nil
	}))
	return files
}

func TestReadOnlyReadsAndChangesNothing(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	e, err := idem.Open(dir, &idem.Options{Now: clk.Now, SweepInterval: -1})
	require.NoError(t, err)
	ctx := context.Background()
	for _, k := range []string{"a1", "a2", "b1"} {
		_, err := e.Do(ctx, k, nil, (&counter{}).fn("v-"+k))
		require.NoError(t, err)
	}
	require.NoError(t, e.Close())
	before := snapshot(t, dir)

	ro, err := idem.Open(dir, &idem.Options{ReadOnly: true, Now: clk.Now})
	require.NoError(t, err)
	rec, err := ro.Lookup("a1")
	require.NoError(t, err)
	require.Equal(t, "v-a1", string(rec.Value))
	var keys []string
	for r, err := range ro.Records("") {
		require.NoError(t, err)
		keys = append(keys, r.Key)
	}
	require.Equal(t, []string{"a1", "a2", "b1"}, keys)

	_, err = ro.Do(ctx, "c", nil, (&counter{}).fn("v"))
	require.ErrorIs(t, err, idem.ErrReadOnly)
	require.ErrorIs(t, ro.Forget("a1"), idem.ErrReadOnly)
	_, err = ro.Sweep(ctx)
	require.ErrorIs(t, err, idem.ErrReadOnly)
	require.ErrorIs(t, ro.Compact(ctx), idem.ErrReadOnly)
	require.NoError(t, ro.Close())

	require.Equal(t, before, snapshot(t, dir), "a read-only engine changed the directory")

	// A writer has the directory: a reader is refused, and the other way.
	e, err = idem.Open(dir, nil)
	require.NoError(t, err)
	_, err = idem.Open(dir, &idem.Options{ReadOnly: true})
	require.ErrorIs(t, err, idem.ErrLocked)
	require.NoError(t, e.Close())
}

func TestReadOnlyRefusesADirectoryWithoutADatabase(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o644))
	before := snapshot(t, dir)
	_, err := idem.Open(dir, &idem.Options{ReadOnly: true})
	require.ErrorIs(t, err, idem.ErrNotDatabase)
	require.Equal(t, before, snapshot(t, dir), "nothing may be created in it")

	missing := filepath.Join(dir, "missing")
	_, err = idem.Open(missing, &idem.Options{ReadOnly: true})
	require.ErrorIs(t, err, idem.ErrNotDatabase)
	_, err = os.Stat(missing)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestRecordsByPrefixSkipExpired(t *testing.T) {
	clk := newClock()
	e := open(t, nil, "db", &idem.Options{Now: clk.Now, TTL: time.Hour})
	ctx := context.Background()
	_, err := e.Do(ctx, "tenant-a/old", nil, (&counter{}).fn("v"))
	require.NoError(t, err)
	clk.Advance(30 * time.Minute)
	for _, k := range []string{"tenant-a/1", "tenant-a/2", "tenant-b/1", "tenant-a\xff"} {
		_, err := e.Do(ctx, k, nil, (&counter{}).fn("v"))
		require.NoError(t, err)
	}
	clk.Advance(31 * time.Minute) // "tenant-a/old" has expired
	var keys []string
	for r, err := range e.Records("tenant-a/") {
		require.NoError(t, err)
		require.Equal(t, idem.StateCompleted, r.State)
		keys = append(keys, r.Key)
	}
	require.Equal(t, []string{"tenant-a/1", "tenant-a/2"}, keys)
	n := 0
	for range e.Records("") {
		n++
	}
	require.Equal(t, 4, n)
	require.NoError(t, e.Compact(ctx))
}

// A read-only engine reports the read amplification of the tables it reads,
// as a writable one does (Pebble leaves its own figure at 0 there).
func TestReadOnlyStatsReportReadAmplification(t *testing.T) {
	dir := t.TempDir()
	for i := range 2 {
		// Each Open flushes what the last one left in the log: a table in
		// L0 each time.
		e, err := idem.Open(dir, &idem.Options{SweepInterval: -1})
		require.NoError(t, err)
		for j := range 100 {
			_, err := e.Do(context.Background(), fmt.Sprintf("k%d-%d", i, j), nil, (&counter{}).fn("v"))
			require.NoError(t, err)
		}
		require.NoError(t, e.Close())
	}
	e, err := idem.Open(dir, &idem.Options{SweepInterval: -1})
	require.NoError(t, err)
	rw := e.Stats().ReadAmplification
	require.NoError(t, e.Close())
	require.Positive(t, rw)

	ro, err := idem.Open(dir, &idem.Options{ReadOnly: true})
	require.NoError(t, err)
	require.GreaterOrEqual(t, ro.Stats().ReadAmplification, rw)
	require.NoError(t, ro.Close())
}
