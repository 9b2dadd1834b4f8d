package idempg

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkv/idem"
)

// Defaults of Options.
const (
	// DefaultTable is the table of Options whose Table is empty.
	DefaultTable = "idem_records"
	// DefaultLivenessWindow is the liveness window of Options whose
	// LivenessWindow is zero. A heartbeat is written every window/6, so a
	// live engine's heartbeat lapses only if the database is out of its
	// reach for more than 12.5 s: longer than a restart of the server.
	DefaultLivenessWindow = 15 * time.Second
	// DefaultTimeout is the time a store operation may take, retries
	// included, when Options.Timeout is zero.
	DefaultTimeout = 20 * time.Second
	// DefaultSweepBatch is the number of expired records a sweep deletes
	// per statement when Options.SweepBatch is zero.
	DefaultSweepBatch = 1000
)

// format is the comment Open puts on the records table, and checks on a
// table that exists: the table's layout, which Open can use.
const format = "idem records, format 1"

// Options configure Open. A nil *Options, and every zero field, means the
// default. Open copies the options; it never modifies the caller's.
type Options struct {
	// Table is the name of the records table, optionally qualified by its
	// schema ("idem_records" or "app.idem_records"): lowercase letters,
	// digits and '_', starting with a letter or '_', at most 48 bytes per
	// part (the names of its companions below add a suffix). Open creates
	// it, and its companions, if it does not exist: see the package
	// documentation for the schema. If empty, DefaultTable
	// ("idem_records").
	//
	// A table that exists must be one that Open created (its comment says
	// so, and which layout it has): Open refuses any other. The names are
	// not quoted: a reserved word (user, order) is refused by the server
	// when Open creates the table.
	Table string

	// Engine holds the engine's options that do not depend on the store:
	// TTL, NoWait, RetryInterrupted, MaxKeySize, MaxValueSize, Now,
	// Logger, SweepInterval. Those of the Pebble store (Durability,
	// CacheSize, FS, ReadOnly) and RecordCacheSize must be left zero:
	// Open returns an error naming the first that is set. If nil, the
	// defaults; besides, Logger, if nil, is the engine's default (Warn
	// and above to standard error), which the store logs to as well.
	Engine *idem.Options

	// LivenessWindow is how long after an engine stops (killed, or cut off
	// from the database) other engines report its claims as interrupted:
	// its heartbeat is written every LivenessWindow/6 on a connection of
	// its own, and lapses LivenessWindow after the last one, by the
	// database server's clock. It should exceed the longest time the
	// database may be out of reach while the engine runs (a restart, a
	// failover), or a live engine may be declared dead meanwhile. At
	// least 1 s. If 0, DefaultLivenessWindow (15 s).
	LivenessWindow time.Duration

	// Timeout bounds each store operation, retries included: a statement
	// that fails without effect (the server restarting, no connection to
	// be had, a serialization failure) is retried until it succeeds or
	// Timeout has passed (or the caller's context ends), and Do then
	// returns an error matching context.DeadlineExceeded. The store checks
	// its operations every Timeout/16 (at most once a millisecond) rather
	// than give each a timer of its own, which costs a wakeup of an idle
	// thread per operation: a statement is interrupted up to that long
	// after Timeout has passed (and then as soon as pgx can interrupt
	// it); an operation whose caller's context has an earlier deadline
	// runs on that context alone. It bounds Open's work too. If 0,
	// DefaultTimeout (20 s).
	Timeout time.Duration

	// SweepBatch is the most expired records one statement of a sweep
	// deletes; a sweep runs statements until fewer are left. Smaller
	// batches hold fewer row locks at once, larger ones make fewer round
	// trips. If 0, DefaultSweepBatch (1000).
	SweepBatch int
}

// tableName is what Options.Table may be.
var tableName = regexp.MustCompile(`^([a-z_][a-z0-9_]{0,47}\.)?[a-z_][a-z0-9_]{0,47}$`)

// withDefaults returns a copy of o with the defaults filled in, or an error
// naming the first invalid field.
func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.LivenessWindow == 0 {
		c.LivenessWindow = DefaultLivenessWindow
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.SweepBatch == 0 {
		c.SweepBatch = DefaultSweepBatch
	}
	switch {
	case !tableName.MatchString(c.Table):
		return c, fmt.Errorf("idempg: Options.Table %q is not a valid table name (lowercase letters, digits and '_', optionally schema.table, at most 48 bytes a part)", c.Table)
	case c.LivenessWindow < time.Second:
		return c, fmt.Errorf("idempg: Options.LivenessWindow %v is below 1s", c.LivenessWindow)
	case c.Timeout < 0:
		return c, fmt.Errorf("idempg: Options.Timeout is negative (%v)", c.Timeout)
	case c.SweepBatch < 0:
		return c, fmt.Errorf("idempg: Options.SweepBatch is negative (%d)", c.SweepBatch)
	}
	return c, nil
}

