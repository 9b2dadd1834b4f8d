package idem

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Durability says which writes are fsynced before the engine goes on.
type Durability uint8

const (
	// SyncAll fsyncs the in-flight marker before fn runs, and the result
	// (or the release of a key whose fn failed) before Do returns. A crash
	// of the process or the machine can neither lose a returned result nor
	// let fn run twice: a key whose fn was cut off reports ErrInterrupted.
	// It is the zero value and the default.
	SyncAll Durability = iota
	// SyncResult fsyncs only the result: a returned result survives any
	// crash. The in-flight marker is written without fsync, and Pebble
	// keeps unsynced log writes in the process's memory until a later sync
	// or a full 32 KiB block, so after a crash (of the process or of the
	// machine) while fn runs the marker may be gone and fn may run again
	// for that key.
	SyncResult
	// SyncNone fsyncs nothing. Fastest; a crash of the process or of the
	// machine may lose the records of the last moments (up to a 32 KiB
	// block of Pebble's log, more if the OS has not written it), so their
	// keys may run fn again.
	SyncNone
)

// String returns the mode's name, as "SyncAll".
func (d Durability) String() string {
	switch d {
	case SyncAll:
		return "SyncAll"
	case SyncResult:
		return "SyncResult"
	case SyncNone:
		return "SyncNone"
	}
	return fmt.Sprintf("Durability(%d)", uint8(d))
}

// Defaults of Options.
const (
	DefaultTTL             = 24 * time.Hour
	DefaultMaxKeySize      = 512
	DefaultMaxValueSize    = 1 << 20
	DefaultSweepInterval   = time.Minute
	DefaultCacheSize       = 32 << 20
	DefaultRecordCacheSize = 16 << 20
)

// maxValueSizeLimit bounds MaxValueSize: a record must fit in one Pebble
// batch with room to spare.
const maxValueSizeLimit = 1 << 30

// Options configure an Engine. A nil *Options, and every zero field, means
// the default. Open copies the options; it never modifies the caller's.
type Options struct {
	// TTL is how long a record lives after it was stored: a result (a
	// value or a Permanent error) TTL after fn returned, however long fn
	// ran; an in-flight marker TTL after fn started. An expired record is
	// invisible at once and removed by a later sweep. If 0, DefaultTTL (24
	// hours); negative is an error.
	TTL time.Duration

	// Durability says which writes are fsynced. The zero value is SyncAll.
	// Pebble's store only: New refuses any other value (a shared store
	// makes every write durable; see Write).
	Durability Durability

	// NoWait makes a call that finds its key in flight (fn running in
	// another call) return ErrInFlight at once rather than wait for that
	// call's outcome. Default false: wait.
	NoWait bool

	// RetryInterrupted makes Do run fn again for a key whose earlier run was
	// cut off by a crash, instead of returning ErrInterrupted. Use it only
	// where fn can tell for itself whether its effect happened. Default
	// false.
	RetryInterrupted bool

	// MaxKeySize is the longest key, in bytes. If 0, DefaultMaxKeySize
	// (512); negative is an error.
	MaxKeySize int

	// MaxValueSize is the largest value fn may return, and the longest
	// message of a Permanent error, in bytes. If 0, DefaultMaxValueSize
	// (1 MiB); negative or above 1 GiB is an error.
	MaxValueSize int

	// SweepInterval is how often the background sweeper wakes. Each time,
	// it reads the next slice of the records and deletes the expired ones,
	// the slices sized so that it passes over all the records in about
	// TTL/8 (at least one interval): an expired record is removed about
	// TTL/8 after it expired, at most. If 0, DefaultSweepInterval (1
	// minute); negative turns the background sweeper off (Sweep still
	// works).
	SweepInterval time.Duration

	// CacheSize is the size of Pebble's block cache, in bytes. If 0,
	// DefaultCacheSize (32 MiB); negative is an error. Pebble's store only.
	CacheSize int64

	// RecordCacheSize is the memory, in bytes, for an in-memory cache of
	// completed and failed (Permanent) records: a record read back for its
	// second replay is cached, so that further replays of its key need no
	// Pebble read (most keys are retried once or never, and caching their
	// records would only cost evictions). The oldest cached records are
	// evicted first. If 0, DefaultRecordCacheSize (16 MiB); negative turns
	// the cache off. A shared store has no cache (another engine may Forget
	// a record), and New refuses the field for one.
	RecordCacheSize int64

	// Now is the clock. If nil, time.Now.
	Now func() time.Time

	// FS is the file system Pebble uses. If nil, the operating system's
	// (vfs.Default). Tests use vfs.NewMem() or vfs.NewCrashableMem().
	// Pebble's store only.
	FS vfs.FS

	// ReadOnly opens an existing database for reading only, for inspection
	// tools: Lookup, Records, Interrupted and Stats work; Do, Forget,
	// Sweep and Compact return ErrReadOnly. Nothing in the directory is
	// created or changed (Pebble's LOCK file, which every database has, is
	// locked as usual), the epoch is not advanced, and the background
	// sweeper does not run. Every in-flight marker reads as interrupted. A
	// directory that holds no idem database is an error. Default false.
	// Pebble's store only.
	ReadOnly bool

	// Logger receives the engine's and Pebble's log records. If nil, a
	// logger that writes records of level Warn and above to standard error
	// as text and discards the rest.
	Logger *slog.Logger

	// Observer, if not nil, watches every Do call: its outcome, and how
	// long fn, the store's requests and waits took (see Observer). If nil
	// (the default), none: Do pays a few nil checks for it, with no
	// allocation and no clock read.
	Observer Observer
}

