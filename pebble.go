package idem

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"strings"
	"sync"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// Key layout. Every key starts with a one-byte prefix:
//
//	r<key>   a key's record
//	m<name>  engine metadata
//
// Directories written by earlier versions may also hold an expiry index,
// x<expiry, 8 bytes BE><key>, which Open deletes (ttl.go).
const (
	prefixRecord = 'r'
	prefixIndex  = 'x'
	prefixMeta   = 'm'
)

var (
	metaFormat = []byte("mformat")
	metaEpoch  = []byte("mepoch")
)

// formatName identifies a directory written by this engine. "idem/1"
// directories (records, plus an expiry index) are read as they are, and
// upgraded by a writable Open, which drops the index; a version that reads
// only "idem/1" refuses "idem/2", whose records have no index entries for
// it to sweep by.
const (
	formatName   = "idem/2"
	formatIdemV1 = "idem/1"
)

func recordKey(key string) []byte {
	k := make([]byte, 1+len(key))
	k[0] = prefixRecord
	copy(k[1:], key)
	return k
}

// pebbleStore is the built-in Store, on a Pebble database that one Engine
// has open: every Pebble read and write of records and metadata goes
// through it. It relies on the engine's lock table: no two calls touch a key
// at once, and no other engine uses the database, so Create and Update are
// plain writes. A record's revision is its encoded size, which a delete
// passes to Pebble (DeleteSized) so that compactions see what it frees.
type pebbleStore struct {
	db         *pebble.DB
	log        pebbleLogger
	durability Durability
	epoch      uint64       // this Open's, stored in the records it writes
	lock       *pebble.Lock // the directory's lock, released by Close
	// releaseDir forgets the directory in this process's register of open
	// directories (dirlock.go), once Close has released its lock.
	releaseDir func()
}

// Info implements Store.
func (s *pebbleStore) Info() StoreInfo { return StoreInfo{Owner: s.epoch} }

// sync reports whether a write of kind w is fsynced under s's durability.
func (s *pebbleStore) sync(w Write) bool {
	switch w {
	case WriteClaim, WriteRelease:
		return s.durability == SyncAll
	default:
		return s.durability != SyncNone
	}
}

// Get implements Store.
func (s *pebbleStore) Get(_ context.Context, key string) (StoredRecord, uint64, error) {
	rec, size, found, err := s.get(key)
	if err == nil && !found {
		err = ErrNotFound
	}
	return rec, uint64(size), err
}

// Create implements Store. The engine calls it for a key it holds that it
// found no record for (or that its filter says has none).
func (s *pebbleStore) Create(_ context.Context, key string, rec StoredRecord, w Write) (uint64, error) {
	return s.put(key, &rec, s.sync(w))
}

// Update implements Store, as a plain write: the engine holds the key.
func (s *pebbleStore) Update(_ context.Context, key string, rec StoredRecord, _ uint64, w Write) (uint64, error) {
	return s.put(key, &rec, s.sync(w))
}

// Delete implements Store. rev, the record's encoded size if known, sizes
// the tombstone.
func (s *pebbleStore) Delete(_ context.Context, key string, rev uint64, w Write) error {
	return s.remove(key, uint32(min(rev, math.MaxUint32)), s.sync(w))
}

// Scan implements Store.
func (s *pebbleStore) Scan(_ context.Context, prefix, after string, limit int, fn func(key string, rec StoredRecord, err error)) (string, error) {
	var a []byte
	if after != "" {
		a = recordKey(after)
	}
	next, err := s.scanRecords(prefix, a, limit, fn)
	if next == nil || err != nil {
		return "", err
	}
	return string(next[1:]), nil
}

// Close implements Store: it closes the database and releases the
// directory.
func (s *pebbleStore) Close() error {
	err := s.db.Close()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	s.releaseDir()
	return err
}

