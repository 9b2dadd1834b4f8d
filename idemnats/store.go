package idemnats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
)

// The store.
//
// Reads. Store.Get must see every write acknowledged before it began, and a
// KV Get does not: nats.go's KeyValue.Get, and Stream.GetLastMsgForSubject
// on a stream with AllowDirect (every KV bucket), send a direct get
// ($JS.API.DIRECT.GET), which any replica answers, from whatever it has
// applied; on a 3-node cluster one read in ten missed a create that another
// connection had just seen acknowledged. A store reads with the stream API's
// $JS.API.STREAM.MSG.GET.<stream> and {"last_by_subj": subject}, which only
// the stream's leader answers, after it has applied what it acknowledged.
// (Reads cost a round trip to the leader's node: the price of never
// replaying, refusing or waiting on a stale record.)
//
// Writes are publishes to the stream with the headers that make them
// atomic: Nats-Expected-Last-Subject-Sequence (a compare-and-set on the
// key's last sequence, its revision: 0 for a key with no message) and, for
// deletes, a KV purge marker (KV-Operation: PURGE, Nats-Rollup: sub). Every
// write carries a Nats-Msg-Id of its own, and is sent again with the same
// one while its outcome is unknown (a timeout, a lost reply, a leader
// election): the stream keeps one message per Msg-Id within its duplicate
// window, and answers a repeat with the first one's sequence. The stored
// message keeps its Msg-Id, so a write is also recognised as landed by a
// read, beyond the window.
//
// A "wrong last sequence" answer (error codes 10071, and 10164 when the
// leader has another write of the subject in flight, which it gives even
// just after acknowledging this client's own write) is checked with a fresh
// read: this write landed (its Msg-Id), the key is still as expected (sent
// again), or it changed (a conflict, idem.ErrStoreConflict).
//
// A write whose outcome is still unknown when its call gives up (after
// Options.Timeout, or when the caller's context ends) returns an error and
// goes on in the background, sent again with the same Msg-Id until the
// stream gives a definite answer: see resolve.
//
// Each request of a call (a read, or one sending of a write) waits for its
// answer for a while of its own, attemptTimeout, within the call's
// Options.Timeout, and is then sent again. A request that gets no answer
// is most often one that no leader will answer: the stream's leader
// stopped or stepped down with the request in flight (after a clean
// shutdown a new leader is elected within 20-50 ms, and the request sent
// again succeeds at once), or its reply was lost. So the first wait is
// short, a second at most; each wait that runs out doubles the next, up
// to a quarter of Options.Timeout (5 s at most), so that a cluster that
// answers slowly because it is loaded is not sent the same request again
// and again. Sending again is harmless: a write is de-duplicated by its
// Msg-Id, and a read changes nothing.
//
// Options.Buckets spreads the records over several buckets, each a stream
// with its own leader: a key's record is in bucket bucketIndex(key), and
// every read and write of it goes to that bucket's stream. Heartbeats and
// the count of buckets are in bucket 0.

// Headers the store sets and reads.
const (
	hdrMsgID        = "Nats-Msg-Id"
	hdrTTL          = "Nats-TTL"
	hdrExpectSubj   = "Nats-Expected-Last-Subject-Sequence"
	hdrRollup       = "Nats-Rollup"
	hdrKVOp         = "KV-Operation"
	hdrMarkerReason = "Nats-Marker-Reason"
	hdrSequence     = "Nats-Sequence"
)

// JetStream API error codes the store acts on.
const (
	errCodeNoMessage         = 10037 // no message found
	errCodeWrongLastSeq      = 10071 // wrong last sequence: N
	errCodeWrongLastSeqConst = 10164 // wrong last sequence (a write of the subject in flight)
	errCodeDupInProcess      = 10158 // duplicate message id is in process
	errCodeNoPeers           = 10005 // no suitable peers for placement
	errCodeClusterNotAvail   = 10008 // JetStream system temporarily unavailable
	errCodeClusterNotLeader  = 10009 // JetStream cluster can not handle request
)

// recordTTLMargin is added to a record's lifetime in its Nats-TTL: the server
// removes a record a little after the engine stops seeing it.
const recordTTLMargin = time.Second

