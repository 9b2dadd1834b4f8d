package idempg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkv/idem"
)

// The store.
//
// Every statement is one statement in a transaction of its own (the pool's
// autocommit), under the session's isolation level: READ COMMITTED, the
// default, is enough for each (see the package documentation), and a
// stricter one works too, its serialization failures retried.
//
// Reads (Get, the liveness check, Scan) are plain SELECTs on the primary:
// under READ COMMITTED a statement sees every transaction committed before
// it began, and with synchronous_commit on (the default) a commit is
// visible to others only once it is durable.
//
// Writes are conditional on the record's revision: Create is an INSERT …
// ON CONFLICT DO NOTHING, Update an UPDATE … WHERE rev = $expected,
// Delete a DELETE … WHERE rev = $expected. Each write has an id of its own
// (wid), a random number from 1 to 2^63-1, which Create and Update store
// as the row's wid and as its new revision: a revision is thus unique
// among all the records the table ever held (two writes draw the same id
// with a probability of 2^-63), so that a compare-and-set cannot match a
// record that replaced the one the engine read (as a counter per key
// could, after a delete). The writer knows the revision before it sends
// the write: no sequence to take it from, no RETURNING to bring it back.
// (Earlier versions took revisions from the table's sequence, which the
// schema keeps so that their engines can share the table: their rows'
// revisions are not their wids, and theirs are as unique.)
//
// A write whose answer was lost (the connection broke, the server
// restarted) may or may not be committed: the store sends it again, and
// recognises it by its wid if it was. Sent again, it cannot apply twice:
// the first, if committed, changed the revision the second expects. (A
// first sending that is still running on the server when the second is
// sent is waited for by the second, on the row's lock or on the key's
// unique index.)
//
// A write whose outcome is still unknown when its call gives up (after
// Options.Timeout, or when the caller's context ends) returns an error and
// goes on in the background if it matters to other engines: see resolve.

// store is the idem.Store of a records table.
type store struct {
	pool    *pgxpool.Pool
	names   names
	owner   uint64
	timeout time.Duration
	window  time.Duration
	batch   int
	log     *slog.Logger
	sql     statements
	bounds  *bounds // the calls in progress, for Options.Timeout

	bgCtx  context.Context // ends at Close
	stopBg context.CancelFunc
	bg     sync.WaitGroup // the heartbeat, the listener, the resolvers

	lmu       sync.Mutex
	listening bool                             // the listener is LISTENing
	waiters   map[int64]map[chan struct{}]bool // by revision, see Watch

	mu         sync.Mutex
	unresolved int // writes handed to resolvers and not resolved yet
	lost       int // writes that Close could not resolve

	closeOnce sync.Once
	closeErr  error
}

// statements are the store's SQL, for its table.
type statements struct {
	get, create, update, del, delAny, reread, scan, scanTo string
	sweep, sweepEngines, beat, alive, unbeat, watch        string
}

