package idemnats

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
)

// Defaults of Options.
const (
	// DefaultBucket is the bucket of Options whose Bucket is empty.
	DefaultBucket = "idem"
	// DefaultLivenessWindow is the liveness window of Options whose
	// LivenessWindow is zero. A heartbeat is written every window/6, so a
	// live engine's heartbeat lapses only in a stall of more than 12.5 s:
	// longer than every leader election measured (4 to 9 s on a quiet
	// machine, up to 13.2 s at a load average of 10; RELIABILITY.md).
	DefaultLivenessWindow = 15 * time.Second
	// DefaultTimeout is the time a store operation may take when
	// Options.Timeout is zero: longer than every leader election measured.
	DefaultTimeout = 20 * time.Second
	// DefaultBuckets is the number of buckets of Options whose Buckets is
	// zero.
	DefaultBuckets = 1
	// MaxBuckets is the most buckets Options.Buckets may ask for.
	MaxBuckets = 256
)

// markerTTL is the LimitMarkerTTL of a bucket Open creates: how long the
// delete markers of expired and forgotten records stay.
const markerTTL = time.Minute

// minMajor.minMinor is the oldest server Open accepts: per-message TTLs
// came with NATS 2.11.
const minMajor, minMinor = 2, 11

// recordOverhead bounds what a message holds besides a record's value: the
// headers (Msg-Id, TTL, expected sequence, about 160 bytes) and the
// record's other fields (about 80 bytes).
const recordOverhead = 512

// Options configure Open. A nil *Options, and every zero field, means the
// default. Open copies the options; it never modifies the caller's.
type Options struct {
	// Bucket is the name of the JetStream key-value bucket (letters,
	// digits, '-' and '_'), created by Open if it does not exist. Every
	// engine that shares records opens the same bucket. If empty,
	// DefaultBucket ("idem").
	//
	// A bucket that exists must be one that Open created, or one with the
	// same settings: per-message TTLs (LimitMarkerTTL), rollups, no bucket
	// TTL, and the RePublish of its records' headers to
	// _IDEM.WATCH.<bucket>.r.> that Watch waits on. Open refuses any
	// other, naming what differs.
	//
	// With Buckets above 1, the buckets named Bucket-1 to
	// Bucket-(Buckets-1) are the engine's as well.
	Bucket string

	// Replicas is the number of replicas of each bucket, when Open creates
	// it (an existing bucket keeps its own): 1 to 5, and no more than the
	// cluster's nodes. Use 3 on a cluster of three: see the package
	// documentation. If 0, 1.
	Replicas int

	// Buckets is the number of buckets the records are spread over, by a
	// fixed hash of their keys (FNV-1a): Bucket itself, and Bucket-1 to
	// Bucket-(Buckets-1), each a stream with a leader of its own, created
	// like the first. 1 to MaxBuckets (256). If 0, DefaultBuckets (1):
	// one bucket, named Bucket.
	//
	// A stream's leader orders and replicates all of its writes, and each
	// of the stream's replicas keeps an index entry in memory for every
	// key (about 200 B: see the package documentation). Several buckets
	// spread the writes over their leaders, each elected among its
	// replicas (so on different nodes as the elections fall), and, on a
	// cluster of more nodes than Replicas, the keys' memory and disk over
	// the nodes. Each bucket costs a stream on
	// each of its replicas (a Raft group, its files, its heartbeats), a
	// request per bucket at Open and in each listing of Engine.Records,
	// and nothing per call: a call touches its key's bucket alone. Raise it
	// when the node of the stream leader is the bottleneck of the writes,
	// or when the keys outgrow the memory of the nodes that hold one
	// bucket: a few buckets per node, no more.
	//
	// Every engine on the same records must use the same count: the first
	// Open records it in bucket 0 (its KV key m.buckets), and Open refuses
	// another, as a different count would look for keys in other buckets.
	// To change it, open engines on another Bucket.
	Buckets int

	// Engine holds the engine's options that do not depend on the store:
	// TTL, NoWait, RetryInterrupted, MaxKeySize, MaxValueSize, Now,
	// Logger, SweepInterval (unused: the server expires records). Those of
	// the Pebble store (Durability, CacheSize, FS, ReadOnly) and
	// RecordCacheSize must be left zero: Open returns an error naming the
	// first that is set. If nil, the defaults; besides:
	//
	//   - MaxValueSize, if 0, is the largest value whose record fits in a
	//     NATS message: 1 MiB, less recordOverhead (512 bytes), with the
	//     server's default max_payload of 1 MiB. A value set above what
	//     fits is an error.
	//   - MaxKeySize may not exceed what fits in a subject: 2,289 bytes
	//     for the bucket "idem", a little less for a longer name; the
	//     default, 512, fits.
	//   - Logger, if nil, is the engine's default (Warn and above to
	//     standard error), which the store logs to as well.
	Engine *idem.Options

	// LivenessWindow is how long after an engine stops (killed, or cut off
	// from the cluster) other engines report its claims as interrupted:
	// its heartbeat is written every LivenessWindow/6 and expires
	// LivenessWindow after the last one. It should exceed the longest
	// leader election of the cluster (a few seconds), or a live engine may
	// be declared dead during one. At least 1 s (the server counts TTLs in
	// whole seconds, and rounds this one up). If 0, DefaultLivenessWindow
	// (15 s).
	LivenessWindow time.Duration

	// Timeout bounds each store operation, retries included: a read or a
	// write that meets a leader election, or a server that is down,
	// is retried until it succeeds or Timeout has passed (or the caller's
	// context ends), and Do then returns an error. It bounds each step of
	// Open too (its first request, the opening of each bucket, the first
	// heartbeat), which retries while the cluster is not ready (no meta
	// leader yet, or fewer nodes up than Replicas). It should exceed the
	// longest leader election. At most the bucket's duplicate window (2
	// minutes for a bucket Open creates), within which a write sent again
	// is recognised. If 0, DefaultTimeout (20 s).
	Timeout time.Duration
}

