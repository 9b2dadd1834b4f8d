package idemhttp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/idemkv/idem"
)

// Defaults and limits of the pages of the admin handler.
const (
	// DefaultAdminPage is the number of records of a page when the request
	// has no limit parameter.
	DefaultAdminPage = 100
	// MaxAdminPage is the largest page: a larger limit is taken as it.
	MaxAdminPage = 1000
)

// The type URIs of the problems the admin handler answers with, besides
// ProblemInFlight, ProblemUnavailable and ProblemInternal.
const (
	// ProblemAdminBadRequest (400): a query parameter is malformed (a limit
	// that is not a positive number, an after_base64 that is not base64, a
	// state that does not exist...), or the key is empty or longer than
	// the engine's MaxKeySize.
	ProblemAdminBadRequest = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemAdminBadRequest"
	// ProblemAdminForbidden (403): AdminOptions.Authorize returned an error,
	// whose message the detail carries, or is nil.
	ProblemAdminForbidden = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemAdminForbidden"
	// ProblemAdminNoEndpoint (404, or 405 with Allow for a known endpoint
	// and a wrong method): the path names no endpoint of the admin handler.
	// A handler mounted under a prefix must see its paths without it
	// (http.StripPrefix).
	ProblemAdminNoEndpoint = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemAdminNoEndpoint"
	// ProblemAdminNoRecord (404): the key has no record, or it has expired.
	ProblemAdminNoRecord = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemAdminNoRecord"
	// ProblemAdminNotInterrupted (409): forget of a key that is not
	// interrupted (completed, failed, in flight or corrupt), without
	// any_state=true. Forgetting a completed key lets its operation run a
	// second time.
	ProblemAdminNotInterrupted = "https://pkg.go.dev/github.com/idemkv/idem/idemhttp#ProblemAdminNotInterrupted"
)

// AdminOptions configure the admin handler. The zero value refuses every
// request: set Authorize.
type AdminOptions struct {
	// Authorize decides whether the request r may go on: write is true for
	// a request that changes the engine (forget, and any method but GET),
	// false for one that reads. It returns nil to let the request through,
	// or an error to refuse it with 403 ProblemAdminForbidden, whose detail
	// is the error's message (for the operator: say what is missing). It is
	// called before anything else, on every request, from the request's
	// goroutine. If nil, every request is refused, reads too: there is no
	// default that lets a request in. AllowReads lets reads in and refuses
	// writes.
	Authorize func(r *http.Request, write bool) error

	// Logger receives the engine's failures that the handler answers with
	// 500. If nil, slog.Default().
	Logger *slog.Logger
}

// AllowReads is an AdminOptions.Authorize for a handler that only the
// service's operators can reach (a port bound to localhost, or behind a
// proxy that authenticates them): it lets every read through and refuses
// every write (forget).
func AllowReads(_ *http.Request, write bool) error {
	if write {
		return errors.New("this admin handler allows reads only (its Authorize is idemhttp.AllowReads)")
	}
	return nil
}

