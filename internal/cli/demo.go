package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/idemkv/idem"
)

// The scenario's odds, in percent.
const (
	transientPercent = 5  // a run of fn fails with a transient error
	lostPercent      = 20 // the response to a payment is lost on its way to the client
	dupPercent       = 15 // the client fires 2 to 4 concurrent attempts of a payment
)

// maxWork is the longest time fn spends "charging the card".
const maxWork = 2 * time.Millisecond

// errTransient is the failure fn returns now and then. It is not Permanent,
// so the engine stores nothing, and the client's retry runs fn again: the
// card was not charged, so that is not a duplicate.
var errTransient = errors.New("card network unavailable, try again")

// demoConfig is what the demo subcommand's flags set.
type demoConfig struct {
	Payments   int             // number of payments, at least 2
	Workers    int             // concurrent clients, at least 1
	Durability idem.Durability // the engine's durability mode
	Seed       uint64          // seed of the scenario's random choices
	Dir        string          // the engine's directory, empty or absent; "" for a temporary one, removed at the end
}

// demoReport holds the figures of a demo run. The engine's counters are
// summed over the two Engines of the run (before and after the restart); the
// others are the demo's own.
type demoReport struct {
	Dir        string // the directory the engine used
	Durability idem.Durability
	Attempts   uint64 // Do calls (Stats.Calls)
	FnCalls    uint64 // times fn started (Stats.Executions)
	Executions uint64 // runs of fn that succeeded and charged a card
	Transient  uint64 // runs of fn that failed transiently
	Lost       uint64 // responses lost on their way to the client
	Replays    uint64 // calls answered without running fn (Stats.Replays)
	Waits      uint64 // calls that waited for a concurrent call of their key (Stats.Waits)
	Mismatches uint64 // calls refused with ErrFingerprintMismatch (Stats.Mismatches)
	Restarts   int    // times the engine was closed and opened again

	// The figures that must be 0.
	DuplicatesExecuted int // keys whose card was charged more than once
	ResultsLost        int // keys whose acknowledged result was not replayed as it was
	Unexpected         int // Do calls that failed in a way the scenario does not expect

	Problems []string // the first few problems behind the figures above, for the reader
	Elapsed  time.Duration
}

// ok reports whether the must-be-zero figures are zero.
func (r *demoReport) ok() bool {
	return r.DuplicatesExecuted == 0 && r.ResultsLost == 0 && r.Unexpected == 0
}

// demoCommand is the demo subcommand.
func demoCommand(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer, _ *Extension) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: idem demo [flags]

Demo runs a flaky client that pays a few thousand payments through an idem
engine, each with its own idempotency key. The charge (fn) takes up to 2 ms
and fails transiently 5% of the time, and the client retries. The client
loses the response of 20% of the payments (and retries with the same key),
fires 2 to 4 concurrent attempts for 15% of them, and reuses one key with a
different payload. Halfway through, the engine is closed and opened again on
the same directory, and every payment made so far is retried. Demo exits with
status 1 if a card was charged twice or an acknowledged result was lost.

The engine's database goes in a temporary directory, removed at the end; with
-dir it is kept, for a look with 'idem stats DIR', 'idem ls DIR' and
'idem get DIR pay-000042'.

The cluster version of this demo, with an engine on each node of a NATS
JetStream cluster embedded in one process, and the node that leads their
bucket stopped in the middle, is in the idemnats module, so that this module
pulls no NATS dependency (-cluster N, for N > 1, says so). In the repository:

	cd idemnats && go run ./cmd/demo -cluster 3

