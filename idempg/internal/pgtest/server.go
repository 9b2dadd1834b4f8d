package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkv/idem/internal/testproc"
)

// Server is a test's database, on a server that pgtest started (shared, or
// the test's own) or on IDEM_PG_URL's. Stop, Start and Restart need a
// server of the test's own (StartOwn); they fail the test on any other.
// Its methods are not safe for concurrent use, except ConnString, Database
// and Pool.
type Server struct {
	db   string   // the test's database
	conn string   // its connection string
	c    *cluster // the server, if pgtest started it
	own  bool     // c is the test's own
}

// Options configure a server of a test's own (StartOwn). A nil *Options
// means the defaults.
type Options struct {
	// Settings are server settings (postgres -c name=value, as
	// "max_connections": "20") that override pgtest's (see the package
	// doc) or add to them. listen_addresses, port and
	// unix_socket_directories are pgtest's. If nil, pgtest's settings
	// only.
	Settings map[string]string
}

// dbSeq numbers the databases that Start and StartOwn create.
var dbSeq atomic.Int64

// Start gives the test t a database of its own, created for it, on the
// server that the package's tests share, or on IDEM_PG_URL's server if
// that is set. The database is dropped when t ends. Without the server
// binaries, it skips t, or fails it when IDEM_PG_REQUIRE=1 (see the
// package doc). The package's TestMain must call Main.
func Start(t testing.TB) *Server {
	t.Helper()
	requireMain(t)
	if u := os.Getenv(envURL); u != "" {
		return startExternal(t, u)
	}
	needBinaries(t, ", or set "+envURL+" to a server's URL")
	c, err := sharedServer()
	if err != nil {
		t.Fatal(err)
	}
	return newDatabase(t, c.connString("postgres"), c.connString, c)
}

// StartOwn starts a server for the test t alone and gives t a database on
// it, as Start does; t may stop, crash and start the server again (Stop,
// Start, Restart). The server is stopped and its files removed when t
// ends. It needs the server binaries even with IDEM_PG_URL set. The
// package's TestMain must call Main.
func StartOwn(t testing.TB, opts *Options) *Server {
	t.Helper()
	requireMain(t)
	needBinaries(t, " (a server of the test's own needs them even with "+envURL+" set)")
	settings := defaultSettings()
	if opts != nil {
		maps.Copy(settings, opts.Settings) // a copy: the caller's map stays theirs
	}
	c, err := newCluster(settings)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: the removal after the stop, registered by
	// Start below, and after the log's tail, which is in c.dir.
	t.Cleanup(func() { os.RemoveAll(c.dir) })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgtest: the test's own server: %s", c.logTail())
		}
	})
	s := &Server{c: c, own: true}
	s.Start(t)
	// Not dropped at t's end: the whole server goes.
	db := createDatabase(t, c.connString("postgres"))
	s.db, s.conn = db, c.connString(db)
	return s
}

// startExternal gives t a database on the server at IDEM_PG_URL's url.
func startExternal(t testing.TB, u string) *Server {
	t.Helper()
	if _, err := pgx.ParseConfig(u); err != nil {
		t.Fatalf("pgtest: %s: %v", envURL, err)
	}
	withDB := func(db string) string {
		if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
			p, err := url.Parse(u)
			if err != nil {
				t.Fatalf("pgtest: %s: %v", envURL, err)
			}
			p.Path, p.RawPath = "/"+db, ""
			return p.String()
		}
		return u + " dbname=" + db // key=value: the last of a key wins
	}
	return newDatabase(t, u, withDB, nil)
}

// newDatabase creates a database for t from admin, on c (nil for
// IDEM_PG_URL's server), returns it as a Server whose connection string
// withDB makes, and drops it when t ends.
func newDatabase(t testing.TB, admin string, withDB func(db string) string, c *cluster) *Server {
	t.Helper()
	db := createDatabase(t, admin)
	t.Cleanup(func() {
		// After the pools that t made from the Server closed (their
		// cleanups were registered after this one); FORCE (PostgreSQL 13)
		// ends what connections are left.
		if err := exec1(admin, "DROP DATABASE "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("pgtest: dropping the test's database: %v", err)
		}
	})
	return &Server{db: db, conn: withDB(db), c: c}
}

// createDatabase creates a database with a new name from admin and
// returns its name.
func createDatabase(t testing.TB, admin string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails
	db := fmt.Sprintf("pgtest_%d_%s", dbSeq.Add(1), hex.EncodeToString(b[:]))
	if err := exec1(admin, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		t.Fatalf("pgtest: creating the test's database: %v", err)
	}
	return db
}

// exec1 runs sql on a connection of its own to conn.
func exec1(conn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	c, err := pgx.Connect(ctx, conn)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql)
	return err
}

// ConnString returns the URL of the test's database, for pgx.Connect,
// pgxpool.ParseConfig or psql. On a server that pgtest started, it
// connects through the unix socket in the server's directory, as
// postgres://postgres@/pgtest_1_0a1b2c3d?host=%2Ftmp%2Fpgtest-123%2F2&port=5432&sslmode=disable.
func (s *Server) ConnString() string { return s.conn }

// Database returns the name of the test's database, as in pg_stat_activity's
// datname.
func (s *Server) Database() string { return s.db }

// PoolOptions configure Pool. A nil *PoolOptions means the defaults.
type PoolOptions struct {
	// MaxConns is the most connections the pool opens. If <= 0, pgxpool's
	// default: the greater of 4 and runtime.NumCPU().
	MaxConns int32
}

// Pool returns a pool of connections to the test's database, which it has
// checked (Ping), and which closes when t ends. Close waits for the
// connections that the test acquired to be released.
func (s *Server) Pool(t testing.TB, opts *PoolOptions) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(s.conn)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if opts != nil && opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(p.Close)
	if err := p.Ping(ctx); err != nil {
		t.Fatalf("pgtest: a new pool: %v", err)
	}
	return p
}

// Stop shuts the test's own server down as mode says and waits until it
// has exited. The test's connections to it break.
func (s *Server) Stop(t testing.TB, mode StopMode) {
	t.Helper()
	s.mustOwn(t, "Stop")
	if s.c.run == nil {
		t.Fatal("pgtest: Stop: the server is not running")
	}
	if err := s.c.stop(mode); err != nil {
		t.Fatal(err)
	}
}

// Start starts the test's own server again, on the same data directory
// and socket (the connection strings stay valid), and waits until it
// accepts connections, after crash recovery if it stopped Immediate. The
// server is stopped when t ends.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mustOwn(t, "Start")
	if s.c.run != nil {
		t.Fatal("pgtest: Start: the server is running")
	}
	newCmd := func(name string, arg ...string) *exec.Cmd {
		return testproc.Command(t, name, arg...)
	}
	r, err := s.c.launch(newCmd)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after testproc's cleanup, so run before it: stops the
	// server, as it was started, so that testproc's finds it waited for.
	t.Cleanup(func() {
		if err := r.stop(Immediate); err != nil {
			t.Error(err)
		}
	})
	if err := s.c.waitReady(); err != nil {
		t.Fatal(err)
	}
}

// Restart stops the test's own server as mode says and starts it again:
// Stop, then Start.
func (s *Server) Restart(t testing.TB, mode StopMode) {
	t.Helper()
	s.Stop(t, mode)
	s.Start(t)
}

// mustOwn fails the test unless the server is the test's own.
func (s *Server) mustOwn(t testing.TB, method string) {
	t.Helper()
	if !s.own {
		t.Fatalf("pgtest: %s needs a server of the test's own: use StartOwn", method)
	}
}