// AdminHandler returns the admin handler of e: an http.Handler that a
// service mounts on its internal port, so that an operator can look at its
// engine, and release the keys that a crash left interrupted, without
// stopping it (cmd/idem's --url flag and idem top use it). Its stats have no
// latencies: for those, make an Admin, put it in the engine's
// Options.Observer, and mount Admin.Handler instead. It panics if e is nil.
//
//	admin := idemhttp.NewAdmin(&idemhttp.AdminOptions{Authorize: checkToken})
//	e, err := idem.Open(dir, &idem.Options{Observer: admin})
//	...
//	internal.Handle("/idem/", http.StripPrefix("/idem", admin.Handler(e)))
//
// Its endpoints, under the mount point (http.StripPrefix):
//
//	GET  stats               the engine's Stats, and latencies (Admin.Handler): AdminStats
//	GET  stats?records=true  the same, with the live records counted by state, their size and expiry range
//	GET  interrupted         the keys left in flight by a crash, in key order, a page at a time: AdminPage
//	GET  records             the live records, in key order, a page at a time (prefix=, state=): AdminPage
//	GET  records/{key}       one record in full, an idemhttp record with its stored response: AdminRecord
//	POST forget/{key}        forget an interrupted key (any_state=true: any key): the AdminRecord forgotten
//
// The key in a path is URL-escaped: a "/" in it as %2F, and a key "." or
// ".." as %2E and %2E%2E, which a ServeMux would otherwise clean away. A page
// takes limit= (DefaultAdminPage, at most MaxAdminPage) and after= (the key
// after which it starts: the Next of the page before), or after_base64= for
// a key that is not UTF-8 (NextBase64).
//
// Every answer is JSON (application/json, Cache-Control: no-store), every
// error an RFC 9457 application/problem+json object with type, title, status
// and detail:
//
//	400 ProblemAdminBadRequest      a malformed parameter or key
//	403 ProblemAdminForbidden       AdminOptions.Authorize refused the request, or is nil
//	404 ProblemAdminNoEndpoint      no such endpoint (405, with Allow, for a wrong method)
//	404 ProblemAdminNoRecord        no record for the key (none, or expired)
//	409 ProblemAdminNotInterrupted  forget of a key that is not interrupted, without any_state=true
//	409 ProblemInFlight             forget of a key whose fn is running (Retry-After: 1)
//	503 ProblemUnavailable          the engine is closed, or read-only (forget) (Retry-After: 5)
//	500 ProblemInternal             the engine failed; logged (AdminOptions.Logger)
//
// Access: every request goes through AdminOptions.Authorize first, with
// write true for forget (and for any method but GET). There is no default:
// with a nil Authorize every request is refused, reads too, since the records
// hold the stored responses (receipts, personal data) and keys often name
// customers. AllowReads is the Authorize of a port that only operators reach.
//
// Costs: stats is a few atomic loads and Pebble's metrics, cheap enough to
// poll every second. records=true reads every record, and so does each page
// of interrupted (the engine finds interrupted keys by reading them all); a
// page of records reads its own records (and those it skips for state=).
// Poll stats; ask for the rest when an operator needs it.
//
// Forget forgets a key only if it is interrupted while the engine holds it
// (idem.Engine.ForgetInterrupted), unless any_state=true, and answers with
// the record as it read it just before.
func AdminHandler(e *idem.Engine, opts *AdminOptions) http.Handler {
	var o AdminOptions
	if opts != nil {
		o = *opts
	}
	return newAdminHandler(e, nil, &o)
}

// adminHandler is the http.Handler of AdminHandler and Admin.Handler.
type adminHandler struct {
	e         *idem.Engine
	admin     *Admin // the latencies' source; nil for AdminHandler
	authorize func(*http.Request, bool) error
	logger    *slog.Logger
}

func newAdminHandler(e *idem.Engine, a *Admin, o *AdminOptions) *adminHandler {
	if e == nil {
		panic("idemhttp: admin handler of a nil *idem.Engine")
	}
	h := &adminHandler{e: e, admin: a, authorize: o.Authorize, logger: o.Logger}
	if h.logger == nil {
		h.logger = slog.Default()
	}
	return h
}

// adminEndpoints is the list of endpoints, for the detail of a 404.
const adminEndpoints = "GET stats, GET interrupted, GET records, GET records/{key}, POST forget/{key}"

