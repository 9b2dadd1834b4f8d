// Command demo is the cluster version of 'idem demo': a flaky client pays a
// few thousand payments through idem engines that share one NATS JetStream
// key-value bucket, replicated on a cluster of embedded nodes, and the node
// that leads the bucket's stream is stopped and started again in the middle.
// It checks that no card is charged twice and that no acknowledged result
// is lost, and exits with status 1 if one is.
//
// Usage:
//
//	cd idemnats && go run ./cmd/demo [-cluster 3] [-payments 3000] [-workers 32] [-seed 1] [-dir DIR]
//
// Run it with -h for what it does, step by step. It lives in the idemnats
// module, so that the core module (and its idem command, whose 'idem demo'
// is the single-node version) pulls no NATS dependency.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1 // the demo ran and a must-be-0 figure is not 0, or it could not run
	exitUsage   = 2 // the command line is wrong
)

// The scenario's odds, in percent: those of the single-node demo.
const (
	transientPercent = 5  // a run of fn fails with a transient error
	lostPercent      = 20 // the response to a payment is lost on its way to the client
	dupPercent       = 15 // the client fires 2 to 4 concurrent attempts of a payment
)

// maxWork is the longest time fn spends "charging the card".
const maxWork = 2 * time.Millisecond

// maxNodes bounds -cluster: every node runs in this process.
const maxNodes = 9

// defaultLiveness is the engines' Options.LivenessWindow in the demo:
// shorter than idemnats's default (15 s), so that the claims the stopped
// engine left are reported interrupted sooner. It must exceed the longest
// a live engine's heartbeat may go unwritten when the leader stops: its
// interval (a sixth of the window), and the retries of a write in flight
// at the stop.
const defaultLiveness = 3 * time.Second

// patience is how long a client keeps sending one request again, through
// the load balancer, before it gives up.
const patience = time.Minute

// maxDowntime bounds how long the stopped node stays down: it is started
// again once two thirds of the payments are done, or after maxDowntime,
// whichever comes first (with fewer than three nodes, the stop halts the
// writes until it is back).
const maxDowntime = 2 * time.Second

// clusterTimeout bounds the waits for the cluster to form and for the
// stopped node to come back.
const clusterTimeout = time.Minute

// maxProblems bounds the problems a report keeps for its reader.
const maxProblems = 5

var (
	// errTransient is the failure fn returns now and then. It is not
	// Permanent, so the engine stores nothing, and the client's retry runs
	// fn again: the card was not charged, so that is not a duplicate.
	errTransient = errors.New("card network unavailable, try again")
	// errNodeDown is the load balancer's answer to a request it sends to a
	// node that is down.
	errNodeDown = errors.New("connection refused: the node is down")
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// config is what the flags set.
type config struct {
	Nodes    int           // nodes of the cluster, 1 to maxNodes
	Payments int           // number of payments, at least 2
	Workers  int           // concurrent clients, at least 1
	Seed     uint64        // seed of the scenario's random choices
	Dir      string        // the nodes' directory, empty or absent; "" for a temporary one, removed at the end
	Liveness time.Duration // the engines' liveness window; 0 for defaultLiveness
}

const usageText = `Usage: go run ./cmd/demo [flags]    (in the idemnats module)

Demo starts a cluster of NATS JetStream nodes embedded in this process, each
on random loopback ports, with an idem engine on each node; the engines
share one key-value bucket of up to 3 replicas. A flaky client then pays a
few thousand payments, each with its own idempotency key, and a load
balancer sends each attempt to a random node. The charge (fn) takes up to
2 ms and fails transiently 5% of the time, and the client retries. The
client loses the response of 20% of the payments (and retries with the same
key), fires 2 to 4 concurrent attempts for 15% of them, and reuses one key
with a different payload.

A third of the way through, the node that leads the bucket's stream is
stopped: its engine is cut off mid-call, and its server is shut down
cleanly, which hands the stream's leadership to another node first (unlike a
kill -9, after which the others notice and elect a leader in 4 to 9 s).
Requests that reach the stopped node fail, and the load balancer sends them
to another node. Two thirds of the way (or 2 s later, whichever is first),
the node is started again on its directory, with a new engine. Keys whose fn
the stop cut off report ErrInterrupted once the stopped engine's heartbeat
has lapsed (the demo's liveness window is 3 s, the default 15 s); at the end
they are reconciled with the payment provider's ledger, and every payment is
retried. Demo exits with status 1 if a card was charged twice or an
acknowledged result was lost; the ledger counts the charges itself,
independently of idem.

The nodes' stores go in a temporary directory, removed at the end; with -dir
they are kept, one directory per node. Run 'idem demo' (in the core module)
for the single-node version, on a local Pebble database.

Flags:
`

// run parses args, runs the demo and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	var cfg config
	fs.IntVar(&cfg.Nodes, "cluster", 3, fmt.Sprintf("number of nodes, 1 to %d; the bucket has min(3, N) replicas", maxNodes))
	fs.IntVar(&cfg.Payments, "payments", 3000, "number of payments (at least 2)")
	fs.IntVar(&cfg.Workers, "workers", 32, "number of concurrent clients")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the scenario's random choices")
	fs.StringVar(&cfg.Dir, "dir", "", "directory for the nodes' stores, which must be empty or absent and is kept\n(default a temporary directory, removed at the end)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "demo: "+format+"\n", a...)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		return fail("unexpected argument %q", fs.Arg(0))
	case cfg.Nodes < 1 || cfg.Nodes > maxNodes:
		return fail("-cluster must be 1 to %d, not %d", maxNodes, cfg.Nodes)
	case cfg.Payments < 2:
		return fail("-payments must be at least 2, not %d", cfg.Payments)
	case cfg.Workers < 1:
		return fail("-workers must be at least 1, not %d", cfg.Workers)
	}
	rep, err := runDemo(ctx, cfg, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return exitFailure
	}
	if !rep.ok() {
		fmt.Fprintln(stderr, "demo: FAILED: a must-be-0 figure is not 0")
		return exitFailure
	}
	return exitOK
}