// store is an idem.Store on JetStream key-value buckets, shared by every
// engine opened on them.
type store struct {
	nc      *nats.Conn // the caller's: never closed by the store
	js      jetstream.JetStream
	buckets []*bucket // Options.Buckets of them; [0] holds the heartbeats too
	owner   uint64
	log     *slog.Logger

	timeout    time.Duration // Options.Timeout: what one call may take
	attempt    time.Duration // what the first request of a call may take
	attemptMax time.Duration // what any request of a call may take
	window     time.Duration // Options.LivenessWindow

	msgs     atomic.Uint64 // numbers the writes' Msg-Ids
	spurious atomic.Uint64 // refusals for a wrong last sequence that a read found spurious

	// bgCtx is the background goroutines' context; Close cancels it
	// (stopBg), and waits for them (bg).
	bgCtx  context.Context
	stopBg context.CancelFunc
	bg     sync.WaitGroup // the heartbeat and the resolvers

	mu         sync.Mutex // guards unresolved, lost
	unresolved int        // writes handed to resolvers, not yet resolved
	lost       int        // writes whose outcome was still unknown at Close

	scanMu  sync.Mutex // guards listing; held by one Scan at a time
	listing *listing   // the last Scan's sorted keys (scan.go)

	closeOnce sync.Once
	closeErr  error
}

// bucket is one of a store's buckets.
type bucket struct {
	name      string
	st        jetstream.Stream // its stream, for Scan's listing
	subj      subjects
	markerTTL string // Nats-TTL of the store's delete markers: its LimitMarkerTTL
}

// bucketOf returns the bucket of key's record.
func (s *store) bucketOf(key string) *bucket {
	return s.buckets[bucketIndex(key, len(s.buckets))]
}

// meta returns bucket 0, which holds the heartbeats and the count of
// buckets.
func (s *store) meta() *bucket { return s.buckets[0] }

var (
	_ idem.Store    = (*store)(nil)
	_ idem.Watcher  = (*store)(nil)
	_ idem.Liveness = (*store)(nil)
)

// Info says that the store is shared, and gives this engine's owner.
func (s *store) Info() idem.StoreInfo {
	return idem.StoreInfo{Owner: s.owner, Shared: true}
}

// call bounds a store call by Options.Timeout, and by ctx.
func (s *store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// stored is a message as the stream's leader holds it.
type stored struct {
	seq  uint64
	hdr  nats.Header
	data []byte
	// tomb is true for a delete marker: a KV delete or purge, or the
	// marker the server leaves where a message expired.
	tomb bool
}

// apiError is a JetStream API error.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("jetstream: %s (%d, error code %d)", e.Description, e.Code, e.ErrCode)
}

// retryable reports whether a request that got e may succeed if sent again:
// the cluster or the stream has no leader, for now.
func (e *apiError) retryable() bool {
	return e.ErrCode == errCodeClusterNotAvail || e.Code == 503
}

// msgGetResponse is the answer of $JS.API.STREAM.MSG.GET.
type msgGetResponse struct {
	Error   *apiError `json:"error"`
	Message *struct {
		Subject string `json:"subject"`
		Seq     uint64 `json:"seq"`
		Header  []byte `json:"hdrs"`
		Data    []byte `json:"data"`
	} `json:"message"`
}

// pubAck is the stream's answer to a publish.
type pubAck struct {
	Error     *apiError `json:"error"`
	Stream    string    `json:"stream"`
	Seq       uint64    `json:"seq"`
	Duplicate bool      `json:"duplicate"`
}

// pause waits before the next attempt of a request (attempt counts from 1)
// and returns false, at once, if ctx ends first.
func pause(ctx context.Context, attempt int) bool {
	d := min(5*time.Millisecond<<min(attempt, 10), 500*time.Millisecond)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// attemptTimeout returns how long a request of a call waits for its
// answer when timeouts of the call's requests have timed out before it:
// s.attempt, doubled for each, up to s.attemptMax (see the comment at the
// top of the file).
func (s *store) attemptTimeout(timeouts int) time.Duration {
	return min(s.attempt<<min(timeouts, 8), s.attemptMax)
}

// timedOut reports whether err is a request's time-out, and not the end of
// the call's context ctx.
func timedOut(ctx context.Context, err error) bool {
	return ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout))
}

// giveUp is the error of a call that ran out of time (or whose caller's
// context ended), with the last error met.
func giveUp(ctx context.Context, last error) error {
	if last == nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
}

