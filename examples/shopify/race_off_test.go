//go:build !race

package main

// raceEnabled is true when the tests are built with -race: TestMain then
// builds the service with -race too.
const raceEnabled = false
