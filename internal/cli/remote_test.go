package cli

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// The tests in this file run the binary with --url against a service: this
// test process, which opens a database's directory as a service does, with
// an idemhttp.Admin as the engine's Observer, and serves the Admin's
// handler under /idem on a loopback port.

// testToken is the Authorization header the test service asks for, which
// childEnv passes to the binary in $IDEM_AUTHORIZATION.
const testToken = "Bearer test-operator-token"

// service is a database open in this process, with its admin handler
// served.
type service struct {
	e   *idem.Engine
	url string // the admin handler's
}

// serve opens the database in dir and serves its admin handler, which
// refuses requests without testToken, and writes too if readOnly. Both are
// closed when the test ends.
func serve(t testing.TB, dir string, readOnly bool) *service {
	t.Helper()
	admin := idemhttp.NewAdmin(&idemhttp.AdminOptions{
		Authorize: func(r *http.Request, write bool) error {
			if r.Header.Get("Authorization") != testToken {
				return errors.New("send the operator token in the Authorization header")
			}
			if readOnly {
				return idemhttp.AllowReads(r, write)
			}
			return nil
		},
	})
	e, err := idem.Open(dir, &idem.Options{Observer: admin, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/idem/", http.StripPrefix("/idem", admin.Handler(e)))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.Close()
		e.Close()
	})
	return &service{e: e, url: srv.URL + "/idem"}
}

// load calls Do on s's engine, on new keys and on retries of them, until
// the test ends: a service at work.
func (s *service) load(t testing.TB) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx := context.Background()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond): // a service, not a benchmark
			}
			key := "load-" + string(rune('a'+i%26)) + "-" + time.Now().Format("150405.000000")
			for range 2 { // a call and its retry
				s.e.Do(ctx, key, nil, func(context.Context) ([]byte, error) { return []byte("ok"), nil })
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
}

// addCorrupt writes a record that cannot be decoded under the key pay-0,
// with the engine's key layout (a record's Pebble key is 'r' and the key).
func addCorrupt(t testing.TB, dir string) {
	t.Helper()
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
}

// onURL returns the command line args, written for a directory dir (the
// command's name, then dir), for the service at url instead.
func onURL(args []string, url string) []string {
	return append([]string{args[0], "--url", url}, args[2:]...)
}

// TestURLSameOutput runs each read-only command, and forget's refusals, on
// a directory, then on the service that has it open: the outputs are the
// same, but for the name of the database in the messages that suggest a
// next command ("DIR" becomes "--url URL").
func TestURLSameOutput(t *testing.T) {
	dir := makeDB(t)
	addCorrupt(t, dir)
	http := makeHTTPDB(t)
	var cmds [][]string
	for _, args := range [][]string{
		{"ls"}, {"ls", "--json"}, {"ls", "--state", "interrupted"}, {"ls", "--prefix", "pay-", "--limit", "2"},
		{"ls", "--state", "corrupt"}, {"ls", "--prefix", "nothing"}, {"ls", "--state", "failed", "--json"},
		{"get", "pay-1"}, {"get", "pay-2"}, {"get", "pay-2", "--raw"}, {"get", "pay-2", "--json"}, {"get", "pay-3"},
		{"get", "pay-3", "--json"}, {"get", "pay-4"}, {"get", "pay-4", "--raw"}, {"get", "pay-5"}, {"get", "pay-5", "--json"},
		{"get", "order/7"}, {"get", "a key"}, {"get", "nope"}, {"get", "pay-0"}, {"get", "--", "-x"},
		{"interrupted"}, {"interrupted", "--json"},
		{"forget", "pay-1", "pay-4", "--yes"}, {"forget", "nope", "pay-5", "--yes"}, {"forget", "pay-0", "--yes"},
	} {
		cmds = append(cmds, append([]string{args[0], dir}, args[1:]...))
	}
	for _, args := range [][]string{
		{"get", "--http", "k-1"}, {"get", "--http", "--scope", "acme", "k-2"}, {"get", "--http", "k-big"}, {"get", "--http", "k-3"},
		{"get", "k-1"}, {"get", "0:k-1", "--json"}, {"get", "--scope", "acme", "k-2", "--json"}, {"interrupted"},
	} {
		cmds = append(cmds, append([]string{args[0], http}, args[1:]...))
	}
	// The commands run in this process, which is quicker than the
	// binary; the other tests run it.
	t.Setenv(authEnv, testToken)
	onDir := make([]result, len(cmds))
	for i, args := range cmds {
		onDir[i] = runHere(args...)
	}
	statsDir := runHere("stats", dir)

	svc, httpSvc := serve(t, dir, false), serve(t, http, false)
	for i, args := range cmds {
		db, url := dir, svc.url
		if args[1] == http {
			db, url = http, httpSvc.url
		}
		got := runHere(onURL(args, url)...)
		want := onDir[i]
		want.stdout = strings.ReplaceAll(want.stdout, db, "--url "+url)
		want.stderr = strings.ReplaceAll(want.stderr, db, "--url "+url)
		if got != want {
			t.Errorf("idem %q:\n%v\nwant, as on the directory:\n%v", onURL(args, url), got, want)
		}
	}

	// stats: the same figures of the records; what only a directory has
	// (the expired records, the files) or only a service (its calls)
	// apart.
	statsURL := runHere("stats", "--url", svc.url)
	t.Logf("stats --url:\n%s", statsURL.stdout)
	for _, name := range []string{"records", "completed", "failed", "interrupted", "corrupt", "keys", "values", "oldest", "newest", "read"} {
		if d, u := row(statsDir.stdout, name), row(statsURL.stdout, name); strings.Join(d, " ") != strings.Join(u, " ") || d == nil {
			t.Errorf("row %q: %q with --url, %q on the directory", name, u, d)
		}
	}
	for _, want := range [][]string{{"service", svc.url}, {"expired", "-"}, {"calls", "0"}, {"executions", "0"}} {
		if got := row(statsURL.stdout, want[0]); len(got) < 2 || got[1] != want[1] {
			t.Errorf("row %q is %q, want it to start with %q", want[0], got, want)
		}
	}
	if row(statsURL.stdout, "files") != nil || row(statsURL.stdout, "sstables") != nil {
		t.Errorf("stats --url shows files:\n%s", statsURL.stdout)
	}
	if want := "idem stats: 2 interrupted keys: see 'idem interrupted --url " + svc.url + "'\n"; statsURL.stderr != want {
		t.Errorf("stats --url: stderr %q, want %q", statsURL.stderr, want)
	}
}

