package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
	"github.com/idemkv/idem/internal/cli"
)

// The tests run the command's Main in this process, with the extension of
// main, against a single embedded NATS node whose buckets engines fill.

// testTimeout bounds each wait of these tests: generous, for a loaded
// 2-core machine under -race. No test asserts how fast anything is.
const testTimeout = time.Minute

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// startNode starts a single node, with its data in a temporary directory,
// and stops it when t ends.
func startNode(t *testing.T, ctx context.Context) *idemnats.Node {
	t.Helper()
	nd, err := idemnats.StartNode(idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:-1", Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nd.Shutdown)
	if err := nd.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return nd
}

// openEngine opens an engine on the bucket with opts, through a
// connection of its own to nd, and returns both; they are closed when t
// ends.
func openEngine(t *testing.T, nd *idemnats.Node, opts idemnats.Options) (*idem.Engine, *nats.Conn) {
	t.Helper()
	nc, err := nd.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	opts.Engine = &idem.Options{Logger: discard}
	e, err := idemnats.Open(nc, &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, nc
}

// result is what a run of the command did.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit status %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs the command line args in this process, and checks its exit
// status.
func run(t *testing.T, code int, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	r := result{code: cli.Main(ctx, args, strings.NewReader(""), &stdout, &stderr, extension(""))}
	r.stdout, r.stderr = stdout.String(), stderr.String()
	if r.code != code {
		t.Fatalf("idem %s: exit status %d, want %d\n%v", strings.Join(args, " "), r.code, code, r)
	}
	return r
}

// row returns the fields of the line of s that starts with name (and two
// spaces: the table's columns), or nil.
func row(s, name string) []string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), name+"  ") {
			return strings.Fields(strings.TrimPrefix(strings.TrimSpace(l), name))
		}
	}
	return nil
}

// checkRow checks that the line name of s has value first.
func checkRow(t *testing.T, s, name, value string) {
	t.Helper()
	if f := row(s, name); len(f) == 0 || f[0] != value {
		t.Errorf("row %q = %q, want %s; output:\n%s", name, f, value, s)
	}
}