func (h *adminHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	write := r.Method != http.MethodGet
	switch {
	case h.authorize == nil:
		writeProblem(w, http.StatusForbidden, ProblemAdminForbidden,
			"the admin handler has no AdminOptions.Authorize, so it refuses every request: the service must set one (idemhttp.AllowReads lets reads through)", 0)
		return
	default:
		if err := h.authorize(r, write); err != nil {
			writeProblem(w, http.StatusForbidden, ProblemAdminForbidden, err.Error(), 0)
			return
		}
	}

	// The escaped path, so that a key's %2F is not a separator.
	name, escKey, hasKey := strings.Cut(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	method := http.MethodGet
	switch {
	case name == "stats" && !hasKey, name == "interrupted" && !hasKey, name == "records":
	case name == "forget" && hasKey:
		method = http.MethodPost
	default:
		writeProblem(w, http.StatusNotFound, ProblemAdminNoEndpoint,
			fmt.Sprintf("no endpoint at %q; the admin handler's are %s, under the prefix it is mounted at (with http.StripPrefix)", r.URL.Path, adminEndpoints), 0)
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeProblem(w, http.StatusMethodNotAllowed, ProblemAdminNoEndpoint,
			fmt.Sprintf("%s takes %s, not %s", name, method, r.Method), 0)
		return
	}
	var key string
	if hasKey && (escKey != "" || name == "forget") {
		k, err := url.PathUnescape(escKey)
		if err == nil && k == "" {
			err = errors.New("the key is empty")
		}
		if err != nil {
			writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, "bad key in the path: "+err.Error(), 0)
			return
		}
		key = k
	}
	q := r.URL.Query()
	switch {
	case name == "stats":
		h.stats(w, r, q)
	case name == "interrupted":
		h.interrupted(w, r, q)
	case name == "records" && key == "":
		h.records(w, r, q)
	case name == "records":
		h.record(w, r, key)
	default:
		h.forget(w, r, key, q)
	}
}

// AdminStats is the answer of GET stats: the engine's Stats, with the
// latencies an Admin keeps and, with records=true, figures of the records.
// The counters count since the engine was opened; rates are their
// differences between two answers over the difference of their Times.
type AdminStats struct {
	// Time is when the figures were taken, by the server's clock.
	Time time.Time `json:"time"`

	// The counters of idem.Stats.
	Calls       uint64 `json:"calls"`
	Executions  uint64 `json:"executions"`
	Replays     uint64 `json:"replays"`
	Waits       uint64 `json:"waits"`
	Conflicts   uint64 `json:"conflicts"`
	Mismatches  uint64 `json:"mismatches"`
	Interrupted uint64 `json:"interrupted"`
	Swept       uint64 `json:"swept"`

	// Pebble's figures of idem.Stats (0 on other stores).
	DiskUsage         uint64 `json:"disk_usage"`
	Compactions       uint64 `json:"compactions"`
	ReadAmplification uint64 `json:"read_amplification"`

	// Latency holds the Admin's histograms; nil (left out) for
	// AdminHandler, which has none.
	Latency *AdminLatency `json:"latency,omitempty"`

	// Records holds the figures of the live records, with records=true;
	// nil (left out) otherwise.
	Records *AdminRecordStats `json:"records,omitempty"`
}

// AdminLatency are the latency histograms of an Admin, since it was made.
// Each counts durations; the difference of two of them, bucket by bucket,
// is the histogram of the durations between them.
type AdminLatency struct {
	// Calls holds the durations of Do calls, from start to return, by
	// outcome: the names of idem.Outcome ("executed", "replayed",
	// "waited", "conflict", "mismatch", "interrupted", "failed", "error").
	// Outcomes without a call are left out.
	Calls map[string]*AdminHistogram `json:"calls"`
	// Fn holds how long fn ran.
	Fn *AdminHistogram `json:"fn"`
	// Store holds the durations of the requests to the store, by kind: the
	// names of idem.StoreOp ("read", "claim", "complete", "release").
	// Kinds without a request are left out.
	Store map[string]*AdminHistogram `json:"store"`
}

// AdminHistogram is a histogram of durations, in nanoseconds. Its buckets
// are those of an Admin: exact below 16 ns, 1/16 of a power of two wide
// above.
type AdminHistogram struct {
	Count uint64 `json:"count"`
	// SumNs is the durations' sum; over Count, their mean.
	SumNs uint64 `json:"sum_ns"`
	// Buckets are the non-empty buckets, by increasing duration.
	Buckets []AdminBucket `json:"buckets"`
}

