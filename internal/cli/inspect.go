package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// The commands that only read: stats, ls, get and interrupted. Each opens
// the database with Options.ReadOnly, which changes nothing in the
// directory. A read-only engine reads every in-flight marker as
// interrupted: the directory is not open in another process (it would be
// locked), so no fn is running for it. With --url, each reads the database
// of a running service through its admin handler instead, and writes the
// same output (see database.go); with the flag of an Extension (--nats),
// through an engine that the extension opens beside the services' engines
// (see extension.go).

// stateCorrupt is the state ls and stats show for a record that cannot be
// decoded (an error matching idem.ErrCorrupt).
const stateCorrupt = "corrupt"

// statsCommand is the stats subcommand.
func statsCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int {
	c := newCLI("stats", "stats DIR | stats --url URL",
		`Stats reads the idem database in DIR, read-only, and reports its live
records by state, the stored size of their keys and values, the oldest and
newest expiry, the records that have expired but are still on disk (the next
sweep removes them: 'idem sweep DIR' does it now), and Pebble's figures: disk
usage (with the files behind it), read amplification and compactions.

With --url, it asks the running service that has the database open, through
its admin handler: the same figures, but for the expired records (the engine
hides them) and the files, and the service's counters of calls since it
opened the database. Counting the records reads every one of them, as on a
directory: on a large database, that is a full scan of the service's store.`,
		`idem stats /var/lib/payments/idem
idem stats --url http://127.0.0.1:9090/idem`, stdin, stdout, stderr)
	c.ext = ext
	t, _, code, ok := c.parseTarget(args, 0, "one argument, the database's directory", "no argument with --url")
	if !ok {
		return code
	}
	if t.ext != nil {
		return c.sourceStats(ctx, t)
	}
	if t.url != "" {
		r, err := newRemote(ctx, t.url, nil)
		if err != nil {
			return c.fail(err)
		}
		defer r.close()
		st, err := r.stats(true)
		if err != nil {
			return c.fail(err)
		}
		rs, err := adminRecordStats(st.Records)
		if err != nil {
			return c.fail(err)
		}
		return c.writeStats(statsView{target: t, rs: rs, diskUsage: st.DiskUsage, readAmp: st.ReadAmplification, compactions: st.Compactions, service: st}, time.Now())
	}
	e, err := openReadOnly(t.dir, newClock(seeAll))
	if err != nil {
		return c.fail(err)
	}
	return c.closeEngine(e, c.stats(e, t.dir, time.Now()))
}

// recordStats are the figures stats and sweep gather from the records.
type recordStats struct {
	byState          map[string]int // live records by state, and corrupt ones
	total            int            // live and corrupt records
	keyBytes         int64          // of the live records
	valueBytes       int64          // values and error messages of the live records
	oldest, newest   time.Time      // expiries of the live records
	oldestK, newestK string

	expired      int   // records expired by now, not swept yet
	expiredBytes int64 // their keys, values and error messages
}

// gatherStats reads the records of seq, which must include the expired ones
// (from an engine whose clock is at seeAll), and sorts them into live and
// expired by now, as the engine does: a record expires when its expiry is
// at or before the clock.
func gatherStats(seq func(func(idem.Record, error) bool), now time.Time) (recordStats, error) {
	rs := recordStats{byState: make(map[string]int)}
	for r, err := range seq {
		if errors.Is(err, idem.ErrCorrupt) {
			rs.byState[stateCorrupt]++
			rs.total++
			continue
		}
		if err != nil {
			return rs, err
		}
		size := int64(len(r.Key)) + int64(max(recordSize(&r), 0))
		if !r.ExpiresAt.After(now) {
			rs.expired++
			rs.expiredBytes += size
			continue
		}
		rs.total++
		rs.byState[r.State.String()]++
		rs.keyBytes += int64(len(r.Key))
		rs.valueBytes += int64(max(recordSize(&r), 0))
		if rs.oldest.IsZero() || r.ExpiresAt.Before(rs.oldest) {
			rs.oldest, rs.oldestK = r.ExpiresAt, r.Key
		}
		if rs.newest.IsZero() || r.ExpiresAt.After(rs.newest) {
			rs.newest, rs.newestK = r.ExpiresAt, r.Key
		}
	}
	return rs, nil
}