// commit commits b. Pebble panics in a commit whose WAL write fails (the
// writer keeps the error of an earlier failed write or fsync), and it
// panics holding its commit pipeline's mutex: a caller that recovered the
// panic would leave every later commit, and Close, blocked forever. So a
// panic in the commit goes the way of Pebble's own fatal errors
// (pebbleLogger.Fatalf): it stops the process, whatever the callers
// recover, and whichever of the two a failing WAL reports first.
func (s *pebbleStore) commit(b *pebble.Batch, opts *pebble.WriteOptions) error {
	defer func() {
		if r := recover(); r != nil {
			s.log.Fatalf("pebble: commit panicked: %v", r)
		}
	}()
	return b.Commit(opts)
}

// keyBufs recycles the buffers of the Pebble keys that get reads.
var keyBufs = sync.Pool{New: func() any { return new([]byte) }}

// get returns key's record and its encoded size, or false if there is none.
// Expiry is the caller's business.
func (s *pebbleStore) get(key string) (StoredRecord, uint32, bool, error) {
	// The Pebble key is built in a pooled buffer: Get keeps it until the
	// value's closer is closed.
	kb := keyBufs.Get().(*[]byte)
	k := append(append((*kb)[:0], prefixRecord), key...)
	defer func() {
		*kb = k
		keyBufs.Put(kb)
	}()
	raw, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return StoredRecord{}, 0, false, nil
	}
	if err != nil {
		return StoredRecord{}, 0, false, fmt.Errorf("idem: reading a record: %w", err)
	}
	rec, err := decodeRecord(raw)
	size := uint32(min(len(raw), math.MaxUint32))
	closer.Close()
	if err != nil {
		return StoredRecord{}, 0, false, fmt.Errorf("%w: key %q: %w", ErrCorrupt, key, err)
	}
	return rec, size, true, nil
}

// put stores rec for key, in a batch of its own, and returns its encoded
// size.
func (s *pebbleStore) put(key string, rec *StoredRecord, sync bool) (uint64, error) {
	b := s.db.NewBatch()
	defer b.Close()
	// The record is encoded in place in the batch.
	op := b.SetDeferred(1+len(key), rec.encodedSize())
	op.Key[0] = prefixRecord
	copy(op.Key[1:], key)
	if v := rec.appendTo(op.Value[:0]); len(v) != len(op.Value) {
		panic(fmt.Sprintf("idem: record encoded in %d bytes, not %d", len(v), len(op.Value)))
	}
	if err := op.Finish(); err != nil {
		return 0, err
	}
	return uint64(len(op.Value)), s.commit(b, writeOpts(sync))
}

// remove deletes key's record. size is the record's encoded size if known
// (a DeleteSized tombstone lets Pebble's compactions see how much space the
// delete frees), or 0.
func (s *pebbleStore) remove(key string, size uint32, sync bool) error {
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteSized(recordKey(key), size, nil); err != nil {
		return err
	}
	return s.commit(b, writeOpts(sync))
}

func writeOpts(sync bool) *pebble.WriteOptions {
	if sync {
		return pebble.Sync
	}
	return pebble.NoSync
}

// scanRecords calls fn for up to limit records whose keys start with prefix
// and come after the record key after (from the first when after is nil), in
// key order, and returns the record key to continue after, or nil at the
// end. Records that fail to decode are passed with their error.
func (s *pebbleStore) scanRecords(prefix string, after []byte, limit int, fn func(key string, rec StoredRecord, err error)) ([]byte, error) {
	return s.scanChunk(recordKey(prefix), prefixEnd(recordKey(prefix)), after, limit, func(k, v []byte) {
		key := string(k[1:])
		rec, err := decodeRecord(v)
		if err != nil {
			err = fmt.Errorf("%w: key %q: %w", ErrCorrupt, key, err)
		}
		fn(key, rec, err)
	})
}