// AdminBucket is one bucket of an AdminHistogram: Count durations from the
// previous bucket's LeNs (exclusive) up to LeNs (inclusive). Bucket bounds
// never change, so two histograms' buckets with the same LeNs are the same
// bucket.
type AdminBucket struct {
	LeNs  uint64 `json:"le_ns"`
	Count uint64 `json:"count"`
}

// AdminRecordStats are the figures of the live records, for GET
// stats?records=true.
type AdminRecordStats struct {
	// Total counts the live records and the corrupt ones.
	Total int `json:"total"`
	// ByState counts them by state: "completed", "failed", "in-flight"
	// (fn running in this engine), "interrupted" and "corrupt" (a record
	// that cannot be decoded), each present, 0 included.
	ByState map[string]int `json:"by_state"`
	// KeyBytes and ValueBytes are the sizes of the live records' keys, and
	// of their values and error messages, before compression.
	KeyBytes   int64 `json:"key_bytes"`
	ValueBytes int64 `json:"value_bytes"`
	// OldestExpiry and NewestExpiry are the earliest and latest expiry of a
	// live record, with its key; nil (left out) without live records.
	OldestExpiry *AdminExpiry `json:"oldest_expiry,omitempty"`
	NewestExpiry *AdminExpiry `json:"newest_expiry,omitempty"`
}

// AdminExpiry is a record's expiry, with its key.
type AdminExpiry struct {
	At  time.Time `json:"at"`
	Key string    `json:"key"`
	// KeyBase64 is the exact key when it is not valid UTF-8 (Key then has
	// replacement characters).
	KeyBase64 string `json:"key_base64,omitempty"`
}

// AdminPage is a page of records: the answer of GET interrupted and GET
// records.
type AdminPage struct {
	// Records are the page's records, in key order, without their values
	// (see AdminRecord).
	Records []AdminRecord `json:"records"`
	// Next is the key of the page's last record when more records follow:
	// the after parameter of the next page. Empty (left out) on the last
	// page.
	Next string `json:"next,omitempty"`
	// NextBase64 is Next in base64 when that key is not valid UTF-8: pass
	// it as after_base64.
	NextBase64 string `json:"next_base64,omitempty"`
}

// AdminRecord is a record, as the admin handler shows it: in a page without
// its value (ValueSize only), from GET records/{key} in full. It is the
// object cmd/idem's ls --json and get --json write.
type AdminRecord struct {
	Key string `json:"key"`
	// KeyBase64 is the exact key when it is not valid UTF-8 (Key then has
	// replacement characters).
	KeyBase64 string `json:"key_base64,omitempty"`
	// State is the name of the record's idem.State ("completed", "failed",
	// "in-flight", "interrupted"), or "corrupt" for a record that cannot be
	// decoded; Error then says why, and Created and Expires are nil.
	State   string     `json:"state"`
	Created *time.Time `json:"created,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
	// ValueSize is the length of a completed record's value.
	ValueSize *int `json:"value_size,omitempty"`
	// Error is a failed record's stored error message, or why a corrupt one
	// cannot be decoded.
	Error string `json:"error,omitempty"`
	// Value is a completed record's value, when it is printable text;
	// ValueBase64 holds it otherwise. Both nil in a page.
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"value_base64,omitempty"`
	// HTTP is the response that the record stores, if the middleware wrote
	// it (its key is an EngineKey and its value decodes as a stored
	// response). Nil in a page.
	HTTP *AdminHTTP `json:"http,omitempty"`
}

// AdminHTTP is a response stored by the middleware, decoded: what a retry
// of its request is sent back.
type AdminHTTP struct {
	// Key and Scope are the client's key and its scope, from the engine key
	// (ParseEngineKey).
	Key    string      `json:"key"`
	Scope  string      `json:"scope"`
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	// Body is the body when it is printable text, or empty (as it is when
	// BodyOmitted); BodyBase64 holds it otherwise.
	Body          *string `json:"body,omitempty"`
	BodyBase64    *string `json:"body_base64,omitempty"`
	BodyOmitted   bool    `json:"body_omitted,omitempty"`
	HeaderOmitted bool    `json:"header_omitted,omitempty"`
}

