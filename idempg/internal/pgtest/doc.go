// Package pgtest gives idempg's tests a real, throwaway PostgreSQL server.
//
// # Basics
//
// A package whose tests use pgtest runs them through Main:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Start gives a test a database of its own (CREATE DATABASE with a unique
// name) on a server that the package's tests share: the server starts with
// the first Start, once per test binary, and Main stops it after the tests.
// StartOwn gives a test a server of its own, which the test may stop, crash
// and start again (Stop, Start, Restart): for fault tests. Either way the
// test gets a *Server; ConnString is the URL of the test's database, and
// Pool a pgxpool.Pool on it that closes when the test ends.
//
//	srv := pgtest.Start(t)
//	pool := srv.Pool(t, nil)
//
// The servers run from a temporary directory (data directory, unix socket,
// log) and listen on the unix socket only, so that they never clash with a
// port in use. Main removes the directory; a server of a test's own is
// stopped and its directory removed when the test ends. When a server of a
// test's own fails to start, or the test fails, the test's log shows the
// tail of the server's log.
//
// # Settings
//
// The servers are configured as a production server would be where it
// matters to idempg's promises: fsync, synchronous_commit and
// full_page_writes are on, so that a write acknowledged before a crash
// (Immediate) is there after the restart. They are small otherwise:
// shared_buffers = 32MB, and max_connections = 200 for tests with several
// pools. Options.Settings changes or adds settings on a server of a test's
// own.
//
// # Environment
//
// The server binaries (initdb and postgres) are the first found in a
// directory on PATH that holds both, directly or through a symbolic link
// (Debian links /usr/local/bin/initdb into its directory), else in the
// newest /usr/lib/postgresql/*/bin (Debian's and Ubuntu's packages).
//
//   - IDEM_PG_URL, if set, is the URL (or key=value connection string) of a
//     server for Start to use instead of starting one. It needs a user that
//     may create databases; each Start creates one and drops it when the
//     test ends. StartOwn still starts a server of its own.
//   - Without the binaries, Start and StartOwn skip the test (t.Skip),
//     saying how to install them (apt-get install postgresql); Start does
//     not when IDEM_PG_URL is set. IDEM_PG_REQUIRE=1 makes them fail the
//     test instead (t.Fatal): CI sets it, so that no test skips silently.
//
// PostgreSQL refuses to run as root. When the tests run as root, pgtest
// runs initdb and postgres as the postgres user, which must exist (Debian's
// package creates it), and owns its temporary directory by that user; the
// directory is made under os.TempDir, or /tmp if a directory above that is
// not searchable by others.
//
// # Caveats
//
// Every process pgtest starts dies with the test binary on Linux
// (testproc), even when a panic or go test's -timeout ends it; the
// temporary directory, pgtest-* under os.TempDir, then stays behind.
// Outside Linux the shared server outlives such a test binary.
//
// initdb runs once per test binary, without syncing its files to disk
// (--no-sync), and each server starts from a copy of that cluster: Immediate
// crashes the server, not the machine, and the operating system keeps what
// the server wrote before the crash.
//
// A pool's connections break when its server stops; pgxpool discards a
// connection once a query on it fails, so after Restart a test should
// expect an error from each connection that was open, or use a new pool.
package pgtest
