package main

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
	if code := run(context.Background(), []string{"demo", "-h"}, strings.NewReader(""), &stdout, &stderr); code != exitOK {
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
