// Package idempg runs idem's engine on records in a PostgreSQL table, so
// that the replicas of a service share one set of idempotency records on
// the database they most likely run already: fn runs once per key among
// all their engines, and every engine replays what any of them stored.
//
// Open(ctx, pool, opts) returns an *idem.Engine on the table opts.Table,
// through a pgx pool; Do, DoValue, Lookup, Forget, Interrupted, Records,
// Sweep, Stats, Close and idemhttp work on it unchanged.
//
// # The contract
//
// Among all the engines of a table, in any number of processes:
//
//   - fn runs at most once per key while its record lives. A duplicate
//     call on another engine waits for the claim's outcome (woken by
//     LISTEN/NOTIFY, not by polling), or, with NoWait, gets
//     idem.ErrInFlight.
//   - Every call after a result is stored replays it, on every engine. A
//     call that fn fails with an ordinary error shares that error with the
//     calls waiting for it in the same engine, as on Pebble; a call
//     waiting on another engine is woken by the claim's release and runs
//     fn itself (a Permanent error is stored, and replayed everywhere).
//   - A key reused with another fingerprint gets
//     idem.ErrFingerprintMismatch.
//   - Forget on one engine is seen by the next call on every engine (no
//     engine keeps a cache of records).
//   - An engine that dies while its fn runs (killed, or cut off from the
//     database) has its claims reported as idem.ErrInterrupted by the
//     others once its heartbeat lapses (Options.LivenessWindow, 15 s by
//     default), never run again unless idem.Options.RetryInterrupted.
//     An engine that is alive, however long its fn runs, keeps its
//     heartbeat, on a connection of its own.
//
// Unlike the well-known design of idempotency keys in PostgreSQL (Brandur
// Leach's, with a locked_at column that another request may take over
// after 90 seconds), no claim is ever taken over while its outcome is
// unknown: that would run the operation twice.
//
// # The schema
//
// Open creates, if they do not exist (in one transaction, under an
// advisory lock, so that engines starting at once do not race):
//
//	CREATE TABLE idem_records (
//		key      bytea PRIMARY KEY,  -- the idempotency key
//		rev      bigint NOT NULL,    -- the record's revision: the id of the write that stored it
//		wid      bigint NOT NULL,    -- the id of the write that stored it, a random 63-bit number
//		expires  bigint NOT NULL,    -- the record's expiry, Unix ns, rounded up to a second
//		watched  boolean NOT NULL DEFAULT false, -- an engine waits on this revision
//		record   bytea NOT NULL      -- the record (idem.AppendRecord)
//	);
//	CREATE INDEX idem_records_expires ON idem_records (expires);
//	CREATE SEQUENCE idem_records_rev AS bigint; -- unused since revisions are write ids: see below
//	CREATE TABLE idem_records_engines (owner bigint PRIMARY KEY, expires timestamptz NOT NULL);
//	-- and a trigger function idem_records_notify(), and the triggers
//	-- "changed" (AFTER UPDATE) and "deleted" (AFTER DELETE) on
//	-- idem_records, which NOTIFY the channel idem_<the table's oid> when a
//	-- watched row changes.
//	COMMENT ON TABLE idem_records IS 'idem records, format 1';
//
// To create them by a migration of your own instead, run the statements
// that Schema returns: Open then finds the table, checks its comment and
// columns, and creates nothing. A table of another layout is refused.
//
// # The statements, and the isolation they need
//
// Every statement runs on its own, in the transaction of its own that the
// pool gives it, at the session's isolation level. READ COMMITTED, the
// default, is enough for each:
//
//   - A claim is one statement: INSERT … ON CONFLICT (key) DO NOTHING,
//     whose conflict check on the primary key is atomic at any isolation
//     level; when it inserts nothing, the same statement returns the row
//     it found (if its snapshot holds it), which the engine replays
//     without another read.
//   - A completion, a release and a Forget are an UPDATE or a DELETE …
//     WHERE key = $1 AND rev = $2 (a compare-and-set): READ COMMITTED
//     evaluates the condition again on the row's newest version after
//     waiting for its lock, so a record that changed meanwhile is not
//     overwritten.
//   - A read is a SELECT, which sees every transaction committed before
//     it began.
//
// A stricter level (REPEATABLE READ, SERIALIZABLE, set as the session's
// default) works too: its serialization failures (SQLSTATE 40001) roll
// the statement back, and the store sends it again.
//
// Every write has an id of its own, a random number from 1 to 2^63-1,
// which it stores as the row's wid and as its revision: the writer knows
// the revision before it sends the write (no sequence, no RETURNING), and
// two writes draw the same id with a probability of 2^-63, so a
// compare-and-set cannot match a record that replaced the one it read.
// (Engines of earlier versions took revisions from the sequence
// idem_records_rev, which the schema keeps so that they can share the
// table with this one during an upgrade.)
//
// # Durability
//
// An engine acts on another's write as soon as it sees it, so what it saw
// must survive a crash of the server: keep synchronous_commit on (the
// default), with which a commit is visible to other sessions only once its
// WAL is flushed. With synchronous_commit off, a claim or a result
// acknowledged and acted on may be lost in a crash of the server (up to
// three times wal_writer_delay of commits, 600 ms by default): a key whose
// claim was lost may run fn again after the restart, and a result lost is
// not replayed. With a standby, synchronous_commit = remote_apply (and
// synchronous_standby_names) keeps what a failover promotes; the pool must
// connect to the primary: reads from a standby may be stale.
//
// Writes whose answer is lost (the connection broke after the statement was
// sent, the server restarted) are sent again until their outcome is known:
// see Open.
//
// # Expiry and vacuum
//
// A record is invisible to the engines once expired, by the engine's clock,
// whether or not its row is still there. The sweeper (Engine.Sweep, and the
// background sweeper every idem.Options.SweepInterval) deletes expired rows
// in batches of Options.SweepBatch, through the index on expires, each
// batch one statement that skips rows other calls are writing. The expires
// column is the record's expiry rounded up to a whole second, so a row is
// deleted less than a second after its record expired, never before; and a
// claim and the result that replaces it within the same second have the
// same value, so the result's UPDATE changes no indexed column and
// PostgreSQL makes it a heap-only (HOT) update, which adds no index
// entries (in BENCHMARKS.md's runs, 90 to 97% of the completions were).
//
// Deleted rows and the old versions of updated ones (every record is
// written twice: the claim, then the result) are dead tuples that
// autovacuum reclaims (a HOT chain is also pruned on the page as it is
// read): keep autovacuum on, and on a busy table lower
// autovacuum_vacuum_scale_factor for it (for example ALTER TABLE
// idem_records SET (autovacuum_vacuum_scale_factor = 0.05)), so that the
// table and its indexes do not bloat between vacuums.
//
// # Connections
//
// Each engine uses the pool for its calls (one connection at a time per
// call), and two connections of its own, from the pool's configuration:
// the heartbeat's and the listener's. A pool that is exhausted makes calls
// wait for a connection, up to Options.Timeout or their context, and then
// fail with an error that says so; it cannot stop the heartbeat.
// Behind a transaction-pooling proxy (PgBouncer in transaction mode),
// LISTEN does not work: point the engines at the server, or a session
// pool.
//
// # CockroachDB and YugabyteDB
//
// The statements are plain enough for both, with these differences (not
// tested here):
//
//   - LISTEN/NOTIFY, and triggers in PL/pgSQL, are PostgreSQL's; check
//     what your version supports. Without them, create the table by hand
//     from Schema's statements, leaving out the trigger function and the
//     triggers: an engine whose listener cannot LISTEN waits by reading
//     the key again twice a second, which costs reads but keeps the
//     contract. Open's own migration takes an advisory lock
//     (pg_advisory_xact_lock), which a database without them refuses:
//     that too calls for the table made by hand.
//   - CockroachDB runs every transaction SERIALIZABLE by default: the
//     claim and the compare-and-set writes keep their meaning, and their
//     retry errors (40001) are sent again. (The writes use no sequence,
//     whose contention is slow there.)
//   - YugabyteDB's default isolation is snapshot isolation (REPEATABLE
//     READ): the same holds.
//   - Both serve a read from the row's leaseholder or leader by default,
//     so a read sees every write committed before it: keep it so (no
//     follower reads, no AS OF SYSTEM TIME), as Get must not be stale.
package idempg
