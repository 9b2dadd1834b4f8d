package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/idemkv/idem"
)

// The commands that write: forget and sweep. Each first opens the database
// read-only (openWritable), so that a directory without an idem database is
// refused unchanged, then opens it for writing, which advances its epoch.
// forget also works through a running service (--url) or an Extension's
// engine (--nats), on a database that others change meanwhile: it checks
// each key again as it forgets it (see remote.forget and shared.forget).

// forgetCommand is the forget subcommand.
func forgetCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int {
	c := newCLI("forget", "forget DIR|--url URL KEY... [--yes] [--any-state]",
		`Forget deletes the records of the given keys from the idem database in DIR,
so that the next Do for each runs fn again. It is how an interrupted key
(see 'idem interrupted') is released once its outcome has been reconciled.

Forget checks every key first and changes nothing if one has no record, or
is not interrupted (forgetting a completed or failed key lets its operation
run a second time: pass --any-state to do that on purpose). It then lists the
keys and asks for confirmation on the terminal; without a terminal on
standard input it refuses (status 2) unless --yes is given. The database must
not be open in another process, unless --url names the admin handler of the
running service that has it open: the service then forgets each key, and
checks again, as it does so, that the key is still interrupted.`,
		`idem forget /var/lib/payments/idem pay-000042 pay-000043
idem interrupted /var/lib/payments/idem --json | jq -r .key | xargs idem forget /var/lib/payments/idem --yes
idem forget --url http://127.0.0.1:9090/idem pay-000042`,
		stdin, stdout, stderr)
	var yes, anyState bool
	c.flags.BoolVar(&yes, "yes", false, "forget without asking for confirmation")
	c.flags.BoolVar(&anyState, "any-state", false, "also forget keys that are not interrupted (completed, failed)")
	c.ext = ext
	t, keys, code, ok := c.parseTarget(args, -1, "the database's directory and at least one key", "at least one key with --url")
	if !ok {
		return code
	}
	keys = dedupe(keys)
	for _, k := range keys {
		if k == "" {
			return c.usageError("a key is empty")
		}
	}

	// Check every key on a read-only engine, so that nothing is locked
	// while the operator answers.
	db, err := c.openDB(ctx, t, false)
	if err != nil {
		return c.fail(err)
	}
	recs, code := c.checkForget(db, keys, anyState)
	if code = c.closeDB(db, code); code != exitOK {
		return code
	}

	if !yes {
		if code, ok := c.confirmForget(recs); !ok {
			return code
		}
	}

	db, err = c.openDB(ctx, t, true)
	if err != nil {
		return c.fail(err)
	}
	return c.closeDB(db, c.forget(db, keys, anyState))
}