// stats writes the figures of e, whose clock is at seeAll, with the records
// that expired by now counted apart.
func (c *cli) stats(e *idem.Engine, dir string, now time.Time) int {
	rs, err := gatherStats(e.Records(""), now)
	if err != nil {
		return c.fail(err)
	}
	st := e.Stats()
	return c.writeStats(statsView{target: target{dir: dir}, rs: rs, diskUsage: st.DiskUsage, readAmp: st.ReadAmplification, compactions: st.Compactions, files: dirFiles(dir)}, now)
}

// sourceStats writes the figures of t's database, which an extension
// opens: those of its records, as the engine shows them (without the
// expired ones), and the extension's.
func (c *cli) sourceStats(ctx context.Context, t target) int {
	src, err := c.openSource(ctx, t, false)
	if err != nil {
		return c.fail(err)
	}
	db := shared{src}
	now := time.Now()
	rs, err := gatherStats(src.Engine.Records(""), now)
	if err != nil {
		return c.closeDB(db, c.fail(err))
	}
	var figures []Figure
	if src.Figures != nil {
		if figures, err = src.Figures(); err != nil {
			return c.closeDB(db, c.fail(err))
		}
	}
	return c.closeDB(db, c.writeStats(statsView{target: t, rs: rs, name: src.Name, figures: figures}, now))
}

// statsView is what stats shows: the figures of a directory, those of a
// service (which has no expired records to count, no files to show, and
// counters of calls), or those of an extension's database (its own figures
// after the records').
type statsView struct {
	target
	rs                              recordStats
	diskUsage, readAmp, compactions uint64
	files                           []fileGroup          // a directory's
	service                         *idemhttp.AdminStats // a service's; nil for a directory
	name                            string               // an extension's database's (Source.Name)
	figures                         []Figure             // an extension's database's (Source.Figures)
}

