package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/testproc"
)

// The tests in this file run the idem binary (cmd/idem, which calls Main) as
// a real process, built once per test run by binary, against databases
// made by the tests.

// binDir holds the idem binary; TestMain removes it.
var binDir string

var (
	buildOnce sync.Once
	buildErr  error
	idemBin   string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "idem-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// idemPackage is the idem command's package, which binary builds.
const idemPackage = "github.com/idemkv/idem/cmd/idem"

// binary returns the path of the idem binary, building it the first time:
// with -race when the tests run with it, so that the build reuses the
// compiled packages of the test, and the tool's own goroutines are checked.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		idemBin = filepath.Join(binDir, "idem")
		args := []string{"build", "-o", idemBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := testproc.Command(t, gobin, append(args, idemPackage)...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return idemBin
}

// childEnv returns the environment of the binary's runs: this process's,
// with the race detector's sleep of a second at exit turned off (a race in
// the binary still makes it exit with status 66), and the token of the test
// services (serve) in $IDEM_AUTHORIZATION.
func childEnv() []string {
	return append(os.Environ(), "GORACE=atexit_sleep_ms=0 "+os.Getenv("GORACE"), authEnv+"="+testToken)
}

// result is what a run of the binary did.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit status %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// idemRun runs the binary with args and stdin (nothing if nil).
func idemRun(t testing.TB, stdin io.Reader, args ...string) result {
	t.Helper()
	return idemRunEnv(t, stdin, nil, args...)
}

// idemRunEnv runs the binary with args and stdin (nothing if nil), and the
// variables env on top of childEnv's.
func idemRunEnv(t testing.TB, stdin io.Reader, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := testproc.CommandContext(t, ctx, binary(t), args...)
	cmd.Env = append(childEnv(), env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("idem %s: %v", strings.Join(args, " "), err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// mustRun runs the binary and checks its exit status.
func mustRun(t testing.TB, code int, args ...string) result {
	t.Helper()
	r := idemRun(t, nil, args...)
	if r.code != code {
		t.Fatalf("idem %s: exit status %d, want %d\n%v", strings.Join(args, " "), r.code, code, r)
	}
	return r
}

// checkOneLine checks that a failed run wrote one line on stderr that
// contains want, and no stack trace.
func checkOneLine(t testing.TB, r result, want string) {
	t.Helper()
	if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "idem ") {
		t.Errorf("stderr is not one line starting with \"idem \":\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("stderr %q does not contain %q", r.stderr, want)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic") {
		t.Errorf("stderr has a stack trace:\n%s", r.stderr)
	}
}

// fixtureTime is the fixture's clock: its records are created then and
// expire a day later, long after the tests run.
var fixtureTime = time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC)

// makeDB makes a database in a new directory and returns the directory. It
// has completed records (text, binary, empty, a key with a space), a failed
// one, and two interrupted ones: it is the image of a crash while fn ran for
// pay-5 and pay-6, taken on a crashable in-memory FS and copied to disk.
func makeDB(t testing.TB) string {
	t.Helper()
	mem := vfs.NewCrashableMem()
	e, err := idem.Open("db", &idem.Options{FS: mem, Now: func() time.Time { return fixtureTime }, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	do := func(key string, fn func(context.Context) ([]byte, error)) {
		t.Helper()
		if _, err := e.Do(ctx, key, nil, fn); err != nil && key != "pay-4" {
			t.Fatal(err)
		}
	}
	value := func(v []byte) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) { return v, nil }
	}
	do("pay-1", value([]byte("receipt:pay-1:12.00 EUR")))
	do("pay-2", value([]byte{0, 1, 2, 0xff}))
	do("pay-3", value([]byte{}))
	do("order/7", value([]byte("shipped\nin two lines")))
	do("pay-4", func(context.Context) ([]byte, error) { return nil, idem.Permanent(errors.New("card declined")) })
	do("a key", value([]byte("x")))

	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for _, k := range []string{"pay-5", "pay-6"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.Do(ctx, k, nil, func(context.Context) ([]byte, error) {
				started <- struct{}{}
				<-release
				return []byte("too late"), nil
			})
		}()
	}
	<-started
	<-started
	return crashImage(t, mem, e, release, &wg)
}

// crashImage takes the image of mem that a crash would leave now, with
// calls still running in e; then lets them end (closing release, waiting
// for wg), closes e, and copies the image of "db" to a directory on disk,
// which it returns.
func crashImage(t testing.TB, mem *vfs.MemFS, e *idem.Engine, release chan struct{}, wg *sync.WaitGroup) string {
	t.Helper()
	img := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	close(release)
	wg.Wait()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "db")
	if _, err := vfs.Clone(img, vfs.Default, "db", dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// snapshot returns every file under dir with a hash of its contents.
func snapshot(t testing.TB, dir string) map[string][32]byte {
	t.Helper()
	files := map[string][32]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files[path] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// checkUnchanged checks that dir's files are those of before.
func checkUnchanged(t testing.TB, dir string, before map[string][32]byte, what string) {
	t.Helper()
	after := snapshot(t, dir)
	for p, h := range before {
		if h2, ok := after[p]; !ok {
			t.Errorf("%s removed %s", what, p)
		} else if h2 != h {
			t.Errorf("%s changed %s", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created %s", what, p)
		}
	}
}

// fields returns the lines of s split into fields, so that tables compare
// whatever their alignment.
func fields(s string) [][]string {
	var out [][]string
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		out = append(out, strings.Fields(line))
	}
	return out
}

// row returns the fields of the line of table s whose first field is name,
// or nil.
func row(s, name string) []string {
	for _, f := range fields(s) {
		if len(f) > 0 && f[0] == name {
			return f
		}
	}
	return nil
}

func TestStatsCommand(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)
	r := mustRun(t, exitOK, "stats", dir)
	for _, want := range [][]string{
		{"records", "8"},
		{"completed", "5"},
		{"failed", "1"},
		{"interrupted", "2"},
		{"oldest", "expiry", "2099-01-03T03:04:05Z"},
		{"newest", "expiry", "2099-01-03T03:04:05Z"},
	} {
		got := row(r.stdout, want[0])
		if len(got) < len(want) || strings.Join(got[:len(want)], " ") != strings.Join(want, " ") {
			t.Errorf("row %q is %q, want it to start with %q\n%s", want[0], got, want, r.stdout)
		}
	}
	for _, name := range []string{"disk usage", "files", "sstables", "WAL", "read amplification", "compactions"} {
		if !regexp.MustCompile(`(?m)^\s*` + name + `\s+\d`).MatchString(r.stdout) {
			t.Errorf("no row %q with a figure:\n%s", name, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "2 interrupted keys: see 'idem interrupted "+dir+"'") {
		t.Errorf("stderr %q does not point at the interrupted keys", r.stderr)
	}
	checkUnchanged(t, dir, before, "stats")

	for _, args := range [][]string{{"stats"}, {"stats", dir, dir}, {"stats", dir, "--bogus"}} {
		r := mustRun(t, exitUsage, args...)
		if !strings.Contains(r.stderr, "idem stats") && !strings.Contains(r.stderr, "-bogus") {
			t.Errorf("idem %q: stderr %q", args, r.stderr)
		}
	}
}

const lsTable = `KEY      STATE        CREATED               EXPIRES               SIZE
"a key"  completed    2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  1
order/7  completed    2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  20
pay-1    completed    2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  23
pay-2    completed    2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  4
pay-3    completed    2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  0
pay-4    failed       2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  13
pay-5    interrupted  2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  -
pay-6    interrupted  2099-01-02T03:04:05Z  2099-01-03T03:04:05Z  -
`

func TestLsCommand(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)

	r := mustRun(t, exitOK, "ls", dir)
	if r.stdout != lsTable {
		t.Errorf("ls:\n%s\nwant:\n%s", r.stdout, lsTable)
	}
	if r.stderr != "" {
		t.Errorf("stderr: %q", r.stderr)
	}

	keys := func(table string) []string {
		var ks []string
		for _, f := range fields(table)[1:] {
			ks = append(ks, f[0]+" "+f[1])
		}
		return ks
	}
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"ls", dir, "--state", "failed"}, []string{"pay-4 failed"}},
		{[]string{"ls", "--state=interrupted", dir}, []string{"pay-5 interrupted", "pay-6 interrupted"}},
		{[]string{"ls", dir, "-prefix", "pay-", "--limit", "2"}, []string{"pay-1 completed", "pay-2 completed"}},
		{[]string{"ls", "--prefix", "pay-", dir, "--state", "completed", "--limit=10"}, []string{"pay-1 completed", "pay-2 completed", "pay-3 completed"}},
		{[]string{"ls", dir, "--prefix", "nothing"}, nil},
	} {
		r := mustRun(t, exitOK, tt.args...)
		if got := keys(r.stdout); strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("idem %q: rows %q, want %q", tt.args, got, tt.want)
		}
	}

	r = mustRun(t, exitOK, "ls", dir, "--json")
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	if len(recs) != 8 {
		t.Fatalf("ls --json wrote %d objects, want 8:\n%s", len(recs), r.stdout)
	}
	for _, m := range recs {
		switch m["key"] {
		case "pay-2":
			if m["state"] != "completed" || m["value_size"] != 4.0 || m["created"] != "2099-01-02T03:04:05Z" || m["expires"] != "2099-01-03T03:04:05Z" {
				t.Errorf("pay-2: %v", m)
			}
		case "pay-4":
			if m["state"] != "failed" || m["error"] != "card declined" {
				t.Errorf("pay-4: %v", m)
			}
		case "pay-5":
			if _, ok := m["value_size"]; m["state"] != "interrupted" || ok {
				t.Errorf("pay-5: %v", m)
			}
		}
	}

	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"ls"}, "want one argument"},
		{[]string{"ls", dir, dir}, "want one argument"},
		{[]string{"ls", dir, "--state", "done"}, `--state must be completed, failed, interrupted or corrupt, not "done"`},
		{[]string{"ls", dir, "--limit", "-1"}, "--limit must be 0 or more"},
		{[]string{"ls", dir, "--limit", "many"}, "invalid value"},
		{[]string{"ls", dir, "--nosuchflag"}, "-nosuchflag"},
		{[]string{"ls", dir, "--state"}, "flag needs an argument"},
	} {
		r := mustRun(t, exitUsage, tt.args...)
		if !strings.Contains(r.stderr, tt.msg) || r.stdout != "" {
			t.Errorf("idem %q: stderr %q, want %q (and no stdout: %q)", tt.args, r.stderr, tt.msg, r.stdout)
		}
	}
	checkUnchanged(t, dir, before, "ls")
}