// withDefaults returns a copy of o with the defaults filled in, or an error
// naming the first invalid field.
func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	switch {
	case c.TTL < 0:
		return c, fmt.Errorf("idem: Options.TTL is negative (%v)", c.TTL)
	case c.Durability > SyncNone:
		return c, fmt.Errorf("idem: Options.Durability has an unknown value %d", uint8(c.Durability))
	case c.MaxKeySize < 0:
		return c, fmt.Errorf("idem: Options.MaxKeySize is negative (%d)", c.MaxKeySize)
	case c.MaxValueSize < 0:
		return c, fmt.Errorf("idem: Options.MaxValueSize is negative (%d)", c.MaxValueSize)
	case c.MaxValueSize > maxValueSizeLimit:
		return c, fmt.Errorf("idem: Options.MaxValueSize %d is above the limit of %d", c.MaxValueSize, maxValueSizeLimit)
	case c.CacheSize < 0:
		return c, fmt.Errorf("idem: Options.CacheSize is negative (%d)", c.CacheSize)
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.MaxKeySize == 0 {
		c.MaxKeySize = DefaultMaxKeySize
	}
	if c.MaxValueSize == 0 {
		c.MaxValueSize = DefaultMaxValueSize
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.RecordCacheSize == 0 {
		c.RecordCacheSize = DefaultRecordCacheSize
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.FS == nil {
		c.FS = vfs.Default
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return c, nil
}

// checkGeneric returns an error if orig, the options given to New, sets a
// field that only the Pebble store has, or RecordCacheSize for a shared
// store.
func (o *Options) checkGeneric(orig *Options, shared bool) error {
	if orig == nil {
		return nil
	}
	field := ""
	switch {
	case orig.Durability != SyncAll:
		field = "Durability"
	case orig.CacheSize != 0:
		field = "CacheSize"
	case orig.FS != nil:
		field = "FS"
	case orig.ReadOnly:
		field = "ReadOnly"
	case shared && orig.RecordCacheSize != 0:
		field = "RecordCacheSize"
	}
	if field == "" {
		return nil
	}
	return fmt.Errorf("idem: Options.%s applies to the Pebble store only (Open); leave it zero for New", field)
}
