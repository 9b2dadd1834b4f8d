package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idemkv/idem"
)

// TestDemo runs the demo in each durability mode on a small configuration
// and checks its figures and its table.
func TestDemo(t *testing.T) {
	for _, d := range []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone} {
		t.Run(d.String(), func(t *testing.T) {
			const payments = 200
			var out bytes.Buffer
			cfg := demoConfig{Payments: payments, Workers: 8, Durability: d, Seed: 3, Dir: t.TempDir()}
			rep, err := runDemo(context.Background(), cfg, &out)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", out.String())
			if rep.DuplicatesExecuted != 0 || rep.ResultsLost != 0 || rep.Unexpected != 0 {
				t.Errorf("duplicates executed %d, results lost %d, unexpected errors %d; want 0, 0, 0; problems: %q",
					rep.DuplicatesExecuted, rep.ResultsLost, rep.Unexpected, rep.Problems)
			}
			if !rep.ok() {
				t.Error("ok() is false")
			}
			if rep.Executions != payments {
				t.Errorf("executions %d, want %d", rep.Executions, payments)
			}
			if rep.FnCalls != rep.Executions+rep.Transient {
				t.Errorf("Stats.Executions %d, want executions %d + transient failures %d", rep.FnCalls, rep.Executions, rep.Transient)
			}
			if rep.Mismatches != 1 || rep.Restarts != 1 {
				t.Errorf("mismatches %d, restarts %d; want 1, 1", rep.Mismatches, rep.Restarts)
			}
			// Every payment of the first half is retried after the restart,
			// and every lost response is retried: each is a replay.
			if min := rep.Lost + payments/2; rep.Replays < min {
				t.Errorf("replays %d, want at least %d", rep.Replays, min)
			}
			for _, row := range []string{"attempts", "executions", "transient failures", "replays",
				"concurrent duplicates", "mismatches refused", "restarts", "duplicates executed",
				"results lost", "elapsed"} {
				if !strings.Contains(out.String(), "\n"+row+" ") {
					t.Errorf("the output has no row %q", row)
				}
			}
		})
	}
}

// TestDemoCommand runs the demo through the command line, on a directory
// that does not exist yet, and checks that it refuses a non-empty one.
func TestDemoCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "engine")
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"demo", "-payments", "60", "-workers", "4", "-durability", "none", "-seed", "9", "-dir", dir}, strings.NewReader(""), &stdout, &stderr, nil)
	if code != exitOK {
		t.Fatalf("exit status %d, want 0; stderr:\n%s\nstdout:\n%s", code, stderr.String(), stdout.String())
	}
	if want := "idem demo: 60 payments, 4 workers, durability SyncNone, seed 9, dir " + dir + "\n"; !strings.HasPrefix(stdout.String(), want) {
		t.Errorf("output starts with %q, want %q", firstLine(stdout.String()), want)
	}
	if !strings.Contains(stdout.String(), "\nduplicates executed  ") {
		t.Errorf("no table in the output:\n%s", stdout.String())
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("-dir was not kept: %v", err)
	}

	stdout.Reset()
	stderr.Reset()
	if code := Main(context.Background(), []string{"demo", "-payments", "10", "-dir", dir}, strings.NewReader(""), &stdout, &stderr, nil); code != exitFailure {
		t.Errorf("demo on a used directory: exit status %d, want %d", code, exitFailure)
	}
	if !strings.Contains(stderr.String(), "not empty") {
		t.Errorf("demo on a used directory: stderr %q, want it to say the directory is not empty", stderr.String())
	}
}

// TestDemoCanceled checks that a demo whose context has ended stops with the
// context's error.
func TestDemoCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cfg := demoConfig{Payments: 50, Workers: 4, Seed: 1, Dir: t.TempDir()}
	if _, err := runDemo(ctx, cfg, new(bytes.Buffer)); err != context.Canceled {
		t.Errorf("runDemo with a canceled context: %v, want context.Canceled", err)
	}
}

// TestRun checks the dispatch of subcommands and the exit statuses of bad
// command lines.
func TestRun(t *testing.T) {
	tests := []struct {
		args     []string
		code     int
		stdout   string // a substring of stdout
		stderr   string // a substring of stderr
		noStdout bool
		noStderr bool
	}{
		{args: nil, code: exitUsage, stderr: "The commands are:", noStdout: true},
		{args: []string{"-h"}, code: exitOK, stdout: "\tdemo ", noStderr: true},
		{args: []string{"help"}, code: exitOK, stdout: "The commands are:", noStderr: true},
		{args: []string{"bogus"}, code: exitUsage, stderr: `unknown command "bogus"`, noStdout: true},
		{args: []string{"demo", "-h"}, code: exitOK, stderr: "-payments", noStdout: true},
		{args: []string{"demo", "-nosuchflag"}, code: exitUsage, stderr: "-nosuchflag", noStdout: true},
		{args: []string{"demo", "-payments", "1"}, code: exitUsage, stderr: "-payments must be at least 2", noStdout: true},
		{args: []string{"demo", "-workers", "0"}, code: exitUsage, stderr: "-workers must be at least 1", noStdout: true},
		{args: []string{"demo", "-durability", "sometimes"}, code: exitUsage, stderr: "-durability must be all, result or none", noStdout: true},
		{args: []string{"demo", "extra"}, code: exitUsage, stderr: `unexpected argument "extra"`, noStdout: true},
		{args: []string{"demo", "-cluster", "0"}, code: exitUsage, stderr: "-cluster must be at least 1", noStdout: true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr, nil)
			if code != tt.code {
				t.Errorf("exit status %d, want %d", code, tt.code)
			}
			if !strings.Contains(stdout.String(), tt.stdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.stderr)
			}
			if tt.noStdout && stdout.Len() > 0 {
				t.Errorf("unexpected stdout %q", stdout.String())
			}
			if tt.noStderr && stderr.Len() > 0 {
				t.Errorf("unexpected stderr %q", stderr.String())
			}
		})
	}
}

// TestWriteReportFailure checks that a run with a duplicate is not ok and
// that the table shows the figure and the problem.
func TestWriteReportFailure(t *testing.T) {
	rep := &demoReport{DuplicatesExecuted: 1, Problems: []string{"pay-000001: charged 2 times"}}
	if rep.ok() {
		t.Error("ok() is true for a report with a duplicate")
	}
	var out bytes.Buffer
	writeReport(&out, rep)
	var row string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "duplicates executed ") {
			row = strings.Join(strings.Fields(line), " ")
		}
	}
	if want := "duplicates executed 1 (must be 0)"; row != want {
		t.Errorf("row %q, want %q", row, want)
	}
	if want := "\nproblem: pay-000001: charged 2 times\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output does not contain %q:\n%s", want, out.String())
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
