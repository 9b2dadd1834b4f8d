package cli

import (
	"context"
	"flag"
	"fmt"
	"iter"
	"strings"

	"github.com/idemkv/idem"
)

// The database a command works on: the directory of a database, which the
// command opens itself, a running service that has it open, through the
// admin handler of idemhttp (--url), or a database that an Extension opens
// (--nats).

// A target names the database of a command.
type target struct {
	dir string // the database's directory; "" with --url or an extension's flag
	url string // the admin handler's URL; "" for a directory

	ext    *Extension        // the extension whose flag names the database; nil for a directory or a URL
	src    string            // the value of ext's flag
	params map[string]string // the values of ext's Params
}

// String names t as a command line does, for the messages that suggest
// the next command: "DIR", "--url URL", or "--nats URL" with the Params of
// the extension that are not their defaults ("--bucket orders").
func (t target) String() string {
	switch {
	case t.url != "":
		return "--url " + t.url
	case t.ext != nil:
		s := "--" + t.ext.Flag + " " + t.src
		for _, p := range t.ext.Params {
			if v := t.params[p.Name]; v != p.Default {
				s += " --" + p.Name + " " + v
			}
		}
		return s
	}
	return t.dir
}

// remote reports whether t is a database that other processes may have
// open and be calling Do on: a service's, or an extension's.
func (t target) remote() bool { return t.url != "" || t.ext != nil }

// urlUsage is the help of the --url flag.
const urlUsage = "read the database through the admin handler (idemhttp.Admin) of the running service\nat `URL` instead of a directory, e.g. http://127.0.0.1:9090/idem; the value of\n$IDEM_AUTHORIZATION, if set, is sent as the Authorization header"

// parseTarget parses the flags of a command that works on a database, with
// --url added (and the flags of c's extension, if any), and returns the
// target and the positional arguments after the directory (all of them
// with --url), which must be n (n < 0: at least -n). dirWant and urlWant
// say what the command wants, for the usage error: "one argument, the
// database's directory", "no argument with --url" (said of the extension's
// flag with one).
func (c *cli) parseTarget(args []string, n int, dirWant, urlWant string) (t target, rest []string, code int, ok bool) {
	c.flags.StringVar(&t.url, "url", "", urlUsage)
	var src string
	params := make(map[string]*string)
	if c.ext != nil {
		c.flags.StringVar(&src, c.ext.Flag, "", c.ext.Usage)
		for _, p := range c.ext.Params {
			params[p.Name] = c.flags.String(p.Name, p.Default, p.Usage)
		}
	}
	pos, code, ok := c.parse(args)
	if !ok {
		return t, nil, code, false
	}
	if c.ext != nil {
		var set []string
		c.flags.Visit(func(f *flag.Flag) {
			if params[f.Name] != nil {
				set = append(set, "--"+f.Name)
			}
		})
		switch {
		case src != "" && t.url != "":
			return t, nil, c.usageError("--url and --%s exclude each other", c.ext.Flag), false
		case src == "" && len(set) > 0:
			return t, nil, c.usageError("%s %s with --%s", strings.Join(set, ", "), plural(len(set), "goes", "go"), c.ext.Flag), false
		case src != "":
			t.ext, t.src, t.params = c.ext, src, make(map[string]string, len(params))
			for name, v := range params {
				t.params[name] = *v
			}
			urlWant = strings.Replace(urlWant, "--url", "--"+c.ext.Flag, 1)
		}
	}
	want, got := dirWant, len(pos)
	if t.remote() {
		want, rest = urlWant, pos
	} else if len(pos) > 0 {
		t.dir, rest = pos[0], pos[1:]
	}
	if (!t.remote() && len(pos) == 0) || (n >= 0 && len(rest) != n) || (n < 0 && len(rest) < -n) {
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
// write; a service's admin handler as it is; an extension's with its Open.
func (c *cli) openDB(ctx context.Context, t target, write bool) (database, error) {
	switch {
	case t.url != "":
		return newRemote(ctx, t.url, nil)
	case t.ext != nil:
		src, err := c.openSource(ctx, t, write)
		if err != nil {
			return nil, err
		}
		return shared{src}, nil
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

// openSource opens the database of t, which an extension names.
func (c *cli) openSource(ctx context.Context, t target, write bool) (*Source, error) {
	src, err := t.ext.Open(ctx, Request{Value: t.src, Params: t.params, Write: write, Stderr: c.stderr})
	if err != nil {
		return nil, err
	}
	if src == nil || src.Engine == nil {
		return nil, fmt.Errorf("--%s %s: the extension opened no engine", t.ext.Flag, t.src)
	}
	return src, nil
}

// closeDB closes db and turns a failure into the command's failure, unless
// the command has already failed.
func (c *cli) closeDB(db database, code int) int {
	if err := db.close(); err != nil && code == exitOK {
		return c.fail(err)
	}
	return code
}
