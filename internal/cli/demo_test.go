package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDemoDirectory checks that the demo says its directory is temporary
// before it removes it, and says where a kept one is.
func TestDemoDirectory(t *testing.T) {
	var out bytes.Buffer
	if _, err := runDemo(context.Background(), demoConfig{Payments: 20, Workers: 2, Seed: 1}, &out); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^idem demo: .*, dir (\S+) \(temporary, removed at the end\)\n`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("the first line does not say the directory is temporary:\n%s", out.String())
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary directory %s is still there: %v", m[1], err)
	}
	if !strings.HasSuffix(out.String(), "\nidem demo: removing "+m[1]+"; run with -dir DIR to keep the database and look at it with 'idem stats DIR'\n") {
		t.Errorf("the last line does not say the directory is removed:\n%s", out.String())
	}

	dir := t.TempDir()
	out.Reset()
	if _, err := runDemo(context.Background(), demoConfig{Payments: 20, Workers: 2, Seed: 1, Dir: dir}, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(firstLine(out.String()), "temporary") ||
		!strings.HasSuffix(out.String(), "\nidem demo: the database is kept in "+dir+": look at it with 'idem stats "+dir+"', 'idem ls "+dir+"'\n") {
		t.Errorf("demo -dir:\n%s", out.String())
	}
}

// TestDemoHelp checks that the paragraphs of demo -h are filled: no line
// but a paragraph's last is much shorter than the others.
func TestDemoHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), []string{"demo", "-h"}, strings.NewReader(""), &stdout, &stderr, nil); code != exitOK {
		t.Fatalf("demo -h: exit status %d", code)
	}
	text, _, _ := strings.Cut(stderr.String(), "\nFlags:\n")
	lines := strings.Split(text, "\n")
	for i := 0; i+1 < len(lines); i++ {
		if lines[i] != "" && lines[i+1] != "" && len(lines[i]) < 60 {
			t.Errorf("line %d of demo -h is cut short: %q, followed by %q", i+1, lines[i], lines[i+1])
		}
	}
}

// TestDemoCluster checks that demo -cluster N, for N > 1, runs nothing and
// says where the cluster demo is, with the command to run it, that
// -cluster 1 is the single-node demo, and that demo -h tells of both.
func TestDemoCluster(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), []string{"demo", "-h"}, strings.NewReader(""), &stdout, &stderr, nil); code != exitOK {
		t.Fatalf("demo -h: exit status %d", code)
	}
	for _, want := range []string{"\n\tcd idemnats && go run ./cmd/demo -cluster 3\n", "\n  -cluster int\n"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("demo -h does not contain %q:\n%s", want, stderr.String())
		}
	}

	stdout.Reset()
	stderr.Reset()
	code := Main(context.Background(), []string{"demo", "-cluster", "5", "-payments", "10"}, strings.NewReader(""), &stdout, &stderr, nil)
	if code != exitUsage {
		t.Errorf("demo -cluster 5: exit status %d, want %d", code, exitUsage)
	}
	if stdout.Len() > 0 {
		t.Errorf("demo -cluster 5 wrote to stdout: %q", stdout.String())
	}
	for _, want := range []string{"idemnats module", "no NATS dependency", "\n\tcd idemnats && go run ./cmd/demo -cluster 5\n"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("demo -cluster 5: stderr %q does not contain %q", stderr.String(), want)
		}
	}

	stdout.Reset()
	stderr.Reset()
	code = Main(context.Background(), []string{"demo", "-cluster", "1", "-payments", "10", "-workers", "2"}, strings.NewReader(""), &stdout, &stderr, nil)
	if code != exitOK {
		t.Fatalf("demo -cluster 1: exit status %d, want 0; stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "\nduplicates executed  ") {
		t.Errorf("demo -cluster 1: no table in the output:\n%s", stdout.String())
	}
}
