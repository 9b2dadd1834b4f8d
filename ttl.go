package idem

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Expiry.
//
// Pebble has no compaction filter, so expired records are removed by
// deleting them. Every record has an entry in a time-ordered index,
// x<expiry, 8 bytes big-endian><key>, written in the same batch as the
// record. A sweep reads the index from its start up to now, re-checks each
// record's current expiry under the key's claim (so that a record stored again
// after it expired is never deleted by a stale entry), deletes the expired
// records with DeleteSized (which lets Pebble's tombstone-density compactions
// find them and reclaim the space), and drops the swept index span with one
// DeleteRange. Reads never wait for a sweep: an expired record is invisible
// as soon as it expires.

// sweepBatch bounds the index entries one sweep batch reads, claims and
// deletes.
const sweepBatch = 512

// indexKey returns the index entry of key at expiry expires.
func indexKey(expires int64, key string) []byte {
	k := make([]byte, indexKeySize(key))
	putIndexKey(k, expires, key)
	return k
}

func indexKeySize(key string) int { return 9 + len(key) }

// putIndexKey writes the index entry of key at expiry expires into k, of
// indexKeySize(key) bytes.
func putIndexKey(k []byte, expires int64, key string) {
	k[0] = prefixIndex
	binary.BigEndian.PutUint64(k[1:9], indexTime(expires))
	copy(k[9:], key)
}

// indexTime clamps a unix-nanosecond time to the index's unsigned range.
func indexTime(t int64) uint64 {
	if t < 0 {
		return 0
	}
	return uint64(t)
}

// successor returns the smallest key after k.
func successor(k []byte) []byte {
	return append(append(make([]byte, 0, len(k)+1), k...), 0)
}

type indexEntry struct {
	raw []byte // the index key itself
	key string
}

// expiredEntries returns up to limit index entries in [lower, upper).
func (s *store) expiredEntries(lower, upper []byte, limit int) ([]indexEntry, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	var out []indexEntry
	for valid := it.First(); valid && len(out) < limit; valid = it.Next() {
		k := it.Key()
		if len(k) < 9 {
			continue // not ours: index keys are at least 9 bytes
		}
		raw := append([]byte(nil), k...)
		out = append(out, indexEntry{raw: raw, key: string(raw[9:])})
	}
	return out, it.Close()
}

// sweepBatchCommit deletes the records named in del, drops the index span
// [lower, upper) and puts back the index entries in keep, in one batch.
func (s *store) sweepBatchCommit(del []sweptRecord, lower, upper []byte, keep []indexEntry) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, d := range del {
		if err := b.DeleteSized(recordKey(d.key), d.size, nil); err != nil {
			return err
		}
	}
	if err := b.DeleteRange(lower, upper, nil); err != nil {
		return err
	}
	// Operations later in a batch have higher sequence numbers, so these
	// entries survive the DeleteRange above.
	for _, k := range keep {
		if err := b.Set(k.raw, nil, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebble.NoSync)
}

type sweptRecord struct {
	key  string
	size uint32
}

// sweep removes the records that expired by now and returns how many it
// removed. Sweeps run one at a time.
func (e *Engine) sweep(ctx context.Context) (int, error) {
	e.sweepMu.Lock()
	defer e.sweepMu.Unlock()

	now := e.now()
	lower := []byte{prefixIndex}
	// Entries with expiry <= now: the index's upper bound is exclusive.
	upper := indexKey(now+1, "")
	removed := 0
	for {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		entries, err := e.store.expiredEntries(lower, upper, sweepBatch)
		if err != nil {
			return removed, fmt.Errorf("idem: sweep: %w", err)
		}
		if len(entries) == 0 {
			return removed, nil
		}
		n, err := e.sweepEntries(entries, lower, now)
		removed += n
		e.stats.swept.Add(uint64(n))
		e.filter.removed.Add(int64(n))
		if err != nil {
			return removed, fmt.Errorf("idem: sweep: %w", err)
		}
		lower = successor(entries[len(entries)-1].raw)
	}
}

// sweepEntries claims the keys of entries, deletes those whose records have
// expired by now, and drops the entries, keeping those of keys that another
// call holds for a later sweep.
func (e *Engine) sweepEntries(entries []indexEntry, lower []byte, now int64) (int, error) {
	var (
		claimed []string
		keep    []indexEntry
		del     []sweptRecord
	)
	c := newMaintCall()
	defer func() { e.locks.releaseAll(claimed, c) }()
	for _, ent := range entries {
		switch got, _ := e.locks.tryAcquire(ent.key, c); got {
		case heldBySelf:
			// An earlier entry of this batch named the key, and its
			// record has been dealt with.
			continue
		case heldByDo, heldByMaint:
			// Another call holds the key: leave its entry for a later
			// sweep.
			keep = append(keep, ent)
			continue
		}
		claimed = append(claimed, ent.key)
		rec, found, err := e.store.get(ent.key)
		if err != nil {
			// A corrupt record stays where it is, for an operator to see;
			// so does its entry.
			e.logger.Warn("idem: sweep skipped a record", "error", err)
			keep = append(keep, ent)
			continue
		}
		if !found || !rec.expired(now) {
			continue // stale entry: the record is gone or was stored again
		}
		del = append(del, sweptRecord{key: ent.key, size: rec.size})
		if rec.state == StateInFlight {
			e.orphans.Delete(ent.key)
		}
	}
	upper := successor(entries[len(entries)-1].raw)
	if err := e.store.sweepBatchCommit(del, lower, upper, keep); err != nil {
		return 0, err
	}
	return len(del), nil
}

// sweeper runs a sweep every interval until stop is closed.
func (e *Engine) sweeper(ctx context.Context, interval time.Duration) {
	defer e.sweeperDone.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !e.enter() {
			return
		}
		n, err := e.sweep(ctx)
		e.exit()
		if err != nil && ctx.Err() == nil {
			e.logger.Warn("idem: background sweep failed", "error", err, "removed", n)
		} else if n > 0 {
			e.logger.Debug("idem: background sweep", "removed", n)
		}
	}
}
