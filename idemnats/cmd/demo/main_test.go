package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the demo through its command line, in this process, on a
// single node and on a cluster of three, and checks its exit status, the
// must-be-0 figures and the shape of its output.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and stops NATS nodes")
	}
	const payments = 300
	for _, nodes := range []int{1, 3} {
		t.Run("cluster="+strconv.Itoa(nodes), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir := filepath.Join(t.TempDir(), "nodes")
			var stdout, stderr bytes.Buffer
			code := run(ctx, []string{"-cluster", strconv.Itoa(nodes), "-payments", strconv.Itoa(payments),
				"-workers", "8", "-seed", "7", "-dir", dir}, &stdout, &stderr)
			out := stdout.String()
			t.Logf("\n%s", out)
			if code != exitOK {
				t.Fatalf("exit status %d, want 0; stderr:\n%s", code, stderr.String())
			}
			if stderr.Len() > 0 {
				t.Errorf("unexpected stderr: %q", stderr.String())
			}
			for row, want := range map[string]string{
				"duplicates executed": "0",
				"results lost":        "0",
				"unexpected errors":   "0",
				"executions":          strconv.Itoa(payments),
				"mismatches refused":  "1",
				"nodes":               strconv.Itoa(nodes),
			} {
				if got := figure(out, row); got != want {
					t.Errorf("%s = %q, want %q", row, got, want)
				}
			}
			if got := figure(out, "node stopped"); !regexp.MustCompile(`^n[1-3]$`).MatchString(got) {
				t.Errorf("node stopped = %q, want a node's name", got)
			}
			for _, row := range []string{"attempts", "transient failures", "lost responses", "replays",
				"concurrent duplicates", "rerouted", "interrupted keys", "new stream leader", "longest Do", "elapsed"} {
				if figure(out, row) == "" {
					t.Errorf("the output has no row %q", row)
				}
			}
			if n := strings.Count(out, " (stopped) "); n != 1 {
				t.Errorf("the nodes' table shows %d stopped nodes, want 1", n)
			}
			for i := 1; i <= nodes; i++ {
				if !regexp.MustCompile(`(?m)^\s+n` + strconv.Itoa(i) + `( \(stopped\))?\s+\d+`).MatchString(out) {
					t.Errorf("the nodes' table has no row for n%d", i)
				}
			}
			if !strings.Contains(out, "is back, with a new engine") {
				t.Error("the timeline does not say the stopped node came back")
			}
			// -dir is kept, with a directory per node.
			for i := 1; i <= nodes; i++ {
				if _, err := os.Stat(filepath.Join(dir, "n"+strconv.Itoa(i))); err != nil {
					t.Errorf("the node's directory: %v", err)
				}
			}
		})
	}
}

// figure returns the value of a row of the demo's table, or "" if it has
// no such row.
func figure(out, row string) string {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(row) + `\s{2,}(\S+)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestRunUsage checks -h and the exit statuses of bad command lines, which
// start no node.
func TestRunUsage(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"-h"}, exitOK, "-cluster"},
		{[]string{"-nosuchflag"}, exitUsage, "-nosuchflag"},
		{[]string{"-cluster", "0"}, exitUsage, "-cluster must be 1 to 9"},
		{[]string{"-cluster", "10"}, exitUsage, "-cluster must be 1 to 9"},
		{[]string{"-payments", "1"}, exitUsage, "-payments must be at least 2"},
		{[]string{"-workers", "0"}, exitUsage, "-workers must be at least 1"},
		{[]string{"extra"}, exitUsage, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != tt.code {
				t.Errorf("exit status %d, want %d", code, tt.code)
			}
			if stdout.Len() > 0 {
				t.Errorf("unexpected stdout %q", stdout.String())
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.stderr)
			}
		})
	}
}

// TestUsageFilled checks that the paragraphs of -h are filled: no line but
// a paragraph's last is much shorter than the others, or longer than 80.
func TestUsageFilled(t *testing.T) {
	text, _, _ := strings.Cut(usageText, "\nFlags:\n")
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if len(line) > 80 {
			t.Errorf("line %d of -h is longer than 80: %q", i+1, line)
		}
		if i+1 < len(lines) && line != "" && lines[i+1] != "" && len(line) < 60 {
			t.Errorf("line %d of -h is cut short: %q, followed by %q", i+1, line, lines[i+1])
		}
	}
}

// TestDemoDirNotEmpty checks that the demo refuses a -dir that is not
// empty, before it starts a node.
func TestDemoDirNotEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-dir", dir}, &stdout, &stderr); code != exitFailure {
		t.Errorf("exit status %d, want %d", code, exitFailure)
	}
	if !strings.Contains(stderr.String(), "not empty") {
		t.Errorf("stderr %q, want it to say the directory is not empty", stderr.String())
	}
}

// TestDemoCanceled checks that a demo whose context has ended stops with
// the context's error, and removes its temporary directory.
func TestDemoCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := runDemo(ctx, config{Nodes: 1, Payments: 20, Workers: 2, Seed: 1}, new(bytes.Buffer))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("runDemo with a canceled context: %v, want context.Canceled", err)
	}
}

// TestWriteReportFailure checks that a run with a duplicate is not ok and
// that the table shows the figure and the problem.
func TestWriteReportFailure(t *testing.T) {
	rep := &report{Nodes: 3, Replicas: 3, DuplicatesExecuted: 1, Problems: []string{"pay-000001: charged 2 times"}}
	if rep.ok() {
		t.Error("ok() is true for a report with a duplicate")
	}
	var out bytes.Buffer
	writeReport(&out, rep)
	if got := figure(out.String(), "duplicates executed"); got != "1" {
		t.Errorf("duplicates executed = %q, want 1", got)
	}
	if want := "\nproblem: pay-000001: charged 2 times\n"; !strings.Contains(out.String(), want) {
		t.Errorf("output does not contain %q:\n%s", want, out.String())
	}
}