func newStatements(n names) statements {
	t := n.table
	return statements{
		get: `SELECT rev, record FROM ` + t + ` WHERE key = $1`,
		// The record found by a refused insert comes with the refusal:
		// the engine replays it without reading again. (A row committed
		// after the statement's snapshot is not seen by its SELECT: then
		// no row comes back, and the engine reads the key.)
		create: `WITH ins AS (
				INSERT INTO ` + t + ` (key, rev, wid, expires, record)
				VALUES ($1, $2, $2, $3, $4)
				ON CONFLICT (key) DO NOTHING
				RETURNING rev
			)
			SELECT true, rev, $2::bigint, NULL::bytea FROM ins
			UNION ALL
			SELECT false, rev, wid, record FROM ` + t + ` WHERE key = $1 AND NOT EXISTS (SELECT FROM ins)`,
		update: `UPDATE ` + t + ` SET rev = $3, wid = $3, expires = $4, record = $5, watched = false
			WHERE key = $1 AND rev = $2`,
		del:    `DELETE FROM ` + t + ` WHERE key = $1 AND rev = $2`,
		delAny: `DELETE FROM ` + t + ` WHERE key = $1`,
		reread: `SELECT rev, wid FROM ` + t + ` WHERE key = $1`,
		scan:   `SELECT key, record FROM ` + t + ` WHERE key > $1 AND key >= $2 ORDER BY key LIMIT $3`,
		scanTo: `SELECT key, record FROM ` + t + ` WHERE key > $1 AND key >= $2 AND key < $4 ORDER BY key LIMIT $3`,
		// The inner SELECT picks a batch through the index on expiry and
		// locks it, skipping rows that a call is writing; the DELETE's
		// own condition is checked again on each row as it is deleted, so
		// a key claimed again meanwhile keeps its new record.
		// The batch is an array, computed first (an InitPlan), whose keys
		// the DELETE finds through the primary key: as a join (key IN
		// (…)), the planner reads every expired row, by a sequential scan
		// or the whole range of the index on expiry, for each batch.
		sweep: `DELETE FROM ` + t + ` WHERE key = ANY (ARRAY(
				SELECT key FROM ` + t + ` WHERE expires <= $1
				ORDER BY expires LIMIT $2 FOR UPDATE SKIP LOCKED
			)) AND expires <= $1`,
		// The heartbeats of engines dead for a day: an engine's claims are
		// interrupted whether its heartbeat lapsed or is gone.
		sweepEngines: `DELETE FROM ` + n.engines + ` WHERE expires < clock_timestamp() - interval '1 day'`,
		// A beat never brings back an engine that closed (whose row Close
		// set to -infinity): one that Close cancelled may still be
		// committed after Close's own statement.
		beat: `INSERT INTO ` + n.engines + ` AS e (owner, expires)
			VALUES ($1, clock_timestamp() + $2 * interval '1 microsecond')
			ON CONFLICT (owner) DO UPDATE SET expires = EXCLUDED.expires
			WHERE e.expires <> '-infinity'`,
		alive: `SELECT expires > clock_timestamp() FROM ` + n.engines + ` WHERE owner = $1`,
		unbeat: `INSERT INTO ` + n.engines + ` (owner, expires) VALUES ($1, '-infinity')
			ON CONFLICT (owner) DO UPDATE SET expires = '-infinity'`,
		watch: `UPDATE ` + t + ` SET watched = true WHERE key = $1 AND rev = $2`,
	}
}

func newStore(pool *pgxpool.Pool, o *Options, log *slog.Logger) *store {
	n := namesOf(o.Table)
	return &store{
		pool:    pool,
		names:   n,
		owner:   newOwner(),
		timeout: o.Timeout,
		window:  o.LivenessWindow,
		batch:   o.SweepBatch,
		log:     log,
		sql:     newStatements(n),
		bounds:  newBounds(o.Timeout),
		waiters: make(map[int64]map[chan struct{}]bool),
	}
}

var (
	_ idem.Store    = (*store)(nil)
	_ idem.Watcher  = (*store)(nil)
	_ idem.Liveness = (*store)(nil)
	_ idem.Sweeper  = (*store)(nil)
)

// Info says that the store is shared, and gives this engine's owner.
func (s *store) Info() idem.StoreInfo {
	return idem.StoreInfo{Owner: s.owner, Shared: true}
}

// call bounds a store operation by Options.Timeout: see bound.go.
func (s *store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return s.bounds.bound(ctx)
}

// What an error says of the statement that returned it.
type errKind uint8

const (
	// errAgain: the statement did nothing and may be sent again: it was
	// never sent (no connection to be had, a broken connection found
	// before sending), or the server rolled it back for a reason that may
	// pass (a serialization failure, a deadlock, a cancel).
	errAgain errKind = iota
	// errRefused: the server rolled it back for a reason that will not
	// pass (bad input, a missing table, no permission).
	errRefused
	// errUnknown: it may have been committed: the connection broke, or
	// the session ended, after it was sent.
	errUnknown
)

// classify says what err, from a statement, says of it.
func classify(err error) errKind {
	var ae *acquireError
	if errors.As(err, &ae) {
		return errAgain // nothing was sent
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return errAgain // no session: nothing was sent
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		sev := pe.SeverityUnlocalized // (Severity may be translated)
		if sev == "" {
			sev = pe.Severity
		}
		if sev != "ERROR" || len(pe.Code) != 5 {
			// FATAL or PANIC: the session ended (pg_terminate_backend,
			// a shutdown), perhaps after the commit.
			return errUnknown
		}
		switch pe.Code[:2] {
		case "40", // serialization failure, deadlock: rolled back
			"53", // insufficient resources
			"55", // lock not available, object in use
			"57": // query canceled, a shutdown in progress
			return errAgain
		}
		return errRefused
	}
	if pgconn.SafeToRetry(err) {
		return errAgain
	}
	return errUnknown
}

