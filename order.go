package idem

import "sync/atomic"

// The order of a lead's requests on a shared store.
//
// A call that leads a key must learn whether the key has a record, and claim
// it if not. With a store of its own (Pebble's) the engine reads first: a
// read is local and cheap, and the key filter skips most of them. With a
// shared store each is a request to another machine, and either order can
// be the cheaper:
//
//   - create first: a new key is one request (the Create); a key with a
//     record (a replay, a claim of another engine, an expired record) is
//     two (the refused Create, then its read, or the store's own check of
//     the refusal when it returns a ConflictError).
//   - read first: a new key is two requests (the read, then the Create); a
//     key with a record is one (the read).
//
// If a fraction p of the keys have a record, create first costs 1+p
// requests per lead and read first 2-p: read first wins above p = 1/2.
// Both orders are correct (every decision rests on the store's atomic
// writes, see leadOwned); the order is only a guess at the cheaper one.
//
// keyMix is that guess: an exponentially weighted average of whether the
// keys of an engine's recent leads had a record, with weight 1/16, in fixed
// point. From one steady mix to the other it crosses one half in 11 leads
// ((15/16)^11 < 1/2). Its noise makes some leads take the worse order when
// the mix is near one half, where the two orders cost nearly the same: in
// a simulation, 1 lead in 100 at p = 0.3 (each paying 0.4 of a request
// more), 13 in 100 at p = 0.4 (0.2 more), 29 in 100 at p = 0.45 (0.1 more):
// at most 0.03 of a request per lead. A weight of 1/32 would cut that
// (6 and 21 in 100 at p = 0.4 and 0.45) but take 22 leads to follow a
// change of mix; 1/16 follows a burst of clients' retries, or a switch
// from new keys to replays, twice as soon.
//
// It is a plain load and store, no lock and no compare-and-swap: callers
// that update it at once may lose a sample, which only slows it down; it
// always holds a value between 0 and 1. It is not written while it does
// not change (all new keys, or all replays), so that steady traffic does
// not bounce its cache line between cores.
type keyMix struct {
	v atomic.Uint32 // the average, with mixOne for 1; 0 when the engine starts: create first
}

const (
	mixOne   = 1 << 16
	mixShift = 4 // the weight of a sample: 1/16
)

// readFirst reports whether most recent leads found a record.
func (m *keyMix) readFirst() bool { return m.v.Load() > mixOne/2 }

// add counts a lead whose key had a record or not.
func (m *keyMix) add(had bool) {
	old := m.v.Load()
	v := old - old>>mixShift
	if had {
		v += mixOne >> mixShift
	}
	if v != old {
		m.v.Store(v)
	}
}
