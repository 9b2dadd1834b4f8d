// Package idem is an embedded idempotency engine: it runs an operation once
// per idempotency key and gives every retry of the key the original outcome,
// as Stripe's Idempotency-Key and the IETF draft of the same name describe,
// with no server to run. Records are stored in Pebble, so they survive
// restarts and crashes.
//
// # Basics
//
// Open a directory, then wrap each operation in Do:
//
//	e, err := idem.Open(dir, nil)
//	...
//	res, err := e.Do(ctx, key, fingerprint, func(ctx context.Context) ([]byte, error) {
//		return charge(ctx, req) // runs once per key
//	})
//
// The key is the client's idempotency key (combined with what the server
// knows of the client, so that two clients' keys never collide); the
// fingerprint identifies the request's payload, so that a key reused for a
// different request is refused with ErrFingerprintMismatch.
//
//   - The first call for a key runs fn and stores its value (Result.Replayed
//     is false).
//   - Later calls with the same fingerprint get the stored value back
//     (Replayed is true) until the record expires, Options.TTL after it was
//     stored (24 hours by default), however long fn ran.
//   - Calls for a key whose fn is running wait for its outcome and share it,
//     or fail fast with ErrInFlight under Options.NoWait.
//   - An error from fn stores nothing: the key is released and the next call
//     runs fn again. Wrap an error with Permanent to store it as the outcome.
//   - A panic in fn releases the key and reaches the caller.
//
// # Durability and crashes
//
// Under SyncAll (the default) a durable in-flight marker is written before fn
// runs, and the result is durable before Do returns. After a crash, a key
// whose fn was running reports ErrInterrupted, and Interrupted lists it: its
// side effects may or may not have happened, so the engine does not guess.
// Reconcile such keys and call Forget (or set Options.RetryInterrupted where
// fn can tell for itself). Each Open advances an epoch stored in the
// directory, which tells an earlier process's markers from this one's.
// SyncResult and SyncNone trade some of this for speed; see Durability.
//
// # Expiry
//
// An expired record is invisible at once. A background sweeper reads the
// records a slice every Options.SweepInterval, passing over all of them in
// about TTL/8, and deletes the expired ones; Pebble's compactions turn the
// deletions into free disk space. Sweep makes a whole pass now.
//
// # Other stores, and several replicas
//
// Open keeps the records in Pebble, in one directory that one Engine at a
// time can have open. New runs the same engine on any Store: the seam
// between what the engine decides (the lock table, replays, Permanent
// errors, expiry) and where records live, with its contract in Store's doc.
// A store that several engines share, such as the JetStream key-value bucket
// of package github.com/idemkv/idem/idemnats, keeps the contract across all
// of them: fn runs once per key among every replica of a service, a
// duplicate on another engine waits for the claim's outcome, and a claim
// whose engine died reports ErrInterrupted everywhere. The package idemtest
// is the conformance suite every store passes.
//
// # Caveats
//
//   - With Open, exactly once holds within one directory, which one Engine
//     at a time can have open (another Open returns ErrLocked). Two
//     processes on two directories coordinate nothing: for several
//     replicas, use a shared store.
//   - fn's side effects outside the engine are fn's business: the engine
//     guarantees that fn is not called twice for a key, not that a
//     half-finished fn is undone.
//   - Pebble treats a failed write or fsync of its log as fatal: it calls its
//     logger's Fatalf, or panics in the commit, and the engine turns both
//     into logging the error and panicking in a goroutine of its own, so
//     that the process stops even if its callers recover panics (as
//     net/http does): Pebble cannot go on, and a process that tried would
//     block in it. Results that Do returned are on disk, and keys whose fn
//     was running report ErrInterrupted after the next Open.
//   - Close waits for calls in progress, fn included; fn must not call Close,
//     nor Do for its own key.
//   - Lookup, Records and Interrupted read the database as it is: a result
//     being stored may show as completed a moment before its fsync ends
//     (Do itself never answers from it before then).
package idem