// withDefaults returns a copy of o with the defaults filled in, or an error
// naming the first invalid field.
func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.LivenessWindow == 0 {
		c.LivenessWindow = DefaultLivenessWindow
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Buckets == 0 {
		c.Buckets = DefaultBuckets
	}
	switch {
	case !bucketName.MatchString(c.Bucket):
		return c, fmt.Errorf("idemnats: Options.Bucket %q is not a valid bucket name (letters, digits, '-' and '_')", c.Bucket)
	case c.Replicas < 1 || c.Replicas > 5:
		return c, fmt.Errorf("idemnats: Options.Replicas is %d, not in 1..5", c.Replicas)
	case c.Buckets < 1 || c.Buckets > MaxBuckets:
		return c, fmt.Errorf("idemnats: Options.Buckets is %d, not in 1..%d", c.Buckets, MaxBuckets)
	case c.LivenessWindow < time.Second:
		return c, fmt.Errorf("idemnats: Options.LivenessWindow %v is below 1s", c.LivenessWindow)
	case c.Timeout < 0:
		return c, fmt.Errorf("idemnats: Options.Timeout is negative (%v)", c.Timeout)
	}
	return c, nil
}

// Open returns an engine whose records are in the JetStream key-value
// bucket opts.Bucket (and, with opts.Buckets, the buckets named after it),
// reached through nc, creating the buckets that do not exist. Engines
// opened on the same bucket, through connections to any servers of the
// cluster, share its records: see the package documentation. A nil opts
// means the defaults.
//
// Open checks that the server runs NATS 2.11 or later with JetStream, that
// existing buckets have the settings the engine needs (see
// Options.Bucket), that the count of buckets is the one the records were
// written with (see Options.Buckets), and that the largest record fits in
// a message; it writes the engine's first heartbeat before it returns.
// While the cluster is not ready (no meta leader yet, or too few nodes up
// to place a bucket's replicas) it tries again, for up to Options.Timeout
// a step (see Options.Timeout). It logs a warning for buckets of fewer
// than three replicas.
//
// The engine uses nc and never closes it; Engine.Close stops the store's
// goroutines (the heartbeat, and the resolvers below) and deletes the
// engine's heartbeat. Close nc after the engine.
//
// Unknown outcomes: a write that times out (during a leader election, or
// when its reply is lost) may or may not have been stored. The store sends
// it again with the same Nats-Msg-Id, which the stream de-duplicates, until
// it gets a definite answer or Options.Timeout passes; then Do returns an
// error. A claim (the in-flight marker written before fn runs) whose
// outcome is still unknown then, and so any such write, goes on in the
// background: the store keeps sending it until the stream answers, and if
// the claim turns out to be stored, deletes it, so that other engines do
// not wait on a claim whose fn never ran. So do the writes that take a
// claim of this engine out of the others' way (the delete of a claim whose
// fn failed, or its rewrite as interrupted when fn's outcome could not be
// stored) even when they failed without being stored. Close gives those
// writes one last try, and returns an error if some are still unresolved.
func Open(nc *nats.Conn, opts *Options) (*idem.Engine, error) {
	s, eo, err := openStore(nc, opts)
	if err != nil {
		return nil, err
	}
	return idem.New(s, &eo)
}

