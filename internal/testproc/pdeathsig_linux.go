package testproc

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill the child when the thread that
// starts it exits: see CommandContext. Go's fork checks that the parent did
// not die before the setting took effect.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