// stats answers GET stats.
func (h *adminHandler) stats(w http.ResponseWriter, r *http.Request, q url.Values) {
	withRecords, err := boolParam(q, "records")
	if err != nil {
		writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, err.Error(), 0)
		return
	}
	var rs *AdminRecordStats
	if withRecords {
		if rs, err = recordStats(h.e.Records("")); err != nil {
			h.engineError(w, r, "", err)
			return
		}
	}
	st := h.e.Stats()
	out := AdminStats{
		Time:              time.Now().UTC(),
		Calls:             st.Calls,
		Executions:        st.Executions,
		Replays:           st.Replays,
		Waits:             st.Waits,
		Conflicts:         st.Conflicts,
		Mismatches:        st.Mismatches,
		Interrupted:       st.Interrupted,
		Swept:             st.Swept,
		DiskUsage:         st.DiskUsage,
		Compactions:       st.Compactions,
		ReadAmplification: st.ReadAmplification,
		Records:           rs,
	}
	if h.admin != nil {
		out.Latency = h.admin.latency()
	}
	writeJSON(w, out)
}

// stateCorrupt is the state shown for a record that cannot be decoded.
const stateCorrupt = "corrupt"

// recordStats counts the records of seq.
func recordStats(seq iter.Seq2[idem.Record, error]) (*AdminRecordStats, error) {
	rs := &AdminRecordStats{ByState: map[string]int{}}
	for _, s := range []idem.State{idem.StateCompleted, idem.StateFailed, idem.StateInFlight, idem.StateInterrupted} {
		rs.ByState[s.String()] = 0
	}
	rs.ByState[stateCorrupt] = 0
	var oldest, newest idem.Record
	for r, err := range seq {
		rs.Total++
		if errors.Is(err, idem.ErrCorrupt) {
			rs.ByState[stateCorrupt]++
			continue
		}
		if err != nil {
			return nil, err
		}
		rs.ByState[r.State.String()]++
		rs.KeyBytes += int64(len(r.Key))
		rs.ValueBytes += int64(len(r.Value) + len(r.Err))
		if oldest.Key == "" || r.ExpiresAt.Before(oldest.ExpiresAt) {
			oldest = r
		}
		if newest.Key == "" || r.ExpiresAt.After(newest.ExpiresAt) {
			newest = r
		}
	}
	if oldest.Key != "" {
		rs.OldestExpiry, rs.NewestExpiry = expiryOf(&oldest), expiryOf(&newest)
	}
	return rs, nil
}

func expiryOf(r *idem.Record) *AdminExpiry {
	x := &AdminExpiry{At: r.ExpiresAt.UTC(), Key: r.Key}
	if !utf8.ValidString(r.Key) {
		x.KeyBase64 = base64.StdEncoding.EncodeToString([]byte(r.Key))
	}
	return x
}

// interrupted answers GET interrupted.
func (h *adminHandler) interrupted(w http.ResponseWriter, r *http.Request, q url.Values) {
	limit, after, ok := pageParams(w, q)
	if !ok {
		return
	}
	h.page(w, r, h.e.Interrupted(), nil, limit, after)
}

// records answers GET records: a page of the records under prefix, in the
// given state.
func (h *adminHandler) records(w http.ResponseWriter, r *http.Request, q url.Values) {
	limit, after, ok := pageParams(w, q)
	if !ok {
		return
	}
	state := q.Get("state")
	var keep func(*idem.Record, error) bool
	switch state {
	case "":
	case stateCorrupt:
		keep = func(_ *idem.Record, err error) bool { return err != nil }
	case "completed", "failed", "in-flight", "interrupted":
		keep = func(r *idem.Record, err error) bool { return err == nil && r.State.String() == state }
	default:
		writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest,
			fmt.Sprintf("state %q: want completed, failed, in-flight, interrupted or corrupt", state), 0)
		return
	}
	records := h.e.Records(q.Get("prefix"))
	if after != nil {
		records = h.e.RecordsAfter(q.Get("prefix"), *after)
	}
	h.page(w, r, records, keep, limit, after)
}