func TestGetCommand(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)

	for _, tt := range []struct {
		key  string
		want []string // lines of the output, after the created and expires lines
	}{
		{"pay-1", []string{"size:     23 bytes", "value (text):", "receipt:pay-1:12.00 EUR"}},
		{"pay-2", []string{"size:     4 bytes", "value (base64):", "AAEC/w=="}},
		{"pay-3", []string{"size:     0 bytes", "value:    (empty)"}},
		{"order/7", []string{"size:     20 bytes", "value (text):", "shipped", "in two lines"}},
		{"pay-4", []string{"error:    card declined"}},
		{"pay-5", []string{"value:    none: fn was running when a process stopped, so its outcome is unknown.",
			"          Reconcile it, then: idem forget " + dir + " pay-5"}},
	} {
		r := mustRun(t, exitOK, "get", dir, tt.key)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) < 4 || lines[0] != "key:      "+tt.key ||
			!strings.HasPrefix(lines[2], "created:  2099-01-02T03:04:05Z (in ") ||
			!strings.HasPrefix(lines[3], "expires:  2099-01-03T03:04:05Z (in ") {
			t.Errorf("get %s:\n%s", tt.key, r.stdout)
			continue
		}
		if got := strings.Join(lines[4:], "\n"); got != strings.Join(tt.want, "\n") {
			t.Errorf("get %s: ends with\n%s\nwant\n%s", tt.key, got, strings.Join(tt.want, "\n"))
		}
	}
	if r := mustRun(t, exitOK, "get", dir, "a key"); !strings.HasPrefix(r.stdout, "key:      \"a key\"\nstate:    completed\n") {
		t.Errorf("get \"a key\":\n%s", r.stdout)
	}

	// --raw writes the bytes as they are, flags before or after.
	for _, args := range [][]string{{"get", dir, "pay-2", "--raw"}, {"get", "-raw", dir, "pay-2"}} {
		if r := mustRun(t, exitOK, args...); r.stdout != "\x00\x01\x02\xff" {
			t.Errorf("idem %q: stdout %q", args, r.stdout)
		}
	}
	if r := mustRun(t, exitOK, "get", dir, "pay-3", "--raw"); r.stdout != "" {
		t.Errorf("get pay-3 --raw: stdout %q", r.stdout)
	}
	var j map[string]any
	r := mustRun(t, exitOK, "get", dir, "pay-1", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil || j["value"] != "receipt:pay-1:12.00 EUR" || j["state"] != "completed" {
		t.Errorf("get --json: %v, %v", r.stdout, err)
	}
	r = mustRun(t, exitOK, "get", dir, "pay-2", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil || j["value_base64"] != "AAEC/w==" {
		t.Errorf("get --json: %v, %v", r.stdout, err)
	}

	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "nope"), `no record for key nope`)
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "--", "-x"), `no record for key -x`)
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "pay-4", "--raw"), "key pay-4 is failed: it has no value")
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "pay-5", "--raw"), "key pay-5 is interrupted: it has no value")
	for _, args := range [][]string{{"get", dir}, {"get", dir, "a", "b"}, {"get", dir, ""}, {"get", dir, "pay-1", "--raw", "--json"}, {"get", dir, "pay-1", "-x"}} {
		mustRun(t, exitUsage, args...)
	}
	checkUnchanged(t, dir, before, "get")
}

