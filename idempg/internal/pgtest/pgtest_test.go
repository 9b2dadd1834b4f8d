package pgtest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem/idempg/internal/pgtest"
	"github.com/idemkv/idem/internal/testproc"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestRestartKeepsCommitted writes a row, stops the server (a clean
// shutdown, or a crash) and starts it again: the committed row is there,
// and after the crash the uncommitted one is not.
func TestRestartKeepsCommitted(t *testing.T) {
	for _, mode := range []pgtest.StopMode{pgtest.Fast, pgtest.Immediate} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			srv := pgtest.StartOwn(t, nil)
			pool := srv.Pool(t, nil)
			_, err := pool.Exec(ctx, `CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL)`)
			require.NoError(t, err)
			_, err = pool.Exec(ctx, `INSERT INTO kv VALUES ('committed', 'yes')`)
			require.NoError(t, err)
			var started time.Time
			require.NoError(t, pool.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&started))

			// Open when the server stops: a fast shutdown rolls it back,
			// a crash loses it.
			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO kv VALUES ('uncommitted', 'no')`)
			require.NoError(t, err)

			srv.Restart(t, mode)
			_ = tx.Rollback(ctx) // its connection is gone: an error

			after := srv.Pool(t, nil)
			var restarted time.Time
			require.NoError(t, after.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&restarted))
			require.True(t, restarted.After(started), "the server did not restart: started %v, then %v", started, restarted)
			rows, err := after.Query(ctx, `SELECT k FROM kv ORDER BY k`)
			require.NoError(t, err)
			keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			require.Equal(t, []string{"committed"}, keys)
		})
	}
}

// TestStopStart stops a server of the test's own: it refuses connections
// until it starts again, on the same connection string.
func TestStopStart(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.StartOwn(t, nil)
	srv.Stop(t, pgtest.Immediate)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(cctx, srv.ConnString()); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	srv.Start(t)
	conn, err := pgx.Connect(ctx, srv.ConnString())
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
}

// TestDatabasesDiffer gives two Starts different databases on the shared
// server: a table made in one is not in the other.
func TestDatabasesDiffer(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.Start(t), pgtest.Start(t)
	require.NotEqual(t, a.Database(), b.Database())
	require.NotEqual(t, a.ConnString(), b.ConnString())
	pa, pb := a.Pool(t, nil), b.Pool(t, &pgtest.PoolOptions{MaxConns: 2})
	require.EqualValues(t, 2, pb.Config().MaxConns)
	for _, c := range []struct {
		srv  *pgtest.Server
		pool *pgxpool.Pool
	}{{a, pa}, {b, pb}} {
		var db string
		require.NoError(t, c.pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
		require.Equal(t, c.srv.Database(), db)
	}
	_, err := pa.Exec(ctx, `CREATE TABLE only_in_a (x int)`)
	require.NoError(t, err)
	var n int
	require.NoError(t, pb.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'`).Scan(&n))
	require.Zero(t, n)
}

// TestParallelStarts starts many tests at once on the shared server, the
// first of them perhaps: each gets a database of its own.
func TestParallelStarts(t *testing.T) {
	for i := range 8 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			srv := pgtest.Start(t)
			conn, err := pgx.Connect(context.Background(), srv.ConnString())
			require.NoError(t, err)
			defer conn.Close(context.Background())
			var db string
			require.NoError(t, conn.QueryRow(context.Background(), `SELECT current_database()`).Scan(&db))
			require.Equal(t, srv.Database(), db)
		})
	}
}

// TestSettings checks the settings of the package doc, on the shared
// server (unless IDEM_PG_URL names another) and on one of the test's own
// with Options.Settings.
func TestSettings(t *testing.T) {
	ctx := context.Background()
	show := func(srv *pgtest.Server, name string) string {
		conn, err := pgx.Connect(ctx, srv.ConnString())
		require.NoError(t, err)
		defer conn.Close(ctx)
		var v string
		require.NoError(t, conn.QueryRow(ctx, "SHOW "+name).Scan(&v))
		return v
	}
	if os.Getenv("IDEM_PG_URL") == "" { // else Start's server is not pgtest's
		shared := pgtest.Start(t)
		for name, want := range map[string]string{
			"fsync":              "on",
			"synchronous_commit": "on",
			"full_page_writes":   "on",
			"shared_buffers":     "32MB",
			"max_connections":    "200",
			"listen_addresses":   "",
		} {
			require.Equal(t, want, show(shared, name), name)
		}
	}

	opts := &pgtest.Options{Settings: map[string]string{"max_connections": "20"}}
	own := pgtest.StartOwn(t, opts)
	require.Equal(t, "20", show(own, "max_connections"))
	require.Equal(t, "on", show(own, "fsync"))
	require.Len(t, opts.Settings, 1, "StartOwn changed the caller's options")
}

// helperEnv makes TestHelperNoBinaries run, in a child process.
const helperEnv = "PGTEST_HELPER_NO_BINARIES"

// TestSkipWithoutBinaries runs Start where there are no server binaries,
// in a child process: it skips the test, saying how to install them, or
// fails it with IDEM_PG_REQUIRE=1.
func TestSkipWithoutBinaries(t *testing.T) {
	for _, c := range []struct {
		require  bool
		exitOK   bool
		contains []string
	}{
		{false, true, []string{"--- SKIP: TestHelperNoBinaries", "apt-get install postgresql", "IDEM_PG_URL"}},
		{true, false, []string{"--- FAIL: TestHelperNoBinaries", "apt-get install postgresql", "IDEM_PG_REQUIRE=1 forbids skipping"}},
	} {
		cmd := testproc.Command(t, os.Args[0], "-test.run=^TestHelperNoBinaries$", "-test.v", "-test.count=1", "-test.timeout=1m")
		var env []string
		for _, kv := range os.Environ() {
			switch k, _, _ := strings.Cut(kv, "="); k {
			case "PATH", "IDEM_PG_URL", "IDEM_PG_REQUIRE":
			default:
				env = append(env, kv)
			}
		}
		env = append(env, helperEnv+"=1", "PATH="+t.TempDir())
		if c.require {
			env = append(env, "IDEM_PG_REQUIRE=1")
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if c.exitOK {
			require.NoError(t, err, "%s", out)
		} else {
			require.True(t, errors.As(err, &exit), "want a failing exit, got %v:\n%s", err, out)
		}
		for _, s := range c.contains {
			require.Contains(t, string(out), s)
		}
	}
}

// TestHelperNoBinaries is TestSkipWithoutBinaries's child: Start with no
// server binaries on PATH or in the directories searched after it.
func TestHelperNoBinaries(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("the child process of TestSkipWithoutBinaries only")
	}
	pgtest.SetLibGlob(filepath.Join(t.TempDir(), "*", "bin"))
	pgtest.Start(t)
	t.Error("Start returned")
}
