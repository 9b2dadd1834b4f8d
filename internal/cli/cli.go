package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/idemkv/idem"
)

// A cli is one run of a subcommand: its name, its streams and its flags.
// Its methods write the messages and return the exit statuses that every
// subcommand shares.
type cli struct {
	name   string // the subcommand, as "ls"
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	flags  *flag.FlagSet
	ext    *Extension // set by the commands that take an extension: parseTarget adds its flags, Usage its help
}

// newCLI returns the cli of subcommand name. Its help text is synopsis (the
// usage line after "idem "), about (what the command does) and an example,
// followed by the flags.
func newCLI(name, synopsis, about, example string, stdin io.Reader, stdout, stderr io.Writer) *cli {
	c := &cli{name: name, stdin: stdin, stdout: stdout, stderr: stderr}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		synopsis, about := synopsis, strings.TrimSpace(about)
		if c.ext != nil {
			synopsis = strings.Replace(synopsis, "--url URL", "--url URL|"+c.ext.Synopsis, 1)
			about += "\n\n" + strings.TrimSpace(c.ext.About)
		}
		fmt.Fprintf(stderr, "Usage: idem %s\n\n%s\n\nExample:\n\n%s\n", synopsis, about, indent(example))
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
		fmt.Fprint(stderr, "\nFlags may come before or after the arguments, with one dash or two.\n")
	}
	c.flags = fs
	return c
}

// indent indents each line of s by a tab.
func indent(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = "\t" + strings.TrimSpace(l)
	}
	return strings.Join(lines, "\n")
}

// parseDir parses the flags of a command whose one argument is the
// database's directory, and returns it.
func (c *cli) parseDir(args []string) (dir string, code int, ok bool) {
	pos, code, ok := c.parse(args)
	if !ok {
		return "", code, false
	}
	if len(pos) != 1 {
		return "", c.usageError("want one argument, the database's directory; got %d", len(pos)), false
	}
	return pos[0], 0, true
}

// parse parses args, whose flags may come before, between or after the
// positional arguments, and returns the positional ones. "--" ends the
// flags: every argument after it is positional. When parse returns ok
// false, the command returns code: exitOK after -h, exitUsage after a bad
// flag (the flag package has written the message and the usage).
func (c *cli) parse(args []string) (pos []string, code int, ok bool) {
	var flagArgs []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case len(a) > 1 && a[0] == '-':
			flagArgs = append(flagArgs, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			if f := c.flags.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
				i++
				flagArgs = append(flagArgs, args[i]) // the flag's value
			}
		default:
			pos = append(pos, a)
		}
	}
	if err := c.flags.Parse(flagArgs); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK, false
		}
		return nil, exitUsage, false
	}
	return pos, exitOK, true
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// usageError writes a usage error and returns exitUsage.
func (c *cli) usageError(format string, a ...any) int {
	fmt.Fprintf(c.stderr, "idem %s: %s\nRun 'idem %s -h' for usage.\n", c.name, oneLine(fmt.Sprintf(format, a...)), c.name)
	return exitUsage
}

// fail writes a runtime error on one line and returns exitFailure.
func (c *cli) fail(err error) int {
	fmt.Fprintf(c.stderr, "idem %s: %s\n", c.name, oneLine(strings.TrimPrefix(err.Error(), "idem: ")))
	return exitFailure
}

// failf is fail with a formatted message.
func (c *cli) failf(format string, a ...any) int {
	return c.fail(fmt.Errorf(format, a...))
}

// oneLine joins the lines of a message, so that an error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ; ")), " ")
}

// engineOptions are the options the tool opens a database with. Keys are
// not checked against a length limit (the service may use a larger
// MaxKeySize than the default), and no background sweep runs. clk is the
// engine's clock; nil means time.Now.
func engineOptions(readOnly bool, clk *clock) *idem.Options {
	o := &idem.Options{ReadOnly: readOnly, MaxKeySize: math.MaxInt, SweepInterval: -1}
	if clk != nil {
		o.Now = clk.now
	}
	return o
}

// A clock is the engine's clock for stats and sweep, which must see the
// records that have expired but are still on disk: the engine hides a
// record whose expiry is at or before its clock, so set to seeAll it shows
// every record, and Records yields the expired ones too. Set to a time, it
// is the time a sweep judges expiry by, so that the sweep removes exactly
// the records counted as expired at that time. It is safe for concurrent
// use.
type clock struct {
	ns atomic.Int64 // Unix nanoseconds
}