// pause waits before attempt (from 1), for longer each time up to a
// second, and reports whether ctx is still alive (asking its Err, which
// ends a store call past its deadline: see boundCtx).
func pause(ctx context.Context, attempt int) bool {
	t := time.NewTimer(min(5*time.Millisecond<<min(attempt, 8), time.Second))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return ctx.Err() == nil
	}
}

// giveUp returns the error of an operation that ran out of time, whose
// last attempt failed with last.
func giveUp(ctx context.Context, last error) error {
	if last == nil {
		return ctx.Err()
	}
	if ctx.Err() != nil && !errors.Is(last, ctx.Err()) {
		return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
	}
	return last
}

// read runs f, statements that change nothing, on a connection of the
// pool, until it succeeds, is refused, or ctx ends: a read may be sent
// again whatever became of it.
func (s *store) read(ctx context.Context, f func(ctx context.Context, conn *pgxpool.Conn) error) error {
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !pause(ctx, attempt) {
			return giveUp(ctx, last)
		}
		var err error
		if conn, aerr := s.pool.Acquire(ctx); aerr != nil {
			err = &acquireError{aerr}
		} else {
			err = f(ctx, conn)
			conn.Release()
		}
		if err == nil || errors.Is(err, pgx.ErrNoRows) || classify(err) == errRefused {
			return err
		}
		if ctx.Err() != nil {
			return giveUp(ctx, err)
		}
		last = err
	}
}

// Get returns key's record: a SELECT of its row.
func (s *store) Get(ctx context.Context, key string) (idem.StoredRecord, uint64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	var (
		rev  int64
		data []byte
	)
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, s.sql.get, []byte(key)).Scan(&rev, &data)
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return idem.StoredRecord{}, 0, idem.ErrNotFound
	case err != nil:
		return idem.StoredRecord{}, 0, fmt.Errorf("idempg: reading a record: %w", err)
	}
	rec, err := idem.DecodeRecord(data)
	if err != nil {
		return idem.StoredRecord{}, 0, fmt.Errorf("idempg: key's record: %w", err)
	}
	return rec, uint64(rev), nil
}

// The writes.

type op uint8

const (
	opCreate op = iota
	opUpdate
	opDelete
)

// write is one write of the store, which may be sent several times.
type write struct {
	op      op
	key     []byte
	data    []byte // the record, encoded (create, update)
	expires int64  // the row's expires column: see sweepAt
	expect  uint64 // the revision the record must be at (update, delete; 0 for any)
	wid     int64  // the write's id, and the revision it stores (create, update)
	// claim is set for an in-flight marker of this engine: if it turns
	// out stored after its call gave up, it is taken back (see resolve).
	claim bool
	rec   idem.StoredRecord // the claim's record
	// sent is set once a sending may have been stored (its connection
	// broke after it was sent): every later sending, by its call or by a
	// resolver, checks for it by wid.
	sent bool
	// release is set for a write that takes this engine's claim out of
	// other engines' way (the delete of a claim whose fn failed, or the
	// claim's rewrite with owner 0 when fn's outcome could not be
	// stored): it goes on in the background even if it surely failed.
	release bool
}

// newWrite returns a write of key, with a fresh write id.
func (s *store) newWrite(o op, key string) *write {
	return &write{op: o, key: []byte(key), wid: rand.Int64N(math.MaxInt64) + 1}
}

// sweepAt returns the expires column of a record that expires at expires
// (Unix ns): that time rounded up to a whole second, for the sweeper alone
// (the engines decide on the record's own expiry). Rounded, a claim and
// the result that replaces it a moment later mostly have the same value,
// so the result's UPDATE changes no indexed column: PostgreSQL can make it
// a heap-only (HOT) update, with no new entries in the indexes; and the
// sweeper deletes a row less than a second after it expired, never before.
func sweepAt(expires int64) int64 {
	const second = int64(time.Second)
	if r := expires % second; r > 0 {
		if expires > math.MaxInt64-(second-r) {
			return math.MaxInt64
		}
		return expires + second - r
	}
	return expires // whole seconds, and before 1970, unchanged
}

// recordWrite returns the write of rec as key's record.
func (s *store) recordWrite(o op, key string, rec *idem.StoredRecord, w idem.Write) *write {
	wr := s.newWrite(o, key)
	wr.data = idem.AppendRecord(nil, rec)
	wr.expires = sweepAt(rec.Expires)
	if w == idem.WriteClaim && rec.State == idem.StateInFlight {
		switch rec.Owner {
		case s.owner:
			wr.claim, wr.rec = true, *rec
		case 0:
			wr.release = true
		}
	}
	return wr
}

