package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemkv/idem/internal/testproc"
)

// TestReadmeQuickStart vets the README's quick start, its first go block,
// as the main package of a module of its own that requires
// github.com/idemkv/idem from this repository (a replace directive), with
// this module's requirements and go.sum: the example must compile as
// pasted. It needs the go command, and skips without it; it uses the
// module cache only, never the network.
func TestReadmeQuickStart(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, ok := firstGoBlock(string(readme))
	if !ok {
		t.Fatal("README.md has no ```go block")
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}

	// The module: this one's go line and requirements, with idem itself
	// replaced by the repository.
	var goLine, requires string
	for _, line := range strings.Split(string(gomod), "\n") {
		if strings.HasPrefix(line, "go ") {
			goLine = line
		}
	}
	if i := strings.Index(string(gomod), "\nrequire"); i >= 0 {
		requires = string(gomod)[i:]
	}
	mod := "module quickstart\n\n" + goLine + "\n\nrequire github.com/idemkv/idem v0.0.0\n\nreplace github.com/idemkv/idem => " + root + "\n" + requires
	dir := t.TempDir()
	for name, b := range map[string]string{"go.mod": mod, "go.sum": string(gosum), "main.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"vet"}
	if raceEnabled {
		args = append(args, "-race") // reuses the packages this test was built with
	}
	cmd := testproc.CommandContext(t, ctx, gobin, append(args, ".")...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("go vet of the README's quick start: %v\n%s\nmain.go:\n%s", err, out, src)
	}
}

// firstGoBlock returns the content of the first ```go block of a Markdown
// text.
func firstGoBlock(md string) (string, bool) {
	_, rest, ok := strings.Cut(md, "\n```go\n")
	if !ok {
		return "", false
	}
	block, _, ok := strings.Cut(rest, "\n```\n")
	return block + "\n", ok
}