// report holds the figures of a demo run. The engines' counters are summed
// over every engine of the run, the stopped node's first one included.
type report struct {
	Dir        string // the nodes' parent directory
	Nodes      int
	Replicas   int    // the bucket's
	Attempts   uint64 // Do calls (Stats.Calls)
	FnCalls    uint64 // times fn started (Stats.Executions)
	Executions uint64 // runs of fn that succeeded and charged a card
	Transient  uint64 // runs of fn that failed transiently
	Lost       uint64 // responses lost on their way to the client
	Replays    uint64 // calls answered without running fn (Stats.Replays)
	Waits      uint64 // calls that waited for a concurrent call of their key (Stats.Waits)
	Mismatches uint64 // calls refused with ErrFingerprintMismatch (Stats.Mismatches)
	Rerouted   uint64 // requests that failed on a node and were sent to another

	Interrupted int // keys that reported ErrInterrupted
	Reconciled  int // of those, keys whose card the ledger showed charged, answered with its receipt
	Recharged   int // of those, keys whose card was not charged, and was at reconciliation
	Retried     int // keys with no acknowledged result after the load, answered by a plain retry

	Stopped   string        // the node stopped and started again
	StoppedAt int           // payments done when it was stopped
	Election  time.Duration // from the stop to the first leader of the bucket's stream on another node; 0 if none
	NewLeader string        // that leader
	Downtime  time.Duration // from the stop to the node's return, with its engine

	Longest     time.Duration // the longest Do, not counting those that ended in ErrInterrupted
	LongestKey  string
	LongestNode string

	PerNode []nodeReport
	Logs    []logLine // what the engines logged, Warn and above

	// The figures that must be 0.
	DuplicatesExecuted int // keys whose card was charged more than once
	ResultsLost        int // keys whose acknowledged result was not replayed as it was
	Unexpected         int // requests that failed in a way the scenario does not expect

	Problems []string // the first few problems behind the figures above, for the reader
	Elapsed  time.Duration
}

// ok reports whether the must-be-zero figures are zero.
func (r *report) ok() bool {
	return r.DuplicatesExecuted == 0 && r.ResultsLost == 0 && r.Unexpected == 0
}

// nodeReport holds one node's figures.
type nodeReport struct {
	Name     string
	Stopped  bool
	Requests uint64        // requests the load balancer sent to the node
	Refused  uint64        // of those, sent while it was down
	Failed   uint64        // Do calls that failed with an error of the node: cut off by its stop, or a store error
	Stats    idem.Stats    // its engines' counters, summed
	Longest  time.Duration // its longest Do, not counting those that ended in ErrInterrupted
}

// A payment is one payment of the scenario, with everything the seed decides
// about it.
type payment struct {
	index    int
	key      string // idempotency key
	amount   int64  // in cents
	currency string
	fp       []byte // fingerprint: SHA-256 of the encoded payload

	lost bool // the response to the first successful attempt is lost
	dups int  // if > 0, the client fires that many concurrent attempts

	runs atomic.Uint64 // times fn started for this key; seeds each run's choices
}

// payload is a payment's request body, whose encoding is fingerprinted.
type payload struct {
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

// fingerprint returns the SHA-256 of p's encoding.
func fingerprint(p payload) []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // a struct of an int and a string always encodes
	}
	sum := sha256.Sum256(b)
	return sum[:]
}

// plan draws the scenario's payments from seed, as the single-node demo
// does.
func plan(n int, seed uint64) []*payment {
	r := rand.New(rand.NewPCG(seed, 0))
	currencies := []string{"EUR", "USD", "GBP", "JPY"}
	pays := make([]*payment, n)
	for i := range pays {
		p := &payment{
			index:    i,
			key:      fmt.Sprintf("pay-%06d", i),
			amount:   100 + r.Int64N(100_000),
			currency: currencies[r.IntN(len(currencies))],
		}
		p.fp = fingerprint(payload{Amount: p.amount, Currency: p.currency})
		switch x := r.IntN(100); {
		case x < dupPercent:
			p.dups = 2 + r.IntN(3)
		case x < dupPercent+lostPercent:
			p.lost = true
		}
		pays[i] = p
	}
	return pays
}

// ledger is the payment provider's side of the demo: what was charged, and
// what the client was told. It counts the charges itself, whatever idem
// says.
type ledger struct {
	mu          sync.Mutex        // guards the fields below
	charged     map[string]int    // successful charges per key
	receipts    map[string][]byte // the first charge's receipt, per key
	acked       map[string][]byte // the first response that reached the client, per key
	lost        map[string]bool   // keys whose acknowledged result was not replayed as it was
	interrupted map[string]bool   // keys that reported ErrInterrupted
	unexpected  int               // requests that failed unexpectedly
	problems    []string          // the first few problems, described
}

func newLedger() *ledger {
	return &ledger{
		charged:     make(map[string]int),
		receipts:    make(map[string][]byte),
		acked:       make(map[string][]byte),
		lost:        make(map[string]bool),
		interrupted: make(map[string]bool),
	}
}

// problemLocked notes a problem for the report; l.mu is held.
func (l *ledger) problemLocked(format string, a ...any) {
	if len(l.problems) < maxProblems {
		l.problems = append(l.problems, fmt.Sprintf(format, a...))
	}
}

// charge records a successful charge of key's card, with its receipt.
func (l *ledger) charge(key string, receipt []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chargeLocked(key, receipt)
}

func (l *ledger) chargeLocked(key string, receipt []byte) {
	l.charged[key]++
	if _, ok := l.receipts[key]; !ok {
		l.receipts[key] = receipt
	}
	if _, ok := l.acked[key]; ok {
		l.lost[key] = true
		l.problemLocked("%s: charged again after its result was acknowledged", key)
	}
}

// receive records a response that reached the client: the first one for a
// key is its acknowledged result, and every later one must carry the same
// bytes.
func (l *ledger) receive(key string, v []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ack, ok := l.acked[key]
	if !ok {
		l.acked[key] = bytes.Clone(v)
		return
	}
	if !bytes.Equal(ack, v) {
		l.lost[key] = true
		l.problemLocked("%s: got %q, acknowledged %q", key, v, ack)
	}
}