Flags:
`)
		fs.PrintDefaults()
	}
	var (
		cfg        demoConfig
		durability string
		nodes      int
	)
	fs.IntVar(&cfg.Payments, "payments", 3000, "number of payments (at least 2)")
	fs.IntVar(&cfg.Workers, "workers", 32, "number of concurrent clients")
	fs.StringVar(&durability, "durability", "all", "the engine's durability mode: all, result or none")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the scenario's random choices")
	fs.StringVar(&cfg.Dir, "dir", "", "directory for the engine, which must be empty or absent and is kept\n(default a temporary directory, removed at the end)")
	fs.IntVar(&nodes, "cluster", 1, "number of nodes; above 1, the demo to run is the idemnats module's\n(cd idemnats && go run ./cmd/demo -cluster N)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "idem demo: "+format+"\n", a...)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		return fail("unexpected argument %q", fs.Arg(0))
	case nodes < 1:
		return fail("-cluster must be at least 1, not %d", nodes)
	case nodes > 1:
		return fail("-cluster %d: the cluster demo is in the idemnats module, so that this one pulls\n"+
			"no NATS dependency. In the repository, run:\n\n\tcd idemnats && go run ./cmd/demo -cluster %d", nodes, nodes)
	case cfg.Payments < 2:
		return fail("-payments must be at least 2, not %d", cfg.Payments)
	case cfg.Workers < 1:
		return fail("-workers must be at least 1, not %d", cfg.Workers)
	}
	d, ok := parseDurability(durability)
	if !ok {
		return fail("-durability must be all, result or none, not %q", durability)
	}
	cfg.Durability = d

	rep, err := runDemo(ctx, cfg, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "idem demo: %v\n", err)
		return exitFailure
	}
	if !rep.ok() {
		fmt.Fprintln(stderr, "idem demo: FAILED: a must-be-0 figure is not 0")
		return exitFailure
	}
	return exitOK
}

// parseDurability maps a -durability flag value to a mode.
func parseDurability(s string) (idem.Durability, bool) {
	switch s {
	case "all":
		return idem.SyncAll, true
	case "result":
		return idem.SyncResult, true
	case "none":
		return idem.SyncNone, true
	}
	return 0, false
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

// plan draws the scenario's payments from seed.
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

// maxProblems bounds the problems a report keeps for its reader.
const maxProblems = 5

// ledger is the payment provider's side of the demo: what was charged, and
// what the client was told.
type ledger struct {
	mu         sync.Mutex        // guards the fields below
	charged    map[string]int    // successful charges per key
	acked      map[string][]byte // the first response that reached the client, per key
	lost       map[string]bool   // keys whose acknowledged result was not replayed as it was
	unexpected int               // Do calls that failed unexpectedly
	problems   []string          // the first few problems, described
}

func newLedger() *ledger {
	return &ledger{charged: make(map[string]int), acked: make(map[string][]byte), lost: make(map[string]bool)}
}

// problemLocked notes a problem for the report; l.mu is held.
func (l *ledger) problemLocked(format string, a ...any) {
	if len(l.problems) < maxProblems {
		l.problems = append(l.problems, fmt.Sprintf(format, a...))
	}
}

// charge records a successful charge of key's card.
func (l *ledger) charge(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.charged[key]++
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

// loseResult records that key's result, acknowledged or returned by the
// engine, was not replayed as it was.
func (l *ledger) loseResult(key, format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost[key] = true
	l.problemLocked("%s: %s", key, fmt.Sprintf(format, a...))
}

// fail records a Do call that failed in a way the scenario does not expect.
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

// demo is one run of the scenario.
type demo struct {
	cfg       demoConfig
	seed      uint64
	pays      []*payment
	ledger    *ledger
	charges   atomic.Uint64 // successful charges; numbers the receipts
	transient atomic.Uint64 // transient failures of fn
	lost      atomic.Uint64 // responses lost on their way to the client
}

// runDemo runs the scenario of cfg, writes its table to w and returns its
// figures. An error means the demo could not run (a directory or the engine
// failed, or ctx ended); the figures tell whether the engine kept its
// promises.
func runDemo(ctx context.Context, cfg demoConfig, w io.Writer) (*demoReport, error) {
	dir, where := cfg.Dir, ""
	if dir == "" {
		tmp, err := os.MkdirTemp("", "idem-demo-")
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
	fmt.Fprintf(w, "idem demo: %d payments, %d workers, durability %v, seed %d, dir %s%s\n",
		cfg.Payments, cfg.Workers, cfg.Durability, cfg.Seed, dir, where)

	d := &demo{cfg: cfg, seed: cfg.Seed, pays: plan(cfg.Payments, cfg.Seed), ledger: newLedger()}
	rep := &demoReport{Dir: dir, Durability: cfg.Durability}
	start := time.Now()
	if err := d.run(ctx, dir, rep); err != nil {
		return nil, err
	}
	rep.Elapsed = time.Since(start)
	d.tally(rep)
	writeReport(w, rep)
	if cfg.Dir == "" {
		fmt.Fprintf(w, "idem demo: removing %s; run with -dir DIR to keep the database and look at it with 'idem stats DIR'\n", dir)
	} else {
		fmt.Fprintf(w, "idem demo: the database is kept in %s: look at it with 'idem stats %s', 'idem ls %s'\n", dir, dir, dir)
	}
	return rep, nil
}

// run plays the two phases around a restart and adds the engines' counters
// to rep.
func (d *demo) run(ctx context.Context, dir string, rep *demoReport) error {
	opts := &idem.Options{Durability: d.cfg.Durability}
	half := len(d.pays) / 2
	first, second := d.pays[:half], d.pays[half:]

	// Phase 1: the first half of the payments.
	e, err := idem.Open(dir, opts)
	if err != nil {
		return err
	}
	jobs := make([]func(context.Context), 0, len(d.pays)+1)
	for _, p := range first {
		jobs = append(jobs, func(ctx context.Context) { d.pay(ctx, e, p) })
	}
	runJobs(ctx, d.cfg.Workers, jobs)
	s1 := e.Stats()
	if err := e.Close(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// The restart.
	e, err = idem.Open(dir, opts)
	if err != nil {
		return err
	}
	defer e.Close()
	rep.Restarts++

	// Phase 2: every payment of phase 1 again, interleaved with the second
	// half, and one key reused for a different payment.
	jobs = jobs[:0]
	for i, p := range second {
		if i < len(first) {
			old := first[i]
			jobs = append(jobs, func(ctx context.Context) { d.retry(ctx, e, old) })
		}
		jobs = append(jobs, func(ctx context.Context) { d.pay(ctx, e, p) })
	}
	reused := first[rand.New(rand.NewPCG(d.seed, 1)).IntN(len(first))]
	jobs = append(jobs, func(ctx context.Context) { d.reuse(ctx, e, reused) })
	runJobs(ctx, d.cfg.Workers, jobs)
	if err := ctx.Err(); err != nil {
		return err
	}
	d.verify(e)
	s2 := e.Stats()

	rep.Attempts = s1.Calls + s2.Calls
	rep.FnCalls = s1.Executions + s2.Executions
	rep.Replays = s1.Replays + s2.Replays
	rep.Waits = s1.Waits + s2.Waits
	rep.Mismatches = s1.Mismatches + s2.Mismatches
	return e.Close()
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
// n, whichever goroutine runs it.
func (d *demo) charge(p *payment) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		n := p.runs.Add(1)
		r := rand.New(rand.NewPCG(d.seed, uint64(p.index)<<32|n))
		time.Sleep(time.Duration(r.Int64N(int64(maxWork) + 1)))
		if r.IntN(100) < transientPercent {
			d.transient.Add(1)
			return nil, errTransient
		}
		d.ledger.charge(p.key)
		id := d.charges.Add(1)
		return fmt.Appendf(nil, "receipt:%s:%d.%02d %s:charge-%d", p.key, p.amount/100, p.amount%100, p.currency, id), nil
	}
}

// attempt is the client's retry loop for one request: it calls Do for p
// until the outcome is not a transient error.
func (d *demo) attempt(ctx context.Context, e *idem.Engine, p *payment) (idem.Result, error) {
	for {
		res, err := e.Do(ctx, p.key, p.fp, d.charge(p))
		if !errors.Is(err, errTransient) || ctx.Err() != nil {
			return res, err
		}
	}
}

// pay makes payment p as the client of the scenario does: once, or with its
// response lost and a retry, or with concurrent duplicate attempts.
func (d *demo) pay(ctx context.Context, e *idem.Engine, p *payment) {
	switch {
	case p.dups > 0:
		var wg sync.WaitGroup
		for range p.dups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.deliver(ctx, e, p)
			}()
		}
		wg.Wait()
	case p.lost:
		res, err := d.attempt(ctx, e, p)
		if err != nil {
			d.unexpected(ctx, p.key, err)
			return
		}
		// The response never reached the client, which times out and
		// retries with the same key: the retry must replay that response.
		d.lost.Add(1)
		again, err := d.attempt(ctx, e, p)
		if err != nil {
			d.unexpected(ctx, p.key, err)
			return
		}
		if !again.Replayed || !bytes.Equal(again.Value, res.Value) {
			d.ledger.loseResult(p.key, "retry after a lost response got %q (replayed %v), want a replay of %q", again.Value, again.Replayed, res.Value)
		}
		d.ledger.receive(p.key, again.Value)
	default:
		d.deliver(ctx, e, p)
	}
}

// deliver makes one request for p and hands its response to the client.
func (d *demo) deliver(ctx context.Context, e *idem.Engine, p *payment) {
	res, err := d.attempt(ctx, e, p)
	if err != nil {
		d.unexpected(ctx, p.key, err)
		return
	}
	d.ledger.receive(p.key, res.Value)
}

// retry repeats an acknowledged payment after the restart: it must replay.
func (d *demo) retry(ctx context.Context, e *idem.Engine, p *payment) {
	res, err := d.attempt(ctx, e, p)
	if err != nil {
		d.unexpected(ctx, p.key, err)
		return
	}
	if _, ok := d.ledger.ackOf(p.key); ok && !res.Replayed {
		d.ledger.loseResult(p.key, "not replayed after the restart")
	}
	d.ledger.receive(p.key, res.Value)
}

// reuse sends a different payment under p's key: the engine must refuse it
// without charging.
func (d *demo) reuse(ctx context.Context, e *idem.Engine, p *payment) {
	other := fingerprint(payload{Amount: p.amount + 100, Currency: p.currency})
	_, err := e.Do(ctx, p.key, other, d.charge(p))
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

// verify checks, with Lookup, that every acknowledged result is stored as it
// was acknowledged.
func (d *demo) verify(e *idem.Engine) {
	for _, p := range d.pays {
		ack, ok := d.ledger.ackOf(p.key)
		if !ok {
			continue
		}
		rec, err := e.Lookup(p.key)
		switch {
		case err != nil:
			d.ledger.loseResult(p.key, "Lookup: %v", err)
		case rec.State != idem.StateCompleted || !bytes.Equal(rec.Value, ack):
			d.ledger.loseResult(p.key, "stored %v %q, acknowledged %q", rec.State, rec.Value, ack)
		}
	}
}

// tally adds the demo's own figures to rep.
func (d *demo) tally(rep *demoReport) {
	rep.Executions = d.charges.Load()
	rep.Transient = d.transient.Load()
	rep.Lost = d.lost.Load()
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
	for _, k := range twice {
		if len(rep.Problems) == maxProblems {
			break
		}
		rep.Problems = append(rep.Problems, fmt.Sprintf("%s: charged %d times", k, l.charged[k]))
	}
	rep.Problems = append(rep.Problems, l.problems...)
}

// writeReport writes rep as a table.
func writeReport(w io.Writer, rep *demoReport) {
	rows := [][3]string{
		{"attempts", fmt.Sprint(rep.Attempts), "Do calls"},
		{"executions", fmt.Sprint(rep.Executions), "fn ran and succeeded: a card was charged"},
		{"transient failures", fmt.Sprint(rep.Transient), "fn failed, nothing stored, the client retried"},
		{"lost responses", fmt.Sprint(rep.Lost), "the client timed out and retried with the same key"},
		{"replays", fmt.Sprint(rep.Replays), "answered without running fn"},
		{"concurrent duplicates", fmt.Sprint(rep.Waits), "waited for a call of the same key and shared its outcome"},
		{"mismatches refused", fmt.Sprint(rep.Mismatches), "same key, different payload: ErrFingerprintMismatch"},
		{"restarts", fmt.Sprint(rep.Restarts), "Close and Open on the same directory, then every earlier payment again"},
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
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
}
