package idempg

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkv/idem"
)

// TestStore gives the package's external tests the store itself, for what
// an engine does not show: its Watch, its liveness, its resolvers.
type TestStore struct{ s *store }

// OpenTestStore opens a store as Open does, without an engine. Close it.
func OpenTestStore(ctx context.Context, pool *pgxpool.Pool, opts *Options) (*TestStore, error) {
	s, _, err := openStore(ctx, pool, opts)
	if err != nil {
		return nil, err
	}
	return &TestStore{s: s}, nil
}

// Store returns the store, for its idem.Store methods.
func (t *TestStore) Store() idem.Store { return t.s }

// Owner is the store's owner.
func (t *TestStore) Owner() uint64 { return t.s.owner }

// Watch is the store's idem.Watcher method.
func (t *TestStore) Watch(ctx context.Context, key string, rev uint64) error {
	return t.s.Watch(ctx, key, rev)
}

// Alive is the store's idem.Liveness method.
func (t *TestStore) Alive(ctx context.Context, owner uint64) (bool, error) {
	return t.s.Alive(ctx, owner)
}

// Sweep is the store's idem.Sweeper method.
func (t *TestStore) Sweep(ctx context.Context, now int64) (int, error) {
	return t.s.Sweep(ctx, now)
}

// Listening reports whether the store's listener is LISTENing.
func (t *TestStore) Listening() bool {
	t.s.lmu.Lock()
	defer t.s.lmu.Unlock()
	return t.s.listening
}

// Unresolved returns how many writes the store's resolvers hold.
func (t *TestStore) Unresolved() int {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	return t.s.unresolved
}

// ResolveClaim hands a claim of key, rec, to a resolver as if its call
// had ended with its outcome unknown, without sending it: a create if rev
// is 0, an update of revision rev otherwise.
func (t *TestStore) ResolveClaim(key string, rec idem.StoredRecord, rev uint64) {
	o := opCreate
	if rev != 0 {
		o = opUpdate
	}
	w := t.s.recordWrite(o, key, &rec, idem.WriteClaim)
	w.expect = rev
	t.s.resolveLater(w)
}

// CallsInProgress returns the number of the store's calls that its
// watchdog keeps (see bound.go): those that have not ended.
func (t *TestStore) CallsInProgress() int { return t.s.bounds.inProgress() }

// Close closes the store.
func (t *TestStore) Close() error { return t.s.Close() }

// SweepStatement returns the statement of a sweep's batch on table, as the
// store sends it (parameters $1, the time, and $2, the batch).
func SweepStatement(table string) string { return newStatements(namesOf(table)).sweep }

// BeatStatement returns the statement of a heartbeat on table, as the
// store sends it (parameters $1, the owner, and $2, the window in
// microseconds).
func BeatStatement(table string) string { return newStatements(namesOf(table)).beat }