// loseResult records that key's result was not replayed as it was.
func (l *ledger) loseResult(key, format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost[key] = true
	l.problemLocked("%s: %s", key, fmt.Sprintf(format, a...))
}

// interrupt records that key reported ErrInterrupted.
func (l *ledger) interrupt(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.interrupted[key] = true
}

// fail records a request that failed in a way the scenario does not
// expect.
func (l *ledger) fail(key string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unexpected++
	l.problemLocked("%s: unexpected error: %v", key, err)
}

// ackOf returns key's acknowledged result, if any.
func (l *ledger) ackOf(key string) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.acked[key]
	return v, ok
}

// logSink collects what the engines log, Warn and above, by node, level
// and message.
type logSink struct {
	mu    sync.Mutex // guards lines, index
	lines []logLine
	index map[logKey]int // into lines
}

// logKey identifies a kind of log record.
type logKey struct {
	node  string
	level slog.Level
	msg   string
}

// logLine is a kind of log record, with how often it was logged and the
// attributes of its first occurrence.
type logLine struct {
	logKey
	count int
	attrs string
}

func (s *logSink) add(node string, r slog.Record) {
	k := logKey{node: node, level: r.Level, msg: r.Message}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[k]; ok {
		s.lines[i].count++
		return
	}
	var attrs []string
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a.String())
		return true
	})
	if s.index == nil {
		s.index = make(map[logKey]int)
	}
	s.index[k] = len(s.lines)
	s.lines = append(s.lines, logLine{logKey: k, count: 1, attrs: strings.Join(attrs, " ")})
}

func (s *logSink) snapshot() []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lines)
}

// logHandler is the slog.Handler of one node's engines: it hands their
// records of level Warn and above to a logSink.
type logHandler struct {
	node string
	sink *logSink
}

func (h logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	h.sink.add(h.node, r)
	return nil
}

func (h logHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logHandler) WithGroup(string) slog.Handler      { return h }

// replica is one node of the cluster with its engine, as the load balancer
// sees it: a replica of the payment service.
type replica struct {
	name string
	cfg  idemnats.NodeConfig // to start it again: same Dir, Name, Cluster and Peers
	log  *slog.Logger        // its engines' logger

	mu      sync.RWMutex // guards the fields below
	up      bool         // the load balancer sends it requests
	stopped bool         // it was stopped during the run
	node    *idemnats.Node
	nc      *nats.Conn    // the engine's in-process connection
	engine  *idem.Engine  // nil while down
	past    idem.Stats    // the counters of its closed engines, summed
	longest time.Duration // its longest Do, not counting those that ended in ErrInterrupted

	requests atomic.Uint64 // requests the load balancer sent to it
	refused  atomic.Uint64 // of those, sent while it was down
	failed   atomic.Uint64 // Do calls that failed with an error of the node
}

// current returns the replica's engine, or nil if it is down.
func (r *replica) current() *idem.Engine {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if !r.up {
		return nil
	}
	return r.engine
}

// observe records the duration of a Do call on the replica.
func (r *replica) observe(d time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d <= r.longest {
		return false
	}
	r.longest = d
	return true
}

// demo is one run of the scenario.
type demo struct {
	cfg      config
	out      io.Writer
	outMu    sync.Mutex // guards writes to out while the run goes on
	start    time.Time  // when the load began, for the timeline
	bucket   string
	replicas []*replica
	logs     *logSink
	pays     []*payment
	ledger   *ledger
	finished atomic.Int64 // payments of the load done

	charges    atomic.Uint64 // successful charges; numbers the receipts
	transient  atomic.Uint64 // transient failures of fn
	lost       atomic.Uint64 // responses lost on their way to the client
	rerouted   atomic.Uint64 // requests sent again to another node after a node's error
	reconciled atomic.Int64  // interrupted keys whose card the ledger showed charged
	recharged  atomic.Int64  // interrupted keys whose card was not charged, and was at reconciliation
	retried    atomic.Int64  // unacknowledged keys answered by a plain retry at settling

	longestMu   sync.Mutex // guards the three fields below
	longest     time.Duration
	longestKey  string
	longestNode string
}