// errConflict is the error of a compare-and-set that found the key changed.
var errConflict = fmt.Errorf("idempg: %w", idem.ErrStoreConflict)

// attempt sends w once, and returns its revision if it is stored (by this
// sending, or, when w.sent is set, by an earlier one), errConflict (or an
// *idem.ConflictError) if the key's record is not as w expects, or the
// error of the statement.
func (s *store) attempt(ctx context.Context, w *write) (uint64, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, &acquireError{err}
	}
	defer conn.Release()
	switch w.op {
	case opCreate:
		var (
			inserted bool
			rev, wid int64
			data     []byte
		)
		err := conn.QueryRow(ctx, s.sql.create, w.key, w.wid, w.expires, w.data).Scan(&inserted, &rev, &wid, &data)
		switch {
		case errors.Is(err, pgx.ErrNoRows) && !w.sent:
			// Refused, for a row the statement's snapshot did not hold.
			return 0, errConflict
		case errors.Is(err, pgx.ErrNoRows):
			// Refused, for a row committed after the statement's snapshot
			// was taken: perhaps by an earlier sending, which this one
			// waited for on the key's unique index. A new statement sees
			// it.
			return s.landed(ctx, conn, w)
		case err != nil:
			return 0, err
		case inserted || wid == w.wid:
			return uint64(rev), nil // (or stored by an earlier sending)
		}
		rec, err := idem.DecodeRecord(data)
		if err != nil {
			return 0, errConflict // the engine's read reports it
		}
		return 0, &idem.ConflictError{Record: rec, Rev: uint64(rev)}
	case opUpdate:
		tag, err := conn.Exec(ctx, s.sql.update, w.key, int64(w.expect), w.wid, w.expires, w.data)
		switch {
		case err != nil:
			return 0, err
		case tag.RowsAffected() > 0:
			return uint64(w.wid), nil
		case !w.sent:
			return 0, errConflict
		}
		// Not at the expected revision: perhaps because an earlier
		// sending was stored.
		return s.landed(ctx, conn, w)
	}
	var tag pgconn.CommandTag
	if w.expect == 0 {
		tag, err = conn.Exec(ctx, s.sql.delAny, w.key)
	} else {
		tag, err = conn.Exec(ctx, s.sql.del, w.key, int64(w.expect))
	}
	switch {
	case err != nil:
		return 0, err
	case tag.RowsAffected() > 0 || w.expect == 0:
		return 0, nil
	case !w.sent:
		return 0, errConflict
	}
	// Not at the expected revision: perhaps because an earlier sending
	// deleted it.
	var rev, wid int64
	err = conn.QueryRow(ctx, s.sql.reread, w.key).Scan(&rev, &wid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil // gone, as the delete meant
	case err == nil:
		return 0, errConflict
	}
	return 0, err
}

// landed reads key's row again, in a statement of its own, and returns its
// revision if w stored it (its write id), errConflict if the row is another
// write's or gone, or the read's error.
func (s *store) landed(ctx context.Context, conn *pgxpool.Conn, w *write) (uint64, error) {
	var rev, wid int64
	err := conn.QueryRow(ctx, s.sql.reread, w.key).Scan(&rev, &wid)
	switch {
	case err == nil && wid == w.wid:
		return uint64(rev), nil
	case err == nil || errors.Is(err, pgx.ErrNoRows):
		return 0, errConflict
	}
	return 0, err
}

// acquireError is the error of a connection that the pool did not give:
// nothing was sent.
type acquireError struct{ err error }

func (e *acquireError) Error() string { return "no connection from the pool: " + e.err.Error() }
func (e *acquireError) Unwrap() error { return e.err }

// fate is what became of a write, as far as its sender knows.
type fate uint8

const (
	fateStored    fate = iota // committed
	fateRefused               // refused, for a conflict or another reason: nothing was stored
	fateNotStored             // no sending can have been stored
	fateUnknown               // a sending may have been stored
)

// apply sends w until the server answers for certain or ctx ends. It
// returns w's revision if stored, and otherwise an error and what may have
// become of w.
func (s *store) apply(ctx context.Context, w *write) (uint64, fate, error) {
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !pause(ctx, attempt) {
			break
		}
		rev, err := s.attempt(ctx, w)
		switch {
		case err == nil:
			return rev, fateStored, nil
		case errors.Is(err, idem.ErrStoreConflict):
			return 0, fateRefused, err
		}
		last = err
		switch classify(err) {
		case errRefused:
			if !w.sent {
				return 0, fateRefused, err
			}
			// An earlier sending may be stored: this one says nothing
			// of it. Sent again until ctx ends, the write ends unknown.
		case errUnknown:
			w.sent = true
		}
		if ctx.Err() != nil {
			break
		}
	}
	if w.sent {
		return 0, fateUnknown, giveUp(ctx, last)
	}
	return 0, fateNotStored, giveUp(ctx, last)
}

