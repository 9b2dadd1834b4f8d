//go:build linux

package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/idemkv/idem/internal/testproc"
)

// The tests in this file give the binary a pseudo-terminal, to check what it
// does on a terminal: forget's confirmation, bench's progress line.

// openPTY returns a new pseudo-terminal: the controlling side, and the
// terminal that a child process gets. It skips the test where there is
// none.
func openPTY(t *testing.T) (ctl, term *os.File) {
	t.Helper()
	ctl, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	ioctl := func(req uintptr, arg unsafe.Pointer) error {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, ctl.Fd(), req, uintptr(arg)); errno != 0 {
			return errno
		}
		return nil
	}
	var unlock int32
	var n uint32
	if err := ioctl(syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); err != nil {
		ctl.Close()
		t.Skipf("no pseudo-terminal: unlockpt: %v", err)
	}
	if err := ioctl(syscall.TIOCGPTN, unsafe.Pointer(&n)); err != nil {
		ctl.Close()
		t.Skipf("no pseudo-terminal: ptsname: %v", err)
	}
	term, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		ctl.Close()
		t.Skipf("no pseudo-terminal: %v", err)
	}
	return ctl, term
}

// ptyRun runs the binary with the terminal of a new pseudo-terminal as its
// standard input (withStdin) or standard error, writes input to the
// terminal, and returns the run and what the binary wrote to the terminal.
func ptyRun(t *testing.T, withStdin bool, input string, args ...string) (result, string) {
	t.Helper()
	ctl, term := openPTY(t)
	defer ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := testproc.CommandContext(t, ctx, binary(t), args...)
	cmd.Env = childEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if withStdin {
		cmd.Stdin = term
	} else {
		cmd.Stderr = term
	}
	if err := cmd.Start(); err != nil {
		term.Close()
		t.Fatal(err)
	}
	term.Close() // the child has its own; reads of ctl end when it exits

	var (
		onTerm bytes.Buffer
		wg     sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(&onTerm, ctl) // ends with EIO once no process has the terminal open
	}()
	if input != "" {
		if _, err := ctl.WriteString(input); err != nil {
			t.Error(err)
		}
	}
	err := cmd.Wait()
	wg.Wait()
	code := 0
	if exitErr, ok := err.(*exec.ExitError); ok {
		code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}, onTerm.String()
}

func TestForgetConfirmation(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)
	for _, answer := range []string{"n\n", "\n", "yep\n"} {
		r, _ := ptyRun(t, true, answer, "forget", dir, "pay-5", "pay-6")
		if r.code != exitFailure || !strings.HasSuffix(r.stderr, "idem forget: not confirmed; nothing forgotten\n") {
			t.Errorf("answer %q: %v", answer, r)
		}
		want := "The next call for each of these keys will run fn again:\n" +
			"  pay-5  interrupted  created 2099-01-02T03:04:05Z\n" +
			"  pay-6  interrupted  created 2099-01-02T03:04:05Z\n" +
			"Forget 2 records? [y/N] "
		if !strings.HasPrefix(r.stderr, want) {
			t.Errorf("answer %q: the question is\n%s\nwant\n%s", answer, r.stderr, want)
		}
	}
	checkUnchanged(t, dir, before, "forget without a yes")

	r, _ := ptyRun(t, true, "yes\n", "forget", dir, "pay-5")
	if r.code != exitOK || r.stdout != "forgot pay-5 (interrupted)\n" {
		t.Errorf("answer yes: %v", r)
	}
	r, _ = ptyRun(t, true, "Y\n", "forget", dir, "pay-6")
	if r.code != exitOK || r.stdout != "forgot pay-6 (interrupted)\n" {
		t.Errorf("answer Y: %v", r)
	}
	if r := mustRun(t, exitOK, "interrupted", dir); row(r.stdout, "pay-5") != nil || row(r.stdout, "pay-6") != nil {
		t.Errorf("after forgetting both:\n%s", r.stdout)
	}
}

func TestBenchProgressOnATerminal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bench")
	r, term := ptyRun(t, false, "", "bench", "--dir", dir, "--duration", "1s", "--concurrency", "2", "--durability", "none")
	if r.code != exitOK {
		t.Fatalf("%v\nterminal:\n%q", r, term)
	}
	// The line is rewritten in place: a carriage return, the line, and
	// "erase to the end of the line"; it is erased at the end.
	if !strings.Contains(term, "\r") || !strings.Contains(term, " remaining, ") || !strings.Contains(term, " ops/s, ") ||
		!strings.HasSuffix(term, "\r\x1b[K") {
		t.Errorf("terminal output %q", term)
	}
	if strings.Contains(term, "idem bench: ") || strings.Contains(term, "\n") {
		t.Errorf("plain lines on a terminal: %q", term)
	}
	for _, name := range benchRows {
		if row(r.stdout, strings.Fields(name)[0]) == nil {
			t.Errorf("no row %q in the table:\n%s", name, r.stdout)
		}
	}
}
