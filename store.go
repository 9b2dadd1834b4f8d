package idem

import (
	"context"
	"errors"
)

// The store seam.
//
// An Engine decides: it holds the lock table that coalesces the calls of a
// key in this process, runs fn, replays outcomes, applies Permanent errors
// and the expiry rule, and counts. A Store keeps the records. Open gives an
// Engine the built-in Pebble store; New gives one any Store, such as
// idemnats's (a JetStream key-value bucket that several engines share).
//
// The engine calls a store's methods for a key only while it holds that key
// in its own lock table, so no two calls of one Engine touch a key at once.
// A store that several engines share (StoreInfo.Shared) must make Create,
// Update and Delete atomic across all of them; it is what keeps fn to one run
// per key among engines.

// ErrStoreConflict is what a Store returns from Create for a key that has a
// record, and from Update and Delete when the key's record is no longer at
// the revision the engine read. The engine reads the key again and decides
// anew; callers of Do never see it.
var ErrStoreConflict = errors.New("idem: store: the key's record changed")

// A ConflictError is an ErrStoreConflict that carries the key's record as
// the store found it when it refused a Create, with its revision: the
// engine decides on it rather than read the key again (a shared store that
// checks a refusal with a read has the record in hand). A store may return
// one from Create only, and only with a record that Get would return.
type ConflictError struct {
	Record StoredRecord
	Rev    uint64
}

// Error returns ErrStoreConflict's message.
func (e *ConflictError) Error() string { return ErrStoreConflict.Error() }

// Is reports whether target is ErrStoreConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrStoreConflict }

// Write says which of the engine's writes a Store call is, so that a store
// can choose how durable to make it; Options.Durability is the Pebble
// store's choice. A shared store must make every write durable before it
// returns: another engine may act on it at once.
type Write uint8

const (
	// WriteClaim is the in-flight marker stored before fn runs (Create,
	// or Update over an expired record or an interrupted claim).
	WriteClaim Write = iota + 1
	// WriteResult replaces the marker with fn's outcome (Update).
	WriteResult
	// WriteRelease deletes the marker of a call whose fn failed, so that
	// the next call runs fn again (Delete).
	WriteRelease
	// WriteForget deletes a record for Forget (Delete).
	WriteForget
)

// Store keeps an Engine's records. The engine serializes its own calls for
// a key (see above); every method may be called concurrently for different
// keys. Revisions are the store's: the engine passes back what Get, Create
// and Update returned, and compares none of them.
//
// A Store is given to New, which owns it from then on: Engine.Close closes
// it, after every call in progress has returned.
type Store interface {
	// Info says what the store is. The engine calls it once, in New.
	Info() StoreInfo

	// Get returns key's record and its revision, or an error matching
	// ErrNotFound if the key has none, expired or not: expiry is the
	// engine's business. A record that cannot be decoded is an error
	// matching ErrCorrupt. In a shared store, Get must see every write
	// acknowledged to any engine before it began: the engine replays,
	// refuses or waits on what it returns.
	Get(ctx context.Context, key string) (StoredRecord, uint64, error)

	// Create stores rec for key if key has no record, atomically, and
	// returns its revision; if key has one (expired or not), it stores
	// nothing and returns an error matching ErrStoreConflict. An error of
	// any other kind means the write may or may not have happened: a
	// shared store must resolve that itself (retry the same write, which
	// it de-duplicates) before it returns, or return an error after which
	// the key may still hold rec, which the engine then treats as its
	// own interrupted claim.
	Create(ctx context.Context, key string, rec StoredRecord, w Write) (uint64, error)

	// Update replaces key's record with rec if the record is still at
	// revision rev, atomically, and returns the new revision; otherwise it
	// stores nothing and returns an error matching ErrStoreConflict (also
	// when the key has no record). When it returns nil, the record is
	// stored as durably as w asks, and every later Get sees it.
	Update(ctx context.Context, key string, rec StoredRecord, rev uint64, w Write) (uint64, error)

	// Delete removes key's record if it is still at revision rev, or
	// whatever it is if rev is 0; a key with no record is not an error
	// for rev 0, and a conflict otherwise.
	Delete(ctx context.Context, key string, rev uint64, w Write) error

	// Scan calls fn for up to limit records whose keys start with prefix,
	// in key order, beginning after the key after ("" for the first), and
	// returns the key to continue after, or "" when there are no more. A
	// record that cannot be decoded is passed with an error matching
	// ErrCorrupt (and a zero record). Records written during a scan may
	// or may not be seen. It is the operator's view (Records, Interrupted),
	// never a request path.
	Scan(ctx context.Context, prefix, after string, limit int, fn func(key string, rec StoredRecord, err error)) (next string, err error)

	// Close releases the store's resources. The engine calls it once, from
	// Engine.Close, when no other call is in progress.
	Close() error
}

// StoreInfo says what a Store is.
type StoreInfo struct {
	// Owner is the engine's identity in the records it writes
	// (StoredRecord.Owner): distinct from that of every other engine that
	// uses, or used, the same records. A claim whose owner is not this
	// engine's, and not alive (see Liveness), is interrupted.
	Owner uint64

	// Shared is true when other engines, in this process or others, use
	// the same records at once. The engine then claims a key with Create
	// before reading it while most of its recent calls found no record
	// (one request for a new key), and reads it first while most found
	// one (one request for a replay); either way a Create or Update that
	// conflicts is decided on again. It keeps no cache of records (another
	// engine may Forget one), waits for another engine's claim through
	// Watcher, and asks Liveness whether that engine is still there.
	Shared bool
}

// Watcher is implemented by a shared store that can wait for a key's record
// to change. Without it, an engine that finds another engine's claim reads
// the key again at growing intervals (up to a second).
type Watcher interface {
	// Watch returns nil once key's record may be no longer at revision rev
	// (changed, deleted, or expired), or ctx's error when ctx ends first.
	// It may return nil early, and must within its liveness window if
	// nothing changes: the engine then reads the key and asks Liveness
	// again.
	Watch(ctx context.Context, key string, rev uint64) error
}

// Liveness is implemented by a shared store that knows which engines are
// running. Without it, every claim of another owner is interrupted: right
// for a store that one engine at a time uses, as Pebble's is.
type Liveness interface {
	// Alive reports whether the engine owner may still be running the
	// claims it wrote. It must not report false for an engine that is
	// running and can reach the store: a claim is declared interrupted
	// from its answer. It may report true for a while (its liveness
	// window) after the engine stopped.
	Alive(ctx context.Context, owner uint64) (bool, error)
}

// Sweeper is implemented by a store whose expired records stay until they
// are deleted. Engine.Sweep, and the background sweeper every
// Options.SweepInterval, call it. A store that removes expired records by
// itself (a JetStream bucket with per-message TTLs) does not implement it,
// and Sweep returns 0 for it.
type Sweeper interface {
	// Sweep deletes the records that have expired at now (Unix
	// nanoseconds), each only if it is still expired when deleted (a key
	// claimed again meanwhile keeps its new record), and returns how many
	// it deleted. It stops early with ctx's error when ctx ends.
	Sweep(ctx context.Context, now int64) (int, error)
}
