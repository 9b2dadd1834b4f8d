package cli

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/idemkv/idem/internal/testproc"
)

// The test in this file runs top in a real terminal: a tmux server of its
// own, whose pane runs a shell, into which it types the command lines
// (send-keys) and whose screen it reads (capture-pane).

// tmuxWait is how long a test waits for the screen to show something, at
// most: a hang guard, not a timing assertion.
const tmuxWait = time.Minute

// A tmuxPane is a tmux server on a private socket, with a session of one
// pane running /bin/sh.
type tmuxPane struct {
	t    *testing.T
	sock string   // the socket's name (-L)
	env  []string // the server's, and so the shell's, environment

	prompt string // the shell's
}

// startTmux starts a tmux server of the test's own with a pane of width
// columns and height lines running a shell (prompt "$ ", or "# " for the
// superuser), and kills
// it when the test ends. It skips the test without tmux.
func startTmux(t *testing.T, width, height int) *tmuxPane {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed: the test of top in a terminal needs it (e.g. apt-get install tmux)")
	}
	tmp := t.TempDir()
	p := &tmuxPane{
		t:    t,
		sock: fmt.Sprintf("idem-test-%d", time.Now().UnixNano()),
		// TMUX_TMPDIR puts the socket in the test's directory; TMUX
		// empty lets tmux run inside a tmux; ENV and HOME keep the
		// shell from reading the user's files.
		env: append(childEnv(), "TMUX_TMPDIR="+tmp, "TMUX=", "PS1=$ ", "ENV=", "HOME="+tmp),
	}
	p.tmux("-f", "/dev/null", "new-session", "-d", "-s", "idem", "-x", fmt.Sprint(width), "-y", fmt.Sprint(height), "/bin/sh")
	t.Cleanup(func() { p.tmux("kill-server") })
	// capture-pane drops the spaces at the end of a line.
	s := p.waitFor("the shell's prompt", func(s string) bool { return strings.HasPrefix(s, "$\n") || strings.HasPrefix(s, "#\n") })
	p.prompt = s[:1] + " " // the superuser's dash ignores PS1
	return p
}