// writeStats writes v as stats shows it, at now.
func (c *cli) writeStats(v statsView, now time.Time) int {
	rs := v.rs
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	switch {
	case v.service != nil:
		fmt.Fprintf(tw, "service\t%s\n", v.url)
	case v.ext != nil:
		fmt.Fprintf(tw, "database\t%s\n", v.name)
	default:
		fmt.Fprintf(tw, "database\t%s\n", v.dir)
	}
	fmt.Fprintf(tw, "records\t%d\n", rs.total)
	for _, s := range []string{"completed", "failed", "in-flight", "interrupted", stateCorrupt} {
		if n := rs.byState[s]; n > 0 || (s != stateCorrupt && s != "in-flight") {
			fmt.Fprintf(tw, "  %s\t%d\n", s, n)
		}
	}
	fmt.Fprintf(tw, "keys\t%s\t(stored size, before compression)\n", formatBytes(rs.keyBytes))
	fmt.Fprintf(tw, "values\t%s\t(values and error messages)\n", formatBytes(rs.valueBytes))
	if rs.total > rs.byState[stateCorrupt] {
		fmt.Fprintf(tw, "oldest expiry\t%s\t(%s, key %s)\n", formatTime(rs.oldest), relative(rs.oldest, now), displayKey(rs.oldestK))
		fmt.Fprintf(tw, "newest expiry\t%s\t(%s, key %s)\n", formatTime(rs.newest), relative(rs.newest, now), displayKey(rs.newestK))
	} else {
		fmt.Fprint(tw, "oldest expiry\t-\n")
		fmt.Fprint(tw, "newest expiry\t-\n")
	}
	if v.ext != nil {
		for _, f := range v.figures {
			if f.Note == "" {
				fmt.Fprintf(tw, "%s\t%s\n", f.Name, f.Value)
			} else {
				fmt.Fprintf(tw, "%s\t%s\t(%s)\n", f.Name, f.Value, f.Note)
			}
		}
		return c.endStats(tw, v)
	}
	switch {
	case v.service != nil:
		fmt.Fprintf(tw, "expired\t-\t(not visible through the service: its engine hides expired records, and its sweeper removes them; %d swept since it opened the database)\n",
			v.service.Swept)
	case rs.expired > 0:
		fmt.Fprintf(tw, "expired\t%d\t(not swept yet: %s of keys and values that the next sweep removes; 'idem sweep %s' does it now)\n",
			rs.expired, formatBytes(rs.expiredBytes), v.dir)
	default:
		fmt.Fprint(tw, "expired\t0\t(none waiting for a sweep)\n")
	}
	fmt.Fprintf(tw, "disk usage\t%s\t(%d bytes: Pebble's count of its tables and log)\n", formatBytes(int64(v.diskUsage)), v.diskUsage)
	if v.service == nil {
		var total fileGroup
		for _, f := range v.files {
			total.count += f.count
			total.bytes += f.bytes
		}
		fmt.Fprintf(tw, "files\t%s\t(%d in the directory)\n", formatBytes(total.bytes), total.count)
		for _, f := range v.files {
			fmt.Fprintf(tw, "  %s\t%s\t(%d %s)\n", f.kind, formatBytes(f.bytes), f.count, plural(f.count, "file", "files"))
		}
	}
	fmt.Fprintf(tw, "read amplification\t%d\t(sstable levels a read may visit)\n", v.readAmp)
	if s := v.service; s != nil {
		fmt.Fprintf(tw, "compactions\t%d\t(since the service opened the database)\n", v.compactions)
		fmt.Fprintf(tw, "calls\t%d\t(Do calls since the service opened the database)\n", s.Calls)
		for _, n := range []struct {
			name  string
			count uint64
			note  string
		}{
			{"executions", s.Executions, "fn ran"},
			{"replays", s.Replays, "answered with a stored outcome, or a concurrent call's"},
			{"waits", s.Waits, "waited for a concurrent call of the key"},
			{"conflicts", s.Conflicts, "ErrInFlight"},
			{"mismatches", s.Mismatches, "ErrFingerprintMismatch"},
			{"interrupted", s.Interrupted, "ErrInterrupted: met a key left in flight by a crash"},
		} {
			fmt.Fprintf(tw, "  %s\t%d\t(%s)\n", n.name, n.count, n.note)
		}
	} else {
		fmt.Fprintf(tw, "compactions\t%d\t(during this command; Pebble keeps no count across opens)\n", v.compactions)
	}
	return c.endStats(tw, v)
}

// endStats flushes the table of stats, and points at the interrupted keys
// if there are some.
func (c *cli) endStats(tw *tabwriter.Writer, v statsView) int {
	tw.Flush()
	if n := v.rs.byState["interrupted"]; n > 0 {
		fmt.Fprintf(c.stderr, "idem stats: %d interrupted %s: see 'idem interrupted %s'\n", n, plural(n, "key", "keys"), v.target)
	}
	return exitOK
}

