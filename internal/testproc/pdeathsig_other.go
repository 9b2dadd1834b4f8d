//go:build !linux

package testproc

import "os/exec"

// dieWithParent does nothing outside Linux: a child there ends by its own
// deadline if the test binary dies without its cleanups.
func dieWithParent(*exec.Cmd) {}