// scanChunk calls fn with the key and the value (both valid during the call)
// of up to limit keys in [lower, upper) after the key after (from lower when
// after is nil), in key order, with an iterator of its own, and returns the
// key to continue after, or nil at the end.
func (s *pebbleStore) scanChunk(lower, upper, after []byte, limit int, fn func(k, v []byte)) ([]byte, error) {
	if after != nil {
		if next := successor(after); lower == nil || bytes.Compare(next, lower) > 0 {
			lower = next
		}
	}
	if lower != nil && upper != nil && bytes.Compare(lower, upper) >= 0 {
		return nil, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	var last []byte
	n := 0
	for valid := it.First(); valid && n < limit; valid = it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return nil, err
		}
		fn(k, v)
		last = append(last[:0], k...)
		n++
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	if n < limit {
		return nil, nil
	}
	return last, nil
}

// prefixEnd returns the smallest key after every key that starts with p,
// or nil if there is none.
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i]++; end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

// openMeta checks the directory's format marker, writing it in a new
// database, and advances the persisted epoch, returning the new one. A
// read-only engine writes nothing: its epoch is one past the stored one, so
// every marker reads as an earlier process's.
func (s *pebbleStore) openMeta(readOnly bool) (uint64, error) {
	format, err := s.getMeta(metaFormat)
	if err != nil {
		return 0, err
	}
	if format == nil {
		// A new database, or a Pebble database that idem did not write.
		empty, err := s.empty()
		if err != nil {
			return 0, err
		}
		if !empty {
			return 0, notDatabase("a Pebble database with other data")
		}
		if readOnly {
			return 0, errEmptyDatabase
		}
	}
	var epoch uint64
	if raw, err := s.getMeta(metaEpoch); err != nil {
		return 0, err
	} else if raw != nil {
		if len(raw) != 8 {
			return 0, fmt.Errorf("%w: epoch of %d bytes", ErrCorrupt, len(raw))
		}
		epoch = binary.BigEndian.Uint64(raw)
	}
	switch {
	case format == nil && epoch == 0:
		// A new database.
	case string(format) != formatName && string(format) != formatIdemV1:
		return 0, fmt.Errorf("idem: unsupported data format %q (this version reads %q and %q)", format, formatName, formatIdemV1)
	}
	epoch++
	if readOnly {
		return epoch, nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], epoch)
	if err := b.Set(metaEpoch, buf[:], nil); err != nil {
		return 0, err
	}
	if err := b.Set(metaFormat, []byte(formatName), nil); err != nil {
		return 0, err
	}
	if err := s.commit(b, pebble.Sync); err != nil {
		return 0, err
	}
	return epoch, nil
}

// empty reports whether the database holds no key at all.
func (s *pebbleStore) empty() (bool, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return false, err
	}
	valid := it.First()
	return !valid, it.Close()
}

func (s *pebbleStore) getMeta(k []byte) ([]byte, error) {
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(v)
	closer.Close()
	return out, nil
}

// recordKeys calls add with the key of every record. It stops with ctx's
// error when ctx ends.
func (s *pebbleStore) recordKeys(ctx context.Context, add func(string)) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
	if err != nil {
		return err
	}
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		add(string(it.Key()[1:]))
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				it.Close()
				return err
			}
		}
	}
	return it.Close()
}

// notDatabaseError is an ErrNotDatabase with its reason; Open adds the
// directory.
type notDatabaseError struct{ reason string }

func notDatabase(reason string) error { return &notDatabaseError{reason} }

// errEmptyDatabase is openMeta's error for a Pebble database with no key at
// all, read-only: one that an Open which died before its first commit
// left, or an empty one of another program. A writable Open makes it an
// idem database.
var errEmptyDatabase = notDatabase("an empty Pebble database")

func (e *notDatabaseError) Error() string { return ErrNotDatabase.Error() + ": " + e.reason }

func (e *notDatabaseError) Is(target error) bool { return target == ErrNotDatabase }

type sweptRecord struct {
	key  string
	size uint32
}

// deleteRecords deletes the records of del in one batch, without fsync: a
// delete lost in a crash only leaves an expired record for the next sweep.
func (s *pebbleStore) deleteRecords(del []sweptRecord) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, d := range del {
		if err := b.DeleteSized(recordKey(d.key), d.size, nil); err != nil {
			return err
		}
	}
	return s.commit(b, pebble.NoSync)
}

