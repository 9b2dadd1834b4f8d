package idemhttp

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/textproto"
	"time"

	"github.com/idemkv/idem"
)

// Defaults of Options.
const (
	// DefaultHeader is the request header that carries the key, as the IETF
	// draft names it.
	DefaultHeader = "Idempotency-Key"
	// DefaultMaxKeyLength is the longest key a client may send, in bytes
	// (Stripe's limit).
	DefaultMaxKeyLength = 255
	// DefaultMaxRequestBody is the largest request body read, in bytes.
	DefaultMaxRequestBody = 1 << 20
	// DefaultMaxStoredSize is the largest encoded response stored, in bytes:
	// the engine's default MaxValueSize.
	DefaultMaxStoredSize = idem.DefaultMaxValueSize
	// DefaultWait is how long a duplicate of a request whose handler is
	// running waits for that handler's response before it gets 409: longer
	// than most handlers take, shorter than most clients' timeouts.
	DefaultWait = 5 * time.Second
)

// minStoredSize is the smallest MaxStoredSize accepted: room for a record
// that keeps the status alone, with some to spare.
const minStoredSize = 16

// Options configure the middleware. A nil *Options, and every zero field,
// means the default. New copies the options; it never modifies the
// caller's.
type Options struct {
	// Header is the request header that carries the idempotency key. If "",
	// DefaultHeader ("Idempotency-Key"). Ignored when Key is set.
	Header string

	// Key, if set, takes the idempotency key from the request instead of
	// the Header, which is then ignored (sent or not, valid or not): for
	// an API that carries its key in the payload, as Shopify's REST API
	// did with unique_token (JSONKey reads such a member); see the package
	// documentation, Keys in the body. It is called for every request of a
	// covered method, with body the whole request body, read up to
	// MaxRequestBody first (a longer one gets 413, ProblemBodyTooLarge,
	// key or not); r's Body is a copy of it, which the function may read.
	//
	// A key of "" with a nil error means the request has none: it passes
	// straight through to the handler, or gets 400 (ProblemKeyRequired)
	// with Required. An error means the request's key is malformed: the
	// request gets 400 (ProblemKeyInvalid), with the error's message in
	// the detail, and the handler does not run. A key it returns must be,
	// as one from the header, at most MaxKeyLength bytes of printable
	// ASCII (space to tilde), or the request gets 400 (ProblemKeyInvalid).
	// The engine key is EngineKey(scope, key), wherever the key came from.
	//
	// The fingerprint (RequestFingerprint by default) still covers the
	// whole body, the key's member included: every request compared with
	// a stored one carries the same key, so the member never makes two
	// requests differ, and a retry that changes anything else in the
	// payload gets 422 (ProblemKeyMismatch).
	Key func(r *http.Request, body []byte) (string, error)

	// Methods are the request methods the middleware covers; requests with
	// other methods pass straight through to the handler. Methods compare
	// exactly (they are case-sensitive). If nil, POST and PATCH.
	Methods []string

	// Required makes a request of a covered method without a key (no key
	// header, or no key from Key) fail with 400 (ProblemKeyRequired).
	// Default false: such a request passes straight through to the
	// handler.
	Required bool

	// MaxKeyLength is the longest key accepted, in bytes, from the header
	// or from Key; a longer one gets 400 (ProblemKeyInvalid). The engine
	// key (see EngineKey) adds the scope and its length, and must fit in
	// the engine's MaxKeySize (512 bytes by default): one that does not is
	// the server's configuration error, logged, and the request gets 500
	// (ProblemInternal). If 0, DefaultMaxKeyLength (255); negative makes
	// New panic.
	MaxKeyLength int

	// MaxRequestBody is the largest request body read to fingerprint the
	// request (and, with Key, to find its key), in bytes; a larger one gets
	// 413 (ProblemBodyTooLarge) without reaching the handler. Without Key,
	// only the bodies of requests with a key header are read; with Key,
	// those of every request of a covered method. If 0,
	// DefaultMaxRequestBody (1 MiB); negative makes New panic.
	MaxRequestBody int64

	// Fingerprint computes the fingerprint of a request of a covered method
	// with a key: a request that reuses a key with another fingerprint gets
	// 422 (ProblemKeyMismatch). body is the whole request body; r's Body
	// is a copy of it, which the function may read. If the function
	// returns an error, the request gets 400 (ProblemFingerprint) with the
	// error's message as the detail, and the handler does not run. If nil,
	// RequestFingerprint: SHA-256 over the method, the path, the raw query
	// and the body.
	Fingerprint func(r *http.Request, body []byte) ([]byte, error)

	// Scope returns what the server knows of the client (an account, a
	// tenant): keys of different scopes never collide. The engine key
	// combines it with the client's key without ambiguity (see EngineKey).
	// If nil, every client shares one scope: "".
	Scope func(r *http.Request) string

	// Store reports whether a response with the status is stored and
	// replayed. A response it refuses releases the key: the next request
	// with the key runs the handler again, so the handler must not have
	// committed anything it cannot redo when it answers such a status. If
	// nil, DefaultStore: every status below 500 but 408, 425 and 429.
	Store func(status int) bool

	// ExcludeHeaders names the response headers that are not stored (nor
	// replayed), besides the hop-by-hop headers, which never are. Names
	// compare case-insensitively. If nil, Set-Cookie: a session cookie is
	// the first client's, not every retry's. An empty, non-nil slice stores
	// every end-to-end header.
	ExcludeHeaders []string

	// MaxStoredSize is the largest encoded response stored, in bytes:
	// status, headers and body, plus a few bytes of framing. A response
	// over it is stored without its body (and, if the headers alone are
	// still over it, without its headers), and replayed with the header
	// Idempotent-Body-Omitted: true (Idempotent-Headers-Omitted: true);
	// the handler still does not run again. It must not be above the
	// engine's Options.MaxValueSize: the engine would refuse the record
	// after the handler ran, the key would be released and the next
	// request would run the handler again. If 0, DefaultMaxStoredSize
	// (1 MiB, the engine's default MaxValueSize); negative or below 16
	// makes New panic.
	MaxStoredSize int

	// Wait is how long a request waits for the response of a request with
	// the same key and fingerprint whose handler is running, to replay it;
	// after Wait, it gets 409 (ProblemInFlight) with Retry-After: 1. If 0,
	// DefaultWait (5 s). Negative does not wait: the request gets 409 at
	// once, as the IETF draft describes; clients whose retry policy does
	// not retry 409 then fail (see the package documentation). Waiting
	// needs an engine opened without Options.NoWait: with it, the engine
	// refuses at once, and so does the middleware.
	Wait time.Duration

	// Logger receives the errors that the client only sees as a 500 or 503
	// problem (a scope too long for the engine's key included), and
	// responses the engine could not store after the handler ran. If nil,
	// slog.Default().
	Logger *slog.Logger
}