// load returns the last message of subject, in bucket b, or nil if it has
// none, from a read that the stream's leader answers. It retries while the
// stream has no leader or a request times out, until ctx ends.
func (s *store) load(ctx context.Context, b *bucket, subject string) (*stored, error) {
	req, err := json.Marshal(struct {
		LastBySubj string `json:"last_by_subj"`
	}{subject})
	if err != nil {
		return nil, err
	}
	var last error
	timeouts := 0
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !pause(ctx, attempt) {
			return nil, giveUp(ctx, last)
		}
		if err := ctx.Err(); err != nil {
			return nil, giveUp(ctx, last)
		}
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(timeouts))
		resp, err := s.nc.RequestWithContext(actx, b.subj.msgGet, req)
		cancel()
		if err != nil {
			if errors.Is(err, nats.ErrConnectionClosed) {
				return nil, err
			}
			if timedOut(ctx, err) {
				timeouts++
			}
			last = err // a time-out, no responders (a server starting): again
			continue
		}
		var r msgGetResponse
		if err := json.Unmarshal(resp.Data, &r); err != nil {
			return nil, fmt.Errorf("reading %s: bad response: %w", subject, err)
		}
		switch {
		case r.Error != nil && r.Error.ErrCode == errCodeNoMessage:
			return nil, nil
		case r.Error != nil && r.Error.retryable():
			last = r.Error
			continue
		case r.Error != nil:
			return nil, r.Error
		case r.Message == nil:
			return nil, fmt.Errorf("reading %s: response without a message", subject)
		}
		m := &stored{seq: r.Message.Seq, data: r.Message.Data}
		if len(r.Message.Header) > 0 {
			if m.hdr, err = nats.DecodeHeadersMsg(r.Message.Header); err != nil {
				return nil, fmt.Errorf("reading %s: bad headers: %w", subject, err)
			}
		}
		op := m.hdr.Get(hdrKVOp)
		m.tomb = op == "DEL" || op == "PURGE" || m.hdr.Get(hdrMarkerReason) != ""
		return m, nil
	}
}

// Get returns key's record, from a read that the stream's leader answers.
func (s *store) Get(ctx context.Context, key string) (idem.StoredRecord, uint64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	b := s.bucketOf(key)
	m, err := s.load(ctx, b, b.subj.record(key))
	if err != nil {
		return idem.StoredRecord{}, 0, fmt.Errorf("idemnats: reading a record: %w", err)
	}
	if m == nil || m.tomb {
		return idem.StoredRecord{}, 0, idem.ErrNotFound
	}
	rec, err := idem.DecodeRecord(m.data)
	if err != nil {
		return idem.StoredRecord{}, 0, fmt.Errorf("idemnats: record of key %q (revision %d): %w", key, m.seq, err)
	}
	return rec, m.seq, nil
}

// write is one write to the stream, sent again as it is while its outcome
// is unknown.
type write struct {
	b       *bucket // the bucket of subject
	subject string
	msgID   string
	data    []byte
	ttl     string // Nats-TTL; none if empty
	purge   bool   // a delete marker that rolls up the subject
	cas     bool   // conditional on the subject's last sequence being expect
	expect  uint64
	// create is set for a create-if-absent: expect is 0 or the sequence of
	// the delete marker the record goes over.
	create bool
	// claim is set for an in-flight marker of this engine: if it turns out
	// to have landed after its call failed, the resolver takes it back.
	claim bool
	rec   idem.StoredRecord // the claim's record
	// release is set for a write that takes this engine's claim out of
	// other engines' way (the delete of a claim whose fn failed, or the
	// claim's rewrite with owner 0 when fn's outcome could not be stored):
	// if it fails, even surely unstored, the resolver keeps sending it.
	release bool
}

// newWrite returns a write to subject, of bucket b, with a Msg-Id of its
// own.
func (s *store) newWrite(b *bucket, subject string) *write {
	return &write{b: b, subject: subject, msgID: fmt.Sprintf("%016x-%d", s.owner, s.msgs.Add(1))}
}

