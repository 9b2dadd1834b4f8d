// Package testproc starts the child processes of idem's tests (the torture
// worker, the test binary run again as a child, the idem binary, go build)
// so that none outlives the test that started it.
//
// A child can outlive its test two ways. The test binary can die without
// running its cleanups: go test's -timeout panics, a SIGKILL, a crash. On
// Linux the kernel then kills the child (SysProcAttr.Pdeathsig); elsewhere
// only the child's own deadline ends it, so every child a test starts must
// have one (a flag of the worker, -test.timeout, a context). Or the test
// can fail between Start and Wait: the cleanup that Command registers kills
// the child and waits for it.
package testproc

import (
	"context"
	"os/exec"
	"testing"
)

// Command is exec.Command for a child process of the test t. See
// CommandContext.
func Command(t testing.TB, name string, arg ...string) *exec.Cmd {
	return CommandContext(t, context.Background(), name, arg...)
}

// CommandContext is exec.CommandContext for a child process of the test t:
//
//   - On Linux, the child gets SIGKILL when the parent dies
//     (SysProcAttr.Pdeathsig). Strictly, the kernel sends it when the OS
//     thread that started the child exits, not the process. Go's runtime
//     ends a thread only when a goroutine that called
//     runtime.LockOSThread exits without unlocking it, so the child must
//     be started (Start, Run, Output, CombinedOutput) from an ordinary
//     goroutine, as tests do; none of idem's tests locks its thread.
//   - When t ends, a cleanup kills the child if it is still running and
//     waits for it, unless the test has waited for it already. Call Wait
//     (or Run, Output, CombinedOutput) from the test's goroutine, or make
//     sure it has returned before the test ends: the cleanup reads the
//     Cmd's state without a lock.
//
// A caller that sets SysProcAttr must keep Pdeathsig.
func CommandContext(t testing.TB, ctx context.Context, name string, arg ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, arg...)
	dieWithParent(cmd)
	t.Cleanup(func() {
		if cmd.Process == nil || cmd.ProcessState != nil {
			return // never started, or already waited for
		}
		cmd.Process.Kill() // an error means it has exited; Wait reaps it
		cmd.Wait()
	})
	return cmd
}

// SharedCommandContext is exec.CommandContext for a child process that no
// one test owns, such as a server that the tests of a package share and
// their TestMain stops after m.Run. On Linux the child gets SIGKILL when the
// parent dies, as with CommandContext; but no cleanup kills it when a test
// ends: whoever starts it must stop it and wait for it. It must be started
// from an ordinary goroutine (see CommandContext); outside Linux, only its
// own deadline, if it has one, ends it when the test binary dies without
// stopping it. A caller that sets SysProcAttr must keep Pdeathsig.
func SharedCommandContext(ctx context.Context, name string, arg ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, arg...)
	dieWithParent(cmd)
	return cmd
}