// Open returns an engine whose records are in the PostgreSQL table
// opts.Table, reached through pool, creating the table and its companions
// if they do not exist. Engines opened on the same table, in any number of
// processes, share its records: see the package documentation. A nil opts
// means the defaults. ctx bounds Open's work, as does Options.Timeout.
//
// Besides the pool's connections, the engine keeps two of its own, made
// from the pool's configuration (pool.Config().ConnConfig): one that writes
// its heartbeat, so that a pool that is exhausted by the service's own
// queries cannot let a live engine's heartbeat lapse, and one that LISTENs
// for the changes of keys the engine waits on. Allow for them in the
// server's max_connections.
//
// The engine uses pool and never closes it; Engine.Close stops the store's
// goroutines, closes its own two connections and marks the engine's
// heartbeat dead, so that other engines report its claims as interrupted at
// once. Close pool after the engine.
//
// Unknown outcomes: a write whose connection broke before its answer may or
// may not have been committed. The store sends it again (each write has an
// id of its own, which a read recognises, and is conditional on the
// record's revision, so it never applies twice) until it gets a definite
// answer or Options.Timeout passes; then Do returns an error. A claim (the
// in-flight marker written before fn runs) whose outcome is still unknown
// then goes on in the background, and is deleted if it turns out to be
// stored, so that other engines do not wait on a claim whose fn never ran.
// So do the writes that take a claim of this engine out of the others' way.
// Close gives those writes one last try, and returns an error if some are
// still unresolved.
func Open(ctx context.Context, pool *pgxpool.Pool, opts *Options) (*idem.Engine, error) {
	s, eo, err := openStore(ctx, pool, opts)
	if err != nil {
		return nil, err
	}
	return idem.New(s, &eo)
}

// openStore is Open's work, but idem.New: it returns the store and the
// engine's options, with the defaults that Open sets.
func openStore(ctx context.Context, pool *pgxpool.Pool, opts *Options) (*store, idem.Options, error) {
	var eo idem.Options
	o, err := opts.withDefaults()
	if err != nil {
		return nil, eo, err
	}
	if pool == nil {
		return nil, eo, errors.New("idempg: Open called with a nil *pgxpool.Pool")
	}
	if o.Engine != nil {
		eo = *o.Engine
	}
	if eo.Logger == nil {
		// The engine's own default, made here so that the store logs to
		// the same place.
		eo.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	s := newStore(pool, &o, eo.Logger)
	if err := s.migrate(ctx); err != nil {
		return nil, eo, err
	}
	var oid uint32
	if err := pool.QueryRow(ctx, `SELECT $1::regclass::oid`, s.names.table).Scan(&oid); err != nil {
		return nil, eo, fmt.Errorf("idempg: looking for table %s: %w", s.names.table, err)
	}
	s.names.channel = channelOf(oid)
	if err := s.register(ctx); err != nil {
		return nil, eo, err
	}
	s.start()
	return s, eo, nil
}

// newOwner returns a random owner: nonzero, and below 2^63, so that it is
// also a positive bigint.
func newOwner() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand does not fail on supported systems
		}
		if o := binary.LittleEndian.Uint64(b[:]) &^ (1 << 63); o != 0 {
			return o
		}
	}
}

// names are the schema objects of a records table.
type names struct {
	table   string // the records
	engines string // the engines' heartbeats
	rev     string // the sequence of revisions
	expires string // the index on expiry, without its schema
	notify  string // the trigger function
	channel string // the channel of NOTIFY and LISTEN, set by Open: see channelOf
}

func namesOf(table string) names {
	schema, base := "", table
	for i := range len(table) {
		if table[i] == '.' {
			schema, base = table[:i+1], table[i+1:]
		}
	}
	return names{
		table:   table,
		engines: table + "_engines",
		rev:     table + "_rev",
		expires: base + "_expires",
		notify:  schema + base + "_notify",
	}
}

// channelOf returns the channel of NOTIFY of the records table whose oid is
// oid, as its triggers name it ('idem_' || TG_RELID): the same however the
// engines spell the table ("t", "public.t"), and short enough for a
// channel (below 64 bytes) whatever the table's name.
func channelOf(oid uint32) string { return "idem_" + strconv.FormatUint(uint64(oid), 10) }