// runDemo runs the scenario of cfg, writes its timeline and table to w and
// returns its figures. An error means the demo could not run (a directory
// or the cluster failed, or ctx ended); the figures tell whether the
// engines kept their promises.
func runDemo(ctx context.Context, cfg config, w io.Writer) (*report, error) {
	if cfg.Liveness <= 0 {
		cfg.Liveness = defaultLiveness
	}
	dir, where := cfg.Dir, ""
	if dir == "" {
		tmp, err := os.MkdirTemp("", "idem-cluster-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir, where = tmp, " (temporary, removed at the end)"
	} else if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("-dir %s is not empty", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	replicas := min(3, cfg.Nodes)
	fmt.Fprintf(w, "idem cluster demo: %s, bucket %q of %s, %s, %s, seed %d, dir %s%s\n",
		plural(cfg.Nodes, "node"), idemnats.DefaultBucket, plural(replicas, "replica"),
		plural(cfg.Payments, "payment"), plural(cfg.Workers, "worker"), cfg.Seed, dir, where)

	d := &demo{
		cfg:    cfg,
		out:    w,
		bucket: idemnats.DefaultBucket,
		logs:   new(logSink),
		pays:   plan(cfg.Payments, cfg.Seed),
		ledger: newLedger(),
	}
	rep := &report{Dir: dir, Nodes: cfg.Nodes, Replicas: replicas}
	defer d.shutdown()
	if err := d.startCluster(ctx, dir); err != nil {
		return nil, err
	}
	d.start = time.Now()
	if err := d.run(ctx, rep); err != nil {
		return nil, err
	}
	rep.Elapsed = time.Since(d.start)
	d.closeEngines()
	d.tally(rep)
	writeReport(w, rep)
	if cfg.Dir == "" {
		fmt.Fprintf(w, "demo: removing %s; run with -dir DIR to keep the nodes' stores\n", dir)
	} else {
		fmt.Fprintf(w, "demo: the nodes' JetStream stores are kept in %s, one directory per node\n", dir)
	}
	return rep, nil
}

// event writes a line of the timeline, stamped with the time since the load
// began.
func (d *demo) event(format string, a ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, "%7.2fs  %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, a...))
}

// startCluster starts the nodes on loopback, waits until the cluster can
// hold a bucket of its replicas, and opens an engine on each node.
func (d *demo) startCluster(ctx context.Context, dir string) error {
	began := time.Now()
	n := d.cfg.Nodes
	var peers []string
	if n > 1 {
		var err error
		if peers, err = freeAddrs(n); err != nil {
			return err
		}
	}
	for i := range n {
		name := "n" + strconv.Itoa(i+1)
		cfg := idemnats.NodeConfig{
			Dir:    filepath.Join(dir, name),
			Name:   name,
			Listen: "127.0.0.1:-1",
		}
		if n > 1 {
			cfg.Cluster, cfg.Peers = peers[i], peers
		}
		r := &replica{name: name, cfg: cfg, log: slog.New(logHandler{node: name, sink: d.logs})}
		d.replicas = append(d.replicas, r)
		// Start them all before waiting for any: a clustered node does
		// not wait for its peers.
		nd, err := idemnats.StartNode(cfg)
		if err != nil {
			return fmt.Errorf("starting node %s: %w", name, err)
		}
		r.node = nd
	}
	wctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	if err := d.waitCluster(wctx, n); err != nil {
		return err
	}
	ready := time.Since(began)
	for _, r := range d.replicas {
		if err := d.openEngine(wctx, r); err != nil {
			return err
		}
	}
	var urls []string
	for _, r := range d.replicas {
		urls = append(urls, r.name+" "+strings.TrimPrefix(r.node.ClientURL(), "nats://"))
	}
	fmt.Fprintf(d.out, "started %s; the cluster was ready after %v, an engine on each node after %v\n",
		strings.Join(urls, ", "), ready.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	return nil
}

// freeAddrs returns n loopback addresses whose ports were free a moment
// ago, for the nodes' routes: every node must know the others' before they
// start.
func freeAddrs(n int) ([]string, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		addrs[i] = l.Addr().String()
	}
	return addrs, nil
}

// waitCluster waits until JetStream is ready on the running nodes and, if
// they are clustered, the meta leader sees want peers and every running
// node is current: then a bucket of up to want replicas can be created.
func (d *demo) waitCluster(ctx context.Context, want int) error {
	var running []*idemnats.Node
	for _, r := range d.replicas {
		r.mu.RLock()
		if nd := r.node; nd != nil && nd.Server().Running() {
			running = append(running, nd)
		}
		r.mu.RUnlock()
	}
	for _, nd := range running {
		if err := nd.WaitReady(ctx); err != nil {
			return fmt.Errorf("node %s not ready: %w", nd.Name(), err)
		}
	}
	if !running[0].Server().JetStreamIsClustered() {
		return nil
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		ready := false
		for _, nd := range running {
			if s := nd.Server(); s.JetStreamIsLeader() {
				ready = len(s.JetStreamClusterPeers()) >= want
				break
			}
		}
		for _, nd := range running {
			ready = ready && nd.Server().JetStreamIsCurrent()
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster of %d nodes did not form: %w", want, ctx.Err())
		case <-t.C:
		}
	}
}

// openEngine connects to r's node in-process and opens an engine on the
// bucket (creating it, for the first), and puts r in the load balancer.
// Open is tried again while it fails, until ctx ends: a node that has just
// joined may not serve the bucket yet.
func (d *demo) openEngine(ctx context.Context, r *replica) error {
	r.mu.RLock()
	nd := r.node
	r.mu.RUnlock()
	nc, err := nd.Connect()
	if err != nil {
		return err
	}
	opts := &idemnats.Options{
		Bucket:         d.bucket,
		Replicas:       min(3, d.cfg.Nodes),
		LivenessWindow: d.cfg.Liveness,
		Engine:         &idem.Options{Logger: r.log},
	}
	var e *idem.Engine
	for tries := 0; ; tries++ {
		if e, err = idemnats.Open(nc, opts); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return fmt.Errorf("opening an engine on node %s (%d tries): %w", r.name, tries+1, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.mu.Lock()
	r.nc, r.engine, r.up = nc, e, true
	r.mu.Unlock()
	return nil
}

// streamLeader returns the index of the running node that leads the
// bucket's stream, or -1 if none does (during an election). A single node
// leads its streams.
func (d *demo) streamLeader() int {
	stream := "KV_" + d.bucket
	for i, r := range d.replicas {
		r.mu.RLock()
		nd := r.node
		r.mu.RUnlock()
		if nd == nil || !nd.Server().Running() {
			continue
		}
		s := nd.Server()
		if !s.JetStreamIsClustered() || s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// stop stops replica i as a crash of its process would, as far as this
// process can: the load balancer refuses its requests from now on, its
// engine loses its connection mid-call (the calls in progress fail, and
// the claims whose outcome they could not store stay, reported interrupted
// once its heartbeat lapses), and its server is shut down (cleanly: see
// Node.Shutdown). It returns once the server is down, and when it began
// shutting down; the dead engine's Close, which waits for its calls to
// return, goes on until closed is closed.
func (d *demo) stop(i int) (began time.Time, closed <-chan struct{}) {
	r := d.replicas[i]
	r.mu.Lock()
	r.up, r.stopped = false, true
	nd, nc, e := r.node, r.nc, r.engine
	r.nc, r.engine = nil, nil
	r.mu.Unlock()

	nc.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Close returns an error for the writes that could not be
		// resolved, with no connection: expected here.
		_ = e.Close()
		st := e.Stats()
		r.mu.Lock()
		r.past = addStats(r.past, st)
		r.mu.Unlock()
	}()
	began = time.Now()
	nd.Shutdown()
	return began, done
}

// restart starts replica i's node again on its directory, waits until it
// has rejoined the cluster and opens a new engine on it.
func (d *demo) restart(ctx context.Context, i int) error {
	r := d.replicas[i]
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	var nd *idemnats.Node
	var err error
	for {
		// Its route port was released by Shutdown; try again briefly in
		// case the kernel has not let it go yet.
		if nd, err = idemnats.StartNode(r.cfg); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restarting node %s: %w", r.name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.mu.Lock()
	r.node = nd
	r.mu.Unlock()
	if len(d.replicas) > 1 {
		d.event("%s started; waiting for it to rejoin the cluster", r.name)
	}
	if err := d.waitCluster(ctx, len(d.replicas)); err != nil {
		return err
	}
	// Open reads the bucket's stream, which answers once it has a leader:
	// with fewer than three nodes, only after the node's return.
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for d.streamLeader() < 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("restarting node %s: the bucket's stream has no leader: %w", r.name, ctx.Err())
		case <-t.C:
		}
	}
	if len(d.replicas) > 1 {
		d.event("%s rejoined the cluster; opening an engine on it", r.name)
	}
	return d.openEngine(ctx, r)
}

// shutdown closes what is left of the cluster: engines, connections and
// nodes. runDemo defers it, so that a failed run stops its nodes too.
func (d *demo) shutdown() {
	for _, r := range d.replicas {
		r.mu.Lock()
		e, nc, nd := r.engine, r.nc, r.node
		r.engine, r.nc, r.up = nil, nil, false
		r.mu.Unlock()
		if e != nil {
			e.Close()
		}
		if nc != nil {
			nc.Close()
		}
		if nd != nil {
			nd.Shutdown()
		}
	}
}

// closeEngines closes the engines at the end of the run, keeping their
// counters. An error of Close is a problem of the run, not a failure to
// run it: it is counted as unexpected.
func (d *demo) closeEngines() {
	for _, r := range d.replicas {
		r.mu.Lock()
		e := r.engine
		r.engine, r.up = nil, false
		r.mu.Unlock()
		if e == nil {
			continue
		}
		if err := e.Close(); err != nil {
			d.ledger.fail("(close "+r.name+")", err)
		}
		st := e.Stats()
		r.mu.Lock()
		r.past = addStats(r.past, st)
		r.mu.Unlock()
	}
}

// plural returns n and noun, with an s if n is not 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// addStats returns the sum of the counters of a and b.
func addStats(a, b idem.Stats) idem.Stats {
	a.Calls += b.Calls
	a.Executions += b.Executions
	a.Replays += b.Replays
	a.Waits += b.Waits
	a.Conflicts += b.Conflicts
	a.Mismatches += b.Mismatches
	a.Interrupted += b.Interrupted
	return a
}

// run plays the scenario: the load, with the stop and restart of the
// stream's leader going on beside it, then the settling of every payment.
func (d *demo) run(ctx context.Context, rep *report) error {
	// The load: every payment once, as the client makes it.
	loadDone := make(chan struct{})
	chaosErr := make(chan error, 1)
	go func() { chaosErr <- d.chaos(ctx, loadDone, rep) }()
	jobs := make([]func(context.Context), 0, len(d.pays))
	for _, p := range d.pays {
		jobs = append(jobs, func(ctx context.Context) {
			d.pay(ctx, p)
			d.finished.Add(1)
		})
	}
	runJobs(ctx, d.cfg.Workers, jobs)
	close(loadDone)
	if err := <-chaosErr; err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// Settling: every payment again, on random nodes (the restarted one
	// included). An acknowledged one must replay; one whose fn the stop cut
	// off is reconciled.
	d.event("every payment sent; sending each again, and reconciling the interrupted ones")
	jobs = jobs[:0]
	for _, p := range d.pays {
		jobs = append(jobs, func(ctx context.Context) { d.settle(ctx, p) })
	}
	runJobs(ctx, d.cfg.Workers, jobs)
	if err := ctx.Err(); err != nil {
		return err
	}
	// One key reused for a different payment, once every key is settled.
	d.reuse(ctx, d.pays[rand.New(rand.NewPCG(d.cfg.Seed, 1)).IntN(len(d.pays))])
	d.verify(ctx)
	return ctx.Err()
}

// chaos stops the node that leads the bucket's stream once a third of the
// payments are done, watches the election of a new leader, and starts the
// node again once two thirds are done, the load is over, or maxDowntime
// has passed.
func (d *demo) chaos(ctx context.Context, loadDone <-chan struct{}, rep *report) error {
	n := int64(len(d.pays))
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	wait := func(cond func() bool) bool {
		for !cond() {
			select {
			case <-ctx.Done():
				return false
			case <-tick.C:
			}
		}
		return true
	}
	loadOver := func() bool {
		select {
		case <-loadDone:
			return true
		default:
			return false
		}
	}
	if !wait(func() bool { return d.finished.Load() >= n/3 || loadOver() }) {
		return ctx.Err()
	}
	leader := -1
	if !wait(func() bool { leader = d.streamLeader(); return leader >= 0 }) {
		return ctx.Err()
	}
	name := d.replicas[leader].name
	rep.Stopped, rep.StoppedAt = name, int(d.finished.Load())
	how := "its server shut down cleanly, which hands the stream's leadership to another node first, unlike a kill -9"
	if d.cfg.Nodes == 1 {
		how = "its server shut down cleanly; with no other node, requests wait until it is back"
	} else if d.cfg.Nodes == 2 {
		how = "its server shut down cleanly; one node of two is no quorum: writes wait until it is back"
	}
	d.event("%s done; %s leads the bucket's stream: stopping %s (its engine cut off mid-call, %s)",
		plural(rep.StoppedAt, "payment"), name, name, how)
	stopped, closed := d.stop(leader)
	// The stopped engine's Close must be over before the run's end, when
	// its counters are summed.
	defer func() { <-closed }()
	d.event("%s stopped (its server's shutdown took %v)", name, time.Since(stopped).Round(time.Millisecond))

	elected := func() bool {
		if rep.Election > 0 || d.cfg.Nodes < 3 {
			return true
		}
		if i := d.streamLeader(); i >= 0 && i != leader {
			rep.Election, rep.NewLeader = time.Since(stopped), d.replicas[i].name
			d.event("%s leads the bucket's stream, %v after %s stopped", rep.NewLeader, rep.Election.Round(time.Millisecond), name)
		}
		return rep.Election > 0
	}
	if !wait(func() bool {
		elected()
		return d.finished.Load() >= 2*n/3 || loadOver() || time.Since(stopped) >= maxDowntime
	}) {
		return ctx.Err()
	}
	d.event("%s done; starting %s again on its directory", plural(int(d.finished.Load()), "payment"), name)
	if err := d.restart(ctx, leader); err != nil {
		return err
	}
	rep.Downtime = time.Since(stopped)
	d.event("%s is back, with a new engine: down for %v", name, rep.Downtime.Round(time.Millisecond))
	// With three nodes or more, a leader is elected without the stopped
	// one: if that was not seen before its return, look once more (the
	// restarted node may have been elected since: then none is reported).
	elected()
	return nil
}

// runJobs runs jobs on workers goroutines and returns when they are done, or
// once ctx has ended and the jobs started are done.
func runJobs(ctx context.Context, workers int, jobs []func(context.Context)) {
	ch := make(chan func(context.Context))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range ch {
				job(ctx)
			}
		}()
	}
feed:
	for _, job := range jobs {
		select {
		case ch <- job:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
}

// charge returns the fn of a Do call for p: it charges the card, or fails
// transiently. The choices of its n-th run for p follow from the seed, p and
// n, whichever goroutine, and node, runs it.
func (d *demo) charge(p *payment) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		n := p.runs.Add(1)
		r := rand.New(rand.NewPCG(d.cfg.Seed, uint64(p.index)<<32|n))
		time.Sleep(time.Duration(r.Int64N(int64(maxWork) + 1)))
		if r.IntN(100) < transientPercent {
			d.transient.Add(1)
			return nil, errTransient
		}
		receipt := d.receipt(p)
		d.ledger.charge(p.key, receipt)
		return receipt, nil
	}
}

// receipt returns the receipt of a new charge for p.
func (d *demo) receipt(p *payment) []byte {
	id := d.charges.Add(1)
	return fmt.Appendf(nil, "receipt:%s:%d.%02d %s:charge-%d", p.key, p.amount/100, p.amount%100, p.currency, id)
}

// reconcileFn returns the fn that settles p once it has been forgotten
// after an interruption: it asks the payment provider (the ledger) whether
// the card was charged, and returns that charge's receipt if it was, or
// charges the card if it was not. The ledger's lock is held across the
// question and the charge.
func (d *demo) reconcileFn(p *payment, charged *bool) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		l := d.ledger
		l.mu.Lock()
		defer l.mu.Unlock()
		if r, ok := l.receipts[p.key]; ok {
			*charged = true
			return bytes.Clone(r), nil
		}
		receipt := d.receipt(p)
		l.chargeLocked(p.key, receipt)
		return receipt, nil
	}
}