// config is the middleware's validated configuration.
type config struct {
	Options
	methods map[string]bool
	exclude map[string]bool // canonical header names
}

// newConfig returns a copy of o with the defaults filled in; it panics on an
// invalid field.
func newConfig(o *Options) *config {
	c := &config{}
	if o != nil {
		c.Options = *o
	}
	switch {
	case c.MaxKeyLength < 0:
		panic(fmt.Sprintf("idemhttp: Options.MaxKeyLength is negative (%d)", c.MaxKeyLength))
	case c.MaxRequestBody < 0:
		panic(fmt.Sprintf("idemhttp: Options.MaxRequestBody is negative (%d)", c.MaxRequestBody))
	case c.MaxStoredSize < 0 || c.MaxStoredSize > 0 && c.MaxStoredSize < minStoredSize:
		panic(fmt.Sprintf("idemhttp: Options.MaxStoredSize %d is below %d", c.MaxStoredSize, minStoredSize))
	}
	if c.Header == "" {
		c.Header = DefaultHeader
	}
	if c.Methods == nil {
		c.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	if c.MaxKeyLength == 0 {
		c.MaxKeyLength = DefaultMaxKeyLength
	}
	if c.MaxRequestBody == 0 {
		c.MaxRequestBody = DefaultMaxRequestBody
	}
	if c.Fingerprint == nil {
		c.Fingerprint = RequestFingerprint
	}
	if c.Store == nil {
		c.Store = DefaultStore
	}
	if c.Wait == 0 {
		c.Wait = DefaultWait
	}
	if c.ExcludeHeaders == nil {
		c.ExcludeHeaders = []string{"Set-Cookie"}
	}
	if c.MaxStoredSize == 0 {
		c.MaxStoredSize = DefaultMaxStoredSize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.methods = make(map[string]bool, len(c.Methods))
	for _, m := range c.Methods {
		c.methods[m] = true
	}
	c.exclude = make(map[string]bool, len(c.ExcludeHeaders))
	for _, h := range c.ExcludeHeaders {
		c.exclude[textproto.CanonicalMIMEHeaderKey(h)] = true
	}
	// Copy the slices, so that the caller may change theirs.
	c.Methods = append([]string(nil), c.Methods...)
	c.ExcludeHeaders = append([]string(nil), c.ExcludeHeaders...)
	return c
}

// DefaultStore is the default Options.Store. It stores every status below
// 500, except those that refuse a request before it took effect and ask the
// client to try again: 408 (Request Timeout), 425 (Too Early) and 429 (Too
// Many Requests). Stripe likewise saves nothing for a request refused
// before its endpoint ran. A 5xx is not stored either: the request may be
// retried once the server has recovered.
func DefaultStore(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return status < 500
}
