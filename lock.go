package idem

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// numShards is the number of lock shards. It is a power of two so that a
// key's shard is a mask of its hash.
const numShards = 256

// lockTable coordinates the calls that touch a key in this process. Each key
// has at most one owner at a time: a Do leader, or a maintenance claim taken
// by Forget or the sweeper. Other callers of the key find the owner's call and
// wait on its channels, never on a mutex.
//
// Each shard also caches the completed and failed records of some of its
// keys (those read back for a second replay), so that further replays of
// them need no Pebble read, and evicts them first in, first out. Only a
// key's owner changes the cache, when it releases the key (after its writes
// have returned), in the same critical section that removes it as owner: a
// caller that finds no owner under the mutex finds the cache as current as
// the database.
//
// A shard's mutex is held only to look up or change its maps: never across
// Pebble I/O and never across fn.
type lockTable struct {
	seed       maphash.Seed
	cacheLimit int // bytes of cached records per shard; 0 disables the cache
	shards     [numShards]lockShard
}

type lockShard struct {
	mu         sync.Mutex              // protects the fields below and every call's guarded fields
	calls      map[string]*call        // the owner of each key held in this shard
	cache      map[string]cachedRecord // completed and failed records, as stored
	cacheBytes int                     // the size of cache, by cachedRecord.size
	fifo       cacheFIFO               // the cached keys in the order they were cached
	_          [56]byte                // pads the fields above to 128 bytes

	// door admits a record to the cache on its second replay: a bitset of
	// the hashes of the keys whose record was replayed, cleared after
	// doorResetAfter keys, so that it forgets keys replayed once long ago.
	// Most retried keys are retried once, and caching their record would
	// only cost an eviction. Read and written without the mutex: a lost
	// update only delays an admission, and a false positive (two keys on
	// one bit) only admits a record early.
	door     [doorWords]atomic.Uint64
	doorAdds atomic.Int32 // bits set since the door was last cleared
	_        [60]byte     // pads the shard to 320 bytes, five cache lines
}

// A shard is a whole number of cache lines, and each of its hot words (the
// mutex, the door's counter) has 64 bytes of its own shard's fields or
// padding between it and the next shard's: the shards' mutexes and
// counters never share a cache line, whatever the table's alignment.
const shardSize = 320

// The door of a shard: 1024 bits, cleared once a quarter are set.
const (
	doorWords      = 16
	doorBits       = doorWords * 64
	doorResetAfter = doorBits / 4
)

// cachedRecord is an immutable copy of a stored completed or failed record.
type cachedRecord struct {
	fp               Fingerprint
	failed           bool
	size             int32 // what it counts against the cache's limit
	seq              uint64
	created, expires int64
	value            []byte // owned by the cache: copied out, never aliased
	errMsg           string
}

// cachedSize is what a cached record counts against the cache's limit: its
// bytes and an estimate of the map's and the FIFO's overhead.
func cachedSize(key string, value []byte, errMsg string) int {
	return len(key) + len(value) + len(errMsg) + 160
}

// cacheFIFO is a shard's eviction order: first in, first out, so that an
// eviction costs one map lookup. An entry stays in the FIFO after its record
// left the cache (it was uncached, or cached again with a later seq); such a
// stale entry is skipped when it comes out, and compactFIFO drops them all
// when they outnumber the live ones.
type cacheFIFO struct {
	entries []fifoEntry
	head    int // entries[head:] are in the FIFO
	seq     uint64
}

type fifoEntry struct {
	key string
	seq uint64
}

func (q *cacheFIFO) len() int { return len(q.entries) - q.head }

// A call is one owner's hold on a key.
type call struct {
	// fp is the fingerprint digest of a Do leader; maint is true for a
	// maintenance claim (Forget, Sweep), which has no fingerprint and whose
	// outcome no follower shares. Both are set before the call is
	// registered and not changed while it is.
	fp    Fingerprint
	maint bool

	// Guarded by the shard's mu. The channels are made by the first
	// follower that needs them, so that a call nobody waits for allocates
	// none. running is set when a Do leader has stored its in-flight marker
	// and calls fn; runningCh is closed then. done is closed when the owner
	// releases the key. waiters counts the followers that found this call;
	// once released, no follower can join, so the owner reads it after
	// release without the lock.
	running   bool
	runningCh chan struct{}
	done      chan struct{}
	waiters   int

	// out is written by the owner after release and before done is closed,
	// and only read by followers after done is closed.
	out outcome
}

