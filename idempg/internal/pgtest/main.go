package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/idemkv/idem/internal/testproc"
)

// Main runs the tests of a package that uses pgtest (m.Run), then stops the
// server they shared, removes pgtest's temporary directory and exits with
// the tests' status (os.Exit). Call it from the package's TestMain, which
// Start and StartOwn require:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Main starts nothing itself: the first Start starts the shared server, so
// a run whose tests skip or do not call Start costs nothing.
func Main(m *testing.M) {
	suite.mu.Lock()
	suite.running = true
	suite.mu.Unlock()
	code := m.Run()
	if err := suite.close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// What the tests of a test binary share, each made once, on first use, and
// removed by Main after the tests.
var (
	suiteBase    = sync.OnceValues(makeSuiteBase) // the temporary directory
	templateData = sync.OnceValues(makeTemplate)  // the data directory that servers copy
	sharedServer = sync.OnceValues(startShared)   // the running server that Start's tests share
	suite        = &suiteState{}                  // what Main must know of them
)

// suiteState is what Main must know of what the tests share.
type suiteState struct {
	mu      sync.Mutex // guards the fields below
	running bool       // Main is running the tests
	made    string     // the temporary directory, once made
	started *cluster   // the shared server, once started
	dirs    int        // how many directories newDir has made
}

// requireMain fails the test unless Main runs the tests.
func requireMain(t testing.TB) {
	t.Helper()
	suite.mu.Lock()
	running := suite.running
	suite.mu.Unlock()
	if !running {
		t.Fatal("pgtest: the package's TestMain must run its tests with pgtest.Main(m)")
	}
}

// makeSuiteBase makes the temporary directory; see makeBase.
func makeSuiteBase() (string, error) {
	o, err := serverOwner()
	if err != nil {
		return "", err
	}
	dir, err := makeBase(o)
	if err != nil {
		return "", err
	}
	suite.mu.Lock()
	suite.made = dir
	suite.mu.Unlock()
	return dir, nil
}

// newDir makes a new directory for a server in the temporary directory,
// owned by the user the servers run as.
func newDir() (string, error) {
	base, err := suiteBase()
	if err != nil {
		return "", err
	}
	o, err := serverOwner()
	if err != nil {
		return "", err
	}
	suite.mu.Lock()
	suite.dirs++
	n := suite.dirs
	suite.mu.Unlock()
	dir := filepath.Join(base, strconv.Itoa(n))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("pgtest: %v", err)
	}
	if err := o.chown(dir); err != nil {
		return "", fmt.Errorf("pgtest: %v", err)
	}
	return dir, nil
}

// makeTemplate runs initdb, once per test binary, and returns the data
// directory it made. initdb dies with the test binary, and ends by its
// own deadline besides.
func makeTemplate() (string, error) {
	bin, err := findBin()
	if err != nil {
		return "", err
	}
	o, err := serverOwner()
	if err != nil {
		return "", err
	}
	dir, err := newDir()
	if err != nil {
		return "", err
	}
	if err := initdb(testproc.SharedCommandContext, bin, dir, o); err != nil {
		return "", err
	}
	return filepath.Join(dir, "data"), nil
}

// newCluster makes a cluster, stopped, from a copy of the template, with
// settings.
func newCluster(settings map[string]string) (*cluster, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	o, err := serverOwner()
	if err != nil {
		return nil, err
	}
	tmpl, err := templateData()
	if err != nil {
		return nil, err
	}
	dir, err := newDir()
	if err != nil {
		return nil, err
	}
	c := &cluster{bin: bin, dir: dir, o: o, settings: settings}
	if err := copyTree(tmpl, c.data(), o); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: copying the template cluster: %v", err)
	}
	return c, nil
}

// startShared starts the shared server, which no test owns: it dies with
// the test binary, and Main stops it.
func startShared() (*cluster, error) {
	c, err := newCluster(defaultSettings())
	if err != nil {
		return nil, err
	}
	newCmd := func(name string, arg ...string) *exec.Cmd {
		return testproc.SharedCommandContext(context.Background(), name, arg...)
	}
	if _, err := c.launch(newCmd); err != nil {
		return nil, err
	}
	suite.mu.Lock()
	suite.started = c
	suite.mu.Unlock()
	if err := c.waitReady(); err != nil {
		return nil, fmt.Errorf("%v; %s", err, c.logTail()) // no test owns the server to log it
	}
	return c, nil
}

// close stops the shared server, if it started, and removes the temporary
// directory, if it was made. Every test has ended: nothing else uses them.
func (s *suiteState) close() error {
	s.mu.Lock()
	c, base := s.started, s.made
	s.mu.Unlock()
	var errs []error
	if c != nil {
		// Immediate: a checkpoint would be wasted on a directory about to go.
		errs = append(errs, c.stop(Immediate))
	}
	if base != "" {
		if err := os.RemoveAll(base); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: %v", err))
		}
	}
	return errors.Join(errs...)
}
