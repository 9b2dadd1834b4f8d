package pgtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeBinaries makes dir with the named files in it, executable when exec.
func fakeBinaries(t *testing.T, dir string, exec bool, names ...string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	perm := os.FileMode(0o644)
	if exec {
		perm = 0o755
	}
	for _, name := range names {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), perm))
	}
	return dir
}

func TestFindBinIn(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "lib")
	glob := filepath.Join(lib, "*", "bin")
	v96 := fakeBinaries(t, filepath.Join(lib, "9.6", "bin"), true, "initdb", "postgres")
	fakeBinaries(t, filepath.Join(lib, "10", "bin"), true, "initdb", "postgres")
	v15 := fakeBinaries(t, filepath.Join(lib, "15", "bin"), true, "initdb", "postgres")
	fakeBinaries(t, filepath.Join(lib, "16", "bin"), true, "initdb") // no server

	// The newest version with both binaries, by number: 15, not 16, 10 or 9.6.
	got, err := findBinIn("", glob)
	require.NoError(t, err)
	require.Equal(t, v15, got)

	// PATH first; a link counts for the directory it points into, as
	// Debian's /usr/local/bin/initdb.
	links := filepath.Join(root, "links")
	require.NoError(t, os.Mkdir(links, 0o755))
	require.NoError(t, os.Symlink(filepath.Join(v96, "initdb"), filepath.Join(links, "initdb")))
	noexec := fakeBinaries(t, filepath.Join(root, "noexec"), false, "initdb", "postgres")
	path := filepath.Join(root, "missing") + string(filepath.ListSeparator) + "relative" +
		string(filepath.ListSeparator) + noexec + string(filepath.ListSeparator) + links
	got, err = findBinIn(path, glob)
	require.NoError(t, err)
	require.Equal(t, v96, got)

	// Both in one directory on PATH.
	both := fakeBinaries(t, filepath.Join(root, "both"), true, "initdb", "postgres")
	got, err = findBinIn(both+string(filepath.ListSeparator)+links, glob)
	require.NoError(t, err)
	require.Equal(t, both, got)

	_, err = findBinIn(noexec, filepath.Join(root, "none", "*", "bin"))
	require.ErrorContains(t, err, "apt-get install postgresql")
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		sign int
	}{
		{"15", "15", 0},
		{"15", "16", -1},
		{"10", "9.6", 1},
		{"9.6", "9.5", 1},
		{"9.6", "9", 1},
		{"beta", "9", -1},
		{"a", "b", -1},
	} {
		got := compareVersions(c.a, c.b)
		require.Equal(t, c.sign, sign(got), "compareVersions(%q, %q) = %d", c.a, c.b, got)
		require.Equal(t, -c.sign, sign(compareVersions(c.b, c.a)), "compareVersions(%q, %q)", c.b, c.a)
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
