package idemotel

import "go.opentelemetry.io/otel/attribute"

// Names of the telemetry the Observer makes.
const (
	// ScopeName is the instrumentation scope of the Observer's tracer: this
	// module's import path. The scope's version is the module's version
	// when the program's build information records one.
	ScopeName = "github.com/idemkv/idem/idemotel"

	// DoSpanName is the name of the span of each Do call.
	DoSpanName = "idem.Do"
	// FnSpanName is the name of the span of fn, a child of the Do span,
	// for the calls that run fn.
	FnSpanName = "idem.fn"
	// StoreEventName is the name of the event on the Do span for each of
	// the call's requests to the store.
	StoreEventName = "idem.store"
)

// Attribute keys of the Do span and of its store events. Durations are in
// seconds, as doubles, as OpenTelemetry's semantic conventions measure
// them.
const (
	// AttrOutcome is what the call came to (Do span): executed, replayed,
	// waited, conflict, mismatch, interrupted, failed or error, as
	// idem.Outcome's String method names them.
	AttrOutcome = attribute.Key("idem.outcome")
	// AttrReplayed is idem.Result.Replayed (Do span): the outcome was
	// stored before the call, and fn did not run for it.
	AttrReplayed = attribute.Key("idem.replayed")
	// AttrKeyLength is the length of the engine key in bytes (Do span).
	AttrKeyLength = attribute.Key("idem.key.length")
	// AttrKey is the engine key itself (Do span), with Options.RecordKey
	// only.
	AttrKey = attribute.Key("idem.key")
	// AttrWaitDuration is how long the call waited for another call of its
	// key (Do span; idem.DoInfo.Waited), in seconds: set only on calls that
	// waited.
	AttrWaitDuration = attribute.Key("idem.wait.duration")
	// AttrStoreOp is the kind of a store request (store event): read,
	// claim, complete or release, as idem.StoreOp's String method names
	// them.
	AttrStoreOp = attribute.Key("idem.store.op")
	// AttrStoreDuration is how long a store request took (store event), in
	// seconds.
	AttrStoreDuration = attribute.Key("idem.store.duration")
)

// attrErrorMessage is the message of a store request's error (store event):
// the semantic conventions' error.message.
const attrErrorMessage = attribute.Key("error.message")
