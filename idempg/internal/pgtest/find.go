package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The environment variables of the package doc.
const (
	envURL     = "IDEM_PG_URL"
	envRequire = "IDEM_PG_REQUIRE"
)

// libGlob matches the directories of the server binaries of Debian's and
// Ubuntu's packages, one per major version. A variable for the test of the
// skip.
var libGlob = "/usr/lib/postgresql/*/bin"

// findBin returns the directory of the server binaries, found once per
// test binary: see findBinIn.
var findBin = sync.OnceValues(func() (string, error) {
	return findBinIn(os.Getenv("PATH"), libGlob)
})

// findBinIn returns the directory that holds initdb and postgres: the
// directory of the first of them on path (a PATH list), with symbolic
// links resolved, if it holds both, else the one of the highest version
// that glob matches (directories named by version, as 15 in
// /usr/lib/postgresql/15/bin). Resolving the links keeps the two binaries
// of one installation, where PATH has links to some binaries only, or to
// two versions.
func findBinIn(path, glob string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue // exec.LookPath ignores them too
		}
		for _, name := range []string{"postgres", "initdb"} {
			real, err := filepath.EvalSymlinks(filepath.Join(dir, name))
			if err == nil && hasBinaries(filepath.Dir(real)) {
				return filepath.Dir(real), nil
			}
		}
	}
	dirs, _ := filepath.Glob(glob) // the only error is a bad pattern
	slices.SortFunc(dirs, func(a, b string) int {
		return -compareVersions(filepath.Base(filepath.Dir(a)), filepath.Base(filepath.Dir(b)))
	})
	for _, dir := range dirs {
		if hasBinaries(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("pgtest: no PostgreSQL server binaries (initdb and postgres) "+
		"on PATH or in %s: install them (apt-get install postgresql)", glob)
}

// hasBinaries reports whether dir holds initdb and postgres, executable.
func hasBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// compareVersions compares versions such as 15 and 9.6 number by number; a
// part that is not a number sorts before any that is.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		na, erra := strconv.Atoi(pa[i])
		nb, errb := strconv.Atoi(pb[i])
		switch {
		case erra != nil && errb != nil:
			if c := strings.Compare(pa[i], pb[i]); c != 0 {
				return c
			}
		case erra != nil:
			return -1
		case errb != nil:
			return 1
		case na != nb:
			return na - nb
		}
	}
	return len(pa) - len(pb)
}

// needBinaries returns the directory of the server binaries, or ends the
// test without them (see unavailable), adding hint to the message.
func needBinaries(t testing.TB, hint string) string {
	t.Helper()
	dir, err := findBin()
	if err != nil {
		unavailable(t, err.Error()+hint)
	}
	return dir
}

// unavailable ends the test for want of a server: it skips it, or fails it
// when IDEM_PG_REQUIRE=1.
func unavailable(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv(envRequire) == "1" {
		t.Fatalf("%s; %s=1 forbids skipping", msg, envRequire)
	}
	t.Skip(msg)
}
