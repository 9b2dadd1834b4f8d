//go:build unix

package pgtest

import (
	"os/exec"
	"syscall"
)

// apply makes cmd run as o; it does nothing for the current user (o ==
// nil). It keeps the rest of cmd.SysProcAttr, testproc's Pdeathsig among
// it: Go's fork sets the parent-death signal after the user, which would
// clear it.
func (o *owner) apply(cmd *exec.Cmd) {
	if o == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o.uid), Gid: uint32(o.gid)}
}
