package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Bounds on the server's steps, generous for a busy CI machine: in a quiet
// one initdb takes about 1.5s, a start 0.1s (more with crash recovery), a
// stop a few milliseconds.
const (
	initdbTimeout = 2 * time.Minute
	startTimeout  = time.Minute
	stopTimeout   = time.Minute
	queryTimeout  = 30 * time.Second
)

// superuser is the user initdb makes, whatever the OS user, and that the
// tests connect as; trust authentication lets it in without a password.
const superuser = "postgres"

// port is every server's: it only names the socket (.s.PGSQL.5432), which
// is in a directory of the server's own.
const port = "5432"

// StopMode is how Stop shuts a server down.
type StopMode int

const (
	// Fast is PostgreSQL's fast shutdown (SIGINT, pg_ctl -m fast): the
	// server rolls back the open transactions, closes the connections,
	// writes a checkpoint and exits. The zero StopMode.
	Fast StopMode = iota
	// Immediate is PostgreSQL's immediate shutdown (SIGQUIT, pg_ctl -m
	// immediate): every server process exits at once, without a
	// checkpoint, as in a crash, and the next start recovers from the WAL.
	// A transaction whose COMMIT returned is there after it; one that had
	// not returned may be or not.
	Immediate
)

// String returns "fast" or "immediate", as pg_ctl's -m names the modes.
func (m StopMode) String() string {
	switch m {
	case Fast:
		return "fast"
	case Immediate:
		return "immediate"
	}
	return fmt.Sprintf("StopMode(%d)", int(m))
}

// defaultSettings returns the server settings (postgres -c) that
// Options.Settings adds to or overrides: see the package doc.
func defaultSettings() map[string]string {
	return map[string]string{
		"fsync":              "on",
		"synchronous_commit": "on",
		"full_page_writes":   "on",
		"shared_buffers":     "32MB",
		"max_connections":    "200",
	}
}

// cluster is a data directory and the postgres process that serves it,
// when it runs. Its methods are not safe for concurrent use.
type cluster struct {
	bin      string            // the directory of the server binaries
	dir      string            // holds data/, the socket and postgres.log; o's
	o        *owner            // runs postgres; nil for the current user
	settings map[string]string // postgres -c
	run      *run              // the running postgres; nil when stopped
}

// run is a postgres process.
type run struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has been waited for
}

// data returns the data directory.
func (c *cluster) data() string { return filepath.Join(c.dir, "data") }

// logPath returns the file that collects the output of postgres (and of
// initdb, for the template).
func (c *cluster) logPath() string { return filepath.Join(c.dir, "postgres.log") }

// connString returns the URL of database db on the server, by its socket.
func (c *cluster) connString(db string) string {
	u := url.URL{
		Scheme: "postgres",
		User:   url.User(superuser),
		Path:   "/" + db,
		RawQuery: url.Values{
			"host":    {c.dir},
			"port":    {port},
			"sslmode": {"disable"},
		}.Encode(),
	}
	return u.String()
}

// launch starts postgres on the data directory with a command that
// newCmd makes (a testproc function), and returns once it runs; see
// waitReady. The caller must stop the run (stop) or own a cleanup that
// does.
func (c *cluster) launch(newCmd func(name string, arg ...string) *exec.Cmd) (*run, error) {
	if c.run != nil {
		return nil, errors.New("pgtest: the server is running")
	}
	log, err := os.OpenFile(c.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %v", err)
	}
	defer log.Close() // postgres has its own descriptor once started
	args := []string{"-D", c.data()}
	keys := make([]string, 0, len(c.settings))
	for k := range c.settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+c.settings[k])
	}
	// After the settings, which cannot change them: the socket only.
	args = append(args, "-c", "listen_addresses=", "-k", c.dir, "-p", port)
	cmd := newCmd(filepath.Join(c.bin, "postgres"), args...)
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = log, log
	c.o.apply(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgtest: starting postgres: %v", err)
	}
	r := &run{cmd: cmd, done: make(chan struct{})}
	go func() { // the run's only waiter: stop and the test's cleanups wait on done
		_ = cmd.Wait()
		close(r.done)
	}()
	c.run = r
	return r, nil
}

// waitReady waits until the server accepts connections, for at most
// startTimeout, and fails early if postgres exits. Its error does not
// show the server's log: see logTail.
func (c *cluster) waitReady() error {
	r := c.run
	if r == nil {
		return errors.New("pgtest: the server is not running")
	}
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := pgx.Connect(ctx, c.connString("postgres"))
		if err == nil {
			err = conn.Close(ctx)
			cancel()
			return err
		}
		cancel()
		select {
		case <-r.done:
			return fmt.Errorf("pgtest: postgres exited (%v) before it accepted connections",
				r.cmd.ProcessState)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres did not accept connections within %v: %v",
				startTimeout, err)
		}
	}
}

// stop shuts the server down as mode says and waits until postgres has
// exited; if it takes longer than stopTimeout, it kills postgres and
// returns an error. It does nothing if the server is not running.
func (c *cluster) stop(mode StopMode) error {
	r := c.run
	if r == nil {
		return nil
	}
	c.run = nil
	return r.stop(mode)
}

// stop shuts r down as mode says and waits until it has exited, killing it
// after stopTimeout. It does nothing if r has exited.
func (r *run) stop(mode StopMode) error {
	select {
	case <-r.done:
		return nil
	default:
	}
	sig := os.Interrupt
	if mode == Immediate {
		sig = syscall.SIGQUIT
	}
	_ = r.cmd.Process.Signal(sig) // an error means it has exited
	select {
	case <-r.done:
		return nil
	case <-time.After(stopTimeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		return fmt.Errorf("pgtest: postgres did not stop within %v of a %v shutdown; killed it", stopTimeout, mode)
	}
}

// logTail returns the end of the server's log, to show in an error.
func (c *cluster) logTail() string {
	return tail(c.logPath())
}

// tail returns the last lines of the file at path, introduced, or why not.
func tail(path string) string {
	const maxLines, maxBytes = 40, 8 << 10
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("no log: %v", err)
	}
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	lines := bytes.SplitAfter(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return fmt.Sprintf("end of %s:\n%s", path, bytes.Join(lines, nil))
}

// initdb makes a cluster in dir/data with the binaries in bin, run as o,
// for the servers to copy: superuser postgres, trust authentication,
// UTF8 and the C locale, and no syncing to disk (see the package doc).
// Its output goes to dir/postgres.log.
func initdb(newCmd func(ctx context.Context, name string, arg ...string) *exec.Cmd, bin, dir string, o *owner) error {
	c := &cluster{dir: dir}
	log, err := os.OpenFile(c.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %v", err)
	}
	defer log.Close()
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	cmd := newCmd(ctx, filepath.Join(bin, "initdb"), "-D", c.data(), "-U", superuser,
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = log, log
	o.apply(cmd)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pgtest: initdb: %v; %s", err, c.logTail())
	}
	return nil
}