// runHere runs the command line args in this process.
func runHere(args ...string) result {
	var stdout, stderr strings.Builder
	code := Main(context.Background(), args, strings.NewReader(""), &stdout, &stderr, nil)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// TestURLForget releases keys of a running service, which sees it at once,
// and checks forget's refusals of keys that are not interrupted, including
// a key whose fn the service is running.
func TestURLForget(t *testing.T) {
	dir := makeDB(t)
	svc := serve(t, dir, false)
	ctx := context.Background()

	r := mustRun(t, exitOK, "forget", "--url", svc.url, "pay-5", "--yes")
	if r.stdout != "forgot pay-5 (interrupted)\n" {
		t.Errorf("forget --url: %v", r)
	}
	if _, err := svc.e.Lookup("pay-5"); !errors.Is(err, idem.ErrNotFound) {
		t.Errorf("the service still has pay-5: %v", err)
	}
	res, err := svc.e.Do(ctx, "pay-5", nil, func(context.Context) ([]byte, error) { return []byte("charged"), nil })
	if err != nil || res.Replayed {
		t.Errorf("Do of pay-5 after forget: %v, %v; want fn to run", res, err)
	}
	r = mustRun(t, exitOK, "interrupted", "--url", svc.url)
	if want := "KEY    STARTED               EXPIRES\npay-6  2099-01-02T03:04:05Z  2099-01-03T03:04:05Z\n"; r.stdout != want {
		t.Errorf("interrupted --url after forget:\n%s\nwant\n%s", r.stdout, want)
	}
	r = mustRun(t, exitOK, "forget", "--url", svc.url, "--any-state", "pay-1", "pay-6", "--yes")
	if r.stdout != "forgot pay-1 (completed)\nforgot pay-6 (interrupted)\n" {
		t.Errorf("forget --url --any-state: %v", r)
	}

	// A key whose fn is running in the service: in flight, not
	// interrupted, and not forgotten even with --any-state.
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := svc.e.Do(ctx, "busy", nil, func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return []byte("v"), nil
		})
		done <- err
	}()
	<-started
	r = mustRun(t, exitOK, "ls", "--url", svc.url, "--state", "in-flight")
	if f := fields(r.stdout); len(f) != 2 || f[1][0] != "busy" || f[1][1] != "in-flight" {
		t.Errorf("ls --state in-flight:\n%s", r.stdout)
	}
	r = mustRun(t, exitOK, "get", "--url", svc.url, "busy")
	if !strings.HasSuffix(r.stdout, "\nvalue:    none yet: fn is running for this key in the service.\n") {
		t.Errorf("get of a key in flight:\n%s", r.stdout)
	}
	checkOneLine(t, mustRun(t, exitFailure, "forget", "--url", svc.url, "busy", "--yes"), "not interrupted: busy (in-flight)")
	checkOneLine(t, mustRun(t, exitFailure, "forget", "--url", svc.url, "busy", "--yes", "--any-state"),
		"forgetting busy: Request with this idempotency key in progress: fn is running for key busy")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A handler that allows reads only.
	ro := serve(t, makeDB(t), true)
	checkOneLine(t, mustRun(t, exitFailure, "forget", "--url", ro.url, "pay-5", "--yes"),
		"forgetting pay-5: Admin request refused: this admin handler allows reads only")
}

