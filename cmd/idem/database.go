package main

import (
	"context"
	"iter"

	"github.com/idemkv/idem"
)

// The database a command works on: the directory of a database, which the
// command opens itself, or a running service that has it open, through the
// admin handler of idemhttp (--url).

// A target names the database of a command.
type target struct {
	dir string // the database's directory; "" with --url
	url string // the admin handler's URL; "" for a directory
}

// String names t as a command line does, for the messages that suggest
// the next command: "DIR", or "--url URL".
func (t target) String() string {
	if t.url != "" {
		return "--url " + t.url
	}
	return t.dir
}

// urlUsage is the help of the --url flag.
const urlUsage = "read the database through the admin handler (idemhttp.Admin) of the running service\nat `URL` instead of a directory, e.g. http://127.0.0.1:9090/idem; the value of\n$IDEM_AUTHORIZATION, if set, is sent as the Authorization header"

// parseTarget parses the flags of a command that works on a database, with
// --url added, and returns the target and the positional arguments after
// the directory (all of them with --url), which must be n (n < 0: at least
// -n). dirWant and urlWant say what the command wants, for the usage error:
// "one argument, the database's directory", "no argument with --url".
func (c *cli) parseTarget(args []string, n int, dirWant, urlWant string) (t target, rest []string, code int, ok bool) {
	c.flags.StringVar(&t.url, "url", "", urlUsage)
	pos, code, ok := c.parse(args)
	if !ok {
		return t, nil, code, false
	}
	want, got := dirWant, len(pos)
	if t.url != "" {
		want, rest = urlWant, pos
	} else if len(pos) > 0 {
		t.dir, rest = pos[0], pos[1:]
	}
	if (t.url == "" && len(pos) == 0) || (n >= 0 && len(rest) != n) || (n < 0 && len(rest) < -n) {
		return t, nil, c.usageError("want %s; got %d", want, got), false
	}
	return t, rest, exitOK, true
}

// A database is what the record commands read and change: an engine on a
// directory (local), or a service's admin handler (remote).
type database interface {
	// records yields the live records whose keys start with prefix, in
	// key order, as idem.Engine.Records does. If state is not "", the
	// records in other states may be left out (the admin handler filters
	// them; an engine does not). See remote.records for what the values
	// hold.
	records(prefix, state string) iter.Seq2[idem.Record, error]
	// interrupted yields the interrupted records, as
	// idem.Engine.Interrupted does.
	interrupted() iter.Seq2[idem.Record, error]
	// lookup returns key's record, as idem.Engine.Lookup does.
	lookup(key string) (idem.Record, error)
	// forget forgets key, which lookup has just found interrupted (in any
	// state if anyState).
	forget(key string, anyState bool) error
	// close releases the database.
	close() error
}

// local is a database on an engine that this process opened.
type local struct{ e *idem.Engine }

func (l local) records(prefix, _ string) iter.Seq2[idem.Record, error] {
	return l.e.Records(prefix)
}

func (l local) interrupted() iter.Seq2[idem.Record, error] { return l.e.Interrupted() }

func (l local) lookup(key string) (idem.Record, error) { return l.e.Lookup(key) }

// forget forgets key: no other process can have changed it since lookup,
// since this one holds the directory.
func (l local) forget(key string, _ bool) error { return l.e.Forget(key) }

func (l local) close() error { return l.e.Close() }

// openDB opens t's database: a directory read-only, or for writing if
// write; a service's admin handler as it is.
func openDB(ctx context.Context, t target, write bool) (database, error) {
	if t.url != "" {
		return newRemote(ctx, t.url, nil)
	}
	open := openReadOnly
	if write {
		open = openWritable
	}
	e, err := open(t.dir, nil)
	if err != nil {
		return nil, err
	}
	return local{e}, nil
}

// closeDB closes db and turns a failure into the command's failure, unless
// the command has already failed.
func (c *cli) closeDB(db database, code int) int {
	if err := db.close(); err != nil && code == exitOK {
		return c.fail(err)
	}
	return code
}