func TestInterruptedCommand(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)
	r := mustRun(t, exitOK, "interrupted", dir)
	want := "KEY    STARTED               EXPIRES\n" +
		"pay-5  2099-01-02T03:04:05Z  2099-01-03T03:04:05Z\n" +
		"pay-6  2099-01-02T03:04:05Z  2099-01-03T03:04:05Z\n"
	if r.stdout != want {
		t.Errorf("interrupted:\n%s\nwant:\n%s", r.stdout, want)
	}
	if want := "idem interrupted: 2 keys; reconcile each, then: idem forget " + dir + " KEY...\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	r = mustRun(t, exitOK, "interrupted", "--json", dir)
	if n := strings.Count(r.stdout, `"state":"interrupted"`); n != 2 || !strings.HasPrefix(r.stdout, `{"key":"pay-5",`) {
		t.Errorf("interrupted --json:\n%s", r.stdout)
	}
	mustRun(t, exitUsage, "interrupted")
	mustRun(t, exitUsage, "interrupted", dir, "pay-5")
	checkUnchanged(t, dir, before, "interrupted")
}

// TestForgetCommand releases interrupted keys, with and without
// confirmation, and checks that every refusal changes nothing.
func TestForgetCommand(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)

	// Without a terminal, forget does not ask: it needs --yes.
	r := idemRun(t, strings.NewReader("y\n"), "forget", dir, "pay-5")
	if r.code != exitUsage || !strings.Contains(r.stderr, "standard input is not a terminal") || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("forget without --yes or a terminal: %v", r)
	}
	checkOneLine(t, mustRun(t, exitFailure, "forget", dir, "pay-5", "nope", "--yes"), "no record for nope (none, or expired); nothing forgotten")
	checkOneLine(t, mustRun(t, exitFailure, "forget", dir, "pay-5", "pay-1", "pay-4", "--yes"), "not interrupted: pay-1 (completed), pay-4 (failed)")
	mustRun(t, exitUsage, "forget", dir)
	mustRun(t, exitUsage, "forget", dir, "", "--yes")
	checkUnchanged(t, dir, before, "a refused forget")

	r = mustRun(t, exitOK, "forget", dir, "pay-5", "--yes")
	if r.stdout != "forgot pay-5 (interrupted)\n" {
		t.Errorf("forget: stdout %q", r.stdout)
	}
	r = mustRun(t, exitOK, "interrupted", dir)
	if row(r.stdout, "pay-5") != nil || row(r.stdout, "pay-6") == nil {
		t.Errorf("after forgetting pay-5:\n%s", r.stdout)
	}
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "pay-5"), "no record for key pay-5")

	r = mustRun(t, exitOK, "forget", "--yes", "--any-state", dir, "pay-1", "pay-6", "pay-1")
	if r.stdout != "forgot pay-1 (completed)\nforgot pay-6 (interrupted)\n" {
		t.Errorf("forget --any-state: stdout %q", r.stdout)
	}
	r = mustRun(t, exitOK, "ls", dir)
	if got := len(fields(r.stdout)) - 1; got != 5 {
		t.Errorf("%d records left, want 5:\n%s", got, r.stdout)
	}
}