// outcome is what a released call leaves for its followers.
type outcome struct {
	share bool // followers with the same fingerprint take res and err as theirs
	res   Result
	err   error
}

// leaderCalls recycles the calls of Do leaders that nobody waited for.
var leaderCalls = sync.Pool{New: func() any { return new(call) }}

func newLeaderCall(fp Fingerprint) *call {
	c := leaderCalls.Get().(*call)
	*c = call{fp: fp}
	return c
}

// newMaintCall returns a maintenance claim. It may hold keys of several
// shards, so its done channel is made here rather than under one shard's
// mutex.
func newMaintCall() *call {
	return &call{maint: true, done: make(chan struct{})}
}

func (t *lockTable) init(cacheBytes int64) {
	t.seed = maphash.MakeSeed()
	if cacheBytes > 0 {
		t.cacheLimit = int(max(cacheBytes/numShards, 1))
	}
	for i := range t.shards {
		t.shards[i].calls = make(map[string]*call)
		t.shards[i].cache = make(map[string]cachedRecord)
	}
}

func (t *lockTable) shard(key string) *lockShard {
	return &t.shards[maphash.String(t.seed, key)&(numShards-1)]
}

// follower is what a caller that found an owner waits on.
type follower struct {
	c         *call
	running   bool          // the owner already runs fn
	runningCh chan struct{} // closed when it starts fn; nil if it never will (maintenance) or already does
	done      chan struct{}
}

// acquire makes c the owner of key, unless the key has an owner or a cached
// record that has not expired by now. It returns, in that order of
// precedence: f when another call owns the key, with what to wait on; hit
// and hitOK true, with the cached record; or owner true when c now owns the
// key.
func (t *lockTable) acquire(key string, c *call, now int64) (hit cachedRecord, hitOK bool, f follower, owner bool) {
	s := t.shard(key)
	s.mu.Lock()
	if owner, ok := s.calls[key]; ok {
		f := s.follow(owner)
		if !owner.maint {
			// A maintenance claim may hold keys of other shards, whose
			// followers hold other mutexes; its outcome is never shared,
			// so nothing needs its count.
			owner.waiters++
		}
		s.mu.Unlock()
		return cachedRecord{}, false, f, false
	}
	if r, ok := s.cache[key]; ok {
		if now < r.expires {
			s.mu.Unlock()
			return r, true, follower{}, false
		}
		s.uncache(key)
	}
	s.calls[key] = c
	s.mu.Unlock()
	return cachedRecord{}, false, follower{}, true
}

// follow returns what a follower of owner waits on, making the channels it
// needs. s.mu must be held.
func (s *lockShard) follow(owner *call) follower {
	if owner.done == nil {
		owner.done = make(chan struct{})
	}
	f := follower{c: owner, running: owner.running, done: owner.done}
	if !owner.maint && !owner.running {
		if owner.runningCh == nil {
			owner.runningCh = make(chan struct{})
		}
		f.runningCh = owner.runningCh
	}
	return f
}

// claim is the result of tryAcquire.
type claim int

const (
	claimed     claim = iota // the caller's call now owns the key
	heldBySelf               // the caller's call already owned it
	heldByMaint              // a maintenance claim owns it
	heldByDo                 // a Do call owns it
)

// tryAcquire makes c the owner of key if nobody owns it. Otherwise it says
// who does and returns a channel closed when that owner releases the key,
// without registering the caller as a follower.
func (t *lockTable) tryAcquire(key string, c *call) (claim, <-chan struct{}) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	owner, held := s.calls[key]
	switch {
	case !held:
		s.calls[key] = c
		return claimed, nil
	case owner == c:
		return heldBySelf, nil
	case owner.maint:
		return heldByMaint, owner.done
	}
	if owner.done == nil {
		owner.done = make(chan struct{})
	}
	return heldByDo, owner.done
}

// setRunning records that the Do leader c, owner of key, is about to call fn,
// and wakes the followers waiting for that.
func (t *lockTable) setRunning(key string, c *call) {
	s := t.shard(key)
	s.mu.Lock()
	c.running = true
	if c.runningCh != nil {
		close(c.runningCh)
	}
	s.mu.Unlock()
}