// TestURLErrors checks the failures of a service that cannot be read, and
// the command lines that --url makes wrong.
func TestURLErrors(t *testing.T) {
	svc := serve(t, makeDB(t), false)

	// Nothing listens.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/idem"
	l.Close()
	checkOneLine(t, mustRun(t, exitFailure, "stats", "--url", closed), "cannot reach the service at "+closed+"/: dial tcp")

	// Something that is not the admin handler.
	other := strings.TrimSuffix(svc.url, "/idem") + "/admin"
	checkOneLine(t, mustRun(t, exitFailure, "ls", "--url", other),
		"answered 404 Not Found with text/plain, not the admin handler's JSON: is the URL where idemhttp's admin handler is mounted")

	// No token.
	cmd := idemRunEnv(t, nil, []string{authEnv + "="}, "interrupted", "--url", svc.url)
	if cmd.code != exitFailure {
		t.Errorf("without a token: %v", cmd)
	}
	checkOneLine(t, cmd, "Admin request refused: send the operator token in the Authorization header (HTTP 403 from "+svc.url+"/interrupted?limit=1000)")

	checkOneLine(t, mustRun(t, exitFailure, "get", "--url", "ftp://host/idem", "k"), "want the http:// or https:// URL of the service's admin handler")
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"stats", "--url", svc.url, "dir"}, "want no argument with --url; got 1"},
		{[]string{"ls", "--url", svc.url, "dir"}, "want no argument with --url; got 1"},
		{[]string{"get", "--url", svc.url}, "want one argument with --url, a key; got 0"},
		{[]string{"get", "--url", svc.url, "a", "b"}, "want one argument with --url, a key; got 2"},
		{[]string{"forget", "--url", svc.url, "--yes"}, "want at least one key with --url; got 0"},
		{[]string{"ls", "some-dir", "--state", "in-flight"}, "--state must be completed, failed, interrupted or corrupt"},
		{[]string{"sweep", "--url", svc.url}, "flag provided but not defined: -url"},
		{[]string{"get"}, "want two arguments, the database's directory and a key; got 0"},
	} {
		r := mustRun(t, exitUsage, tt.args...)
		if !strings.Contains(r.stderr, tt.msg) || r.stdout != "" {
			t.Errorf("idem %q: stderr %q, want %q (and no stdout: %q)", tt.args, r.stderr, tt.msg, r.stdout)
		}
	}
}

// TestTopLines runs top where its standard output is not a terminal: a line
// per refresh, of a service and of a load of its own, then the end after
// --count refreshes.
func TestTopLines(t *testing.T) {
	svc := serve(t, makeDB(t), false)
	svc.load(t)
	for _, args := range [][]string{
		{"top", "--url", svc.url, "--count", "3", "--interval", "100ms"},
		{"top", "--count", "2", "--interval", "100ms", "--concurrency", "2", "--durability", "none"},
	} {
		r := mustRun(t, exitOK, args...)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) != 2+countArg(args) || !strings.HasPrefix(lines[0], "idem top: ") ||
			strings.Join(strings.Fields(lines[1]), " ") != "TIME CALLS/S EXECUTIONS/S REPLAYS/S CONFLICTS/S P50 P99" {
			t.Fatalf("idem %q:\n%v", args, r)
		}
		for _, l := range lines[2:] {
			if f := strings.Fields(l); len(f) != 7 || !isNumber(f[1]) || !isNumber(f[4]) {
				t.Errorf("idem %q: line %q", args, l)
			}
		}
		t.Logf("idem %q:\n%s", args, r.stdout)
	}
	for _, tt := range []struct {
		args []string
		msg  string
	}{
		{[]string{"top", "--url", svc.url, "--concurrency", "3", "--dir", "x"}, "--concurrency, --dir are for a load of top's own, not with --url"},
		{[]string{"top", "--interval", "0s"}, "--interval must be positive"},
		{[]string{"top", "--count", "-1"}, "--count must be 0 or more"},
		{[]string{"top", "--dup-ratio", "2"}, "--dup-ratio must be from 0 to 1"},
		{[]string{"top", "extra"}, `unexpected argument "extra"`},
	} {
		r := mustRun(t, exitUsage, tt.args...)
		if !strings.Contains(r.stderr, tt.msg) || r.stdout != "" {
			t.Errorf("idem %q: stderr %q, want %q (and no stdout: %q)", tt.args, r.stderr, tt.msg, r.stdout)
		}
	}
	checkOneLine(t, mustRun(t, exitFailure, "top", "--url", svc.url+"/nowhere"), "No such admin endpoint: no endpoint at \"/nowhere/stats\"")
}

func countArg(args []string) int {
	for i, a := range args {
		if a == "--count" {
			n := 0
			for _, c := range args[i+1] {
				n = n*10 + int(c-'0')
			}
			return n
		}
	}
	return 0
}

func isNumber(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return s != ""
}