// do applies w for a Create, Update or Delete call, and hands it to a
// resolver if its outcome is still unknown at the end.
func (s *store) do(ctx context.Context, w *write, what string) (uint64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	rev, f, err := s.apply(ctx, w)
	switch {
	case f == fateStored || errors.Is(err, idem.ErrStoreConflict):
		return rev, err
	case f == fateUnknown && (w.claim || w.release):
		s.resolveLater(w)
		return 0, fmt.Errorf("idempg: %s: outcome unknown, being resolved in the background: %w", what, err)
	case f == fateNotStored && w.release:
		s.resolveLater(w)
		return 0, fmt.Errorf("idempg: %s: not stored yet, being sent again in the background: %w", what, err)
	case f == fateUnknown:
		return 0, fmt.Errorf("idempg: %s: outcome unknown: %w", what, err)
	}
	return 0, fmt.Errorf("idempg: %s: %w", what, err)
}

// Create inserts key's row, if it has none.
func (s *store) Create(ctx context.Context, key string, rec idem.StoredRecord, w idem.Write) (uint64, error) {
	return s.do(ctx, s.recordWrite(opCreate, key, &rec, w), "creating a record")
}

// Update replaces key's record if it is still at revision rev.
func (s *store) Update(ctx context.Context, key string, rec idem.StoredRecord, rev uint64, w idem.Write) (uint64, error) {
	if rev == 0 {
		return 0, errConflict // no record has revision 0
	}
	wr := s.recordWrite(opUpdate, key, &rec, w)
	wr.expect = rev
	return s.do(ctx, wr, "updating a record")
}

// Delete deletes key's row, if its record is still at rev (any record if
// rev is 0).
func (s *store) Delete(ctx context.Context, key string, rev uint64, w idem.Write) error {
	wr := s.newWrite(opDelete, key)
	wr.expect = rev
	wr.release = w == idem.WriteRelease
	_, err := s.do(ctx, wr, "deleting a record")
	return err
}

// Scan lists records in key order: a SELECT of a range of the primary key.
func (s *store) Scan(ctx context.Context, prefix, after string, limit int, fn func(key string, rec idem.StoredRecord, err error)) (string, error) {
	if limit <= 0 {
		return "", nil
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	type row struct {
		key  []byte
		data []byte
	}
	var rows []row
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		rows = rows[:0]
		var (
			rs  pgx.Rows
			err error
		)
		if end := prefixEnd(prefix); end != nil {
			rs, err = conn.Query(ctx, s.sql.scanTo, []byte(after), []byte(prefix), limit, end)
		} else {
			rs, err = conn.Query(ctx, s.sql.scan, []byte(after), []byte(prefix), limit)
		}
		if err != nil {
			return err
		}
		var r row
		_, err = pgx.ForEachRow(rs, []any{&r.key, &r.data}, func() error {
			rows = append(rows, row{key: append([]byte(nil), r.key...), data: append([]byte(nil), r.data...)})
			return nil
		})
		return err
	})
	if err != nil {
		return "", fmt.Errorf("idempg: listing records: %w", err)
	}
	for _, r := range rows {
		rec, err := idem.DecodeRecord(r.data)
		if err != nil {
			fn(string(r.key), idem.StoredRecord{}, fmt.Errorf("idempg: key's record: %w", err))
			continue
		}
		fn(string(r.key), rec, nil)
	}
	if len(rows) < limit {
		return "", nil
	}
	return string(rows[len(rows)-1].key), nil
}