// openStore is Open's work, but idem.New: it returns the store and the
// engine's options, with the defaults that Open sets.
func openStore(nc *nats.Conn, opts *Options) (*store, idem.Options, error) {
	var eo idem.Options
	o, err := opts.withDefaults()
	if err != nil {
		return nil, eo, err
	}
	if nc == nil {
		return nil, eo, errors.New("idemnats: Open called with a nil *nats.Conn")
	}
	if err := checkServer(nc); err != nil {
		return nil, eo, err
	}
	if o.Engine != nil {
		eo = *o.Engine
	}
	if eo.Logger == nil {
		// The engine's own default, made here so that the store logs to
		// the same place.
		eo.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	log := eo.Logger

	js, err := jetstream.New(nc)
	if err != nil {
		return nil, eo, fmt.Errorf("idemnats: %w", err)
	}
	s := newStore(nc, js, &o)
	s.log = log
	// Each step of Open (JetStream's first answer, each bucket, the
	// heartbeat) may take Options.Timeout.
	step := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), o.Timeout)
	}
	ctx, cancel := step()
	err = s.retry(ctx, func(ctx context.Context) error {
		_, err := js.AccountInfo(ctx)
		return wrapNonNil("reading the account's info", err)
	})
	cancel()
	if err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, eo, fmt.Errorf("idemnats: JetStream is not enabled on the server (run nats-server with -js, or StartNode): %w", err)
		}
		return nil, eo, fmt.Errorf("idemnats: JetStream did not answer: %w", err)
	}
	// Bucket 0 first, and its count of buckets: a count that differs is
	// refused before any other bucket is created.
	var cfgs []*jetstream.StreamConfig
	var few, inMemory []string
	for i := range o.Buckets {
		b, cfg, err := s.openChecked(&o, i, step)
		if err != nil {
			return nil, eo, err
		}
		if cfg.Replicas < 3 {
			few = append(few, b.name)
		}
		if cfg.Storage == jetstream.MemoryStorage {
			inMemory = append(inMemory, b.name)
		}
		s.buckets = append(s.buckets, b)
		cfgs = append(cfgs, cfg)
	}
	if len(few) > 0 {
		log.Warn("idemnats: buckets of fewer than 3 replicas: their records do not survive the loss of a node", "buckets", few)
	}
	if len(inMemory) > 0 {
		log.Warn("idemnats: buckets in memory: their records do not survive a restart of the servers", "buckets", inMemory)
	}
	if err := fitLimits(&eo, nc, cfgs, s.buckets); err != nil {
		return nil, eo, err
	}

	s.bgCtx, s.stopBg = context.WithCancel(context.Background())
	ctx, cancel = step()
	defer cancel()
	if err := s.beat(ctx); err != nil {
		s.stopBg()
		return nil, eo, fmt.Errorf("idemnats: writing the engine's heartbeat: %w", err)
	}
	s.bg.Add(1)
	go s.heartbeat()
	return s, eo, nil
}

// openChecked opens bucket i of o's (see openBucket) within a step of
// Open, checks its settings and, for bucket 0, the count of buckets it
// holds (see checkCount), and returns it with its stream's config.
func (s *store) openChecked(o *Options, i int, step func() (context.Context, context.CancelFunc)) (*bucket, *jetstream.StreamConfig, error) {
	ctx, cancel := step()
	defer cancel()
	b, err := s.openBucket(ctx, o, bucketNameOf(o.Bucket, i))
	if err != nil {
		return nil, nil, err
	}
	cfg := b.st.CachedInfo().Config
	if err := checkBucket(&cfg, o, b); err != nil {
		return nil, nil, err
	}
	b.markerTTL = ttlHeader(int64(cfg.SubjectDeleteMarkerTTL))
	if i == 0 {
		if err := s.checkCount(ctx, b, o.Buckets); err != nil {
			return nil, nil, err
		}
	}
	return b, &cfg, nil
}

// newStore returns a store on nc of options o (defaults filled in), with
// no buckets yet.
func newStore(nc *nats.Conn, js jetstream.JetStream, o *Options) *store {
	return &store{
		nc:    nc,
		js:    js,
		owner: newOwner(),
		// See attemptTimeout (store.go).
		attempt:    min(max(o.Timeout/4, 250*time.Millisecond), time.Second, o.Timeout),
		attemptMax: min(max(o.Timeout/4, 250*time.Millisecond), 5*time.Second, o.Timeout),
		timeout:    o.Timeout,
		window:     o.LivenessWindow,
	}
}