// scanExpiries calls fn with the key (valid during the call) and the expiry
// of up to limit records after the record key after (from the first if
// after is nil), in key order, reading only the start of each record; ok is
// false for a record whose start does not decode. It returns the record key
// to continue after, or nil at the end.
func (s *pebbleStore) scanExpiries(after []byte, limit int, fn func(key []byte, expires int64, ok bool)) ([]byte, error) {
	return s.scanChunk([]byte{prefixRecord}, []byte{prefixRecord + 1}, after, limit, func(k, v []byte) {
		expires, err := recordExpiry(v)
		fn(k[1:], expires, err == nil)
	})
}

// successor returns the smallest key after k.
func successor(k []byte) []byte {
	return append(append(make([]byte, 0, len(k)+1), k...), 0)
}

// dropOldIndex deletes the expiry index that earlier versions kept
// (x<expiry><key> keys), if the directory has one: nothing reads it now.
func (s *pebbleStore) dropOldIndex() error {
	lower, upper := []byte{prefixIndex}, []byte{prefixIndex + 1}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	found := it.First()
	if err := it.Close(); err != nil || !found {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(lower, upper, nil); err != nil {
		return err
	}
	return s.commit(b, pebble.Sync)
}

// Open opens the engine's database in dir, creating it if needed. A nil opts
// means the defaults. Only one Engine can have a directory open at a time:
// another Open of it, from this process or another, returns an error that
// matches ErrLocked.
//
// Each Open advances the directory's epoch, so that in-flight markers left by
// earlier processes are told apart from this one's: their keys report
// ErrInterrupted.
func Open(dir string, opts *Options) (*Engine, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s, err := openStore(dir, o)
	if err != nil {
		return nil, err
	}
	return newEngine(s, o), nil
}

// openStore opens the Pebble store in dir with options o (defaults filled
// in): it claims the directory in this process's register and locks it,
// and releases both if it fails.
func openStore(dir string, o Options) (*pebbleStore, error) {
	if o.ReadOnly {
		// Look before locking: locking creates a LOCK file.
		desc, err := pebble.Peek(dir, o.FS)
		if err != nil || !desc.Exists {
			return nil, fmt.Errorf("%w: %s: no database there", ErrNotDatabase, dir)
		}
	} else if err := o.FS.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("idem: open %s: %w", dir, err)
	}
	releaseDir, err := claimDir(o.FS, dir)
	if err != nil {
		return nil, err
	}
	var (
		lock *pebble.Lock
		st   *pebbleStore
	)
	defer func() {
		// Also if Pebble panics, and the caller recovers: the directory
		// must not stay claimed.
		if st == nil {
			if lock != nil {
				lock.Close()
			}
			releaseDir()
		}
	}()
	lock, err = pebble.LockDirectory(dir, o.FS)
	if err != nil {
		lock = nil
		if isLockConflict(err) {
			return nil, fmt.Errorf("%w: %s is open in another Engine or process", ErrLocked, dir)
		}
		return nil, fmt.Errorf("idem: open %s: %w", dir, err)
	}
	if st, err = openPebble(dir, o, lock); err != nil {
		st = nil
		return nil, err
	}
	st.releaseDir = releaseDir
	return st, nil
}

// pebbleOptions returns the options of the engine's Pebble database.
func pebbleOptions(o *Options, lock *pebble.Lock, readOnly bool) *pebble.Options {
	po := &pebble.Options{
		FS:                 o.FS,
		Lock:               lock,
		CacheSize:          o.CacheSize,
		FormatMajorVersion: pebble.FormatValueSeparation,
		Logger:             pebbleLogger{o.Logger},
		ReadOnly:           readOnly,
	}
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return po
}