// recordWrite returns the write of rec, key's record, as w.
func (s *store) recordWrite(key string, rec *idem.StoredRecord, w idem.Write) *write {
	b := s.bucketOf(key)
	wr := s.newWrite(b, b.subj.record(key))
	wr.data = idem.AppendRecord(nil, rec)
	life := rec.Expires - rec.Created // the record's own lifetime, not wall time
	switch {
	case rec.Expires <= rec.Created:
		life = 0
	case life < 0: // overflowed
		life = maxTTL
	}
	wr.ttl = ttlHeader(min(life, maxTTL-int64(recordTTLMargin)) + int64(recordTTLMargin))
	if w == idem.WriteClaim && rec.State == idem.StateInFlight {
		switch rec.Owner {
		case s.owner:
			wr.claim, wr.rec = true, *rec
		case 0:
			wr.release = true
		}
	}
	return wr
}

func (w *write) msg() *nats.Msg {
	h := nats.Header{hdrMsgID: {w.msgID}}
	if w.ttl != "" {
		h[hdrTTL] = []string{w.ttl}
	}
	if w.cas {
		h[hdrExpectSubj] = []string{strconv.FormatUint(w.expect, 10)}
	}
	if w.purge {
		h[hdrKVOp] = []string{"PURGE"}
		h[hdrRollup] = []string{"sub"}
	}
	return &nats.Msg{Subject: w.subject, Header: h, Data: w.data}
}

// errConflict is the error of a compare-and-set that found the key changed.
var errConflict = fmt.Errorf("idemnats: %w", idem.ErrStoreConflict)

// conflictWith returns the error of a create refused for m, the key's
// record: an idem.ConflictError that hands the record to the engine, so that
// it need not read the key again; errConflict if m does not decode (the
// engine's read then reports it).
func conflictWith(m *stored) error {
	if m == nil {
		return errConflict
	}
	rec, err := idem.DecodeRecord(m.data)
	if err != nil {
		return errConflict
	}
	return &idem.ConflictError{Record: rec, Rev: m.seq}
}

// verdict is what a fresh read says of a write refused for a wrong last
// sequence.
type verdict uint8

const (
	verdictAgain    verdict = iota // the key is as the write expects: send it again
	verdictLanded                  // the write is stored
	verdictConflict                // the key changed: a conflict
)

// recheck reads w's subject after the stream refused w for a wrong last
// sequence, and says what to do; for a create it updates w's expected
// sequence to the delete marker it would go over, and on a conflict it
// returns the record it found, for conflictWith.
func (s *store) recheck(ctx context.Context, w *write) (verdict, uint64, *stored, error) {
	m, err := s.load(ctx, w.b, w.subject)
	switch {
	case err != nil:
		return verdictAgain, 0, nil, err
	case m != nil && m.hdr.Get(hdrMsgID) == w.msgID:
		return verdictLanded, m.seq, nil, nil
	case w.create && m == nil:
		if w.expect == 0 {
			s.spurious.Add(1)
		}
		w.expect = 0 // (or the marker it would go over has expired)
		return verdictAgain, 0, nil, nil
	case w.create && m.tomb:
		if w.expect == m.seq {
			s.spurious.Add(1)
		}
		w.expect = m.seq // over a delete marker, as KV's Create
		return verdictAgain, 0, nil, nil
	case w.create:
		return verdictConflict, 0, m, nil
	case m != nil && m.seq == w.expect:
		s.spurious.Add(1)
		return verdictAgain, 0, nil, nil // a spurious refusal: unchanged
	}
	return verdictConflict, 0, nil, nil
}

// fate is what became of a write, as far as its sender knows.
type fate uint8

const (
	// fateStored: the stream acknowledged the write (or, for a write sent
	// again, its first sending).
	fateStored fate = iota
	// fateRefused: the stream refused it, for a conflict or another
	// reason: nothing was stored.
	fateRefused
	// fateNotStored: no attempt can have been stored (none reached a
	// stream: no responders, or the connection was closed before it was
	// sent), and no stream answered.
	fateNotStored
	// fateUnknown: an attempt may have been stored (a time-out, a reply
	// lost), and no stream answered since.
	fateUnknown
)

