// Package idemhttp is net/http middleware that implements the
// Idempotency-Key contract of the IETF HTTPAPI draft "The Idempotency-Key
// HTTP Header Field" on an idem.Engine, following Stripe's and Shopify's
// behaviour where the draft is silent. It works with any router that takes
// an http.Handler (the standard ServeMux, chi, gorilla/mux).
//
// # Basics
//
//	e, err := idem.Open("/var/lib/myapp/idem", nil)
//	...
//	http.ListenAndServe(addr, idemhttp.New(e, nil)(mux))
//
// A request of a covered method (Options.Methods: POST and PATCH by default)
// with an Idempotency-Key header (or a key in its body: see Keys in the
// body) runs the handler once per key:
//
//   - The key is the header's value: a Structured Field string, as the draft
//     specifies ("8e03978e-40d5-43e8-bc93-6894a57f9324", quoted), or the
//     same bare. It must be 1 to Options.MaxKeyLength (255) bytes of
//     printable ASCII, on one header line. A bare key may not have a comma:
//     "a, b" is what two header lines merged into one look like.
//   - Options.Scope prefixes it with what the server knows of the client (an
//     account, a tenant), so that keys of different clients never collide;
//     EngineKey gives the engine key.
//   - The request's fingerprint is the SHA-256 of its method, path, raw
//     query and body (Options.Fingerprint replaces it). The body is read
//     whole, up to Options.MaxRequestBody (1 MiB), and handed on intact.
//   - The first request runs the handler. Its client gets the response as
//     the handler wrote it, once the response is stored.
//   - A request with the key while the handler runs waits for its response
//     (up to Options.Wait, 5 s), and gets it as a retry would.
//   - A retry with the same key and fingerprint gets the stored response
//     back, with Idempotent-Replayed: true; the handler does not run.
//
// Requests of other methods, and requests without the header (unless
// Options.Required), pass straight through.
//
// # Keys in the body
//
// An API whose clients send the key in the payload, as Shopify's REST API
// took a unique_token, sets Options.Key: a function of the request and its
// body that returns the key, which then replaces the header: the header is
// ignored, whether or not it is sent, so that a request never carries two
// keys that disagree. JSONKey reads one from a member of a JSON body:
//
//	// POST /admin/checkouts/{token}/payments.json
//	// {"payment": {"unique_token": "0f5e4b1c-...", "amount": "10.00"}}
//	h := idemhttp.New(e, &idemhttp.Options{
//		Key:      idemhttp.JSONKey("payment.unique_token"),
//		Required: true,    // a payment without a unique_token gets 400
//		Scope:    shopOf,  // the shop the request authenticates as
//	})(mux)
//
// Everything else is as with the header: the key's length and characters,
// Options.Scope, the engine key (EngineKey: wherever the key came from,
// the same key in the same scope is the same record), the waits and the
// replays. The differences:
//
//   - The body of every request of a covered method is read, up to
//     Options.MaxRequestBody, before the key is known: one over the limit
//     gets 413 even if it has no key.
//   - A request in which the function finds no key ("" and no error: for
//     JSONKey, a missing or null member, or an empty body) passes straight
//     through, or gets 400 ProblemKeyRequired with Options.Required. One on
//     which it returns an error (for JSONKey, a body that is not valid
//     JSON, a member that is not a non-empty string, or that is there
//     twice) gets 400 ProblemKeyInvalid, with the error's message in the
//     detail.
//   - JSONKey reads the body as JSON whatever its Content-Type, as most Go
//     handlers do (and curl -d labels JSON as a form): a body that is not
//     JSON gets 400. An endpoint that also takes forms needs an Options.Key
//     of its own, which reads each media type.
//   - The fingerprint still covers the whole body, the key's member
//     included. That is what it should cover: every request compared with
//     a stored one carries the same key, so the member never tells two of
//     them apart, and a retry with the same unique_token and another
//     amount gets 422.
//
// # Status codes
//
//	400 ProblemKeyRequired     no key header (no key from Options.Key), with Options.Required
//	400 ProblemKeyInvalid      malformed, empty, too long, non-ASCII, listed or repeated key; Options.Key's error
//	413 ProblemBodyTooLarge    request body over Options.MaxRequestBody
//	400 ProblemBodyUnreadable  reading the request body failed
//	400 ProblemFingerprint     Options.Fingerprint returned an error
//	422 ProblemKeyMismatch     key reused for a request with another fingerprint
//	409 ProblemInFlight        a request with the key is still being processed after Options.Wait (Retry-After: 1)
//	409 ProblemOutcomeUnknown  the key's request was cut off by a crash (idem.ErrInterrupted)
//	503 ProblemUnavailable     the engine is closed or read-only (Retry-After: 5)
//	500 ProblemInternal        the engine failed, or the scope is too long for its keys; logged
//
// Problems are RFC 9457 application/problem+json objects with type, title,
// status and detail. Each type URI (the Problem constants) is the address of
// its documentation. None of them is stored: the client may retry with the
// same key.
//
// # What is stored
//
// By default every response with a status below 500 but 408, 425 and 429
// (Options.Store, DefaultStore): the status, the header fields the handler
// set (its part of them: see below), except the hop-by-hop ones (Connection
// and those it names,
// Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) and
// Options.ExcludeHeaders (Set-Cookie), and the body, in a versioned binary
// encoding (version 2: a version byte, flags, then the status, the header
// fields, each with whether it replaces or adds to the outer middleware's,
// and the body, length-prefixed; version 1 records, whose fields all
// replace, are still read).
//
// A response that Options.Store refuses (a 5xx; a 408, 425 or 429, which
// refuse a request before it took effect) is not stored: the key is
// released, and the client's retry runs the handler again. So a handler must
// answer such a status only when it has committed nothing it cannot redo.
//
// Nor is anything stored when the handler returns without writing anything
// (no status, no body) after its request's context ended: the usual Go
// handler that gives up when its client has gone, or when an
// http.TimeoutHandler or another timeout middleware has answered for it.
// The key is released, the middleware writes nothing either (the header
// fields the handler set are left in place, unsent, for whatever answers
// the ended request), and a request that was waiting for that handler tries
// again, and may run the handler itself.
//
// Header fields set before the middleware runs, by a middleware outside it
// (CORS, a request ID), are the handler's to see, change and add to, as
// with net/http alone: an outer Vary: Origin and the handler's
// Header().Add("Vary", "Accept-Encoding") send both. They are not stored:
// what is stored is the handler's part, the fields it set or added to, and
// those of the outer middleware that it replaced or removed. A replay sends
// the header fields the outer middleware set for the replay's own request,
// with that part applied: the added values added, the replaced fields
// replaced, the removed ones removed. (A field that the outer middleware
// sets for some requests only counts as the handler's where the first
// request had none: a replay adds it to the outer middleware's.)
//
// A response larger than Options.MaxStoredSize (1 MiB, which must not exceed
// the engine's Options.MaxValueSize) is stored without its body: the client
// that ran the handler gets the whole response, and retries get the status
// and header with Idempotent-Body-Omitted: true and an empty body. The
// handler does not run again: a response too large to keep does not make
// the request run twice. (If the header fields alone are too large, only the
// status is kept, and Idempotent-Headers-Omitted: true is sent too.)
//
// # Concurrent duplicates
//
// A request whose key is in use by a request whose handler is running waits
// up to Options.Wait (DefaultWait, 5 s) for the running request's response
// and replays it, and gets 409 ProblemInFlight, with Retry-After: 1, after
// that. A request that waited for a response that is not stored (see
// Options.Store) gets that response, without Idempotent-Replayed (nothing was replayed
// from the store; a retry runs the handler). A duplicate with another
// fingerprint gets 422 at once.
//
// The draft, Stripe and Shopify answer 409 at once instead; a negative
// Options.Wait does so. It fails clients whose retry policy does not retry
// 409, such as hashicorp/go-retryablehttp's default (connection errors,
// 429 and 5xx only): a client that times out on a slow first request and
// retries gets 409 and gives up, though the first request will succeed.
// With a wait, the engine holds the duplicate until the first response is
// stored, and the client gets that response. Keep Options.Wait above the
// time the handler takes, or, with a negative Wait, give the clients a
// retry policy that retries 409 after its Retry-After.
//
// A request that arrives between the end of the running handler and the
// moment its response is stored (an fsync, under idem.SyncAll) waits for the
// store and gets the replay.
//
// # Caveats
//
//   - The response is buffered in memory, whole, before anything is sent:
//     the handler of a covered request cannot stream. Flush, Hijack and
//     EnableFullDuplex through http.ResponseController return
//     http.ErrNotSupported; SetReadDeadline and SetWriteDeadline work.
//     Informational responses (1xx, such as 103 Early Hints) and trailers
//     are dropped. The request body is buffered whole too.
//   - The client that ran the handler gets its response only once it is
//     stored (durably, under idem.SyncAll), so a response it has seen is
//     always replayed to its retries.
//   - If the handler panics, the key is released, nothing is stored and the
//     panic reaches net/http (http.ErrAbortHandler included). A request
//     waiting for it gets 500.
//   - A handler that has committed something must write a status (or a
//     body) even when its client is gone: one that returns having written
//     nothing after its request's context ended is taken as having given
//     up, and its key is released (see What is stored).
//   - A key whose handler was running when the process stopped answers 409
//     ProblemOutcomeUnknown until it expires, or until an operator who has
//     reconciled it calls the engine's Forget with its EngineKey. With the
//     engine's Options.RetryInterrupted the handler runs again instead.
//   - Requests that wait in the engine are cancelled by the request whose
//     handler runs, which only this middleware value knows of. A request for
//     a key whose handler runs through another middleware value, or a direct
//     Do, on the same engine, waits for it instead of getting 409 (it is
//     still never run twice): wrap the routes that share keys with one
//     middleware, or give them different scopes.
//   - If storing the response fails after the handler ran (the record is
//     larger than the engine's MaxValueSize because Options.MaxStoredSize is
//     set above it, or a storage error), the client still gets the handler's
//     response and the error is logged; a retry then runs the handler again
//     (too large) or gets ProblemOutcomeUnknown (storage error).
//
// # Admin handler
//
// AdminHandler serves an operator's view of the engine on a service's
// internal port: its stats, the interrupted keys (paged), any record (a
// record of this middleware as the response it stores) and forget, as JSON,
// every error as problem+json. An Admin, installed as the engine's
// Options.Observer (with idem.Observers beside another Observer), adds
// latency histograms (Admin.Handler). Every request goes through
// AdminOptions.Authorize; with none, every request is refused. cmd/idem
// reads it with --url, and idem top shows it live.
package idemhttp