// adminRecordStats returns the figures of a service's records as stats
// shows them.
func adminRecordStats(a *idemhttp.AdminRecordStats) (recordStats, error) {
	rs := recordStats{byState: make(map[string]int)}
	if a == nil {
		return rs, errors.New("the service sent no figures of its records")
	}
	maps.Copy(rs.byState, a.ByState)
	rs.total, rs.keyBytes, rs.valueBytes = a.Total, a.KeyBytes, a.ValueBytes
	for _, x := range []struct {
		from *idemhttp.AdminExpiry
		at   *time.Time
		key  *string
	}{{a.OldestExpiry, &rs.oldest, &rs.oldestK}, {a.NewestExpiry, &rs.newest, &rs.newestK}} {
		if x.from == nil {
			continue
		}
		*x.at, *x.key = x.from.At, x.from.Key
		if x.from.KeyBase64 != "" {
			k, err := base64.StdEncoding.DecodeString(x.from.KeyBase64)
			if err != nil {
				return rs, fmt.Errorf("the service sent a key in bad base64: %w", err)
			}
			*x.key = string(k)
		}
	}
	return rs, nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// fileGroup is the files of one kind in a database's directory.
type fileGroup struct {
	kind  string
	count int
	bytes int64
}

// dirFiles sums the sizes of the files in dir by kind: Pebble's sstables,
// blob files (values stored apart from the sstables), write-ahead log, and
// the rest (manifest, options, markers), always in that order. A file that
// cannot be read is left out: the figures are for the reader.
func dirFiles(dir string) []fileGroup {
	groups := []fileGroup{{kind: "sstables"}, {kind: "blob files"}, {kind: "WAL"}, {kind: "other"}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return groups
	}
	for _, ent := range ents {
		info, err := ent.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		g := &groups[3]
		switch filepath.Ext(ent.Name()) {
		case ".sst":
			g = &groups[0]
		case ".blob":
			g = &groups[1]
		case ".log":
			g = &groups[2]
		}
		g.count++
		g.bytes += info.Size()
	}
	return groups
}

// parseState checks an --state value: a state's name, or "corrupt". There
// is no "in-flight" on a directory: a read-only engine reads every in-flight
// marker as interrupted. A service (remote) has some: fn is running for
// them.
func parseState(s string, remote bool) (string, bool) {
	switch s {
	case "", "completed", "failed", "interrupted", stateCorrupt:
		return s, true
	case "in-flight":
		return s, remote
	}
	return "", false
}

// lsCommand is the ls subcommand.
func lsCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int {
	c := newCLI("ls", "ls DIR|--url URL [--state S] [--prefix P] [--limit N] [--json]",
		`Ls lists the live records of the idem database in DIR, read-only, in key
order: key, state, when it was stored, when it expires, and the size of its
value (of its error message for a failed record; "-" for an interrupted one).
Keys that are not printable or hold spaces are quoted. A record that cannot be
decoded is listed with the state "corrupt". With --url, it lists those of the
running service that has the database open, through its admin handler, where
a record may also be in flight (fn running for it: state in-flight).`,
		`idem ls /var/lib/payments/idem --state failed --prefix tenant-42/ --limit 20
idem ls /var/lib/payments/idem --json | jq -r 'select(.value_size > 1000) | .key'
idem ls --url http://127.0.0.1:9090/idem --state in-flight`,
		stdin, stdout, stderr)
	var (
		state, prefix string
		limit         int
		asJSON        bool
	)
	c.ext = ext
	remoteFlags := "--url"
	if ext != nil {
		remoteFlags += " or --" + ext.Flag
	}
	c.flags.StringVar(&state, "state", "", "only records in state `S`: completed, failed, interrupted or corrupt (and in-flight with "+remoteFlags+")")
	c.flags.StringVar(&prefix, "prefix", "", "only keys that start with `P`")
	c.flags.IntVar(&limit, "limit", 0, "at most `N` records (0: all)")
	c.flags.BoolVar(&asJSON, "json", false, "write one JSON object per line instead of a table")
	t, _, code, ok := c.parseTarget(args, 0, "one argument, the database's directory", "no argument with --url")
	if !ok {
		return code
	}
	if limit < 0 {
		return c.usageError("--limit must be 0 or more, not %d", limit)
	}
	if _, ok := parseState(state, t.remote()); !ok {
		if t.remote() {
			return c.usageError("--state must be completed, failed, in-flight, interrupted or corrupt, not %q", state)
		}
		return c.usageError("--state must be completed, failed, interrupted or corrupt, not %q", state)
	}
	db, err := c.openDB(ctx, t, false)
	if err != nil {
		return c.fail(err)
	}
	keep := func(r *idem.Record, err error) bool {
		if err != nil {
			return state == "" || state == stateCorrupt
		}
		return state == "" || r.State.String() == state
	}
	n, code := c.list(db.records(prefix, state), keep, limit, asJSON, false)
	code = c.closeDB(db, code)
	if code == exitOK && n == 0 && !asJSON {
		if state != "" || prefix != "" {
			fmt.Fprintln(c.stderr, "idem ls: no live records match")
		} else {
			fmt.Fprintln(c.stderr, "idem ls: no live records")
		}
	}
	return code
}

// interruptedCommand is the interrupted subcommand.
func interruptedCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int {
	c := newCLI("interrupted", "interrupted DIR|--url URL [--json]",
		`Interrupted lists, read-only, the keys of the idem database in DIR whose fn
was running when a process stopped (crashed, or was killed): their outcome is
unknown, and Do returns ErrInterrupted for them until they expire or are
forgotten. For each, find out whether its operation took effect (the created
time is when fn started), settle it, then release the key with
'idem forget DIR KEY...' so that the next call runs fn again.

With --url, it lists those of the running service that has the database open,
through its admin handler: the service need not be stopped, and 'idem forget
--url URL KEY...' releases them.`,
		`idem interrupted /var/lib/payments/idem
idem interrupted --url http://127.0.0.1:9090/idem --json`, stdin, stdout, stderr)
	var asJSON bool
	c.flags.BoolVar(&asJSON, "json", false, "write one JSON object per line instead of a table")
	c.ext = ext
	t, _, code, ok := c.parseTarget(args, 0, "one argument, the database's directory", "no argument with --url")
	if !ok {
		return code
	}
	db, err := c.openDB(ctx, t, false)
	if err != nil {
		return c.fail(err)
	}
	keep := func(*idem.Record, error) bool { return true }
	n, code := c.list(db.interrupted(), keep, 0, asJSON, true)
	code = c.closeDB(db, code)
	if code == exitOK && !asJSON {
		if n == 0 {
			fmt.Fprintln(c.stderr, "idem interrupted: no interrupted keys")
		} else {
			fmt.Fprintf(c.stderr, "idem interrupted: %d %s; reconcile each, then: idem forget %s KEY...\n", n, plural(n, "key", "keys"), t)
		}
	}
	return code
}

// tableFlush is how many rows a table is aligned over: the table is
// written in blocks of that many rows, so that a large listing streams.
const tableFlush = 1000

// list writes the records of seq that keep accepts, at most limit of them
// (all if 0), as a table or as JSON lines, and returns how many it wrote.
// The table's header comes with its first row: no records, no table. The
// table of interrupted records has the columns that matter for them: key,
// when fn started, and when the marker expires. A record that cannot be
// decoded is listed as corrupt; another error ends the listing with a
// failure.
func (c *cli) list(seq func(func(idem.Record, error) bool), keep func(*idem.Record, error) bool, limit int, asJSON, interrupted bool) (int, int) {
	enc := json.NewEncoder(c.stdout)
	enc.SetEscapeHTML(false)
	tw := tabwriter.NewWriter(c.stdout, 0, 8, 2, ' ', 0)
	n := 0
	for r, err := range seq {
		if err != nil && !errors.Is(err, idem.ErrCorrupt) {
			tw.Flush()
			return n, c.fail(err)
		}
		if !keep(&r, err) {
			continue
		}
		switch {
		case n > 0 || asJSON:
		case interrupted:
			fmt.Fprint(tw, "KEY\tSTARTED\tEXPIRES\n")
		default:
			fmt.Fprint(tw, "KEY\tSTATE\tCREATED\tEXPIRES\tSIZE\n")
		}
		if asJSON {
			if err := enc.Encode(toJSON(&r, err, false)); err != nil {
				return n, c.fail(err)
			}
		} else if err != nil && interrupted {
			fmt.Fprintf(tw, "%s\t(%s record)\t-\n", displayKey(r.Key), stateCorrupt)
		} else if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\n", displayKey(r.Key), stateCorrupt)
		} else if interrupted {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", displayKey(r.Key), formatTime(r.CreatedAt), formatTime(r.ExpiresAt))
		} else {
			size := "-"
			if s := recordSize(&r); s >= 0 {
				size = fmt.Sprint(s)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", displayKey(r.Key), r.State, formatTime(r.CreatedAt), formatTime(r.ExpiresAt), size)
		}
		n++
		if n%tableFlush == 0 {
			tw.Flush()
		}
		if n == limit {
			break
		}
	}
	if err := tw.Flush(); err != nil {
		return n, c.fail(err)
	}
	return n, exitOK
}

// jsonRecord is a record as ls --json, interrupted --json and get --json
// write it: the object of the admin handler of idemhttp, so that a record
// reads the same from a directory and from a service.
type jsonRecord = idemhttp.AdminRecord

func toJSON(r *idem.Record, err error, withValue bool) jsonRecord {
	j := jsonRecord{Key: r.Key}
	if !utf8.ValidString(r.Key) {
		j.KeyBase64 = base64.StdEncoding.EncodeToString([]byte(r.Key))
	}
	if err != nil {
		j.State, j.Error = stateCorrupt, strings.TrimPrefix(err.Error(), "idem: ")
		return j
	}
	created, expires := r.CreatedAt.UTC(), r.ExpiresAt.UTC()
	j.State, j.Created, j.Expires, j.Error = r.State.String(), &created, &expires, r.Err
	if r.State == idem.StateCompleted {
		n := len(r.Value)
		j.ValueSize = &n
		if withValue {
			j.Value, j.ValueBase64 = textOrBase64(r.Value)
			if h, ok := decodeHTTP(r); ok {
				j.HTTP = h.toJSON()
			}
		}
	}
	return j
}

// textOrBase64 returns b as text when it is printable, else in base64.
func textOrBase64(b []byte) (text, b64 *string) {
	s := string(b)
	if isText(b) {
		return &s, nil
	}
	s = base64.StdEncoding.EncodeToString(b)
	return nil, &s
}

// getCommand is the get subcommand.
func getCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, ext *Extension) int {
	c := newCLI("get", "get DIR|--url URL KEY [--http] [--scope S] [--raw | --json]",
		`Get shows one record of the idem database in DIR, read-only, in full: its
state, when it was stored and expires, and its value, as text when it is
printable and in base64 otherwise (a failed record shows its stored error
message). A record of the idemhttp middleware shows the client's key, its
scope and the stored response (status, header fields, body) instead. --raw
writes the value's bytes alone, as stored, for a completed record. A key that
starts with "-" goes after "--": idem get DIR -- -KEY. With --url, it shows
the record as the running service that has the database open has it, through
its admin handler.

The middleware stores the response to a request under an engine key made of
the scope's length, a colon, the scope and the client's key ("0:k-1" for the
key k-1 without a scope): with --http (and --scope for a scope), KEY is the
client's key and get finds that engine key.`,
		`idem get /var/lib/payments/idem pay-000042
idem get /var/lib/payments/idem pay-000042 --raw > receipt.bin
idem get /var/lib/shop/idem --http --scope tenant-42 8e03978e-40d5-43e8-bc93-6894a57f9324
idem get --url http://127.0.0.1:9090/idem pay-000042`,
		stdin, stdout, stderr)
	var (
		raw, asJSON, httpKey bool
		scope                string
	)
	c.flags.BoolVar(&raw, "raw", false, "write the value's bytes alone, as stored")
	c.flags.BoolVar(&asJSON, "json", false, "write the record as a JSON object")
	c.flags.BoolVar(&httpKey, "http", false, "KEY is a client's Idempotency-Key: show the idemhttp middleware's record of it")
	c.flags.StringVar(&scope, "scope", "", "with --http (which it implies), the middleware's scope `S` of the client (Options.Scope)")
	c.ext = ext
	t, rest, code, ok := c.parseTarget(args, 1, "two arguments, the database's directory and a key", "one argument with --url, a key")
	if !ok {
		return code
	}
	c.flags.Visit(func(f *flag.Flag) { httpKey = httpKey || f.Name == "scope" })
	switch {
	case rest[0] == "":
		return c.usageError("the key is empty")
	case raw && asJSON:
		return c.usageError("--raw and --json exclude each other")
	}
	key := rest[0]
	if httpKey {
		key = idemhttp.EngineKey(scope, key)
	}
	db, err := c.openDB(ctx, t, false)
	if err != nil {
		return c.fail(err)
	}
	return c.closeDB(db, c.get(db, t, key, raw, asJSON, httpKey))
}

