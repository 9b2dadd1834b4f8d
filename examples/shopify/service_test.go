package main

// The harness of the end-to-end tests: TestMain builds the service's
// binary once, and each test starts it as a child process on a free port
// and talks to it over HTTP, as a user would.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemkv/idem/internal/testproc"
)

// binary is the service's executable, built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shopify-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "shopify")
	// Without debug information (-s -w), which the tests do not need:
	// linking takes a quarter of the time.
	args := []string{"build", "-ldflags=-s -w", "-o", binary}
	if raceEnabled {
		args = append(args, "-race") // the service under test is checked too
	}
	// A deadline of its own, in case the test binary dies without
	// stopping it (testproc kills it on Linux).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	build := testproc.SharedCommandContext(ctx, "go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	err = build.Run()
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "building the service:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitLimit bounds every wait of the harness for the service: it is there
// so that a broken service fails the test rather than hang it, not to
// measure anything.
const waitLimit = 2 * time.Minute

// service is a running instance of the service.
type service struct {
	t    testing.TB
	url  string // http://127.0.0.1:port
	args []string

	mu      sync.Mutex    // guards lines, changed
	lines   []string      // its standard error, line by line
	changed chan struct{} // closed, and replaced, when a line is added
	exited  chan struct{} // closed when the process has exited
	tempDir string        // the temporary data directory it reported, if any

	// stop stops the service with SIGTERM, waits for it to exit, and
	// checks that it exited cleanly, having removed its temporary
	// directory. It runs once, at the latest when the test ends, and not
	// after kill.
	stop func()
	// kill kills the service with SIGKILL, as a crash would, and waits for
	// it to exit. It does nothing after stop.
	kill func()
}

var (
	listeningRe = regexp.MustCompile(`listening on (http://\S+)`)
	tempDirRe   = regexp.MustCompile(`records in the temporary directory (\S+), removed at exit`)
)

// startService starts the service with args (and -addr 127.0.0.1:0), and
// returns once it listens. When t ends, it stops it (see service.stop).
func startService(t testing.TB, args ...string) *service {
	t.Helper()
	s := &service{t: t, args: args, changed: make(chan struct{}), exited: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // its own deadline: see testproc
	t.Cleanup(cancel)
	cmd := testproc.CommandContext(t, ctx, binary, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	cmd.Stdout = s
	cmd.Stderr = s
	if raceEnabled {
		// The race detector's runtime sleeps 1 s at exit by default, for
		// other threads' reports: a second per test. A race still fails
		// the service's exit status (66), which stop checks.
		cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"))
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the service: %v", err)
	}
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(s.exited)
	}()
	var once sync.Once // stop or kill, whichever comes first
	s.kill = func() {
		once.Do(func() {
			if err := cmd.Process.Kill(); err != nil {
				t.Errorf("killing the service: %v", err)
			}
			<-s.exited
		})
	}
	s.stop = func() {
		once.Do(func() {
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Errorf("stopping the service: %v", err)
			}
			select {
			case <-s.exited:
			case <-time.After(waitLimit):
				cmd.Process.Kill()
				<-s.exited
				t.Errorf("the service did not stop within %v of SIGTERM", waitLimit)
			}
			if waitErr != nil {
				t.Errorf("the service exited with %v; its output:\n%s", waitErr, s.output())
			}
			if s.tempDir != "" {
				if _, err := os.Stat(s.tempDir); !os.IsNotExist(err) {
					t.Errorf("the service left its temporary directory %s (Stat: %v)", s.tempDir, err)
				}
			}
		})
	}
	t.Cleanup(s.stop)
	m := s.waitLine(listeningRe, 0)
	s.url = m[1]
	if m := s.findLine(tempDirRe); m != nil {
		s.tempDir = m[1]
	}
	return s
}

// Write implements io.Writer for the child's output: it keeps the lines.
func (s *service) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range strings.SplitAfter(string(p), "\n") {
		if l == "" {
			continue
		}
		if n := len(s.lines); n > 0 && !strings.HasSuffix(s.lines[n-1], "\n") {
			s.lines[n-1] += l
		} else {
			s.lines = append(s.lines, l)
		}
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

// output returns everything the service has written so far.
func (s *service) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "")
}

// lineCount returns the number of lines written so far, for waitLine's from.
func (s *service) lineCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines)
}

// findLine returns the submatches of the first line that matches re, or
// nil.
func (s *service) findLine(re *regexp.Regexp) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	return nil
}

// countLines returns the number of lines that match re.
func (s *service) countLines(re *regexp.Regexp) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines {
		if re.MatchString(l) {
			n++
		}
	}
	return n
}

// waitLine waits for a line from the from'th on that matches re, and
// returns its submatches.
func (s *service) waitLine(re *regexp.Regexp, from int) []string {
	s.t.Helper()
	limit := time.After(waitLimit)
	for {
		s.mu.Lock()
		for _, l := range s.lines[min(from, len(s.lines)):] {
			if m := re.FindStringSubmatch(l); m != nil {
				s.mu.Unlock()
				return m
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-s.exited:
			if m := s.findLineFrom(re, from); m != nil {
				return m
			}
			s.t.Fatalf("the service exited before writing a line that matches %q; its output:\n%s", re, s.output())
		case <-limit:
			s.t.Fatalf("no line that matches %q within %v; the service's output:\n%s", re, waitLimit, s.output())
		}
	}
}

func (s *service) findLineFrom(re *regexp.Regexp, from int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines[min(from, len(s.lines)):] {
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	return nil
}

// response is an HTTP response, read whole.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request to the service and reads the response.
func (s *service) do(method, path, contentType string, body []byte) response {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: reading the response: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// graphql sends a GraphQL document with variables, and returns the
// response's JSON, decoded, and its raw bytes.
func (s *service) graphql(doc string, vars map[string]any) (gqlResponse, []byte) {
	s.t.Helper()
	body, err := json.Marshal(map[string]any{"query": doc, "variables": vars})
	if err != nil {
		s.t.Fatal(err)
	}
	r := s.do(http.MethodPost, "/graphql", "application/json", body)
	if r.status != http.StatusOK {
		s.t.Fatalf("POST /graphql: %d %s", r.status, r.body)
	}
	var out gqlResponse
	if err := json.Unmarshal(r.body, &out); err != nil {
		s.t.Fatalf("POST /graphql: %v in %s", err, r.body)
	}
	return out, r.body
}

// gqlResponse is a GraphQL response.
type gqlResponse struct {
	Data   map[string]json.RawMessage `json:"data"`
	Errors []struct {
		Message    string         `json:"message"`
		Extensions map[string]any `json:"extensions"`
	} `json:"errors"`
}

// field decodes the response's data field name into v, failing the test if
// the response has errors.
func (r gqlResponse) field(t testing.TB, name string, v any) {
	t.Helper()
	if len(r.Errors) > 0 {
		t.Fatalf("GraphQL errors: %+v", r.Errors)
	}
	raw, ok := r.Data[name]
	if !ok {
		t.Fatalf("no %q in the data: %v", name, r.Data)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("decoding %s: %v in %s", name, err, raw)
	}
}
