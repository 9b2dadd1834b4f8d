package idem_test

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// The randomized, soak and torture tests (TestModel, TestSoak, TestTorture)
// have two sizes. The default keeps the README's test command (./test.sh
// -race) to a couple of minutes on two cores, and still covers everything
// each test checks; RELIABILITY.md says what each size runs. The long size,
// IDEM_TEST_LONG=1, runs them several times longer, and needs a -timeout
// above go test's default of 10 minutes, as CI gives it. An environment
// variable, unlike a flag, reaches a go test over every package and module:
// a flag that one package defines fails the others. The tests' own flags
// (-model.seqs, -soak.calls, -torture.rounds, -torture.faults) set a size
// for a run of this package alone, and override both.
var longTests = envBool("IDEM_TEST_LONG")

func envBool(name string) bool {
	b, _ := strconv.ParseBool(os.Getenv(name))
	return b
}

// testSize returns long under IDEM_TEST_LONG=1 and def otherwise.
func testSize(def, long int) int {
	if longTests {
		return long
	}
	return def
}

// requireLongTimeout fails a test of the long size at once if go test's
// -timeout leaves it less than need, its time on a busy two-core machine
// under -race: rather than a panic and a dump of every goroutine once the
// timeout is spent.
func requireLongTimeout(t *testing.T, need time.Duration) {
	t.Helper()
	if !longTests {
		return
	}
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < need {
		t.Fatalf("IDEM_TEST_LONG=1: %s may take %v on a busy machine, and go test's -timeout leaves %v; run go test with -timeout=30m",
			t.Name(), need, time.Until(deadline).Round(time.Second))
	}
}
