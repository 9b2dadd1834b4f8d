package idempg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Liveness and waiting.
//
// Each engine keeps a heartbeat: its row in the engines table, whose expiry
// it sets to LivenessWindow from now, by the server's clock, every
// LivenessWindow/6, on a connection of its own (so that a pool exhausted by
// the service's queries cannot hold it up). Alive reads it: an engine is
// alive while its row has not expired, by the same clock (so the engines'
// clocks need not agree). The heartbeat runs in a goroutine of its own,
// independent of the calls: an engine whose fn runs for an hour stays
// alive. A failed heartbeat is logged (at Warn, at most once a window) and
// tried again after a short pause, on a new connection. Close marks it dead
// for good (expires -infinity, which a late beat does not overwrite), and
// the next sweep deletes it.
//
// Watch waits for a key's record to change through LISTEN/NOTIFY, on one
// more connection of the engine's own, which LISTENs on the table's channel
// (idem_<the table's oid>: see channelOf). An engine that waits on a claim
// registers the revision it waits on, then marks the row watched (an
// UPDATE of the row at that revision; if none, the record changed
// already), and the table's triggers
// NOTIFY the channel, with the old revision, when a watched row changes its
// revision or is deleted: the notification is sent at the commit of the
// change, which the mark's commit precedes (the change waits for the row's
// lock), and the listener was LISTENing before the mark. Rows that nobody
// waits on are not notified: the engines' writes pay nothing for waiting
// (NOTIFY serializes the commits that send one). While the listener is not
// connected (a restart of the server), waiters are woken and Watch returns
// after a short pause, so that the engine reads the key again: it polls
// until the listener is back. Watch also returns after half the liveness
// window, so that the engine asks Alive again.

// closedPayload is the payload of the notification that Close sends on the
// table's channel once it has marked the engine's heartbeat dead.
const closedPayload = "closed"

// start starts the store's goroutines: the heartbeat, the listener and the
// watchdog of the calls in progress (see bound.go).
func (s *store) start() {
	s.bgCtx, s.stopBg = context.WithCancel(context.Background())
	s.bg.Add(3)
	go s.heartbeat()
	go s.listen()
	s.bounds.start()
	go func() {
		defer s.bg.Done()
		s.bounds.run(s.bgCtx.Done())
	}()
}

// connect opens a connection of the store's own, with the pool's
// configuration.
func (s *store) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
}

// beatPause is how long the heartbeat and the listener wait after a
// failure.
func (s *store) beatPause() time.Duration {
	return min(s.window/8, 500*time.Millisecond)
}

// heartbeat writes the heartbeat every LivenessWindow/6 until Close.
func (s *store) heartbeat() {
	defer s.bg.Done()
	interval := s.window / 6
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTimer(interval)
	defer t.Stop()
	var failingSince, warned time.Time
	for {
		select {
		case <-s.bgCtx.Done():
			return
		case <-t.C:
		}
		// An attempt may take half the window, not only the interval
		// between beats: a connection or a statement slowed down by load
		// still keeps the engine alive if it is done before the heartbeat
		// lapses. (Close ends it.)
		ctx, cancel := context.WithTimeout(s.bgCtx, s.window/2)
		var err error
		if conn == nil {
			conn, err = s.connect(ctx)
		}
		if err == nil {
			_, err = conn.Exec(ctx, s.sql.beat, int64(s.owner), s.window.Microseconds())
			if err != nil {
				conn.Close(context.Background())
				conn = nil
			}
		}
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
				s.log.Warn("idempg: writing the engine's heartbeat failed; trying again", "failing_for", now.Sub(failingSince).Round(time.Millisecond), "error", err)
				warned = now
			}
			next = s.beatPause()
		case !failingSince.IsZero():
			s.log.Info("idempg: the engine's heartbeat is written again", "failed_for", time.Since(failingSince).Round(time.Millisecond))
			failingSince = time.Time{}
		}
		t.Reset(next)
	}
}

// Alive reports whether owner's heartbeat has not expired.
func (s *store) Alive(ctx context.Context, owner uint64) (bool, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	var alive bool
	err := s.read(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, s.sql.alive, int64(owner)).Scan(&alive)
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("idempg: reading a heartbeat: %w", err)
	}
	return alive, nil
}

// listen keeps a connection LISTENing on the table's channel until Close,
// and wakes the waiters of each revision notified.
func (s *store) listen() {
	defer s.bg.Done()
	var warned time.Time
	for {
		err := s.listenOnce()
		s.lmu.Lock()
		s.listening = false
		for rev, ws := range s.waiters {
			for ch := range ws {
				close(ch)
			}
			delete(s.waiters, rev)
		}
		s.lmu.Unlock()
		if s.bgCtx.Err() != nil {
			return
		}
		if time.Since(warned) >= s.window {
			s.log.Warn("idempg: listening for changes failed; waiting engines poll until it is back", "error", err)
			warned = time.Now()
		}
		t := time.NewTimer(s.beatPause())
		select {
		case <-s.bgCtx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// listenOnce connects, LISTENs, and dispatches notifications until the
// connection fails or Close.
func (s *store) listenOnce() error {
	ctx, cancel := context.WithTimeout(s.bgCtx, s.timeout)
	conn, err := s.connect(ctx)
	if err == nil {
		_, err = conn.Exec(ctx, "LISTEN "+s.names.channel)
	}
	cancel()
	if conn != nil {
		defer conn.Close(context.Background())
	}
	if err != nil {
		return err
	}
	s.lmu.Lock()
	s.listening = true
	s.lmu.Unlock()
	for {
		n, err := conn.WaitForNotification(s.bgCtx)
		if err != nil {
			return err
		}
		rev, err := strconv.ParseInt(n.Payload, 10, 64)
		switch {
		case err == nil:
			s.lmu.Lock()
			for ch := range s.waiters[rev] {
				close(ch)
			}
			delete(s.waiters, rev)
			s.lmu.Unlock()
		case n.Payload == closedPayload:
			// An engine closed: its claims are interrupted now. Every
			// waiter reads its key and asks Alive again.
			s.lmu.Lock()
			for rev, ws := range s.waiters {
				for ch := range ws {
					close(ch)
				}
				delete(s.waiters, rev)
			}
			s.lmu.Unlock()
		}
	}
}

// Watch returns once key's record may have left revision rev, after half
// the liveness window, or when ctx ends.
func (s *store) Watch(ctx context.Context, key string, rev uint64) error {
	ch := make(chan struct{})
	s.lmu.Lock()
	if !s.listening {
		s.lmu.Unlock()
		return sleep(ctx, s.beatPause())
	}
	ws := s.waiters[int64(rev)]
	if ws == nil {
		ws = make(map[chan struct{}]bool)
		s.waiters[int64(rev)] = ws
	}
	ws[ch] = true
	s.lmu.Unlock()
	defer func() {
		s.lmu.Lock()
		if ws := s.waiters[int64(rev)]; ws[ch] {
			delete(ws, ch)
			if len(ws) == 0 {
				delete(s.waiters, int64(rev))
			}
		}
		s.lmu.Unlock()
	}()

	mctx, cancel := s.call(ctx)
	tag, err := s.pool.Exec(mctx, s.sql.watch, []byte(key), int64(rev))
	cancel()
	switch {
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		// The engine reads the key again, and meets the error if it
		// lasts.
		return sleep(ctx, s.beatPause())
	case tag.RowsAffected() == 0:
		return nil // changed already
	}
	t := time.NewTimer(s.window / 2)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sleep waits for d, and returns nil, or ctx's error if it ends first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
