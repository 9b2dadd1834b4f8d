package idem

import (
	"hash/maphash"
	"sync"
)

// numShards is the number of lock shards. It is a power of two so that a
// key's shard is a mask of its hash.
const numShards = 256

// lockTable coordinates the calls that touch a key in this process. Each key
// has at most one owner at a time: a Do leader, or a maintenance claim taken
// by Forget or the sweeper. Other callers of the key find the owner's call and
// wait on its channels, never on a mutex.
//
// A shard's mutex is held only to look up or change its map: never across
// Pebble I/O and never across fn.
type lockTable struct {
	seed   maphash.Seed
	shards [numShards]lockShard
}

type lockShard struct {
	mu    sync.Mutex       // protects calls and every call's waiters
	calls map[string]*call // the owner of each key held in this shard
	_     [48]byte         // keeps neighbouring shards' mutexes off one cache line
}

// A call is one owner's hold on a key.
type call struct {
	// fp is the fingerprint digest of a Do leader; maint is true for a
	// maintenance claim (Forget, Sweep), which has no fingerprint and whose
	// outcome no follower shares.
	fp    fingerprint
	maint bool

	// running is closed when a Do leader has stored its in-flight marker and
	// is about to call fn; it is nil for maintenance claims. done is closed
	// when the owner has released the key.
	running chan struct{}
	done    chan struct{}

	// waiters counts the followers that found this call; guarded by the
	// shard's mu. Once the call is released, no follower can join, so the
	// owner reads it after release without the lock.
	waiters int

	// out is written by the owner before done is closed and only read after.
	out outcome
}

// outcome is what a released call leaves for its followers.
type outcome struct {
	share bool // followers with the same fingerprint take res and err as theirs
	res   Result
	err   error
}

func newLeaderCall(fp fingerprint) *call {
	return &call{fp: fp, running: make(chan struct{}), done: make(chan struct{})}
}

func newMaintCall() *call {
	return &call{maint: true, done: make(chan struct{})}
}

func (t *lockTable) init() {
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].calls = make(map[string]*call)
	}
}

func (t *lockTable) shard(key string) *lockShard {
	return &t.shards[maphash.String(t.seed, key)&(numShards-1)]
}

// acquire makes c the owner of key if nobody owns it and returns (c, true).
// Otherwise it registers the caller as a follower of the current owner and
// returns (owner, false).
func (t *lockTable) acquire(key string, c *call) (*call, bool) {
	s := t.shard(key)
	s.mu.Lock()
	if owner, ok := s.calls[key]; ok {
		owner.waiters++
		s.mu.Unlock()
		return owner, false
	}
	s.calls[key] = c
	s.mu.Unlock()
	return c, true
}

// tryAcquire makes c the owner of key if nobody owns it. It returns the
// current owner otherwise, without registering the caller as a follower.
func (t *lockTable) tryAcquire(key string, c *call) (*call, bool) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if owner, ok := s.calls[key]; ok {
		return owner, false
	}
	s.calls[key] = c
	return c, true
}

// release removes c as the owner of key, stores out for its followers when
// there are any, and wakes them.
func (t *lockTable) release(key string, c *call, out outcome) {
	s := t.shard(key)
	s.mu.Lock()
	delete(s.calls, key)
	s.mu.Unlock()
	if c.waiters > 0 {
		if out.share && out.res.Value != nil {
			// The owner's caller owns out.res.Value; followers get their
			// own copies of an engine-owned one.
			out.res.Value = cloneBytes(out.res.Value)
		}
		c.out = out
	}
	close(c.done)
}

// releaseAll removes the maintenance claim c from all of keys, which it
// holds, and wakes the followers. One claim may hold many keys (a sweep
// batch); its done channel is closed once, when all are released.
func (t *lockTable) releaseAll(keys []string, c *call) {
	for _, key := range keys {
		s := t.shard(key)
		s.mu.Lock()
		delete(s.calls, key)
		s.mu.Unlock()
	}
	close(c.done)
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}