// apply sends w until the stream answers or ctx ends. It returns w's
// sequence if stored, and otherwise an error and what may have become of w.
func (s *store) apply(ctx context.Context, w *write) (uint64, fate, error) {
	var (
		last     error
		maybe    bool // an attempt may have been stored
		timeouts int  // attempts that timed out
	)
	undecided := func() fate {
		if maybe {
			return fateUnknown
		}
		return fateNotStored
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !pause(ctx, attempt) {
			break
		}
		if ctx.Err() != nil {
			break
		}
		if s.nc.IsClosed() {
			return 0, undecided(), nats.ErrConnectionClosed
		}
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(timeouts))
		resp, err := s.nc.RequestMsgWithContext(actx, w.msg())
		cancel()
		if err != nil {
			last = err
			if timedOut(ctx, err) {
				timeouts++
			}
			switch {
			case errors.Is(err, nats.ErrMaxPayload):
				return 0, fateRefused, fmt.Errorf("%w: a record of %d bytes is above the server's max payload of %d (%v)", idem.ErrTooLarge, len(w.data), s.nc.MaxPayload(), err)
			case errors.Is(err, nats.ErrNoResponders):
				// Not stored by this attempt: no stream took it.
			default:
				maybe = true // a time-out, or the connection closed meanwhile
			}
			continue
		}
		var ack pubAck
		if err := json.Unmarshal(resp.Data, &ack); err != nil {
			last, maybe = fmt.Errorf("bad publish acknowledgement: %w", err), true
			continue
		}
		if ack.Error == nil {
			return ack.Seq, fateStored, nil
		}
		last = ack.Error
		switch {
		case ack.Error.ErrCode == errCodeWrongLastSeq || ack.Error.ErrCode == errCodeWrongLastSeqConst:
			v, seq, m, err := s.recheck(ctx, w)
			switch v {
			case verdictLanded:
				return seq, fateStored, nil
			case verdictConflict:
				return 0, fateRefused, conflictWith(m)
			}
			if err != nil {
				last = err
			}
		case ack.Error.ErrCode == errCodeDupInProcess:
			maybe = true // an earlier attempt is being stored
		case ack.Error.retryable():
		default:
			// A definite refusal. (An earlier attempt that was stored
			// would have been answered as a duplicate: the stream checks
			// Msg-Ids first.)
			return 0, fateRefused, ack.Error
		}
	}
	return 0, undecided(), giveUp(ctx, last)
}

// do applies w for a Create, Update or Delete call, and hands it to a
// resolver if its outcome is still unknown at the end.
func (s *store) do(ctx context.Context, w *write, what string) (uint64, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	seq, f, err := s.apply(ctx, w)
	switch {
	case f == fateStored || errors.Is(err, idem.ErrStoreConflict):
		return seq, err
	case f == fateUnknown:
		s.resolveLater(w)
		return 0, fmt.Errorf("idemnats: %s: outcome unknown, being resolved in the background: %w", what, err)
	case f == fateNotStored && w.release:
		s.resolveLater(w)
		return 0, fmt.Errorf("idemnats: %s: not stored yet, being sent again in the background: %w", what, err)
	}
	return 0, fmt.Errorf("idemnats: %s: %w", what, err)
}

// Create stores rec for key if key has no record: with an expected last
// sequence of 0, or of the key's delete marker.
func (s *store) Create(ctx context.Context, key string, rec idem.StoredRecord, w idem.Write) (uint64, error) {
	wr := s.recordWrite(key, &rec, w)
	wr.cas, wr.create = true, true
	return s.do(ctx, wr, "creating a record")
}

// Update replaces key's record if it is still at revision rev.
func (s *store) Update(ctx context.Context, key string, rec idem.StoredRecord, rev uint64, w idem.Write) (uint64, error) {
	if rev == 0 {
		return 0, errConflict // no record has revision 0
	}
	wr := s.recordWrite(key, &rec, w)
	wr.cas, wr.expect = true, rev
	return s.do(ctx, wr, "updating a record")
}

// Delete writes a delete marker for key, if its record is still at rev
// (any record if rev is 0). The marker expires after the bucket's
// LimitMarkerTTL, and its space with it.
func (s *store) Delete(ctx context.Context, key string, rev uint64, w idem.Write) error {
	b := s.bucketOf(key)
	wr := s.newWrite(b, b.subj.record(key))
	wr.purge, wr.ttl = true, b.markerTTL
	wr.cas, wr.expect = rev != 0, rev
	wr.release = w == idem.WriteRelease
	_, err := s.do(ctx, wr, "deleting a record")
	return err
}

