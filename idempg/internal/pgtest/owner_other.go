//go:build !unix

package pgtest

import "os/exec"

// apply does nothing outside Unix, where the tests never run as root
// (os.Geteuid is -1) and so o is nil.
func (o *owner) apply(*exec.Cmd) {}