// nodeError reports whether err, from a request to a node, is the node's
// failure rather than an outcome of the scenario: the client sends the
// request again, to another node.
func nodeError(err error) bool {
	var perm *idem.PermanentError
	switch {
	case err == nil,
		errors.Is(err, errTransient),
		errors.Is(err, idem.ErrFingerprintMismatch),
		errors.Is(err, idem.ErrInterrupted),
		errors.Is(err, idem.ErrInFlight),
		errors.Is(err, idem.ErrNotFound),
		errors.Is(err, idem.ErrCorrupt),
		errors.Is(err, idem.ErrInvalidKey),
		errors.Is(err, idem.ErrTooLarge),
		errors.As(err, &perm):
		return false
	}
	return true
}

// send is the client's retry loop for one request, through the load
// balancer: it sends op to a random node, and again (to another node if
// there is one) after a transient failure of fn or an error of the node
// (refused while it is down, cut off by its stop, a store error), until op
// returns something else, ctx ends or the client's patience runs out. key
// names the request in the report; if op is a Do call, timed, its duration
// counts for the longest Do.
func (d *demo) send(ctx context.Context, key string, timed bool, op func(*idem.Engine) (idem.Result, error)) (idem.Result, error) {
	deadline := time.Now().Add(patience)
	last, failures := -1, 0
	for {
		i := rand.IntN(len(d.replicas))
		if last >= 0 && len(d.replicas) > 1 {
			i = (last + 1 + rand.IntN(len(d.replicas)-1)) % len(d.replicas)
		}
		r := d.replicas[i]
		r.requests.Add(1)
		var (
			res idem.Result
			err error
		)
		if e := r.current(); e == nil {
			r.refused.Add(1)
			err = errNodeDown
		} else {
			began := time.Now()
			res, err = op(e)
			if timed && !errors.Is(err, idem.ErrInterrupted) {
				d.observe(r, key, time.Since(began))
			}
			if nodeError(err) {
				r.failed.Add(1)
			}
		}
		switch {
		case errors.Is(err, errTransient):
			last, failures = -1, 0
		case !nodeError(err):
			return res, err
		default:
			d.rerouted.Add(1)
			last = i
			failures++
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return res, err
		}
		if failures >= len(d.replicas) {
			// Every node may be down, or in an election: pause a little.
			t := time.NewTimer(min(5*time.Millisecond<<min(failures-len(d.replicas), 5), 100*time.Millisecond))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// observe records the duration of a Do call for key on r.
func (d *demo) observe(r *replica, key string, took time.Duration) {
	if !r.observe(took) {
		return
	}
	d.longestMu.Lock()
	defer d.longestMu.Unlock()
	if took > d.longest {
		d.longest, d.longestKey, d.longestNode = took, key, r.name
	}
}

// attempt sends a request for p, with fn charging the card.
func (d *demo) attempt(ctx context.Context, p *payment) (idem.Result, error) {
	fn := d.charge(p)
	return d.send(ctx, p.key, true, func(e *idem.Engine) (idem.Result, error) {
		return e.Do(ctx, p.key, p.fp, fn)
	})
}

// pay makes payment p as the client of the scenario does: once, or with its
// response lost and a retry, or with concurrent duplicate attempts, each
// sent to a node of its own choice.
func (d *demo) pay(ctx context.Context, p *payment) {
	switch {
	case p.dups > 0:
		var wg sync.WaitGroup
		for range p.dups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.deliver(ctx, p)
			}()
		}
		wg.Wait()
	case p.lost:
		res, err := d.attempt(ctx, p)
		if err != nil {
			d.failed(ctx, p, err)
			return
		}
		// The response never reached the client, which times out and
		// retries with the same key: the retry must replay that response,
		// whichever node it reaches.
		d.lost.Add(1)
		again, err := d.attempt(ctx, p)
		if err != nil {
			d.failed(ctx, p, err)
			return
		}
		if !again.Replayed || !bytes.Equal(again.Value, res.Value) {
			d.ledger.loseResult(p.key, "retry after a lost response got %q (replayed %v), want a replay of %q", again.Value, again.Replayed, res.Value)
		}
		d.ledger.receive(p.key, again.Value)
	default:
		d.deliver(ctx, p)
	}
}

// deliver makes one request for p and hands its response to the client.
func (d *demo) deliver(ctx context.Context, p *payment) {
	res, err := d.attempt(ctx, p)
	if err != nil {
		d.failed(ctx, p, err)
		return
	}
	d.ledger.receive(p.key, res.Value)
}

// failed records a request for p that got no response: ErrInterrupted,
// which the settling reconciles, or an error the scenario does not expect.
func (d *demo) failed(ctx context.Context, p *payment, err error) {
	if errors.Is(err, idem.ErrInterrupted) {
		d.ledger.interrupt(p.key)
		return
	}
	d.unexpected(ctx, p.key, err)
}

// settle sends p again after the load. An acknowledged payment must be
// replayed as it was acknowledged. One that was not (its requests were cut
// off by the stop, or reported ErrInterrupted) is sent again, and if it
// reports ErrInterrupted, reconciled: see reconcile.
func (d *demo) settle(ctx context.Context, p *payment) {
	if ack, ok := d.ledger.ackOf(p.key); ok {
		res, err := d.attempt(ctx, p)
		switch {
		case err != nil:
			d.unexpected(ctx, p.key, fmt.Errorf("retry of an acknowledged payment: %w", err))
		case !res.Replayed || !bytes.Equal(res.Value, ack):
			d.ledger.loseResult(p.key, "retry of an acknowledged payment got %q (replayed %v), want a replay of %q", res.Value, res.Replayed, ack)
		}
		return
	}
	res, err := d.attempt(ctx, p)
	if errors.Is(err, idem.ErrInterrupted) {
		d.ledger.interrupt(p.key)
		res, err = d.reconcile(ctx, p)
	} else if err == nil {
		d.retried.Add(1)
	}
	if err != nil {
		d.unexpected(ctx, p.key, err)
		return
	}
	d.ledger.receive(p.key, res.Value)
}

// reconcile does what an operator does with a key that reports
// ErrInterrupted: it forgets the key and sends the payment again with an
// fn that asks the payment provider whether the card was charged, and
// charges it only if it was not. (With idemnats, the engine that cut fn off
// is gone: its heartbeat lapsed, which is why the key reports
// ErrInterrupted, and Forget refuses a claim of a live engine.)
func (d *demo) reconcile(ctx context.Context, p *payment) (idem.Result, error) {
	if _, err := d.send(ctx, p.key, false, func(e *idem.Engine) (idem.Result, error) {
		return idem.Result{}, e.Forget(p.key)
	}); err != nil {
		return idem.Result{}, fmt.Errorf("forgetting an interrupted key: %w", err)
	}
	var charged bool // set by fn, which runs once: no other request for p is in progress
	fn := d.reconcileFn(p, &charged)
	res, err := d.send(ctx, p.key, true, func(e *idem.Engine) (idem.Result, error) {
		return e.Do(ctx, p.key, p.fp, fn)
	})
	switch {
	case err == nil && charged:
		d.reconciled.Add(1)
	case err == nil:
		d.recharged.Add(1)
	}
	return res, err
}

// reuse sends a different payment under p's key: every engine must refuse
// it without charging.
func (d *demo) reuse(ctx context.Context, p *payment) {
	other := fingerprint(payload{Amount: p.amount + 100, Currency: p.currency})
	fn := d.charge(p)
	_, err := d.send(ctx, p.key, true, func(e *idem.Engine) (idem.Result, error) {
		return e.Do(ctx, p.key, other, fn)
	})
	if !errors.Is(err, idem.ErrFingerprintMismatch) {
		d.unexpected(ctx, p.key, fmt.Errorf("reused key with a different payload: got %v, want ErrFingerprintMismatch", err))
	}
}

// unexpected records an error the scenario does not expect, unless it is
// due to ctx ending.
func (d *demo) unexpected(ctx context.Context, key string, err error) {
	if ctx.Err() != nil {
		return
	}
	d.ledger.fail(key, err)
}

// verify checks, with Lookup on a random node, that every acknowledged
// result is stored as it was acknowledged.
func (d *demo) verify(ctx context.Context) {
	for _, p := range d.pays {
		ack, ok := d.ledger.ackOf(p.key)
		if !ok {
			continue
		}
		var rec idem.Record
		_, err := d.send(ctx, p.key, false, func(e *idem.Engine) (idem.Result, error) {
			var err error
			rec, err = e.Lookup(p.key)
			return idem.Result{}, err
		})
		switch {
		case err != nil:
			d.ledger.loseResult(p.key, "Lookup: %v", err)
		case rec.State != idem.StateCompleted || !bytes.Equal(rec.Value, ack):
			d.ledger.loseResult(p.key, "stored %v %q, acknowledged %q", rec.State, rec.Value, ack)
		}
	}
}

// tally adds the demo's own figures, the engines' and the nodes' to rep.
func (d *demo) tally(rep *report) {
	rep.Executions = d.charges.Load()
	rep.Transient = d.transient.Load()
	rep.Lost = d.lost.Load()
	rep.Rerouted = d.rerouted.Load()
	d.longestMu.Lock()
	rep.Longest, rep.LongestKey, rep.LongestNode = d.longest, d.longestKey, d.longestNode
	d.longestMu.Unlock()
	for _, r := range d.replicas {
		r.mu.RLock()
		nr := nodeReport{
			Name:     r.name,
			Stopped:  r.stopped,
			Requests: r.requests.Load(),
			Refused:  r.refused.Load(),
			Failed:   r.failed.Load(),
			Stats:    r.past,
			Longest:  r.longest,
		}
		r.mu.RUnlock()
		rep.PerNode = append(rep.PerNode, nr)
		rep.Attempts += nr.Stats.Calls
		rep.FnCalls += nr.Stats.Executions
		rep.Replays += nr.Stats.Replays
		rep.Waits += nr.Stats.Waits
		rep.Mismatches += nr.Stats.Mismatches
	}
	rep.Logs = d.logs.snapshot()

	l := d.ledger
	l.mu.Lock()
	defer l.mu.Unlock()
	var twice []string
	for k, n := range l.charged {
		if n > 1 {
			twice = append(twice, k)
		}
	}
	sort.Strings(twice)
	rep.DuplicatesExecuted = len(twice)
	rep.ResultsLost = len(l.lost)
	rep.Unexpected = l.unexpected
	rep.Interrupted = len(l.interrupted)
	rep.Reconciled = int(d.reconciled.Load())
	rep.Recharged = int(d.recharged.Load())
	rep.Retried = int(d.retried.Load())
	for _, k := range twice {
		if len(rep.Problems) == maxProblems {
			break
		}
		rep.Problems = append(rep.Problems, fmt.Sprintf("%s: charged %d times", k, l.charged[k]))
	}
	rep.Problems = append(rep.Problems, l.problems...)
}

// writeReport writes rep as tables: the run's figures, then the nodes'.
func writeReport(w io.Writer, rep *report) {
	stop := "none"
	if rep.Stopped != "" {
		stop = rep.Stopped
	}
	election := "n/a"
	electionNote := "a single node: no election, requests waited until it was back"
	switch {
	case rep.Nodes == 2:
		electionNote = "one node of two is no quorum: writes waited until it was back"
	case rep.Nodes >= 3 && rep.Election > 0:
		election = rep.Election.Round(time.Millisecond).String()
		electionNote = fmt.Sprintf("from the stop until %s led the bucket's stream", rep.NewLeader)
	case rep.Nodes >= 3:
		electionNote = "no new leader seen before the stopped node was back"
	}
	longestNote := "the longest a client waited for a Do: the stall of the stop, as a client saw it; " +
		"a request in flight at the stop is sent again after a time-out"
	if rep.Nodes == 1 {
		longestNote = "the longest a client waited for a Do; while the node was down, it refused requests at once"
	}
	if rep.LongestKey != "" {
		longestNote = rep.LongestKey + " on " + rep.LongestNode + ": " + longestNote
	}
	interrupted := fmt.Sprintf("fn cut off by the stop; reconciled with the ledger: %d charged (its receipt returned), %d not (charged then)",
		rep.Reconciled, rep.Recharged)
	if rep.Interrupted == 0 {
		interrupted = "keys whose fn the stop cut off report ErrInterrupted: none this time"
	}
	if rep.Retried > 0 {
		interrupted += fmt.Sprintf("; %d keys answered by a plain retry", rep.Retried)
	}
	rows := [][3]string{
		{"nodes", fmt.Sprint(rep.Nodes), fmt.Sprintf("one engine on each; the bucket has %s, every write fsynced", plural(rep.Replicas, "replica"))},
		{"attempts", fmt.Sprint(rep.Attempts), "Do calls, on all the engines"},
		{"executions", fmt.Sprint(rep.Executions), "fn ran and succeeded: a card was charged"},
		{"transient failures", fmt.Sprint(rep.Transient), "fn failed, nothing stored, the client retried"},
		{"lost responses", fmt.Sprint(rep.Lost), "the client timed out and retried with the same key"},
		{"replays", fmt.Sprint(rep.Replays), "answered without running fn, on any node"},
		{"concurrent duplicates", fmt.Sprint(rep.Waits), "waited for a call of the same key, on any node, and shared its outcome"},
		{"mismatches refused", fmt.Sprint(rep.Mismatches), "same key, different payload: ErrFingerprintMismatch"},
		{"rerouted", fmt.Sprint(rep.Rerouted), "requests refused by the stopped node or cut off by its stop, and sent again, to another node if any"},
		{"interrupted keys", fmt.Sprint(rep.Interrupted), interrupted},
		{"node stopped", stop, fmt.Sprintf("the leader of the bucket's stream, after %d payments; down for %v", rep.StoppedAt, rep.Downtime.Round(time.Millisecond))},
		{"new stream leader", election, electionNote},
		{"longest Do", rep.Longest.Round(time.Millisecond).String(), longestNote},
		{"duplicates executed", fmt.Sprint(rep.DuplicatesExecuted), "must be 0"},
		{"results lost", fmt.Sprint(rep.ResultsLost), "must be 0"},
		{"unexpected errors", fmt.Sprint(rep.Unexpected), "must be 0"},
		{"elapsed", rep.Elapsed.Round(10 * time.Millisecond).String(), ""},
	}
	width := 0
	for _, r := range rows {
		width = max(width, len(r[1]))
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, r := range rows {
		if r[2] == "" {
			fmt.Fprintf(tw, "%s\t%*s\n", r[0], width, r[1])
			continue
		}
		fmt.Fprintf(tw, "%s\t%*s\t(%s)\n", r[0], width, r[1], r[2])
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "node\trequests\trefused\tfailed\tDo calls\tfn runs\treplays\twaits\tlongest Do\t")
	for _, n := range rep.PerNode {
		name := n.Name
		if n.Stopped {
			name += " (stopped)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%v\t\n", name, n.Requests, n.Refused, n.Failed,
			n.Stats.Calls, n.Stats.Executions, n.Stats.Replays, n.Stats.Waits, n.Longest.Round(time.Millisecond))
	}
	tw.Flush()
	fmt.Fprintln(w, "(requests: Do, Lookup and Forget calls sent by the load balancer; refused: while the node was down;\nfailed: calls that failed with an error of the node, cut off by its stop or a store error)")

	if len(rep.Logs) > 0 {
		fmt.Fprintln(w, "\nthe engines logged:")
		for _, l := range rep.Logs {
			line := fmt.Sprintf("  %s %s x%d: %s", l.node, l.level, l.count, l.msg)
			if l.attrs != "" {
				line += " [" + l.attrs + "]"
			}
			if len(line) > 240 {
				line = line[:237] + "..."
			}
			fmt.Fprintln(w, line)
		}
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
}