// dedupe returns keys without repeats, in their first order.
func dedupe(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	out := keys[:0:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// checkForget looks keys up and returns their records, or a failure naming
// the keys that have no record or are not interrupted (unless anyState).
func (c *cli) checkForget(db database, keys []string, anyState bool) ([]idem.Record, int) {
	var (
		recs             []idem.Record
		missing, refused []string
	)
	for _, k := range keys {
		r, err := db.lookup(k)
		switch {
		case errors.Is(err, idem.ErrNotFound):
			missing = append(missing, displayKey(k))
			continue
		case errors.Is(err, idem.ErrCorrupt):
			if !anyState {
				refused = append(refused, displayKey(k)+" (corrupt)")
			}
			r = idem.Record{Key: k}
		case err != nil:
			return nil, c.fail(err)
		case r.State != idem.StateInterrupted && !anyState:
			refused = append(refused, fmt.Sprintf("%s (%s)", displayKey(k), r.State))
		}
		recs = append(recs, r)
	}
	switch {
	case len(missing) > 0:
		return nil, c.failf("no record for %s (none, or expired); nothing forgotten", strings.Join(missing, ", "))
	case len(refused) > 0:
		return nil, c.failf("not interrupted: %s; forgetting lets the next call run fn again: pass --any-state to do that; nothing forgotten", strings.Join(refused, ", "))
	}
	return recs, exitOK
}

// confirmForget lists recs on standard error and asks whether to forget
// them. It returns ok true on "y" or "yes"; otherwise the command's status.
func (c *cli) confirmForget(recs []idem.Record) (code int, ok bool) {
	if !isTerminal(c.stdin) {
		return c.usageError("standard input is not a terminal, so forget cannot ask for confirmation: pass --yes"), false
	}
	fmt.Fprintf(c.stderr, "The next call for each of these keys will run fn again:\n")
	tw := tabwriter.NewWriter(c.stderr, 0, 8, 2, ' ', 0)
	for _, r := range recs {
		if r.State == 0 {
			fmt.Fprintf(tw, "  %s\t%s\n", displayKey(r.Key), stateCorrupt)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\tcreated %s\n", displayKey(r.Key), r.State, formatTime(r.CreatedAt))
	}
	tw.Flush()
	fmt.Fprintf(c.stderr, "Forget %d %s? [y/N] ", len(recs), plural(len(recs), "record", "records"))
	line, err := bufio.NewReader(c.stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(c.stderr)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return exitOK, true
	}
	return c.failf("not confirmed; nothing forgotten"), false
}

// forget forgets keys on a writable database, checking each again: another
// process may have changed it between the check and now.
func (c *cli) forget(db database, keys []string, anyState bool) int {
	for _, k := range keys {
		r, err := db.lookup(k)
		switch {
		case errors.Is(err, idem.ErrNotFound):
			fmt.Fprintf(c.stdout, "%s: no record any more\n", displayKey(k))
			continue
		case errors.Is(err, idem.ErrCorrupt):
			r = idem.Record{Key: k}
		case err != nil:
			return c.fail(err)
		case r.State != idem.StateInterrupted && !anyState:
			return c.failf("%s is now %s; not forgotten", displayKey(k), r.State)
		}
		if err := db.forget(k, anyState); err != nil {
			return c.failf("forgetting %s: %w", displayKey(k), err)
		}
		state := stateCorrupt
		if r.State != 0 {
			state = r.State.String()
		}
		fmt.Fprintf(c.stdout, "forgot %s (%s)\n", displayKey(k), state)
	}
	return exitOK
}

// sweepCommand is the sweep subcommand.
func sweepCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, _ *Extension) int {
	c := newCLI("sweep", "sweep DIR",
		`Sweep removes now the records of the idem database in DIR that have expired,
as the engine's background sweeper does, then compacts the database so that
their space is reclaimed at once. It reports the records removed, with the
size of their keys and values, the records kept, and the disk usage (every
file in the directory) before and after, by kind of file. The space reclaimed
differs from the size of the records removed: Pebble compresses what it
stores, and opening the database flushes its write-ahead log into tables and
lets it delete old log files, which counts too. The database must not be open
in another process.`,
		`idem sweep /var/lib/payments/idem`, stdin, stdout, stderr)
	dir, code, ok := c.parseDir(args)
	if !ok {
		return code
	}
	before := dirFiles(dir)
	clk := newClock(seeAll)
	e, err := openWritable(dir, clk)
	if err != nil {
		return c.fail(err)
	}
	res, err := sweepAndCompact(ctx, e, clk, time.Now())
	if cerr := e.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return c.failf("%w (after removing %d expired records)", err, res.removed)
	}
	after := dirFiles(dir)
	if res.removed != res.counted {
		// Nothing else has the database open and the clock is fixed: the
		// sweep removes what the count found, unless the engine judges
		// expiry otherwise.
		fmt.Fprintf(c.stderr, "idem sweep: the sweep removed %d records where %d had expired when counted; the size shown is that of the %d\n",
			res.removed, res.counted, res.counted)
	}

	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "removed\t%d\t(%s expired by %s: %s of keys and values)\n",
		res.removed, plural(res.removed, "record", "records"), formatTime(res.now), formatBytes(res.removedBytes))
	fmt.Fprintf(tw, "kept\t%d\t(live %s", res.kept, plural(res.kept, "record", "records"))
	if res.corrupt > 0 {
		fmt.Fprintf(tw, ", and %d corrupt, which only forget removes", res.corrupt)
	}
	fmt.Fprint(tw, ")\n")
	fmt.Fprintf(tw, "disk usage\t%s -> %s\t(every file in the directory: before the sweep, and after it and a compaction)\n",
		formatBytes(sumFiles(before)), formatBytes(sumFiles(after)))
	for i := range before {
		fmt.Fprintf(tw, "  %s\t%s -> %s\n", before[i].kind, formatBytes(before[i].bytes), formatBytes(after[i].bytes))
	}
	reclaimed := sumFiles(before) - sumFiles(after)
	note := "(the files' difference, not the records' size: Pebble compresses its tables, and opening the database flushes its write-ahead log into them)"
	if reclaimed < 0 {
		note = "(the database grew: the sweep's deletions and the new log and tables outweigh what was freed)"
	}
	fmt.Fprintf(tw, "reclaimed\t%s\t%s\n", formatBytes(reclaimed), note)
	fmt.Fprintf(tw, "compactions\t%d\n", res.compactions)
	fmt.Fprintf(tw, "read amplification\t%d\n", res.readAmp)
	if err := tw.Flush(); err != nil {
		return c.fail(err)
	}
	return exitOK
}

// sweepResult holds the figures of a sweep.
type sweepResult struct {
	now          time.Time // the records expired by now are removed
	removed      int       // records removed
	counted      int       // records expired by now, counted before the sweep
	removedBytes int64     // the keys, values and error messages of those counted
	kept         int       // live records left
	corrupt      int       // corrupt records left
	compactions  uint64
	readAmp      uint64
}

// sweepAndCompact removes the records of e that expired by now, and
// compacts e. e's clock is clk, at seeAll: first it reads every record to
// count the expired ones and their size, then it sets clk to now and
// sweeps, so that the sweep removes exactly the records counted.
func sweepAndCompact(ctx context.Context, e *idem.Engine, clk *clock, now time.Time) (sweepResult, error) {
	res := sweepResult{now: now}
	rs, err := gatherStats(e.Records(""), now)
	if err != nil {
		return res, err
	}
	res.corrupt = rs.byState[stateCorrupt]
	res.kept = rs.total - res.corrupt
	res.counted, res.removedBytes = rs.expired, rs.expiredBytes
	clk.set(now)
	if res.removed, err = e.Sweep(ctx); err != nil {
		return res, err
	}
	if err := e.Compact(ctx); err != nil {
		return res, err
	}
	st := e.Stats()
	res.compactions, res.readAmp = st.Compactions, st.ReadAmplification
	return res, nil
}

// sumFiles returns the total size of files.
func sumFiles(files []fileGroup) int64 {
	var n int64
	for _, g := range files {
		n += g.bytes
	}
	return n
}