// get shows key's record. httpKey says that key was made from a client's
// key with --http.
func (c *cli) get(db database, t target, key string, raw, asJSON, httpKey bool) int {
	r, err := db.lookup(key)
	switch {
	case errors.Is(err, idem.ErrNotFound):
		if !httpKey {
			// The operator may have given a client's key, not its
			// engine key.
			alt := idemhttp.EngineKey("", key)
			if _, err := db.lookup(alt); err == nil {
				return c.failf("no record for key %s; the idemhttp middleware's record of the client key %s (no scope) is under %s: idem get %s --http %s",
					displayKey(key), displayKey(key), displayKey(alt), t, displayKey(key))
			}
		}
		return c.failf("no record for key %s (there is none, or it has expired)", displayKey(key))
	case err != nil:
		return c.fail(err)
	}
	if raw {
		if r.State != idem.StateCompleted {
			return c.failf("key %s is %s: it has no value", displayKey(key), r.State)
		}
		if _, err := c.stdout.Write(r.Value); err != nil {
			return c.fail(err)
		}
		return exitOK
	}
	if asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(toJSON(&r, nil, true)); err != nil {
			return c.fail(err)
		}
		return exitOK
	}
	now := time.Now()
	w := c.stdout
	h, isHTTP := decodeHTTP(&r)
	fmt.Fprintf(w, "key:      %s\n", displayKey(r.Key))
	if isHTTP {
		h.writeKey(w)
	}
	fmt.Fprintf(w, "state:    %s\n", r.State)
	fmt.Fprintf(w, "created:  %s (%s)\n", formatTime(r.CreatedAt), relative(r.CreatedAt, now))
	fmt.Fprintf(w, "expires:  %s (%s)\n", formatTime(r.ExpiresAt), relative(r.ExpiresAt, now))
	switch r.State {
	case idem.StateCompleted:
		fmt.Fprintf(w, "size:     %d %s", len(r.Value), plural(len(r.Value), "byte", "bytes"))
		if isHTTP {
			fmt.Fprint(w, " (the stored response, encoded)")
		}
		fmt.Fprintln(w)
		switch {
		case isHTTP:
			h.writeResponse(w)
		case len(r.Value) == 0:
			fmt.Fprint(w, "value:    (empty)\n")
		case isText(r.Value):
			fmt.Fprint(w, "value (text):\n")
			writeBlock(w, string(r.Value))
		default:
			fmt.Fprint(w, "value (base64):\n")
			writeBlock(w, base64.StdEncoding.EncodeToString(r.Value))
		}
	case idem.StateFailed:
		fmt.Fprintf(w, "error:    %s\n", r.Err)
	case idem.StateInFlight:
		fmt.Fprint(w, "value:    none yet: fn is running for this key in the service.\n")
	case idem.StateInterrupted:
		fmt.Fprintf(w, "value:    none: fn was running when a process stopped, so its outcome is unknown.\n"+
			"          Reconcile it, then: idem forget %s %s\n", t, displayKey(r.Key))
	}
	return exitOK
}

// writeBlock writes s, ending it with a newline.
func writeBlock(w io.Writer, s string) {
	io.WriteString(w, s)
	if !strings.HasSuffix(s, "\n") {
		io.WriteString(w, "\n")
	}
}