// checkServer returns an error if nc is not connected to a server of 2.11
// or later.
func checkServer(nc *nats.Conn) error {
	v := nc.ConnectedServerVersion()
	if v == "" {
		return fmt.Errorf("idemnats: the connection is not connected to a server (status %v)", nc.Status())
	}
	parts := strings.SplitN(v, ".", 3)
	var major, minor int
	var err error
	if len(parts) >= 2 {
		if major, err = strconv.Atoi(parts[0]); err == nil {
			minor, err = strconv.Atoi(parts[1])
		}
	}
	if len(parts) < 2 || err != nil {
		return fmt.Errorf("idemnats: cannot parse the server's version %q", v)
	}
	if major < minMajor || major == minMajor && minor < minMinor {
		return fmt.Errorf("idemnats: the server runs NATS %s; idemnats needs %d.%d or later (per-message TTLs)", v, minMajor, minMinor)
	}
	return nil
}

// retry calls f, with a context of one request, until it returns nil or
// an error that is not transient (see transient), or ctx ends: Open's
// requests of the JetStream API, which fail while the cluster is not
// ready. It returns the last error, wrapped in ctx's if ctx ended, and
// logs each transient one at Info, unless it repeats the one before.
func (s *store) retry(ctx context.Context, f func(ctx context.Context) error) error {
	var last error
	timeouts := 0
	for attempt := 0; ; attempt++ {
		if attempt > 0 && !pause(ctx, attempt) {
			return giveUp(ctx, last)
		}
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(timeouts))
		err := f(actx)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return giveUp(ctx, err)
		case !transient(err):
			return err
		case timedOut(ctx, err):
			timeouts++
		}
		if last == nil || err.Error() != last.Error() {
			s.log.Info("idemnats: the cluster is not ready; trying again", "error", err)
		}
		last = err
	}
}

// transient reports whether err, of a request to the JetStream API, may go
// away if the request is sent again: a time-out, no responders, or an
// error of a cluster that is not ready (no meta leader yet, or too few
// nodes up to place a stream's replicas).
func transient(err error) bool {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return false
	}
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode {
		case errCodeNoPeers, errCodeClusterNotAvail, errCodeClusterNotLeader:
			return true
		}
		return ae.Code == 503
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)
}

// wrapNonNil returns err, if not nil, with what was done when it happened.
func wrapNonNil(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// openBucket returns the bucket named name, creating it if it does not
// exist. It retries while the cluster is not ready.
func (s *store) openBucket(ctx context.Context, o *Options, name string) (*bucket, error) {
	b := &bucket{name: name, subj: newSubjects(name)}
	err := s.retry(ctx, func(ctx context.Context) (err error) {
		b.st, err = s.js.Stream(ctx, b.subj.stream)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return wrapNonNil("reading its stream's info", err)
		}
		_, err = s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:         name,
			Description:    "idem records (github.com/idemkv/idem/idemnats)",
			History:        1,
			Replicas:       o.Replicas,
			Storage:        jetstream.FileStorage,
			LimitMarkerTTL: markerTTL,
			RePublish: &jetstream.RePublish{
				Source:      b.subj.rePublishSource(),
				Destination: b.subj.rePublishDest(),
				HeadersOnly: true,
			},
		})
		if err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
			return fmt.Errorf("creating it (%d replicas): %w", o.Replicas, err)
		}
		// Created, by this Open or by another at the same time.
		b.st, err = s.js.Stream(ctx, b.subj.stream)
		return wrapNonNil("reading its stream's info", err)
	})
	if err != nil {
		return nil, fmt.Errorf("idemnats: opening bucket %s: %w", name, err)
	}
	return b, nil
}