// prefixEnd returns the least key above every key that starts with prefix,
// or nil if there is none (prefix is empty or all 0xff).
func prefixEnd(prefix string) []byte {
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Sweep deletes the expired records, a batch of Options.SweepBatch per
// statement, and the heartbeats of engines long dead.
func (s *store) Sweep(ctx context.Context, now int64) (int, error) {
	total := 0
	for {
		tag, err := s.pool.Exec(ctx, s.sql.sweep, now, s.batch)
		if err != nil {
			return total, fmt.Errorf("idempg: deleting expired records: %w", err)
		}
		total += int(tag.RowsAffected())
		if tag.RowsAffected() < int64(s.batch) {
			break
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
	if _, err := s.pool.Exec(ctx, s.sql.sweepEngines); err != nil {
		return total, fmt.Errorf("idempg: deleting old heartbeats: %w", err)
	}
	return total, nil
}

// Resolving unknown outcomes.
//
// A write whose outcome is unknown when its call returns may be committed:
// its connection broke after it was sent. For most writes that is harmless,
// but not for an engine's claim (the in-flight marker written before fn
// runs): the engine has returned the error to its caller without running
// fn, and if the marker is stored, other engines would find a claim of a
// live engine and wait on it until it expires. So the store keeps every
// such write, in a goroutine of its own, and sends it again (recognised by
// its wid if the first was stored) until the server answers for certain:
// stored, or refused. A claim found stored is then taken back: deleted
// (compare-and-set on its revision) if it was a create, or, if it replaced
// a record, rewritten with owner 0, which every engine reads as an
// interrupted claim (a delete could let fn run again for a key whose
// earlier outcome is unknown). The writes that take a claim of this engine
// out of other engines' way (write.release) are handed to a resolver even
// when they surely failed, or the claim would stay until it expired.
//
// Resolvers try again with growing pauses, up to a few seconds, until
// Close, which gives each one last try, bounded by Options.Timeout, and
// then reports the writes still unresolved in its error.

// resolveLater hands w to a resolver.
func (s *store) resolveLater(w *write) {
	s.mu.Lock()
	s.unresolved++
	s.mu.Unlock()
	s.bg.Add(1)
	go s.resolve(w)
}

// resolve sends w again until the server answers, and takes back a claim
// that was stored.
func (s *store) resolve(w *write) {
	defer s.bg.Done()
	final := false // Close has begun: one last try
	for round := 0; ; round++ {
		if !final {
			t := time.NewTimer(min(100*time.Millisecond<<min(round, 6), 5*time.Second))
			select {
			case <-s.bgCtx.Done():
				final = true
			case <-t.C:
			}
			t.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		rev, f, err := s.apply(ctx, w)
		cancel()
		switch {
		case f == fateStored && w.claim:
			w = s.takeBack(w, rev)
			round = -1
			continue
		case f == fateStored:
		case f == fateRefused && !errors.Is(err, idem.ErrStoreConflict):
			s.log.Warn("idempg: a write whose outcome was unknown was refused", "error", err)
		case f == fateRefused:
		case !final:
			continue
		default:
			s.log.Error("idempg: a write's outcome is unknown, and the engine is closing; its key may report ErrInterrupted to other engines",
				"key_len", len(w.key), "claim", w.claim, "error", err)
			s.resolved(false)
			return
		}
		s.resolved(true)
		return
	}
}

// takeBack returns the write that takes back claim w, stored at rev. A
// claim that replaced a record is rewritten with owner 0 even when what it
// replaced was expired: the store cannot tell which it was, and an
// interrupted claim is the safe answer.
func (s *store) takeBack(w *write, rev uint64) *write {
	if w.op == opCreate {
		nw := s.newWrite(opDelete, string(w.key))
		nw.expect = rev
		return nw
	}
	rec := w.rec
	rec.Owner = 0
	nw := s.recordWrite(opUpdate, string(w.key), &rec, idem.WriteResult)
	nw.expect = rev
	return nw
}

func (s *store) resolved(ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unresolved--
	if !ok {
		s.lost++
	}
}

// Close stops the heartbeat and the listener, gives the resolvers their
// last try, and marks the engine's heartbeat dead (for good: see beat), so
// that other engines see its claims as interrupted at once, and wakes
// their calls that wait. It does not close the pool.
func (s *store) Close() error {
	s.closeOnce.Do(func() {
		s.stopBg()
		s.bg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		if _, err := s.pool.Exec(ctx, s.sql.unbeat, int64(s.owner)); err != nil {
			s.log.Warn("idempg: marking the engine's heartbeat dead failed; other engines see it alive until its liveness window lapses", "error", err)
		} else if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, s.names.channel, closedPayload); err != nil {
			// Waiting engines find out when Watch's timer fires.
			s.log.Warn("idempg: telling waiting engines that this engine closed failed", "error", err)
		}
		s.mu.Lock()
		lost := s.lost
		s.mu.Unlock()
		if lost > 0 {
			s.closeErr = fmt.Errorf("idempg: %d writes whose outcome is unknown could not be resolved", lost)
		}
	})
	return s.closeErr
}