// pageParams reads the limit and the cursor of a page, or answers 400.
func pageParams(w http.ResponseWriter, q url.Values) (limit int, after *string, ok bool) {
	limit = DefaultAdminPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, fmt.Sprintf("limit %q: want a number of records, 1 or more", s), 0)
			return 0, nil, false
		}
		limit = min(n, MaxAdminPage)
	}
	switch a, b := q.Has("after"), q.Has("after_base64"); {
	case a && b:
		writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, "after and after_base64 exclude each other", 0)
		return 0, nil, false
	case a:
		s := q.Get("after")
		after = &s
	case b:
		k, err := base64.StdEncoding.DecodeString(q.Get("after_base64"))
		if err != nil {
			writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, "after_base64: "+err.Error(), 0)
			return 0, nil, false
		}
		s := string(k)
		after = &s
	}
	return limit, after, true
}

// page answers with the first limit records of seq after the key after (if
// not nil) that keep accepts (all if nil). seq yields in key order.
func (h *adminHandler) page(w http.ResponseWriter, r *http.Request, seq iter.Seq2[idem.Record, error], keep func(*idem.Record, error) bool, limit int, after *string) {
	p := AdminPage{Records: []AdminRecord{}}
	more := false
	for rec, err := range seq {
		if err != nil && !errors.Is(err, idem.ErrCorrupt) {
			h.engineError(w, r, "", err)
			return
		}
		if after != nil && rec.Key <= *after {
			continue
		}
		if keep != nil && !keep(&rec, err) {
			continue
		}
		if len(p.Records) == limit {
			more = true
			break
		}
		p.Records = append(p.Records, adminRecord(&rec, err, false))
	}
	if more {
		last := &p.Records[len(p.Records)-1]
		p.Next, p.NextBase64 = last.Key, last.KeyBase64
	}
	writeJSON(w, p)
}

// record answers GET records/{key}.
func (h *adminHandler) record(w http.ResponseWriter, r *http.Request, key string) {
	rec, err := h.e.Lookup(key)
	if err != nil && !errors.Is(err, idem.ErrCorrupt) {
		h.engineError(w, r, key, err)
		return
	}
	if err != nil {
		rec = idem.Record{Key: key}
	}
	writeJSON(w, adminRecord(&rec, err, true))
}

// forget answers POST forget/{key}: it forgets an interrupted key, or any
// key with any_state=true, and answers with its record as it was.
func (h *adminHandler) forget(w http.ResponseWriter, r *http.Request, key string, q url.Values) {
	anyState, err := boolParam(q, "any_state")
	if err != nil {
		writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, err.Error(), 0)
		return
	}
	rec, err := h.e.Lookup(key)
	corrupt := errors.Is(err, idem.ErrCorrupt)
	switch {
	case corrupt:
		rec = idem.Record{Key: key}
	case err != nil:
		h.engineError(w, r, key, err)
		return
	}
	forget := h.e.ForgetInterrupted
	if anyState {
		forget = h.e.Forget
	}
	if err := forget(key); errors.Is(err, idem.ErrNotInterrupted) {
		writeProblem(w, http.StatusConflict, ProblemAdminNotInterrupted,
			fmt.Sprintf("key %s is not interrupted (%s): forgetting it lets its operation run again; any_state=true does that", quoteKey(key), strings.TrimPrefix(err.Error(), "idem: record not interrupted: ")), 0)
		return
	} else if err != nil {
		h.engineError(w, r, key, err)
		return
	}
	var cerr error
	if corrupt {
		cerr = idem.ErrCorrupt
	}
	writeJSON(w, adminRecord(&rec, cerr, false))
}

