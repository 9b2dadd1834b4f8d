// Package idemotel traces the Do calls of an idem Engine with
// OpenTelemetry: a span per call, which says what the call came to, and a
// child span for fn, which shows how long the side effect took.
//
//	e, err := idem.Open(dir, &idem.Options{
//		Observer: idemotel.NewObserver(nil), // the global TracerProvider
//	})
//
// It is a module of its own (github.com/idemkv/idem/idemotel), so that the
// core module pulls in none of OpenTelemetry, and it is built on the
// engine's hook, idem.Observer, alone.
//
// # Spans
//
// Each Do call that the engine counts (one with valid arguments, on an open,
// writable engine) has a span of its own, rather than events on the
// caller's span: a call has a duration, and a part (fn) that needs a span
// of its own for its duration to show and for fn's own spans to nest under;
// a replay is a call worth seeing apart from its caller, as a cache lookup
// is; and a span's status and attributes are the call's, not mixed with the
// caller's.
//
//	caller's span, if ctx has one
//	└── idem.Do          kind internal; one per call
//	    │                  events: idem.store, one per request to the store
//	    └── idem.fn      kind internal; only when the call runs fn
//	        └── the spans fn starts from its context
//
// A replay, a call that waited for a concurrent duplicate, a conflict, a
// mismatch and an interrupted key have no idem.fn span: fn did not run for
// them.
//
// The requests to the store are events on the idem.Do span, not spans. When
// the call is not sampled, an event costs nothing (the Observer makes none
// for a span that is not recording) while a child span would still cost an
// ID and four allocations; when it is sampled, an event costs somewhat less
// than a span (about five allocations against seven, with the SDK) and adds
// nothing to export and store. A replay, the call that must stay cheap,
// makes one request (a read), or none once its record is cached; and no
// span ever nests under a request, so a span's place in the tree would
// tell nothing more. Each event is stamped when its request ended, and says
// how long it took. (BenchmarkStoreRequests measures both.)
//
// # Attributes
//
//	Span or event      Attribute             Type     Value
//	idem.Do            idem.outcome          string   executed, replayed, waited, conflict,
//	                                                  mismatch, interrupted, failed or error
//	                                                  (idem.Outcome)
//	idem.Do            idem.replayed         bool     idem.Result.Replayed
//	idem.Do            idem.key.length       int      the key's length in bytes
//	idem.Do            idem.key              string   the key, with Options.RecordKey only
//	idem.Do            idem.wait.duration    double   seconds the call waited for another
//	                                                  call of its key; only if it waited
//	idem.Do, idem.fn   error.type            string   on failure (see Errors)
//	idem.Do            Options.Attributes    any      on every span, if given
//	idem.store event   idem.store.op         string   read, claim, complete or release
//	idem.store event   idem.store.duration   double   seconds the request took
//	idem.store event   error.type            string   if the request failed
//	idem.store event   error.message         string   if the request failed
//
// Durations are in seconds, as doubles, as OpenTelemetry's semantic
// conventions measure them. The key itself is not recorded unless
// Options.RecordKey says so: a key often identifies a client, or is one of
// the client's own identifiers, and spans leave the process.
//
// # Errors
//
// A span's status is Error, with the error's message as its description
// and the error's kind as error.type, when its operation failed, as
// OpenTelemetry's guidance on recording errors asks; it is left unset
// otherwise. The errors are not recorded as span events (Span.RecordError),
// which that guidance no longer recommends.
//
//   - idem.fn: when fn returned an error, Permanent or not, or panicked or
//     called runtime.Goexit (error.type idem.ErrFnPanicked).
//   - idem.Do: when Do returned an error (or fn panicked), except for the
//     three answers that idem gives about the key: ErrInFlight (outcome
//     conflict), ErrFingerprintMismatch (mismatch) and ErrInterrupted
//     (interrupted). Those are the engine working as it promises, as an
//     HTTP server's 409 or 422 is: the request was a duplicate, a reused
//     key, or a key to reconcile, which is its caller's matter and which
//     idem.outcome marks; counting them as failures would put clients'
//     retries in a service's error rate. Every other error is one: fn's
//     (outcome failed, or waited for a call whose fn failed), the engine's
//     or the store's (outcome error), and a Permanent error of fn's,
//     stored or replayed (error.type idem.PermanentError), since the
//     caller gets it in place of a result.
//
// error.type names the idem and context errors a caller branches on
// (idem.PermanentError, idem.ErrFnPanicked, idem.ErrTooLarge,
// idem.ErrCorrupt, idem.ErrClosed, context.Canceled,
// context.DeadlineExceeded), and any other error by its Go type
// (semconv.ErrorType). The description is the error's message, which may
// hold whatever fn put in it; a panic in the error's Error method is
// described there, as fmt describes one, and not passed on to Do's caller.
//
// # Cost
//
// The Observer keeps nothing per call: each method finds the call's span in
// the context the engine hands it, where DoStart or FnStart put it. When a
// span is not recording (the sampler dropped it, or the provider is a no-op
// one) the Observer builds no attributes and no events, and a call costs
// what starting and ending its spans costs the provider: with the SDK, two
// allocations a span, so two for a replay and four for a new key. A
// recording span costs what the SDK's spans do, plus a slice of attributes
// at each end and one per store event. The package's benchmarks measure
// it (bench_test.go).
//
// # Caveats
//
//   - The engine has one Observer: to trace and count (idemprom), give it
//     one that calls both.
//   - A call that the engine refuses before it counts it (a nil fn, an
//     invalid key, a context that has ended, a closed or read-only engine)
//     has no span.
//   - The spans of a Do call are ended by the time Do returns or panics;
//     the exporter's processor decides when they leave the process.
package idemotel
