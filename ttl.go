package idem

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Expiry.
//
// Pebble has no compaction filter, so expired records are removed by
// deleting them, and a sweep finds them by reading the records: a record's
// expiry is in its value. (An index of the records by expiry would find them
// without reading the live ones, but it cost every new key a second Pebble
// key, measured at 15 to 20% of the new-key throughput, and a sixth of the
// disk.)
//
// A sweep reads the records in key order, sweepBatch at a time, each batch
// with an iterator of its own, so that no iterator pins memtables or tables
// for long, and decodes only the start of each value, up to the expiry. It
// claims the keys of the expired records it read, re-reads each
// record under its key's claim (a record stored again after it expired is
// never deleted), and deletes those still expired with DeleteSized, which
// lets Pebble's tombstone-density compactions find and reclaim their space.
// Keys held by another call are left for the next pass. Reads never wait for
// a sweep: an expired record is invisible as soon as it expires.
//
// Sweep passes over all the records at once. The background sweeper spreads
// its passes over time: every SweepInterval it sweeps the next slice of the
// records, sized so that a pass takes about passTime (see there).

// sweepBatch bounds the records one step of a sweep reads, and so the keys
// it claims and deletes at once.
const sweepBatch = 512

// passTime is how long the background sweeper takes to pass over all the
// records: TTL/8, and at least one interval. An expired record is removed
// about passTime (at most) after it expired, so the disk holds at most about
// 1/8 of a TTL's worth of expired records besides the live ones.
func passTime(ttl, interval time.Duration) time.Duration {
	return max(ttl/8, interval)
}

// sweepCursor is where the background sweeper's pass has got to.
type sweepCursor struct {
	after    []byte // the record key the pass continues after; nil: a new pass
	read     int64  // records the pass has read so far
	lastPass int64  // records the last complete pass read
}

// sweep removes the records that expired by now, in a whole pass, and
// returns how many it removed. Sweeps run one at a time.
func (e *Engine) sweep(ctx context.Context) (int, error) {
	var cur sweepCursor
	return e.sweepSlice(ctx, &cur, math.MaxInt64)
}

// sweepSlice continues the background sweeper's pass for one interval: it
// sweeps at least quota records (fewer if the pass ends) and returns how
// many records it removed.
func (e *Engine) sweepSlice(ctx context.Context, cur *sweepCursor, quota int64) (int, error) {
	e.sweepMu.Lock()
	defer e.sweepMu.Unlock()
	now := e.now()
	if e.local == nil {
		// Another store: it sweeps itself, if it needs sweeping.
		if e.storeSweeper == nil {
			return 0, nil
		}
		n, err := e.storeSweeper.Sweep(ctx, now)
		e.stats.swept.Add(uint64(max(n, 0)))
		if err != nil {
			return n, fmt.Errorf("idem: sweep: %w", err)
		}
		return n, nil
	}
	removed := 0
	for done := int64(0); done < quota; {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		next, read, n, err := e.sweepStep(cur.after, now)
		removed += n
		if err != nil {
			return removed, fmt.Errorf("idem: sweep: %w", err)
		}
		done += int64(read)
		cur.read += int64(read)
		cur.after = next
		if next == nil { // the pass is over
			cur.lastPass, cur.read = cur.read, 0
			return removed, nil
		}
	}
	return removed, nil
}

// sliceQuota is how many records the background sweeper reads in one
// interval, so that a pass over records of them takes passTime.
func sliceQuota(records int64, ttl, interval time.Duration) int64 {
	slices := int64(passTime(ttl, interval) / interval) // >= 1
	return max((records+slices-1)/slices, sweepBatch)
}

// sweepStep reads up to sweepBatch records after the record key after (from
// the first if after is nil), deletes those that expired by now, and
// returns the record key to continue after (nil at the end), how many
// records it read and how many it removed.
func (e *Engine) sweepStep(after []byte, now int64) (next []byte, read, removed int, err error) {
	var expired []string
	corrupt := 0
	next, err = e.local.scanExpiries(after, sweepBatch, func(key []byte, expires int64, ok bool) {
		read++
		switch {
		case !ok:
			corrupt++
		case expires <= now:
			expired = append(expired, string(key))
		}
	})
	if err != nil {
		return nil, read, 0, err
	}
	if corrupt > 0 {
		// A corrupt record stays where it is, for an operator to see
		// (Lookup reports it; Forget removes it).
		e.logger.Warn("idem: sweep skipped corrupt records", "count", corrupt)
	}
	if len(expired) == 0 {
		return next, read, 0, nil
	}
	removed, err = e.sweepKeys(expired, now)
	e.stats.swept.Add(uint64(removed))
	e.filter.removed.Add(int64(removed))
	return next, read, removed, err
}

// sweepKeys claims keys, whose records had expired by now when read, and
// deletes those whose records are still expired under the claim. Keys that
// another call holds are left for a later sweep.
func (e *Engine) sweepKeys(keys []string, now int64) (int, error) {
	var (
		held []string // the keys claimed
		del  []sweptRecord
	)
	c := newMaintCall()
	defer func() { e.locks.releaseAll(held, c) }()
	for _, key := range keys {
		if got, _ := e.locks.tryAcquire(key, c); got != claimed {
			continue // held by a Do call or a Forget: not ours to judge now
		}
		held = append(held, key)
		rec, size, found, err := e.local.get(key)
		if err != nil {
			e.logger.Warn("idem: sweep skipped a record", "error", err)
			continue
		}
		if !found || !rec.Expired(now) {
			continue // gone, or stored again since it was read
		}
		del = append(del, sweptRecord{key: key, size: size})
		if rec.State == StateInFlight {
			e.orphans.Delete(key)
		}
	}
	if len(del) == 0 {
		return 0, nil
	}
	if err := e.local.deleteRecords(del); err != nil {
		return 0, err
	}
	return len(del), nil
}

// sweepTick is the background sweeper's work of one interval: a slice of
// the pass, sized by the most records known to be there: the last pass's
// count, the records this pass has read so far, or the key filter's
// estimate (the database may have grown since the last pass, or that pass
// may have met an empty one).
func (e *Engine) sweepTick(ctx context.Context, cur *sweepCursor, interval time.Duration) (int, error) {
	records := max(cur.lastPass, cur.read, e.filter.estimate())
	return e.sweepSlice(ctx, cur, sliceQuota(records, time.Duration(e.ttl), interval))
}

// sweeper sweeps a slice of the records every interval until ctx ends.
func (e *Engine) sweeper(ctx context.Context, interval time.Duration) {
	defer e.sweeperDone.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	var cur sweepCursor
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !e.enter() {
			return
		}
		n, err := e.sweepTick(ctx, &cur, interval)
		e.exit()
		if err != nil && ctx.Err() == nil {
			e.logger.Warn("idem: background sweep failed", "error", err, "removed", n)
		} else if n > 0 {
			e.logger.Debug("idem: background sweep", "removed", n)
		}
	}
}
