package idemnats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Liveness and waiting.
//
// Each engine keeps a heartbeat: the KV key h.<owner>, written every
// LivenessWindow/6 with a per-message TTL (Nats-TTL) of LivenessWindow, so
// that the server removes it LivenessWindow after the engine's last write.
// Alive reads it with the leader's read: an engine is alive while its
// heartbeat is there. The heartbeat runs in a goroutine of its own,
// independent of the calls: an engine whose fn runs for an hour stays
// alive. A failed heartbeat is logged (at Warn, at most once a window) and
// tried again at once (after a short pause), so that a leader election of a
// few seconds does not let it lapse. Close deletes it.
//
// Watch waits for a key's record to change through the stream's RePublish
// (keys.go): it subscribes to the key's republish subject, then reads the
// key (so that a change between the engine's read and the subscription is
// not missed), and waits for a republished message with a sequence above
// the revision, or half the liveness window, after which the engine reads
// the key and asks Alive again. The server republishes only what it has
// stored, after storing it, so a wake-up is never early; it republishes the
// marker it leaves where a record expired too.

// beatPause is how long the heartbeat waits after a failure.
func (s *store) beatPause() time.Duration {
	return min(s.window/8, 500*time.Millisecond)
}

// beat writes the heartbeat once.
func (s *store) beat(ctx context.Context) error {
	b := s.meta()
	w := s.newWrite(b, b.subj.heart(s.owner))
	w.ttl = ttlHeader(int64(s.window))
	_, _, err := s.apply(ctx, w)
	return err
}

// heartbeat writes the heartbeat every LivenessWindow/6 until Close: a
// heartbeat outlives a stall of the cluster of up to 5/6 of the window.
func (s *store) heartbeat() {
	defer s.bg.Done()
	interval := s.window / 6
	t := time.NewTimer(interval)
	defer t.Stop()
	var failingSince time.Time // zero while beats succeed
	var warned time.Time
	for {
		select {
		case <-s.bgCtx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.bgCtx, interval) // Close ends it
		err := s.beat(ctx)
		cancel()
		next := interval
		switch {
		case err != nil && s.bgCtx.Err() != nil:
			return
		case err != nil:
			now := time.Now()
			if failingSince.IsZero() {
				failingSince = now
			}
			if now.Sub(warned) >= s.window { // at most once a window
				s.log.Warn("idemnats: writing the engine's heartbeat failed; trying again", "failing_for", now.Sub(failingSince).Round(time.Millisecond), "error", err)
				warned = now
			}
			next = s.beatPause()
		case !failingSince.IsZero():
			s.log.Info("idemnats: the engine's heartbeat is written again", "failed_for", time.Since(failingSince).Round(time.Millisecond))
			failingSince, warned = time.Time{}, time.Time{}
		}
		t.Reset(next)
	}
}

// deleteHeartbeat deletes the heartbeat, for Close, unless the connection
// is down (reconnecting, or closed): then the heartbeat lapses by itself.
func (s *store) deleteHeartbeat() error {
	if st := s.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("the connection is %v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	b := s.meta()
	w := s.newWrite(b, b.subj.heart(s.owner))
	w.purge, w.ttl = true, b.markerTTL
	_, _, err := s.apply(ctx, w)
	return err
}

// Alive reports whether owner's heartbeat is in bucket 0, from the
// leader's read.
func (s *store) Alive(ctx context.Context, owner uint64) (bool, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	b := s.meta()
	m, err := s.load(ctx, b, b.subj.heart(owner))
	if err != nil {
		return false, fmt.Errorf("idemnats: reading a heartbeat: %w", err)
	}
	return m != nil && !m.tomb, nil
}

// Watch returns nil once key's record may no longer be at revision rev, or
// after half the liveness window; ctx's error if ctx ends first, and an
// error matching nats.ErrConnectionClosed at once if the connection is
// closed (it never reconnects: the engine's next read would fail too).
func (s *store) Watch(ctx context.Context, key string, rev uint64) error {
	wctx, cancel := context.WithTimeout(ctx, s.window/2)
	defer cancel()
	b := s.bucketOf(key)
	sub, err := s.nc.SubscribeSync(b.subj.watchOf(key))
	if err != nil {
		if s.nc.IsClosed() || errors.Is(err, nats.ErrConnectionClosed) {
			return fmt.Errorf("idemnats: waiting for a key's record to change: %w", nats.ErrConnectionClosed)
		}
		// No subscription (a connection draining, say): wait out the
		// window, and let the engine read.
		<-wctx.Done()
		return ctx.Err()
	}
	defer sub.Unsubscribe()
	// Any change from now on is republished to sub: read the key, so that
	// one made before is not missed.
	m, err := s.load(wctx, b, b.subj.record(key))
	switch {
	case err == nil && (m == nil || m.seq != rev):
		return nil
	case errors.Is(err, nats.ErrConnectionClosed):
		return fmt.Errorf("idemnats: waiting for a key's record to change: %w", err)
	}
	for {
		msg, err := sub.NextMsgWithContext(wctx)
		switch {
		case err != nil && s.nc.IsClosed():
			return fmt.Errorf("idemnats: waiting for a key's record to change: %w", nats.ErrConnectionClosed)
		case err != nil:
			return ctx.Err() // nil when the window lapsed
		case changed(msg, rev):
			return nil
		}
	}
}

// changed reports whether a republished message is of a write after rev.
func changed(msg *nats.Msg, rev uint64) bool {
	seq, err := strconv.ParseUint(msg.Header.Get(hdrSequence), 10, 64)
	return err != nil || seq > rev
}