// release removes the Do leader c as the owner of key, caches rec (the key's
// record as now stored, read back for a replay, or nil if it has none or is
// not to be cached) if the door admits it, hands out to the followers and
// wakes them. c must not be used afterwards.
func (t *lockTable) release(key string, c *call, out outcome, rec *StoredRecord) {
	h := maphash.String(t.seed, key)
	s := &t.shards[h&(numShards-1)]
	var cr cachedRecord
	if rec != nil && t.cacheLimit > 0 && (rec.State == StateCompleted || rec.State == StateFailed) && s.admit(h) {
		if n := cachedSize(key, rec.Value, rec.Err); n <= t.cacheLimit {
			cr = cachedRecord{fp: rec.Fingerprint, failed: rec.State == StateFailed, size: int32(n), created: rec.Created, expires: rec.Expires, value: cloneBytes(rec.Value), errMsg: rec.Err}
		}
	}
	s.mu.Lock()
	delete(s.calls, key)
	s.uncache(key)
	if cr.size > 0 {
		s.cacheAdd(key, cr, t.cacheLimit)
	}
	done, waiters := c.done, c.waiters
	s.mu.Unlock()
	if waiters == 0 {
		leaderCalls.Put(c)
		return
	}
	if out.share && out.res.Value != nil {
		// The owner's caller owns out.res.Value; followers get their own
		// copies of an engine-owned one.
		out.res.Value = cloneBytes(out.res.Value)
	}
	c.out = out
	close(done)
}

// admit reports whether a record of the key whose hash is h, read back for
// a replay, goes into the cache: yes if the key's bit is set in the door
// (it was replayed since the door was last cleared); otherwise it sets the
// bit.
func (s *lockShard) admit(h uint64) bool {
	bit := (h / numShards) % doorBits
	w, m := &s.door[bit/64], uint64(1)<<(bit%64)
	if w.Load()&m != 0 {
		return true
	}
	w.Or(m)
	if s.doorAdds.Add(1) >= doorResetAfter {
		s.doorAdds.Store(0)
		for i := range s.door {
			s.door[i].Store(0)
		}
	}
	return false
}

// releaseAll removes the maintenance claim c from all of keys, which it
// holds, drops their cached records, and wakes the callers waiting. One claim
// may hold many keys (a sweep batch); its done channel is closed once, when
// all are released.
func (t *lockTable) releaseAll(keys []string, c *call) {
	for _, key := range keys {
		s := t.shard(key)
		s.mu.Lock()
		delete(s.calls, key)
		s.uncache(key)
		s.mu.Unlock()
	}
	close(c.done)
}

// uncache drops key's cached record. Its FIFO entry goes stale. s.mu must
// be held.
func (s *lockShard) uncache(key string) {
	if r, ok := s.cache[key]; ok {
		s.cacheBytes -= int(r.size)
		delete(s.cache, key)
	}
}

// cacheAdd caches r, of r.size bytes at most limit, for key, which has no
// cached record, evicting the records cached longest ago to stay within
// limit. s.mu must be held.
func (s *lockShard) cacheAdd(key string, r cachedRecord, limit int) {
	q := &s.fifo
	for s.cacheBytes+int(r.size) > limit && q.len() > 0 {
		old := q.entries[q.head]
		q.entries[q.head] = fifoEntry{}
		q.head++
		if cur, ok := s.cache[old.key]; ok && cur.seq == old.seq {
			s.cacheBytes -= int(cur.size)
			delete(s.cache, old.key)
		}
	}
	q.seq++
	r.seq = q.seq
	s.cache[key] = r
	s.cacheBytes += int(r.size)
	if q.head > 0 && q.head >= len(q.entries)/2 || q.len() > 2*len(s.cache)+16 {
		s.compactFIFO()
	}
	q.entries = append(q.entries, fifoEntry{key: key, seq: r.seq})
}

// compactFIFO drops the FIFO's stale entries and the space before its head,
// keeping the order of the others. s.mu must be held.
func (s *lockShard) compactFIFO() {
	q := &s.fifo
	live := q.entries[:0]
	for _, ent := range q.entries[q.head:] {
		if cur, ok := s.cache[ent.key]; ok && cur.seq == ent.seq {
			live = append(live, ent)
		}
	}
	clear(q.entries[len(live):])
	q.entries, q.head = live, 0
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// owned calls add with every key that a call owns now.
func (t *lockTable) owned(add func(string)) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for key := range s.calls {
			add(key)
		}
		s.mu.Unlock()
	}
}
