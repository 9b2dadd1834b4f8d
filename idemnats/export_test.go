package idemnats

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/idemkv/idem"
)

// TestStore gives the package's external tests the store itself, for what
// an engine does not show: its Watch, its resolvers, its counters.
type TestStore struct{ s *store }

// OpenTestStore opens a store as Open does, without an engine. Close it.
func OpenTestStore(nc *nats.Conn, opts *Options) (*TestStore, error) {
	s, _, err := openStore(nc, opts)
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

// Spurious returns how many refusals for a wrong last sequence the store
// found spurious and sent again.
func (t *TestStore) Spurious() uint64 { return t.s.spurious.Load() }

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
	w := t.s.recordWrite(key, &rec, idem.WriteClaim)
	w.cas, w.expect, w.create = true, rev, rev == 0
	t.s.resolveLater(w)
}

// RecordSubject returns the subject of key's record.
func (t *TestStore) RecordSubject(key string) string { return t.s.bucketOf(key).subj.record(key) }

// BucketOf returns the name of the bucket of key's record.
func (t *TestStore) BucketOf(key string) string { return t.s.bucketOf(key).name }

// BucketIndex is bucketIndex: the bucket, of n, of key's record.
func BucketIndex(key string, n int) int { return bucketIndex(key, n) }

// AttemptTimeouts returns how long the first requests of a call wait for
// their answers, each after all before it timed out, for a store of
// options opts: n of them.
func AttemptTimeouts(opts *Options, n int) ([]time.Duration, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := newStore(nil, nil, &o)
	d := make([]time.Duration, n)
	for i := range d {
		d[i] = s.attemptTimeout(i)
	}
	return d, nil
}

// Close closes the store.
func (t *TestStore) Close() error { return t.s.Close() }