// makeExpiringDB makes a database with n expired records of 4 KiB of
// random bytes each and 3 live ones, and returns its directory.
func makeExpiringDB(t testing.TB, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	past := time.Now().Add(-48 * time.Hour)
	e, err := idem.Open(dir, &idem.Options{Now: func() time.Time { return past }, TTL: time.Hour, SweepInterval: -1, Durability: idem.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		v := make([]byte, 4096)
		rand.Read(v)
		if _, err := e.Do(ctx, fmt.Sprintf("old-%05d", i), nil, func(context.Context) ([]byte, error) { return v, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Compact(ctx); err != nil { // into sstables, as an engine that ran for a while has them
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = idem.Open(dir, &idem.Options{Now: func() time.Time { return fixtureTime }, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"live-1", "live-2", "live-3"} {
		if _, err := e.Do(ctx, k, nil, func(context.Context) ([]byte, error) { return []byte("v"), nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSweepCommand(t *testing.T) {
	dir := makeExpiringDB(t, 500)
	r := mustRun(t, exitOK, "ls", dir)
	if got := len(fields(r.stdout)) - 1; got != 3 {
		t.Fatalf("ls lists %d records, want the 3 live ones:\n%s", got, r.stdout)
	}

	before := dirFiles(dir)
	r = mustRun(t, exitOK, "sweep", dir)
	after := dirFiles(dir)
	t.Logf("\n%s", r.stdout)
	// The figures agree with each other: the records removed and their
	// size, the disk usage before and after (the files in the directory),
	// and the space reclaimed, their difference.
	if got := row(r.stdout, "removed"); len(got) < 2 || got[1] != "500" ||
		!strings.HasSuffix(strings.Join(got, " "), ": "+formatBytes(500*(9+4096))+" of keys and values)") {
		t.Errorf("removed row %q, want 500 records of %s:\n%s", got, formatBytes(500*(9+4096)), r.stdout)
	}
	if got := row(r.stdout, "kept"); len(got) < 2 || got[1] != "3" {
		t.Errorf("kept row %q, want 3:\n%s", got, r.stdout)
	}
	rows := []string{"disk usage " + formatBytes(sumFiles(before)) + " -> " + formatBytes(sumFiles(after)) + " ("}
	for i, g := range before {
		rows = append(rows, g.kind+" "+formatBytes(g.bytes)+" -> "+formatBytes(after[i].bytes))
	}
	for _, want := range rows {
		if !strings.Contains(strings.Join(strings.Fields(r.stdout), " "), want) {
			t.Errorf("no row %q:\n%s", want, r.stdout)
		}
	}
	// 500 records of 4 KiB of random bytes: about 2 MiB reclaimed.
	if got, want := row(r.stdout, "reclaimed"), formatBytes(sumFiles(before)-sumFiles(after)); len(got) < 3 || got[1]+" "+got[2] != want || !strings.HasSuffix(want, "MiB") {
		t.Errorf("reclaimed row %q, want %s, a MiB or more:\n%s", got, want, r.stdout)
	}
	if row(r.stdout, "compactions") == nil {
		t.Errorf("no compactions row:\n%s", r.stdout)
	}
	r = mustRun(t, exitOK, "stats", dir)
	if got := row(r.stdout, "records"); len(got) < 2 || got[1] != "3" {
		t.Errorf("after the sweep, records row %q, want 3", got)
	}
	if got := row(r.stdout, "expired"); len(got) < 2 || got[1] != "0" {
		t.Errorf("after the sweep, expired row %q, want 0", got)
	}
	r = mustRun(t, exitOK, "sweep", dir)
	if got := row(r.stdout, "removed"); len(got) < 2 || got[1] != "0" {
		t.Errorf("second sweep: removed row %q, want 0", got)
	}
	mustRun(t, exitUsage, "sweep")
	mustRun(t, exitUsage, "sweep", dir, "extra")
}

// dbCommands are the commands that take a database's directory, with
// arguments that would succeed on a database.
func dbCommands(dir string) [][]string {
	return [][]string{
		{"stats", dir},
		{"ls", dir},
		{"get", dir, "pay-1"},
		{"interrupted", dir},
		{"forget", dir, "pay-5", "--yes"},
		{"sweep", dir},
	}
}

// TestLockedDirectory holds the database open in this process: every
// command is refused with a message saying so, not a Pebble error.
func TestLockedDirectory(t *testing.T) {
	dir := makeDB(t)
	e, err := idem.Open(dir, &idem.Options{SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, args := range dbCommands(dir) {
		r := mustRun(t, exitFailure, args...)
		checkOneLine(t, r, dir+" is in use by another process (close it first)")
		if strings.Contains(strings.ToLower(r.stderr), "pebble") || strings.Contains(r.stderr, "lock") {
			t.Errorf("idem %q: stderr %q", args, r.stderr)
		}
	}
}

// TestNotADatabase runs every command on directories that hold no idem
// database: each is refused, and nothing is created or changed.
func TestNotADatabase(t *testing.T) {
	plain := t.TempDir()
	if err := os.WriteFile(filepath.Join(plain, "notes.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()

	// A Pebble database that idem did not write.
	other := filepath.Join(t.TempDir(), "pebble")
	db, err := pebble.Open(other, &pebble.Options{Logger: quietLogger{t}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("hello"), []byte("world"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct{ dir, msg string }{
		{plain, plain + " is not an idem database (no database there)"},
		{empty, empty + " is not an idem database (no database there)"},
		{other, other + " is not an idem database (a Pebble database with other data)"},
	} {
		before := snapshot(t, tt.dir)
		for _, args := range dbCommands(tt.dir) {
			checkOneLine(t, mustRun(t, exitFailure, args...), tt.msg)
			checkUnchanged(t, tt.dir, before, strings.Join(args, " "))
		}
	}

	missing := filepath.Join(plain, "missing")
	for _, args := range dbCommands(missing) {
		checkOneLine(t, mustRun(t, exitFailure, args...), missing+" does not exist")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s was created: %v", missing, err)
	}
	file := filepath.Join(plain, "notes.txt")
	checkOneLine(t, mustRun(t, exitFailure, "ls", file), file+" is not a directory")
}

// TestReadOnlyCommandsChangeNothing runs every read-only command, with each
// of its flags, and checks the directory's files after each.
func TestReadOnlyCommandsChangeNothing(t *testing.T) {
	dir := makeDB(t)
	before := snapshot(t, dir)
	for _, args := range [][]string{
		{"stats", dir},
		{"ls", dir},
		{"ls", dir, "--json", "--state", "interrupted", "--prefix", "pay", "--limit", "1"},
		{"get", dir, "pay-1"},
		{"get", dir, "pay-2", "--raw"},
		{"get", dir, "pay-5", "--json"},
		{"interrupted", dir},
		{"interrupted", dir, "--json"},
	} {
		mustRun(t, exitOK, args...)
		checkUnchanged(t, dir, before, strings.Join(args, " "))
	}
}

// TestHelp checks that every command's -h has a usage line and an example,
// and exits with status 0.
func TestHelp(t *testing.T) {
	for _, c := range commands {
		for _, h := range []string{"-h", "--help"} {
			r := mustRun(t, exitOK, c.name, h)
			if !strings.HasPrefix(r.stderr, "Usage: idem "+c.name) {
				t.Errorf("idem %s %s: stderr starts with %q", c.name, h, firstLine(r.stderr))
			}
			if c.name != "demo" && !strings.Contains(r.stderr, "\nExample:\n\n\tidem "+c.name) {
				t.Errorf("idem %s %s: no example:\n%s", c.name, h, r.stderr)
			}
		}
	}
	r := mustRun(t, exitOK, "-h")
	for _, c := range commands {
		if !strings.Contains(r.stdout, "\t"+c.name+" ") {
			t.Errorf("idem -h does not list %s:\n%s", c.name, r.stdout)
		}
	}
	mustRun(t, exitUsage)
	mustRun(t, exitUsage, "nosuchcommand")
}

// benchRows are the rows every bench table has.
var benchRows = []string{"new key", "replay", "duplicate", "all", "throughput", "fsyncs", "bytes written", "disk usage", "compactions", "waits", "errors"}

func TestBenchCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bench")
	r := mustRun(t, exitOK, "bench", "--dir", dir, "--duration", "1s", "--concurrency", "4", "--durability", "all", "--dup-ratio", "0.5", "--value-size", "100")
	t.Logf("\n%s", r.stdout)
	if want := "idem bench: 1s, concurrency 4, durability SyncAll, dup-ratio 0.5, value size 100 B, dir " + dir + "\n"; !strings.HasPrefix(r.stdout, want) {
		t.Errorf("stdout starts with %q, want %q", firstLine(r.stdout), want)
	}
	for _, name := range benchRows {
		if !regexp.MustCompile(`(?m)^\s*` + name + `\s+\d`).MatchString(r.stdout) {
			t.Errorf("no row %q with a figure", name)
		}
	}
	header := row(r.stdout, "path")
	if strings.Join(header, " ") != "path ops ops/s mean p50 p90 p99 p99.9 max" {
		t.Errorf("latency table header %q", header)
	}
	if got := row(r.stdout, "fsyncs"); len(got) < 2 || got[1] == "0" {
		t.Errorf("fsyncs row %q: SyncAll must fsync", got)
	}
	if got := row(r.stdout, "errors"); len(got) != 2 || got[1] != "0" {
		t.Errorf("errors row %q", got)
	}
	if !regexp.MustCompile(`^(idem bench: [\d.]+m?s elapsed, \d+s remaining, \d+ ops/s, \d+ ops\n)+$`).MatchString(r.stderr) {
		t.Errorf("the progress is not plain lines on a pipe:\n%q", r.stderr)
	}
	// The directory is kept, with an idem database in it.
	mustRun(t, exitOK, "stats", dir)
	checkOneLine(t, mustRun(t, exitFailure, "bench", "--dir", dir, "--duration", "1s"), "is not empty")

	// A temporary directory is removed at the end.
	r = mustRun(t, exitOK, "bench", "--duration", "500ms", "--concurrency", "2", "--durability", "none")
	m := regexp.MustCompile(`dir (\S+) \(temporary\)`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no temporary directory in:\n%s", r.stdout)
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary directory %s is still there: %v", m[1], err)
	}

	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--duration", "0s"}, "--duration must be positive"},
		{[]string{"--duration", "soon"}, "invalid value"},
		{[]string{"--concurrency", "0"}, "--concurrency must be at least 1"},
		{[]string{"--durability", "some"}, "--durability must be all, result or none"},
		{[]string{"--dup-ratio", "1.5"}, "--dup-ratio must be from 0 to 1"},
		{[]string{"--dup-ratio", "NaN"}, "--dup-ratio must be from 0 to 1"},
		{[]string{"--value-size", "-1"}, "--value-size must be from 0"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		r := mustRun(t, exitUsage, append([]string{"bench"}, tt.args...)...)
		if !strings.Contains(r.stderr, tt.msg) || r.stdout != "" {
			t.Errorf("bench %q: stderr %q, want %q (and no stdout: %q)", tt.args, r.stderr, tt.msg, r.stdout)
		}
	}
}

// TestCorruptRecord writes a record that cannot be decoded, under the
// engine's key layout (a record's Pebble key is 'r' and the key): ls lists
// it as corrupt, stats counts it, get fails on it.
func TestCorruptRecord(t *testing.T) {
	dir := makeDB(t)
	db, err := pebble.Open(dir, &pebble.Options{Logger: quietLogger{t}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("rpay-0"), []byte("not a record"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, exitOK, "ls", dir, "--state", "corrupt")
	if got := fields(r.stdout); len(got) != 2 || strings.Join(got[1], " ") != "pay-0 corrupt - - -" {
		t.Errorf("ls --state corrupt:\n%s", r.stdout)
	}
	r = mustRun(t, exitOK, "ls", dir, "--json", "--limit", "1", "--prefix", "pay-0")
	if !strings.HasPrefix(r.stdout, `{"key":"pay-0","state":"corrupt","error":"corrupt record: key \"pay-0\": `) {
		t.Errorf("ls --json: %s", r.stdout)
	}
	r = mustRun(t, exitOK, "stats", dir)
	if got := row(r.stdout, "corrupt"); len(got) != 2 || got[1] != "1" {
		t.Errorf("stats: corrupt row %q", got)
	}
	if got := row(r.stdout, "records"); len(got) != 2 || got[1] != "9" {
		t.Errorf("stats: records row %q", got)
	}
	checkOneLine(t, mustRun(t, exitFailure, "get", dir, "pay-0"), `corrupt record: key "pay-0"`)
	checkOneLine(t, mustRun(t, exitFailure, "forget", dir, "pay-0", "--yes"), "not interrupted: pay-0 (corrupt)")
	if r := mustRun(t, exitOK, "forget", dir, "pay-0", "--yes", "--any-state"); r.stdout != "forgot pay-0 (corrupt)\n" {
		t.Errorf("forget --any-state: %q", r.stdout)
	}
}

// TestBenchInterrupted stops a bench with SIGINT: it reports what it
// measured, fails with a message, and removes its temporary directory.
func TestBenchInterrupted(t *testing.T) {
	// The bench ends by itself after a minute; if the test fails first,
	// testproc's cleanup kills it.
	cmd := testproc.Command(t, binary(t), "bench", "--duration", "1m", "--concurrency", "2", "--durability", "none")
	cmd.Env = childEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The first line comes once the engine is open, after the signal
	// handler is in place.
	buf := make([]byte, 4096)
	n, err := stdout.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(stdout)
	out := string(buf[:n]) + string(rest)
	err = cmd.Wait()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != exitFailure {
		t.Fatalf("exit: %v, want status 1\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	if !regexp.MustCompile(`(^|\n)idem bench: interrupted after [\d.]+m?s; the figures above are for that time\n$`).MatchString(stderr.String()) {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	if row(out, "throughput") == nil {
		t.Errorf("no table:\n%s", out)
	}
	m := regexp.MustCompile(`dir (\S+) \(temporary\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no temporary directory in:\n%s", out)
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary directory %s is still there: %v", m[1], err)
	}
}

// quietLogger drops Pebble's informational log and sends its errors to
// the test's log.
type quietLogger struct{ t testing.TB }

func (quietLogger) Infof(string, ...any)                {}
func (l quietLogger) Errorf(format string, args ...any) { l.t.Logf(format, args...) }
func (quietLogger) Fatalf(format string, args ...any)   { panic(fmt.Sprintf(format, args...)) }