// checkCount records n, the count of buckets, in b, bucket 0, if it holds
// none, and returns an error if it holds another.
func (s *store) checkCount(ctx context.Context, b *bucket, n int) error {
	for {
		m, err := s.load(ctx, b, b.subj.count)
		if err != nil {
			return fmt.Errorf("idemnats: reading the count of buckets from bucket %s: %w", b.name, err)
		}
		if m != nil && !m.tomb {
			got, err := strconv.Atoi(string(m.data))
			switch {
			case err != nil || got < 1:
				return fmt.Errorf("idemnats: bucket %s holds %q as its count of buckets (KV key %s), not a count", b.name, m.data, countKey)
			case got != n:
				return fmt.Errorf("idemnats: bucket %s holds records spread over %d buckets, and Options.Buckets is %d: every engine on the same records must use the count they were written with (or open another Options.Bucket)", b.name, got, n)
			}
			return nil
		}
		// None yet: record n, if no other engine records its count first.
		w := s.newWrite(b, b.subj.count)
		w.data = []byte(strconv.Itoa(n))
		w.cas, w.create = true, true
		if m != nil {
			w.expect = m.seq // over a delete marker
		}
		_, _, err = s.apply(ctx, w)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, idem.ErrStoreConflict):
			return fmt.Errorf("idemnats: recording the count of buckets in bucket %s: %w", b.name, err)
		}
		// Another engine recorded its count first: read it.
	}
}

// checkBucket returns an error if bucket b's stream, of config cfg, lacks
// what the store needs.
func checkBucket(cfg *jetstream.StreamConfig, o *Options, b *bucket) error {
	subj := &b.subj
	why := ""
	switch {
	case !slices.Contains(cfg.Subjects, subj.all):
		why = fmt.Sprintf("its stream %s is not a key-value bucket (subjects %v)", subj.stream, cfg.Subjects)
	case cfg.Mirror != nil:
		why = "it is a mirror, which cannot be written to"
	case cfg.Sealed:
		why = "it is sealed"
	case !cfg.AllowMsgTTL || cfg.SubjectDeleteMarkerTTL <= 0:
		why = "it has no per-message TTLs (create it with LimitMarkerTTL)"
	case !cfg.AllowRollup:
		why = "it does not allow rollups (KV purges)"
	case cfg.DiscardNewPerSubject:
		why = "it refuses new messages on a key that has one (DiscardNewPerSubject)"
	case cfg.MaxAge > 0:
		why = fmt.Sprintf("it has a TTL (%v), which would remove records, claims included, before they expire", cfg.MaxAge)
	case cfg.RePublish == nil || cfg.RePublish.Source != subj.rePublishSource() ||
		cfg.RePublish.Destination != subj.rePublishDest() || !cfg.RePublish.HeadersOnly:
		why = fmt.Sprintf("it does not republish its records' headers from %s to %s (RePublish), which Watch waits on",
			subj.rePublishSource(), subj.rePublishDest())
	case cfg.Duplicates < o.Timeout:
		why = fmt.Sprintf("its duplicate window (%v) is shorter than Options.Timeout (%v)", cfg.Duplicates, o.Timeout)
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("idemnats: bucket %s exists with settings idemnats cannot use: %s; delete it or choose another Options.Bucket", b.name, why)
}

// fitLimits sets eo's MaxValueSize, if 0, to the largest value whose record
// fits in a message of every bucket (of configs cfgs), and returns an
// error if MaxValueSize or MaxKeySize is set above what fits.
func fitLimits(eo *idem.Options, nc *nats.Conn, cfgs []*jetstream.StreamConfig, buckets []*bucket) error {
	room := nc.MaxPayload()
	why := fmt.Sprintf("the server's max payload of %d bytes", room)
	for i, cfg := range cfgs {
		if cfg.MaxMsgSize > 0 && int64(cfg.MaxMsgSize) < room {
			room = int64(cfg.MaxMsgSize)
			why = fmt.Sprintf("the max message size of bucket %s, %d bytes,", buckets[i].name, room)
		}
	}
	room -= recordOverhead
	switch {
	case room <= 0:
		return fmt.Errorf("idemnats: %s leaves no room for a record", why)
	case eo.MaxValueSize == 0:
		eo.MaxValueSize = int(min(int64(idem.DefaultMaxValueSize), room))
	case int64(eo.MaxValueSize) > room:
		return fmt.Errorf("idemnats: Options.Engine.MaxValueSize %d does not fit in a message: %s leaves room for values of %d bytes", eo.MaxValueSize, why, room)
	}
	for _, b := range buckets {
		if limit := b.subj.maxKeySize(); eo.MaxKeySize > limit || eo.MaxKeySize == 0 && idem.DefaultMaxKeySize > limit {
			return fmt.Errorf("idemnats: Options.Engine.MaxKeySize %d does not fit in a subject of bucket %s: at most %d", eo.MaxKeySize, b.name, limit)
		}
	}
	return nil
}

// newOwner returns a random nonzero owner.
func newOwner() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		if o := binary.LittleEndian.Uint64(b[:]); o != 0 {
			return o
		}
	}
}