// tmux runs a tmux command on p's server and returns its output.
func (p *tmuxPane) tmux(args ...string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := testproc.CommandContext(p.t, ctx, "tmux", append([]string{"-L", p.sock}, args...)...)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	if err != nil && args[0] != "kill-server" {
		p.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// screen returns what the pane shows.
func (p *tmuxPane) screen() string {
	p.t.Helper()
	return p.tmux("capture-pane", "-p", "-t", "idem")
}

// typeLine types line in the pane, and Enter.
func (p *tmuxPane) typeLine(line string) {
	p.t.Helper()
	p.tmux("send-keys", "-t", "idem", "-l", line)
	p.tmux("send-keys", "-t", "idem", "Enter")
}

// waitFor polls the screen until cond holds, and returns it; it fails the
// test, showing the screen, if it does not within tmuxWait.
func (p *tmuxPane) waitFor(what string, cond func(screen string) bool) string {
	p.t.Helper()
	deadline := time.Now().Add(tmuxWait)
	for {
		s := p.screen()
		if cond(s) {
			p.t.Logf("%s: %s shows %s", time.Now().Format("15:04:05.000"), p.sock, what)
			return s
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the screen did not show %s in %v:\n%s", what, tmuxWait, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ttyModes returns the shell's terminal modes icanon and echo, as stty -a
// shows them ("-icanon" when off), asked in the pane once the shell has its
// prompt back.
func (p *tmuxPane) ttyModes(tag string) string {
	p.t.Helper()
	p.typeLine(`echo "` + tag + `: $(stty -a | tr ' ;' '\n\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\n' ' ')."`)
	re := regexp.MustCompile(`(?m)^` + tag + `: (.*)\.$`)
	s := p.waitFor(tag+"'s line", func(s string) bool { return re.MatchString(s) })
	return strings.TrimSpace(re.FindStringSubmatch(s)[1])
}

// paneModes returns the modes icanon and echo of the pane's terminal, asked
// from outside while a program runs in it (GNU stty's -F: Linux only).
func (p *tmuxPane) paneModes() string {
	p.t.Helper()
	tty := strings.TrimSpace(p.tmux("display-message", "-p", "-t", "idem", "#{pane_tty}"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := testproc.CommandContext(p.t, ctx, "stty", "-a", "-F", tty).Output()
	if err != nil {
		p.t.Fatalf("stty -a -F %s: %v", tty, err)
	}
	var modes []string
	for _, f := range strings.FieldsFunc(string(out), func(r rune) bool { return r == ' ' || r == ';' || r == '\n' }) {
		switch f {
		case "icanon", "-icanon", "echo", "-echo":
			modes = append(modes, f)
		}
	}
	return strings.Join(modes, " ")
}

// topShows reports whether screen is top's, with rates and latencies: the
// calls' rate a figure above 0 and the p50 of all calls a duration.
func topShows(screen string) bool {
	calls, all := row(screen, "calls"), row(screen, "all")
	return strings.Contains(screen, "per second") && len(calls) == 3 && calls[1] != "-" && calls[1] != "0.0" &&
		len(all) == 6 && all[3] != "-"
}

// TestTopInATerminal runs top in a terminal of a real terminal emulator:
// on a service (--url) under load, quit with q; then on a load of its own,
// quit with Ctrl-C. Each time top takes the screen, shows the rates and
// latencies, and gives the terminal back as it found it: the shell's screen
// (top used the alternate one), its modes (canonical input, echo), and its
// prompt, with top's exit status 0.
func TestTopInATerminal(t *testing.T) {
	p := startTmux(t, 120, 40)
	svc := serve(t, makeDB(t), false)
	svc.load(t)
	if got := p.ttyModes("before"); got != "icanon echo" {
		t.Fatalf("the shell's terminal modes are %q before top, want \"icanon echo\"", got)
	}

	for _, run := range []struct {
		name, args, quit, title string
	}{
		{"url", "--url " + svc.url + " --interval 200ms", "q", "idem top  " + svc.url},
		{"load", "--concurrency 2 --durability none --interval 200ms", "C-c", "idem top  a load: concurrency 2, durability SyncNone"},
	} {
		cmdLine := binary(t) + " top " + run.args + `; echo "` + run.name + `-exit=$?"`
		p.typeLine(cmdLine)
		s := p.waitFor("top's rates and latencies", topShows)
		t.Logf("top %s:\n%s", run.name, s)
		for _, want := range []string{run.title, "per second", "total", "p50", "p90", "p99", "disk usage"} {
			if !strings.Contains(s, want) {
				t.Errorf("top %s: the screen does not show %q", run.name, want)
			}
		}
		for _, name := range []string{"executions", "replays", "conflicts", "waits", "fn", "store"} {
			if row(s, name) == nil {
				t.Errorf("top %s: no row %q", run.name, name)
			}
		}
		if strings.Contains(s, cmdLine[:20]) {
			t.Errorf("top %s: the shell's screen shows under top's: no alternate screen", run.name)
		}
		if runtime.GOOS == "linux" {
			if got := p.paneModes(); got != "-icanon -echo" {
				t.Errorf("top %s: the terminal's modes are %q while top runs, want \"-icanon -echo\"", run.name, got)
			}
		}

		p.tmux("send-keys", "-t", "idem", run.quit)
		exit := regexp.MustCompile(`(?m)^` + run.name + `-exit=(\d+)$`)
		s = p.waitFor("top's exit status", func(s string) bool { return exit.MatchString(s) })
		if code := exit.FindStringSubmatch(s)[1]; code != "0" {
			t.Errorf("top %s: exit status %s after %s, want 0:\n%s", run.name, code, run.quit, s)
		}
		if strings.Contains(s, "per second") || !strings.Contains(s, p.prompt+cmdLine[:20]) {
			t.Errorf("top %s: after it quit, the screen is not the shell's as it was:\n%s", run.name, s)
		}
		if got := p.ttyModes("after-" + run.name); got != "icanon echo" {
			t.Errorf("top %s: the terminal's modes are %q after top, want them back to \"icanon echo\"", run.name, got)
		}
	}
}
