package idem

import (
	"context"
	"hash/maphash"
	"math/bits"
	"sync"
	"sync/atomic"
)

// The negative path.
//
// Most Do calls are for new keys, and a Pebble Get of an absent key is the
// dearest step of such a call: Pebble builds an iterator for every level
// before its bloom filters can say no. The engine keeps its own bloom filter
// of the keys that have records, in memory, and skips the Get when the
// filter says a key has none.
//
// The filter never says no for a key that has a record: the owner of a key
// adds it to the filter before it writes the key's record, and a caller only
// consults the filter while it owns the key, after every earlier owner has
// released it. Keys stored before Open are added by a scan of the records
// (their keys, the source of truth), in the background: until the filter is
// ready, every call reads Pebble. A false positive only costs the Get that
// would have been made anyway.
//
// Keys are never removed from a bloom filter, so as records come and go the
// filter fills up. When more keys have been added than it was sized for, a
// new one is built the same way, with the keys added meanwhile going to both,
// and replaces it.

const (
	filterBitsPerKey = 10 // about 1% false positives with filterHashes
	filterHashes     = 7
	blockWords       = 8 // a block is 512 bits: one 64-byte cache line
)

// filterMinKeys is the smallest capacity of a filter; tests lower it to make
// rebuilds frequent.
var filterMinKeys int64 = 1 << 16

// bloomFilter is a fixed-size, cache-blocked bloom filter safe for
// concurrent use without locks: all the bits of a key are in one 512-bit
// block, so an add or a lookup touches one cache line, not filterHashes of
// them (at the cost of a few more false positives).
type bloomFilter struct {
	seed      maphash.Seed
	words     []atomic.Uint64
	blockMask uint64 // blocks - 1 (a power of two)
	capacity  int64  // keys it was sized for
	added     atomic.Int64
}

func newBloom(keys int64, seed maphash.Seed) *bloomFilter {
	nbits := uint64(1) << bits.Len64(uint64(keys*filterBitsPerKey)-1)
	nbits = max(nbits, 64*blockWords)
	// Slices this large are allocated aligned to at least 64 bytes, so each
	// block is a cache line.
	return &bloomFilter{seed: seed, words: make([]atomic.Uint64, nbits/64), blockMask: nbits/(64*blockWords) - 1, capacity: keys}
}

// probes calls f with each of the key's bit positions, all in one block: the
// high half of the hash picks the block, the low half the bits (double
// hashing).
func (b *bloomFilter) probes(key string, f func(bit uint64) bool) {
	h := maphash.String(b.seed, key)
	base := (h >> 32 & b.blockMask) * blockWords * 64
	lo := uint32(h)
	delta := lo>>17 | lo<<15 | 1
	for range filterHashes {
		if !f(base + uint64(lo%(blockWords*64))) {
			return
		}
		lo += delta
	}
}

func (b *bloomFilter) add(key string) {
	b.probes(key, func(bit uint64) bool {
		w := &b.words[bit/64]
		if m := uint64(1) << (bit % 64); w.Load()&m == 0 {
			w.Or(m)
		}
		return true
	})
	b.added.Add(1)
}

func (b *bloomFilter) mayContain(key string) bool {
	found := true
	b.probes(key, func(bit uint64) bool {
		if b.words[bit/64].Load()&(1<<(bit%64)) == 0 {
			found = false
		}
		return found
	})
	return found
}

// keyFilter is the engine's negative path: a bloom filter of the keys that
// have records, rebuilt as it fills.
type keyFilter struct {
	seed    maphash.Seed
	minKeys int64                       // the smallest capacity of a filter
	current atomic.Pointer[bloomFilter] // nil until the first build is done
	next    atomic.Pointer[bloomFilter] // being built: adds go here too

	// removed counts the records deleted (swept or forgotten) since the
	// last build, to size the next one for the keys still there.
	removed atomic.Int64

	mu       sync.Mutex // one build at a time; guards building
	building bool
	wg       sync.WaitGroup // the build goroutine
}

// add records that key is about to have a record. Its owner calls it,
// before writing the record.
func (f *keyFilter) add(key string) {
	// next before current: a build that completes in between has already
	// made next current, and the key is in it.
	n := f.next.Load()
	if n != nil {
		n.add(key)
	}
	if c := f.current.Load(); c != nil && c != n {
		c.add(key)
	}
}

// absent reports whether key certainly has no record. It is false while the
// filter is being built for the first time.
func (f *keyFilter) absent(key string) bool {
	c := f.current.Load()
	return c != nil && !c.mayContain(key)
}

// estimate returns about how many keys have records: the keys added to the
// filter (since a build, which adds those found) less the records removed
// since. It is 0 until the first build is done.
func (f *keyFilter) estimate() int64 {
	c := f.current.Load()
	if c == nil {
		return 0
	}
	return max(c.added.Load()-f.removed.Load(), 0)
}

// full reports whether the filter holds more keys than it was sized for.
func (f *keyFilter) full() bool {
	c := f.current.Load()
	return c != nil && c.added.Load() > c.capacity
}

// keySource is where a build finds the keys that have records.
type keySource interface {
	// owned adds the keys that calls own now: among them are the keys whose
	// owners added them to the old filter only and have not yet written
	// their records.
	owned(add func(string))
	// scan adds every key that has a record, reading the database as of a
	// moment after it is called.
	scan(ctx context.Context, add func(string)) error
}

// rebuild starts building a new filter in the background, unless a build is
// under way.
func (f *keyFilter) rebuild(ctx context.Context, src keySource, onErr func(error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.building {
		return
	}
	f.building = true
	b := newBloom(max(2*f.estimate(), f.minKeys), f.seed)
	f.next.Store(b) // from here on, new keys go to b too
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		src.owned(b.add)
		err := src.scan(ctx, b.add)
		f.mu.Lock()
		defer f.mu.Unlock()
		if err == nil {
			f.current.Store(b)
			f.removed.Store(0)
		} else if ctx.Err() == nil {
			onErr(err)
		}
		f.next.Store(nil)
		f.building = false
	}()
}

// wait waits for a build under way to end.
func (f *keyFilter) wait() { f.wg.Wait() }