// migrate creates the records table and its companions if they do not
// exist, or checks that the table is one that Open created. Concurrent
// Opens on one database take turns through an advisory lock.
func (s *store) migrate(ctx context.Context) error {
	n := s.names
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return fmt.Errorf("idempg: connecting: %w", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit, a no-op
	var version int
	if err := tx.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return fmt.Errorf("idempg: reading the server's version: %w", err)
	}
	if version < 110000 {
		return fmt.Errorf("idempg: PostgreSQL %d.%d is too old: 11 or later is needed", version/10000, version%10000/100)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "idempg migrate "+n.table); err != nil {
		return fmt.Errorf("idempg: locking the schema: %w", err)
	}
	var comment *string
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL, obj_description(to_regclass($1), 'pg_class')`, n.table).Scan(&exists, &comment); err != nil {
		return fmt.Errorf("idempg: looking for table %s: %w", n.table, err)
	}
	if exists {
		if comment == nil || *comment != format {
			got := "none"
			if comment != nil {
				got = strconv.Quote(*comment)
			}
			return fmt.Errorf("idempg: table %s exists but was not created by idempg (its comment is %s, not %q); choose another Options.Table", n.table, got, format)
		}
		// The layout this version reads and writes, and its companions.
		for _, q := range []string{
			`SELECT key, rev, wid, expires, watched, record FROM ` + n.table + ` LIMIT 0`,
			`SELECT owner, expires FROM ` + n.engines + ` LIMIT 0`,
			`SELECT nextval('` + n.rev + `') LIMIT 0`,
		} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("idempg: table %s is not as idempg made it: %w", n.table, err)
			}
		}
		return tx.Commit(ctx)
	}
	for _, q := range createSQL(n) {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("idempg: creating table %s: %w", n.table, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("idempg: creating table %s: %w", n.table, err)
	}
	return nil
}

// Schema returns the statements that Open runs, in one transaction, to
// create the records table named table and its companions (see the package
// documentation), for a migration of your own; table is as
// Options.Table, "" for the default.
func Schema(table string) ([]string, error) {
	o, err := (&Options{Table: table}).withDefaults()
	if err != nil {
		return nil, err
	}
	return createSQL(namesOf(o.Table)), nil
}

// createSQL returns the statements that create a records table and its
// companions.
func createSQL(n names) []string {
	return []string{
		// key: the idempotency key, as bytes (a key need not be UTF-8).
		// rev: the record's revision: the id of the write that stored it
		// (see wid), unique among every record the table ever held, so
		// that a compare-and-set on it cannot match a record that
		// replaced the one read. (Engines of earlier versions took it
		// from the sequence below.)
		// wid: the id of the write that stored the row, a random number
		// from 1 to 2^63-1, by which a write sent again after a lost
		// answer recognises itself.
		// expires: the record's expiry (Unix ns) rounded up to a whole
		// second, for the sweeper (see sweepAt).
		// watched: an engine waits on this revision (see Watch): its
		// change is NOTIFYed.
		// record: the record, as idem.AppendRecord encodes it.
		`CREATE TABLE ` + n.table + ` (
			key bytea PRIMARY KEY,
			rev bigint NOT NULL,
			wid bigint NOT NULL,
			expires bigint NOT NULL,
			watched boolean NOT NULL DEFAULT false,
			record bytea NOT NULL
		)`,
		`CREATE INDEX ` + n.expires + ` ON ` + n.table + ` (expires)`,
		// The revisions of engines of earlier versions, kept so that
		// they can share a table with this one (during an upgrade).
		`CREATE SEQUENCE ` + n.rev + ` AS bigint`,
		`CREATE TABLE ` + n.engines + ` (
			owner bigint PRIMARY KEY,
			expires timestamptz NOT NULL
		)`,
		`CREATE FUNCTION ` + n.notify + `() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_notify('idem_' || TG_RELID::text, OLD.rev::text);
			RETURN NULL;
		END
		$$`,
		`CREATE TRIGGER changed AFTER UPDATE ON ` + n.table + `
			FOR EACH ROW WHEN (OLD.watched AND NEW.rev <> OLD.rev)
			EXECUTE FUNCTION ` + n.notify + `()`,
		`CREATE TRIGGER deleted AFTER DELETE ON ` + n.table + `
			FOR EACH ROW WHEN (OLD.watched)
			EXECUTE FUNCTION ` + n.notify + `()`,
		`COMMENT ON TABLE ` + n.table + ` IS '` + format + `'`,
	}
}

// register inserts the engine's heartbeat, with a fresh owner if its first
// is taken.
func (s *store) register(ctx context.Context) error {
	for {
		var got int64
		err := s.pool.QueryRow(ctx, `INSERT INTO `+s.names.engines+` (owner, expires)
			VALUES ($1, clock_timestamp() + $2 * interval '1 microsecond')
			ON CONFLICT (owner) DO NOTHING RETURNING owner`,
			int64(s.owner), s.window.Microseconds()).Scan(&got)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			s.owner = newOwner()
			continue
		case err != nil:
			return fmt.Errorf("idempg: writing the engine's heartbeat: %w", err)
		}
		return nil
	}
}