// Resolving unknown outcomes.
//
// A write whose outcome is unknown when its call returns may still be
// stored: the request reached the leader and its reply was lost, or it sits
// in the Raft log of a leader that is being replaced. For most writes that
// is harmless, but not for an engine's claim (the in-flight marker written
// before fn runs): the engine has returned the error to its caller without
// running fn, and if the marker landed, other engines would find a claim of
// a live engine and wait on it until it expires. So the store keeps every
// such write, in a goroutine of its own, and sends it again with the same
// Msg-Id (the stream answers a repeat with the first one's sequence, and a
// read recognises it by its Msg-Id beyond the duplicate window) until the
// stream answers for certain: stored, or refused. A claim found stored is
// then taken back: deleted (compare-and-set on its sequence) if it was a
// create, or, if it replaced a record, rewritten with owner 0, which every
// engine reads as an interrupted claim (a delete could let fn run again
// for a key whose earlier outcome is unknown). Any other write is left as
// the stream answered: a result or a delete that lands late is the outcome
// the engine meant to store.
//
// The writes that take a claim of this engine out of other engines' way
// (write.release) are handed to a resolver even when they failed surely
// unstored (no stream answered before Options.Timeout): otherwise the claim
// would stay, with this live engine as its owner, and other engines would
// wait on it until it expired.
//
// Resolvers try again with growing pauses, up to a few seconds, until
// Close, which gives each one last try, bounded by Options.Timeout (none if
// the connection is down), and then reports the writes still unresolved in
// its error. A resolver whose connection is closed (for good: a closed
// nats.Conn does not reconnect) gives up at once, and so counts.

// resolveLater hands w to a resolver.
func (s *store) resolveLater(w *write) {
	s.mu.Lock()
	s.unresolved++
	s.mu.Unlock()
	s.bg.Add(1)
	go s.resolve(w)
}

// resolve sends w again until the stream answers, and takes back a claim
// that landed.
func (s *store) resolve(w *write) {
	defer s.bg.Done()
	final := false // Close has begun: one last try each
	for round := 0; ; round++ {
		if !final {
			t := time.NewTimer(min(100*time.Millisecond<<min(round, 6), 5*time.Second))
			select {
			case <-s.bgCtx.Done():
				final = true
			case <-t.C:
			}
			t.Stop()
		}
		var (
			seq uint64
			f   = fateUnknown
			err = fmt.Errorf("the connection is %v", s.nc.Status())
		)
		if !final || s.nc.Status() == nats.CONNECTED {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			seq, f, err = s.apply(ctx, w)
			cancel()
		}
		switch {
		case f == fateStored && w.claim:
			w = s.takeBack(w, seq)
			round = -1
			continue
		case f == fateStored:
		case f == fateRefused && !errors.Is(err, idem.ErrStoreConflict):
			s.log.Warn("idemnats: a write whose outcome was unknown was refused", "error", err)
		case f == fateRefused:
		case !final && !s.nc.IsClosed():
			continue // no answer yet: the first sending may still be stored
		default: // Close has begun, or the connection is closed for good
			s.log.Error("idemnats: a write's outcome is unknown, and the engine is closing or its connection closed; its key may report ErrInterrupted to other engines",
				"subject_len", len(w.subject), "claim", w.claim, "error", err)
			s.resolved(false)
			return
		}
		s.resolved(true)
		return
	}
}

// takeBack returns the write that takes back claim w, stored at seq.
func (s *store) takeBack(w *write, seq uint64) *write {
	nw := s.newWrite(w.b, w.subject)
	nw.cas, nw.expect = true, seq
	if w.create {
		nw.purge, nw.ttl = true, w.b.markerTTL
		return nw
	}
	rec := w.rec
	rec.Owner = 0
	nw.data, nw.ttl = idem.AppendRecord(nil, &rec), w.ttl
	return nw
}

func (s *store) resolved(ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unresolved--
	if !ok {
		s.lost++
	}
}

// Close stops the heartbeat, gives the resolvers their last try, and
// deletes the engine's heartbeat, so that other engines see its claims as
// interrupted at once. It does not close the connection.
func (s *store) Close() error {
	s.closeOnce.Do(func() {
		s.stopBg()
		s.bg.Wait()
		if err := s.deleteHeartbeat(); err != nil {
			s.log.Warn("idemnats: deleting the engine's heartbeat failed; other engines see it alive until its liveness window lapses", "error", err)
		}
		s.mu.Lock()
		lost := s.lost
		s.mu.Unlock()
		if lost > 0 {
			s.closeErr = fmt.Errorf("idemnats: %d writes whose outcome is unknown could not be resolved", lost)
		}
	})
	return s.closeErr
}