// TestNATS fills a bucket through an engine (completed records, a failed
// one, and one left interrupted by an engine that died while its fn ran),
// and reads and forgets its records with the command, through --nats, while
// the engine runs.
func TestNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	nd := startNode(t, ctx)
	url := nd.ClientURL()

	e, _ := openEngine(t, nd, idemnats.Options{})
	value := func(v string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) { return []byte(v), nil }
	}
	for _, kv := range [][2]string{{"pay-1", "receipt:pay-1:12.00 EUR"}, {"pay-2", "receipt:pay-2:3.50 EUR"}} {
		if _, err := e.Do(ctx, kv[0], nil, value(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.Do(ctx, "pay-3", nil, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(errors.New("card declined"))
	}); err == nil {
		t.Fatal("pay-3: no error")
	}

	// An engine dies while its fn runs for pay-4: its connection closes,
	// its heartbeat stops, and once its liveness window (the shortest, a
	// second) has lapsed, the claim is interrupted.
	dying, dyingConn := openEngine(t, nd, idemnats.Options{LivenessWindow: time.Second})
	started, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		dying.Do(ctx, "pay-4", nil, func(context.Context) ([]byte, error) {
			close(started)
			<-release
			return []byte("too late"), nil
		})
	}()
	t.Cleanup(func() { <-done }) // after the engine's Close, registered before
	defer close(release)
	<-started
	// While the engine lives, its claim is in flight, and forget leaves
	// it alone.
	r := run(t, 0, "ls", "--nats", url, "--state", "in-flight")
	if f := strings.Fields(r.stdout); len(f) < 7 || f[5] != "pay-4" || f[6] != "in-flight" {
		t.Errorf("ls --state in-flight: %q, want pay-4 in flight", r.stdout)
	}
	r = run(t, 1, "forget", "--nats", url, "pay-4", "--yes")
	if !strings.Contains(r.stderr, "not interrupted: pay-4 (in-flight)") {
		t.Errorf("forget of a key in flight: stderr %q", r.stderr)
	}
	dyingConn.Close()
	for {
		r, err := e.Lookup("pay-4")
		if err != nil {
			t.Fatal(err)
		}
		if r.State == idem.StateInterrupted {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pay-4 is %v, not interrupted", r.State)
		case <-time.After(100 * time.Millisecond):
		}
	}

	t.Run("stats", func(t *testing.T) {
		r := run(t, 0, "stats", "--nats", url)
		t.Logf("\n%s%s", r.stdout, r.stderr)
		checkRow(t, r.stdout, "database", "bucket")
		if !strings.Contains(r.stdout, "bucket idem on "+url+"\n") {
			t.Errorf("stats does not name the bucket and the URL:\n%s", r.stdout)
		}
		for name, want := range map[string]string{"records": "4", "completed": "2", "failed": "1", "interrupted": "1",
			"expired": "-", "streams": "1", "replicas": "1"} {
			checkRow(t, r.stdout, name, want)
		}
		for _, name := range []string{"messages", "stored", "oldest expiry", "newest expiry"} {
			if row(r.stdout, name) == nil {
				t.Errorf("stats has no row %q:\n%s", name, r.stdout)
			}
		}
		if want := "idem stats: 1 interrupted key: see 'idem interrupted --nats " + url + "'\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})

	t.Run("ls", func(t *testing.T) {
		r := run(t, 0, "ls", "--nats", url)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		want := [][2]string{{"KEY", "STATE"}, {"pay-1", "completed"}, {"pay-2", "completed"}, {"pay-3", "failed"}, {"pay-4", "interrupted"}}
		if len(lines) != len(want) {
			t.Fatalf("ls wrote %d lines, want %d:\n%s", len(lines), len(want), r.stdout)
		}
		for i, w := range want {
			if f := strings.Fields(lines[i]); f[0] != w[0] || f[1] != w[1] {
				t.Errorf("line %d: %q, want %s %s", i, lines[i], w[0], w[1])
			}
		}
		r = run(t, 0, "ls", "--nats", url, "--state", "interrupted", "--json")
		var j struct{ Key, State string }
		if err := json.Unmarshal([]byte(r.stdout), &j); err != nil || j.Key != "pay-4" || j.State != "interrupted" {
			t.Errorf("ls --state interrupted --json: %q (%v)", r.stdout, err)
		}
	})

	t.Run("get", func(t *testing.T) {
		r := run(t, 0, "get", "--nats", url, "pay-1")
		for _, want := range []string{"key:      pay-1\n", "state:    completed\n", "value (text):\nreceipt:pay-1:12.00 EUR\n"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("get pay-1: stdout has no %q:\n%s", want, r.stdout)
			}
		}
		r = run(t, 0, "get", "--nats", url, "pay-4")
		if want := "Reconcile it, then: idem forget --nats " + url + " pay-4\n"; !strings.Contains(r.stdout, want) {
			t.Errorf("get pay-4: stdout has no %q:\n%s", want, r.stdout)
		}
		r = run(t, 0, "get", "--nats", url, "pay-2", "--raw")
		if r.stdout != "receipt:pay-2:3.50 EUR" {
			t.Errorf("get pay-2 --raw: %q", r.stdout)
		}
		r = run(t, 1, "get", "--nats", url, "nope")
		if !strings.Contains(r.stderr, "no record for key nope") {
			t.Errorf("get nope: stderr %q", r.stderr)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		r := run(t, 0, "interrupted", "--nats", url)
		if f := strings.Fields(r.stdout); len(f) != 6 || f[3] != "pay-4" {
			t.Errorf("interrupted: %q, want a table of pay-4", r.stdout)
		}
		if want := "idem interrupted: 1 key; reconcile each, then: idem forget --nats " + url + " KEY...\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})

	t.Run("forget", func(t *testing.T) {
		r := run(t, 1, "forget", "--nats", url, "pay-1", "--yes")
		if !strings.Contains(r.stderr, "not interrupted: pay-1 (completed)") {
			t.Errorf("forget pay-1: stderr %q", r.stderr)
		}
		r = run(t, 2, "forget", "--nats", url, "pay-4")
		if !strings.Contains(r.stderr, "pass --yes") {
			t.Errorf("forget without a terminal: stderr %q", r.stderr)
		}
		r = run(t, 0, "forget", "--nats", url, "pay-4", "--yes")
		if r.stdout != "forgot pay-4 (interrupted)\n" {
			t.Errorf("forget pay-4: stdout %q", r.stdout)
		}
		// The running engine sees it at once, and runs fn again for it.
		if _, err := e.Lookup("pay-4"); !errors.Is(err, idem.ErrNotFound) {
			t.Errorf("Lookup of the forgotten key: %v, want ErrNotFound", err)
		}
		res, err := e.Do(ctx, "pay-4", nil, value("paid"))
		if err != nil || string(res.Value) != "paid" {
			t.Errorf("Do after forget: %q, %v", res.Value, err)
		}
		r = run(t, 0, "interrupted", "--nats", url)
		if r.stdout != "" || r.stderr != "idem interrupted: no interrupted keys\n" {
			t.Errorf("interrupted after forget:\n%v", r)
		}
	})

	// The command's engines closed, and deleted their heartbeats: the
	// only one left is e's.
	nc, err := nd.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, idemnats.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	hearts, err := kv.ListKeysFiltered(ctx, "h.>")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range hearts.Keys() {
		keys = append(keys, k)
	}
	if len(keys) != 1 {
		t.Errorf("heartbeats in the bucket: %q, want e's alone", keys)
	}
}

// TestNATSBuckets reads records spread over several buckets: the command
// reads their count from the bucket.
func TestNATSBuckets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	nd := startNode(t, ctx)
	url := nd.ClientURL()
	e, _ := openEngine(t, nd, idemnats.Options{Bucket: "orders", Buckets: 3})
	for i := range 6 {
		if _, err := e.Do(ctx, fmt.Sprintf("order-%d", i), nil, func(context.Context) ([]byte, error) { return []byte("ok"), nil }); err != nil {
			t.Fatal(err)
		}
	}
	r := run(t, 0, "ls", "--nats", url, "--bucket", "orders", "--json")
	if n := strings.Count(r.stdout, "\n"); n != 6 {
		t.Errorf("ls listed %d records, want 6:\n%s", n, r.stdout)
	}
	r = run(t, 0, "stats", "--nats", url, "--bucket", "orders")
	checkRow(t, r.stdout, "records", "6")
	checkRow(t, r.stdout, "streams", "3")
	// A key longer than idem's default limit (512) reaches the store,
	// which has no record of it.
	r = run(t, 1, "get", "--nats", url, "--bucket", "orders", strings.Repeat("k", 1000))
	if !strings.Contains(r.stderr, "no record for key") {
		t.Errorf("get of a long key: %q", r.stderr)
	}
}

// TestNATSErrors checks the command lines that are wrong, a server that is
// not there, and a bucket that does not exist, which the command does not
// create.
func TestNATSErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	nd := startNode(t, ctx)
	url := nd.ClientURL()

	oneLine := func(t *testing.T, r result, want *regexp.Regexp) {
		t.Helper()
		if strings.Count(r.stderr, "\n") != 1 || !want.MatchString(r.stderr) {
			t.Errorf("stderr %q is not one line matching %s", r.stderr, want)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"stats", "--nats", url, "--url", "http://127.0.0.1:1/idem"}, `^idem stats: --url and --nats exclude each other$`},
		{[]string{"ls", "/some/dir", "--bucket", "x"}, `^idem ls: --bucket goes with --nats$`},
		{[]string{"interrupted", "--nats", url, "/some/dir"}, `^idem interrupted: want no argument with --nats; got 1$`},
		{[]string{"get", "--nats", url}, `^idem get: want one argument with --nats, a key; got 0$`},
		{[]string{"forget", "--nats", url}, `^idem forget: want at least one key with --nats; got 0$`},
		{[]string{"sweep", "--nats", url}, `^flag provided but not defined: -nats$`},
	} {
		r := run(t, 2, tt.args...)
		if first, _, _ := strings.Cut(r.stderr, "\n"); !regexp.MustCompile(tt.want).MatchString(first) {
			t.Errorf("idem %q: stderr %q, want a first line matching %s", tt.args, r.stderr, tt.want)
		}
	}

	r := run(t, 1, "stats", "--nats", url, "--bucket", "nope")
	oneLine(t, r, regexp.MustCompile(`^idem stats: no bucket nope at `+regexp.QuoteMeta(url)+` \(`))
	_, js := func() (*nats.Conn, jetstream.JetStream) {
		nc, err := nd.Connect()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return nc, js
	}()
	if _, err := js.KeyValue(ctx, "nope"); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("the bucket nope after stats: %v, want ErrBucketNotFound", err)
	}

	// A server that is not there: nothing listens on the node's port
	// once it is shut down.
	nd.Shutdown()
	r = run(t, 1, "ls", "--nats", "nats://user:secret@"+strings.TrimPrefix(url, "nats://"))
	oneLine(t, r, regexp.MustCompile(`^idem ls: cannot connect to NATS at nats://user:xxxxx@`))
	if strings.Contains(r.stderr, "secret") {
		t.Errorf("the message shows the password: %q", r.stderr)
	}
}

// TestNATSHelp checks that the help of idem and of the commands that take
// --nats say so, and that the others do not.
func TestNATSHelp(t *testing.T) {
	r := run(t, 0, "-h")
	if !strings.Contains(r.stdout, "interrupted and forget take --nats URL instead of a\ndirectory") {
		t.Errorf("idem -h does not tell of --nats:\n%s", r.stdout)
	}
	for _, cmd := range []string{"stats", "ls", "get", "interrupted", "forget"} {
		r := run(t, 0, cmd, "-h")
		for _, want := range []string{"|--nats URL [--bucket B]", "  -nats URL\n", "  -bucket B\n", `(default "idem")`, "  -creds FILE\n", "take --nats URL instead of a"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("idem %s -h has no %q:\n%s", cmd, want, r.stderr)
			}
		}
	}
	for _, cmd := range []string{"sweep", "bench", "top", "demo"} {
		if r := run(t, 0, cmd, "-h"); strings.Contains(r.stderr, "-nats") || strings.Contains(r.stderr, "-bucket") {
			t.Errorf("idem %s -h tells of --nats:\n%s", cmd, r.stderr)
		}
	}
}