// seeAll is the clock's setting before every record's expiry.
const seeAll = math.MinInt64

// newClock returns a clock set to ns, in Unix nanoseconds.
func newClock(ns int64) *clock {
	c := new(clock)
	c.ns.Store(ns)
	return c
}

func (c *clock) now() time.Time  { return time.Unix(0, c.ns.Load()) }
func (c *clock) set(t time.Time) { c.ns.Store(t.UnixNano()) }

// openReadOnly opens the idem database in dir for reading only: nothing in
// dir is created or changed. Its errors are worded for the operator. clk is
// the engine's clock; nil means time.Now.
func openReadOnly(dir string, clk *clock) (*idem.Engine, error) {
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	e, err := idem.Open(dir, engineOptions(true, clk))
	if err != nil {
		return nil, openError(dir, err)
	}
	return e, nil
}

// openWritable opens the idem database in dir for writing. It first opens
// it read-only and closes it, so that a directory that holds no idem
// database is refused without a change: Open for writing would create a
// database in it. clk is the engine's clock; nil means time.Now.
func openWritable(dir string, clk *clock) (*idem.Engine, error) {
	e, err := openReadOnly(dir, nil)
	if err != nil {
		return nil, err
	}
	if err := e.Close(); err != nil {
		return nil, err
	}
	e, err = idem.Open(dir, engineOptions(false, clk))
	if err != nil {
		return nil, openError(dir, err)
	}
	return e, nil
}

// checkDir returns an error if dir does not exist or is not a directory.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s does not exist", dir)
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory (it should be an idem database's directory)", dir)
	}
	return nil
}

// openError words an error of idem.Open for the operator.
func openError(dir string, err error) error {
	switch {
	case errors.Is(err, idem.ErrLocked):
		return fmt.Errorf("%s is in use by another process (close it first)", dir)
	case errors.Is(err, idem.ErrNotDatabase):
		// The engine says "idem: not an idem database: DIR: reason".
		reason := err.Error()[strings.LastIndex(err.Error(), ": ")+2:]
		return fmt.Errorf("%s is not an idem database (%s)", dir, reason)
	}
	return err
}

// closeEngine closes e and turns a failure into the command's failure,
// unless the command has already failed.
func (c *cli) closeEngine(e *idem.Engine, code int) int {
	if err := e.Close(); err != nil && code == exitOK {
		return c.fail(err)
	}
	return code
}

// isTerminal reports whether f is an *os.File on a character device other
// than the null device: a terminal, in practice.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok || file == nil {
		return false
	}
	fi, err := file.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}

// The display of records.

// timeLayout is how times are shown: RFC 3339 in UTC, to the second.
const timeLayout = "2006-01-02T15:04:05Z07:00"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// relative returns how far t is from now, as "in 23h59m" or "3m ago".
func relative(t, now time.Time) string {
	d := t.Sub(now)
	if d >= 0 {
		return "in " + roughDuration(d)
	}
	return roughDuration(-d) + " ago"
}

// roughDuration rounds d for a reader: seconds under an hour, minutes
// under 48 hours, days beyond.
func roughDuration(d time.Duration) string {
	switch {
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	return fmt.Sprintf("%dd", int64(d/(24*time.Hour)))
}

// displayKey returns key as it is when it is printable and has no spaces,
// else quoted as a Go string, so that a table's columns stay apart.
func displayKey(key string) string {
	if key == "" || !utf8.ValidString(key) {
		return strconv.Quote(key)
	}
	for _, r := range key {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) || r == '"' {
			return strconv.Quote(key)
		}
	}
	return key
}

// isText reports whether b is UTF-8 text that can be shown as it is:
// printable characters, tabs and line breaks.
func isText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}

// formatBytes returns n bytes in binary units, as "1.5 MiB".
func formatBytes(n int64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	s := fmt.Sprintf("%d B", n)
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	v := float64(n)
	for _, u := range units {
		if v < 1024 {
			break
		}
		v /= 1024
		s = fmt.Sprintf("%.1f %s", v, u)
	}
	if neg {
		return "-" + s
	}
	return s
}

// recordSize returns the size shown for a record: its value's length, or
// its error message's for a failed record; -1 for a record with neither
// (in flight or interrupted).
func recordSize(r *idem.Record) int {
	switch r.State {
	case idem.StateCompleted:
		return len(r.Value)
	case idem.StateFailed:
		return len(r.Err)
	}
	return -1
}