// engineError answers with the problem that err, an engine's error about
// key ("" for none), stands for.
func (h *adminHandler) engineError(w http.ResponseWriter, r *http.Request, key string, err error) {
	msg := strings.TrimPrefix(err.Error(), "idem: ")
	switch {
	case errors.Is(err, idem.ErrNotFound):
		writeProblem(w, http.StatusNotFound, ProblemAdminNoRecord, fmt.Sprintf("no record for key %s (there is none, or it has expired)", quoteKey(key)), 0)
	case errors.Is(err, idem.ErrInvalidKey):
		writeProblem(w, http.StatusBadRequest, ProblemAdminBadRequest, msg, 0)
	case errors.Is(err, idem.ErrInFlight):
		writeProblem(w, http.StatusConflict, ProblemInFlight,
			fmt.Sprintf("fn is running for key %s, in a call of this engine or of another on a shared store: it cannot be forgotten until the call ends", quoteKey(key)), 1)
	case errors.Is(err, idem.ErrClosed), errors.Is(err, idem.ErrReadOnly):
		writeProblem(w, http.StatusServiceUnavailable, ProblemUnavailable, msg, 5)
	default:
		h.logger.ErrorContext(r.Context(), "idemhttp: admin request failed", "path", r.URL.Path, "error", err)
		writeProblem(w, http.StatusInternalServerError, ProblemInternal, msg, 0)
	}
}

// adminRecord returns r as the admin handler shows it; err is its decoding
// error (ErrCorrupt), if any. full adds the value and the stored response.
func adminRecord(r *idem.Record, err error, full bool) AdminRecord {
	j := AdminRecord{Key: r.Key}
	if !utf8.ValidString(r.Key) {
		j.KeyBase64 = base64.StdEncoding.EncodeToString([]byte(r.Key))
	}
	if err != nil {
		j.State, j.Error = stateCorrupt, strings.TrimPrefix(err.Error(), "idem: ")
		return j
	}
	created, expires := r.CreatedAt.UTC(), r.ExpiresAt.UTC()
	j.State, j.Created, j.Expires, j.Error = r.State.String(), &created, &expires, r.Err
	if r.State != idem.StateCompleted {
		return j
	}
	n := len(r.Value)
	j.ValueSize = &n
	if !full {
		return j
	}
	j.Value, j.ValueBase64 = textOrBase64(r.Value)
	if scope, key, ok := ParseEngineKey(r.Key); ok {
		if resp, err := DecodeStoredResponse(r.Value); err == nil {
			j.HTTP = &AdminHTTP{
				Key:           key,
				Scope:         scope,
				Status:        resp.Status,
				Header:        resp.Header,
				BodyOmitted:   resp.BodyOmitted,
				HeaderOmitted: resp.HeaderOmitted,
			}
			j.HTTP.Body, j.HTTP.BodyBase64 = textOrBase64(resp.Body)
		}
	}
	return j
}

// textOrBase64 returns b as text when it is printable UTF-8 (tabs and line
// breaks allowed), else in base64.
func textOrBase64(b []byte) (text, b64 *string) {
	s := string(b)
	if isText(s) {
		return &s, nil
	}
	s = base64.StdEncoding.EncodeToString(b)
	return nil, &s
}

func isText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}

// quoteKey returns key for a message: as it is when it is printable
// without spaces, else quoted.
func quoteKey(key string) string {
	if key == "" || !utf8.ValidString(key) {
		return strconv.Quote(key)
	}
	for _, r := range key {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) || r == '"' {
			return strconv.Quote(key)
		}
	}
	return key
}

// boolParam reads the boolean query parameter name: false when absent.
func boolParam(q url.Values, name string) (bool, error) {
	if !q.Has(name) {
		return false, nil
	}
	b, err := strconv.ParseBool(q.Get(name))
	if err != nil {
		return false, fmt.Errorf("%s %q: want true or false", name, q.Get(name))
	}
	return b, nil
}

// writeJSON answers 200 with v as JSON.
func writeJSON(w http.ResponseWriter, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// The types above always encode.
		writeProblem(w, http.StatusInternalServerError, ProblemInternal, err.Error(), 0)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Content-Length", strconv.Itoa(b.Len()))
	hd.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(b.Bytes())
}