// openPebble opens the database in dir, whose lock the caller holds, as the
// store of an engine with options o.
func openPebble(dir string, o Options, lock *pebble.Lock) (*pebbleStore, error) {
	if !o.ReadOnly {
		// A writable Open changes a database before it can read it (Pebble
		// ratchets its format, flushes its log, writes a new MANIFEST and
		// OPTIONS), so an existing database is first read read-only: one
		// that idem did not write, or of a format this version does not
		// know, is refused without a byte of it changed.
		desc, err := pebble.Peek(dir, o.FS)
		if err != nil {
			return nil, fmt.Errorf("idem: open %s: %w", dir, err)
		}
		if desc.Exists {
			if err := checkDatabase(dir, &o, lock); err != nil {
				return nil, err
			}
		}
	}
	po := pebbleOptions(&o, lock, o.ReadOnly)
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("idem: open %s: %w", dir, err)
	}
	s := &pebbleStore{db: db, log: po.Logger.(pebbleLogger), durability: o.Durability, lock: lock}
	if s.epoch, err = s.openMeta(o.ReadOnly); err != nil {
		db.Close()
		return nil, openMetaError(dir, err)
	}
	if !o.ReadOnly {
		if err := s.dropOldIndex(); err != nil {
			db.Close()
			return nil, fmt.Errorf("idem: open %s: %w", dir, err)
		}
	}
	return s, nil
}

// checkDatabase opens the existing database in dir read-only, with the lock
// the caller holds, and returns the error a writable Open would meet in its
// metadata: ErrNotDatabase for a database that idem did not write, an error
// for a format this version cannot read. An empty database passes: a
// writable Open that died before its first commit leaves one.
func checkDatabase(dir string, o *Options, lock *pebble.Lock) error {
	po := pebbleOptions(o, lock, true)
	db, err := pebble.Open(dir, po)
	if err != nil {
		return fmt.Errorf("idem: open %s: %w", dir, err)
	}
	s := pebbleStore{db: db, log: po.Logger.(pebbleLogger)}
	_, err = s.openMeta(true)
	cerr := db.Close()
	switch {
	case err != nil && err != errEmptyDatabase:
		return openMetaError(dir, err)
	case cerr != nil:
		return fmt.Errorf("idem: open %s: %w", dir, cerr)
	}
	return nil
}

// openMetaError returns the error of Open for err of store.openMeta.
func openMetaError(dir string, err error) error {
	if nd := (*notDatabaseError)(nil); errors.As(err, &nd) {
		return fmt.Errorf("%w: %s: %s", ErrNotDatabase, dir, nd.reason)
	}
	return fmt.Errorf("idem: open %s: %w", dir, err)
}

// isLockConflict reports whether err from pebble.LockDirectory means that
// the lock is held, rather than that the lock file could not be made.
func isLockConflict(err error) bool {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return false // creating the LOCK file failed
	}
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) ||
		strings.Contains(err.Error(), "lock held by current process")
}

// readAmp returns the read amplification of m (see Stats).
func readAmp(m *pebble.Metrics) uint64 {
	var n int64
	for i, l := range m.Levels {
		switch {
		case l.Sublevels > 0:
			n += int64(l.Sublevels)
		case l.TablesCount > 0 && i == 0:
			n += l.TablesCount // sublevels not worked out: at most one a table
		case l.TablesCount > 0:
			n++
		}
	}
	return uint64(n)
}

// pebbleLogger routes Pebble's log lines to the engine's logger.
//
// Pebble calls Fatalf when it cannot go on safely (a failed WAL write or
// fsync, a corrupt MANIFEST) and expects it not to return. pebbleLogger logs
// the message at level Error and then panics with it in a goroutine of its
// own, which stops the process whatever its callers recover, as Pebble's
// own default logger does with os.Exit. A panic in the calling goroutine
// would not do: a server that recovers panics in its handlers (net/http
// does) would go on calling into a database whose commit pipeline has
// failed with its lock held, and block forever. Whatever was acknowledged
// before is on disk for the next Open.
type pebbleLogger struct {
	l *slog.Logger
}

var errPebbleFatal = errors.New("idem: fatal Pebble error")

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelInfo) {
		p.l.Info(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelError) {
		p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble", "fatal", true)
	err := fmt.Errorf("%w: %s", errPebbleFatal, msg)
	go panic(err) // unrecoverable: stops the process
	select {}     // Fatalf must not return
}
