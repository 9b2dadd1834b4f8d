//go:build !race

package idem_test

// raceEnabled is true when the tests are built with -race. The heavier
// reliability tests scale down then: the race detector slows them several
// times over, and CI runs every test under it.
const raceEnabled = false
