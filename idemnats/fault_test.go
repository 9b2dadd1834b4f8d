package idemnats_test

// Fault tests with real processes: the stream leader's node killed with
// SIGKILL under load (TestFaultKillStreamLeader), and an engine's process
// killed with SIGKILL while its fn runs (TestFaultKillEngineProcess). Both
// check the promise of a shared bucket: fn runs at most once per key among
// all the engines, and a result once acknowledged replays from every engine.
// See RELIABILITY.md.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
	"github.com/idemkv/idem/internal/testproc"
)

// The fault tests have two sizes, as the root module's reliability tests
// (its long_test.go): the default keeps this file's tests under a minute on
// two cores under -race; IDEM_TEST_LONG=1 runs them several times longer
// and needs a -timeout above go test's default of 10 minutes. An environment
// variable, unlike a flag, reaches a go test over every module (test.sh).
var longTests = envBool("IDEM_TEST_LONG")

func envBool(name string) bool {
	b, _ := strconv.ParseBool(os.Getenv(name))
	return b
}

// testSize returns long under IDEM_TEST_LONG=1 and def otherwise.
func testSize(def, long int) int {
	if longTests {
		return long
	}
	return def
}

// requireLongTimeout fails a test of the long size at once if go test's
// -timeout leaves it less than need, rather than a panic and a dump of
// every goroutine once the timeout is spent.
func requireLongTimeout(t *testing.T, need time.Duration) {
	t.Helper()
	if !longTests {
		return
	}
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < need {
		t.Fatalf("IDEM_TEST_LONG=1: %s may take %v on a busy machine, and go test's -timeout leaves %v; run go test with -timeout=30m",
			t.Name(), need, time.Until(deadline).Round(time.Second))
	}
}

// faultHang bounds each wait of these tests, and each Do call: a hang
// guard, generous for a loaded 2-core machine under -race, not a timing
// assertion.
const faultHang = 2 * time.Minute

// faultErrPrefix is how every error of the engine or the store begins: an
// error met during an election must say where it comes from.
var faultErrPrefix = regexp.MustCompile(`^idem(nats)?: `)

// connectFollowing connects over TCP to urls[first], and on a disconnection
// to any of urls, for ever: a client that follows its cluster through
// kills and restarts. The connection is closed in t.Cleanup, after the
// engines opened on it (registered later, their cleanups run first).
func connectFollowing(t testing.TB, name string, urls []string, first int) *nats.Conn {
	t.Helper()
	order := append(slices.Clone(urls[first:]), urls[:first]...)
	nc, err := nats.Connect(strings.Join(order, ","),
		nats.Name(name),
		nats.DontRandomize(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond),
		nats.ReconnectJitter(50*time.Millisecond, 0))
	if err != nil {
		t.Fatalf("connect %s to %v: %v", name, order, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// openRetry opens an engine on nc, retrying while the cluster cannot create
// the bucket yet (a meta leader still counting its peers), until faultHang.
// The engine is closed in t.Cleanup unless the test closed it.
func openRetry(t testing.TB, nc *nats.Conn, o *idemnats.Options) *idem.Engine {
	t.Helper()
	deadline := time.Now().Add(faultHang)
	for {
		e, err := idemnats.Open(nc, o)
		if err == nil {
			t.Cleanup(func() { e.Close() })
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("Open bucket %s: %v", o.Bucket, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// faultFingerprint is the fingerprint of every call for key.
func faultFingerprint(key string) []byte { return []byte("fp " + key) }

// faultPermanent reports whether key's fn returns a Permanent error rather
// than a value: one key in ten, so that stored errors are checked too.
func faultPermanent(key string) bool { return strings.HasSuffix(key, "7") }

// outcomeOf returns what a Do call acknowledged: its value, or "!" and the
// message of a Permanent error; ok is false for any other error.
func outcomeOf(res idem.Result, err error) (string, bool) {
	var perm *idem.PermanentError
	switch {
	case err == nil:
		return string(res.Value), true
	case errors.As(err, &perm):
		return "!" + perm.Error(), true
	}
	return "", false
}

// errClass is an error's message with its numbers and hex strings blanked,
// to count errors by kind.
func errClass(err error) string {
	return digitsRE.ReplaceAllString(err.Error(), "N")
}

var digitsRE = regexp.MustCompile(`[0-9a-f]{16}|[0-9]+(\.[0-9]+)?(ms|µs|s)?`)

// topClasses formats the most frequent error classes of counts.
func topClasses(counts map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range counts {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var b strings.Builder
	for i, c := range all {
		if i == n {
			fmt.Fprintf(&b, "\n\t(%d more kinds)", len(all)-n)
			break
		}
		fmt.Fprintf(&b, "\n\t%5d × %s", c.v, c.k)
	}
	return b.String()
}

// leaderLedger records every execution of fn and every outcome a Do call
// acknowledged, for TestFaultKillStreamLeader. Every fn runs in the test
// process (only the cluster's nodes are child processes, and only they are
// killed), so a map in memory sees every execution: a durable ledger would
// only matter if the process that keeps it could die.
type leaderLedger struct {
	mu    sync.Mutex          // guards the fields up to calls
	runs  map[string][]string // key -> the outcome ("!msg" for a Permanent error) of each execution of fn
	ranOn map[string]int      // key -> the engine of its last execution
	acks  map[string]string   // key -> the outcome Do acknowledged
	began []time.Time         // when each acknowledging Do call began
	ackAt []time.Time         // and when it returned, for the stall
	intr  map[string]bool     // keys whose Do returned ErrInterrupted after fn ran
	errs  map[string]int      // classes of the errors met by the workers
	bad   []string            // contradictions: the test fails on any
	// errCalls counts, per engine, the calls that failed and were retried.
	errCalls map[int]int
	lastErr  map[string]string // key -> the last error a call for it met
	// strayIntr counts the ErrInterrupted answers for a key whose fn had
	// not run.
	strayIntr int

	calls atomic.Int64 // Do calls made by the workers
	acked atomic.Int64 // keys acknowledged at least once
}

func (l *leaderLedger) errSummary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return topClasses(l.errs, 10)
}

// TestFaultKillStreamLeader kills the node that leads the bucket's stream
// with SIGKILL while engines on every node run Do for the same keys, and
// restarts it; see RELIABILITY.md. Three nodes run as child processes, the
// bucket has three replicas, and three engines in this process, each on
// its own TCP connection to a different node (and reconnecting to any),
// call Do for every key at about the same time, each key from all three,
// retrying on errors as a client would. Two engines have an
// Options.Timeout (30 s) above the election's stall, and ride it out; the
// third has one below (2 s), and meets errors: writes whose outcome is
// unknown, claims resolved in the background. The ledger (leaderLedger)
// records each execution of fn and each acknowledged outcome, and the test
// checks: no key's fn ran twice; every acknowledged outcome is the one fn
// returned and replays, identically, from every engine afterwards; every
// error was a clear one (no panic, which would stop the test binary); every
// key completes, but for a key whose fn the impatient engine ran and whose
// result it could not store in time, which must then report ErrInterrupted
// everywhere (the engine's rule for an outcome it does not know). It logs
// the write stall that each kill caused: from the kill to the first Do
// begun after it that returned.
func TestFaultKillStreamLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills cluster nodes in child processes")
	}
	if runtime.GOOS == "windows" {
		t.Skip("SIGKILL")
	}
	requireLongTimeout(t, 15*time.Minute)
	var (
		keys    = testSize(300, 2000)
		kills   = testSize(1, 6)
		engines = 3
		workers = 6 // per engine
	)
	const bucket = "faultleader"
	// Timeout and LivenessWindow above the longest election measured
	// (4-9 s), with room for a loaded machine: a call rides out an election
	// (a store operation retries for up to Timeout), and a live engine's
	// heartbeat outlasts one. The last engine is impatient.
	const timeout, window = 30 * time.Second, 20 * time.Second
	const impatientTimeout = 2 * time.Second
	impatient := engines - 1
	t.Logf("%d keys, %d kills of the stream leader, %d engines × %d workers, each key called from every engine",
		keys, kills, engines, workers)

	nodes := startHardCluster(t, 3)
	urls := make([]string, len(nodes))
	for i, h := range nodes {
		urls[i] = h.URL
	}
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	es := make([]*idem.Engine, engines)
	for i := range es {
		opts := &idemnats.Options{Bucket: bucket, Replicas: 3, Timeout: timeout, LivenessWindow: window,
			Engine: &idem.Options{Logger: logger}}
		if i == impatient {
			opts.Timeout = impatientTimeout
		}
		nc := connectFollowing(t, fmt.Sprintf("engine %d", i), urls, i%len(urls))
		es[i] = openRetry(t, nc, opts)
	}
	ctl := connectFollowing(t, "control", urls, 0)
	js, err := jetstream.New(ctl)
	if err != nil {
		t.Fatal(err)
	}

	led := &leaderLedger{runs: map[string][]string{}, ranOn: map[string]int{}, acks: map[string]string{}, intr: map[string]bool{}, errs: map[string]int{},
		errCalls: map[int]int{}, lastErr: map[string]string{}}
	// The hang guard of the whole test, and of every call: below go
	// test's default -timeout of 10 minutes at the default size, so that a
	// hang fails with the ledger's figures rather than a goroutine dump.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(testSize(4, 25))*time.Minute)
	defer cancel()

	// fn of key run by engine ei: records the execution, takes a moment
	// (so that a kill finds some fn running), and returns a value that
	// names the execution, or a Permanent error.
	var execs atomic.Int64
	fnFor := func(ei int, key string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			n := execs.Add(1)
			v := fmt.Sprintf("%s by engine %d, execution %d", key, ei, n)
			out := v
			if faultPermanent(key) {
				out = "!" + v
			}
			led.mu.Lock()
			led.runs[key] = append(led.runs[key], out)
			led.ranOn[key] = ei
			led.mu.Unlock()
			time.Sleep(time.Duration(1+n%5) * time.Millisecond)
			if faultPermanent(key) {
				return nil, idem.Permanent(errors.New(v))
			}
			return []byte(v), nil
		}
	}
	// doRetry calls Do for key on engine ei until it acknowledges an
	// outcome, or returns ErrInterrupted for a key whose fn ran (its
	// outcome is unknown: final). ErrInterrupted for a key whose fn never
	// ran is this engine's own claim whose write timed out and that its
	// resolver has not taken back yet: tried again.
	doRetry := func(ei int, key string) {
		for attempt := 0; ; attempt++ {
			if ctx.Err() != nil {
				led.mu.Lock()
				led.bad = append(led.bad, fmt.Sprintf("key %s on engine %d: no outcome before the hang guard", key, ei))
				led.mu.Unlock()
				return
			}
			led.mu.Lock()
			ranBefore := len(led.runs[key]) > 0
			led.mu.Unlock()
			start := time.Now()
			led.calls.Add(1)
			res, err := es[ei].Do(ctx, key, faultFingerprint(key), fnFor(ei, key))
			end := time.Now()
			out, ok := outcomeOf(res, err)
			led.mu.Lock()
			switch {
			case ok:
				if prev, seen := led.acks[key]; seen && prev != out {
					led.bad = append(led.bad, fmt.Sprintf("key %s acknowledged with two outcomes: %q, then %q (engine %d)", key, prev, out, ei))
				}
				if _, seen := led.acks[key]; !seen {
					led.acks[key] = out
					led.acked.Add(1)
				}
				led.began = append(led.began, start)
				led.ackAt = append(led.ackAt, end)
				led.mu.Unlock()
				return
			case errors.Is(err, idem.ErrInterrupted) && ranBefore:
				led.intr[key] = true
				led.errs[fmt.Sprintf("engine %d (final): %s", ei, errClass(err))]++
				led.mu.Unlock()
				return
			case errors.Is(err, idem.ErrInterrupted) && len(led.runs[key]) == 0:
				// fn never ran: the engine's own claim, whose write timed
				// out, and which its resolver has not taken back yet.
				led.strayIntr++
			case errors.Is(err, idem.ErrInterrupted):
				// fn began during this call, on the engine whose claim
				// this call waited for, and that engine could not store
				// its result: it marked its claim interrupted (owner 0),
				// and the waiting call reports that, as it must. Final,
				// as above; the checks below require such a key to end
				// interrupted on every engine.
				led.intr[key] = true
				led.errs[fmt.Sprintf("engine %d (final, fn ran during the call): %s", ei, errClass(err))]++
				led.mu.Unlock()
				return
			case !faultErrPrefix.MatchString(err.Error()):
				led.bad = append(led.bad, fmt.Sprintf("key %s on engine %d: an error that does not say where it comes from: %v", key, ei, err))
			}
			led.errs[fmt.Sprintf("engine %d: %s", ei, errClass(err))]++
			led.lastErr[key] = fmt.Sprintf("engine %d at %s: %v", ei, end.Format("15:04:05.000"), err)
			led.errCalls[ei]++
			led.mu.Unlock()
			time.Sleep(min(50*time.Millisecond<<min(attempt, 4), 500*time.Millisecond))
		}
	}

	// diagnose describes the keys with no outcome yet, for a hang: the
	// ledger's view, their records as the bucket holds them, the engines'
	// log and the goroutines in Do.
	diagnose := func() string {
		var b strings.Builder
		var pending []string
		led.mu.Lock()
		for k := range keys {
			key := fmt.Sprintf("key-%05d", k)
			if _, ok := led.acks[key]; ok || led.intr[key] {
				continue
			}
			if len(pending) < 10 {
				fmt.Fprintf(&b, "key %s: executions %q (last on engine %d); last error: %s\n", key, led.runs[key], led.ranOn[key], led.lastErr[key])
			}
			pending = append(pending, key)
		}
		led.mu.Unlock()
		fmt.Fprintf(&b, "%d keys with no outcome\n", len(pending))
		dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer dcancel()
		kv, kerr := js.KeyValue(dctx, bucket)
		for i, key := range pending {
			if kerr != nil || i == 10 {
				break
			}
			ent, err := kv.Get(dctx, "r."+base64.RawURLEncoding.EncodeToString([]byte(key)))
			if err != nil {
				fmt.Fprintf(&b, "key %s: record: %v\n", key, err)
				continue
			}
			rec, err := idem.DecodeRecord(ent.Value())
			fmt.Fprintf(&b, "key %s: record at revision %d: state %v, owner %016x, created %s (%v)\n", key, ent.Revision(), rec.State, rec.Owner,
				time.Unix(0, rec.Created).Format("15:04:05.000"), err)
		}
		if kerr == nil {
			if ks, err := kv.Keys(dctx); err == nil {
				for _, k := range ks {
					if strings.HasPrefix(k, "h.") {
						fmt.Fprintf(&b, "heartbeat %s\n", k)
					}
				}
			}
		}
		fmt.Fprintf(&b, "the engines' log:\n%s", logs.String())
		buf := make([]byte, 4<<20)
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "idem.(*Engine).Do") {
				fmt.Fprintf(&b, "\n%s\n", g)
			}
		}
		return b.String()
	}

	// Each key goes to every engine's queue; the engines' workers take
	// them in order, so that the calls for a key meet. The dispatcher
	// releases keys up to limit, which the kill loop raises, so that keys
	// are still being called when each kill comes.
	queues := make([]chan string, engines)
	for i := range queues {
		queues[i] = make(chan string, workers)
	}
	var wg sync.WaitGroup
	for ei := range engines {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for key := range queues[ei] {
					doRetry(ei, key)
				}
			}()
		}
	}
	seg := keys / (kills + 1)
	limits := make(chan int, kills+1)
	limits <- seg + seg/2
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		defer func() {
			for _, q := range queues {
				close(q)
			}
		}()
		limit := 0
		for k := range keys {
			for k >= limit {
				select {
				case limit = <-limits:
				case <-ctx.Done():
					return
				}
			}
			key := fmt.Sprintf("key-%05d", k)
			for j := range engines {
				select {
				case queues[(k+j)%engines] <- key:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	type killFigures struct {
		leader        string
		stall         time.Duration // kill to the first return of a Do begun after it
		restarted     time.Duration // kill to the restarted node's replica current
		inFlightAcked int64         // keys acknowledged when the node was killed
	}
	var figs []killFigures
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("hang guard: %s; errors so far:%s\n%s", what, led.errSummary(), diagnose())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for k := range kills {
		waitUntil(fmt.Sprintf("kill %d: %d keys acknowledged", k, (k+1)*seg), func() bool { return led.acked.Load() >= int64((k+1)*seg) })
		info := streamInfo(ctx, t, js, "KV_"+bucket)
		leader := info.Cluster.Leader
		i := slices.IndexFunc(nodes, func(h *hardNode) bool { return h.Name == leader })
		if i < 0 {
			t.Fatalf("no node named %q leads the stream", leader)
		}
		f := killFigures{leader: leader, inFlightAcked: led.acked.Load()}
		killHard(t, nodes, i)
		killed := time.Now()
		// The stall: from the kill to the first return of a Do begun
		// after it (a claim, or a read, needs the stream's new leader).
		stallAfter := func() time.Duration {
			led.mu.Lock()
			defer led.mu.Unlock()
			var d time.Duration
			for j := range led.began {
				if s := led.ackAt[j].Sub(killed); led.began[j].After(killed) && (d == 0 || s < d) {
					d = s
				}
			}
			return d
		}
		waitUntil(fmt.Sprintf("kill %d: a Do begun after the kill of %s returns", k, leader), func() bool { return stallAfter() > 0 })
		f.stall = stallAfter()
		back := restartHard(t, nodes, i)
		waitStreamCurrent(ctx, t, js, "KV_"+bucket, back.Name)
		f.restarted = time.Since(killed)
		figs = append(figs, f)
		t.Logf("kill %d: SIGKILL of %s, the stream's leader, with %d keys acknowledged: first Do begun after the kill returned %v after it; "+
			"restarted and current again %v after it", k, leader, f.inFlightAcked, f.stall.Round(time.Millisecond), f.restarted.Round(time.Millisecond))
		if k+1 < kills {
			limits <- (k+2)*seg + seg/2
		} else {
			limits <- keys
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("hang guard: the workers did not finish; %d of %d keys acknowledged; errors:%s\n%s", led.acked.Load(), keys, led.errSummary(), diagnose())
	}
	<-dispatched

	// The checks. The ledger first: no key ran twice, every acknowledged
	// outcome is the one its single execution returned.
	led.mu.Lock()
	defer led.mu.Unlock()
	for _, b := range led.bad {
		t.Error(b)
	}
	twice, lostOrWrong, interrupted, flipped := 0, 0, 0, 0
	for k := range keys {
		key := fmt.Sprintf("key-%05d", k)
		runs := led.runs[key]
		ack, acked := led.acks[key]
		switch {
		case len(runs) > 1:
			twice++
			t.Errorf("key %s: fn ran %d times: %q", key, len(runs), runs)
		case acked && (len(runs) == 0 || runs[0] != ack):
			lostOrWrong++
			t.Errorf("key %s: acknowledged %q, but fn's executions returned %q", key, ack, runs)
		case !acked && !led.intr[key]:
			t.Errorf("key %s: no outcome", key)
		case !acked && led.ranOn[key] != impatient:
			t.Errorf("key %s: interrupted, though its fn ran on engine %d, whose Timeout outlasts the election", key, led.ranOn[key])
		case !acked:
			// fn ran on the impatient engine, which could not store
			// its result in time: the engine's ErrInterrupted.
			interrupted++
		case led.intr[key]:
			// A worker got ErrInterrupted after fn ran, and the result
			// was stored later: by the write that had timed out, sent
			// again in the background.
			flipped++
		}
	}
	// Then every engine replays every outcome, as acknowledged, without
	// running fn; a key left interrupted reports ErrInterrupted from all.
	replays := 0
	for ei, e := range es {
		for k := range keys {
			key := fmt.Sprintf("key-%05d", k)
			res, err := e.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
				return nil, fmt.Errorf("fn ran again for key %s on engine %d after the kills", key, ei)
			})
			out, ok := outcomeOf(res, err)
			switch ack, acked := led.acks[key]; {
			case acked && (!ok || out != ack || !res.Replayed):
				lostOrWrong++
				t.Errorf("engine %d: key %s acknowledged %q replays %q (replayed %v), %v", ei, key, ack, out, res.Replayed, err)
			case !acked && !errors.Is(err, idem.ErrInterrupted):
				t.Errorf("engine %d: interrupted key %s: %q, %v", ei, key, out, err)
			}
			replays++
		}
	}
	// And the listing agrees.
	listed := map[idem.State]int{}
	for r, err := range es[0].Records("key-") {
		if err != nil {
			t.Errorf("Records: %v", err)
			break
		}
		listed[r.State]++
	}
	if n := listed[idem.StateCompleted] + listed[idem.StateFailed]; n != len(led.acks) || listed[idem.StateInterrupted] != interrupted {
		t.Errorf("Records lists %v; want %d completed or failed and %d interrupted", listed, len(led.acks), interrupted)
	}
	for i, e := range es {
		if err := e.Close(); err != nil {
			t.Errorf("Close engine %d: %v", i, err)
		}
	}

	var stalls []string
	for _, f := range figs {
		stalls = append(stalls, f.stall.Round(time.Millisecond).String())
	}
	var perEngine []string
	for i, e := range es {
		st := e.Stats()
		perEngine = append(perEngine, fmt.Sprintf("engine %d: %d executions, %d waits, %d interrupted, %d calls failed",
			i, st.Executions, st.Waits, st.Interrupted, led.errCalls[i]))
	}
	t.Logf("%d keys, %d executions of fn, %d Do calls by the workers, %d kills of the stream leader; "+
		"write stall per kill (kill to the first return of a Do begun after it): %v; keys run twice: %d; acknowledged outcomes lost or changed: %d; "+
		"keys left interrupted (fn ran on the impatient engine, result not stored): %d; keys reported interrupted to a caller, then completed: %d; "+
		"ErrInterrupted for a key whose fn had not run (retried, and fn then ran once): %d; "+
		"%d replays checked on %d engines; %d lines logged by the engines at Warn and above; %s",
		keys, execs.Load(), led.calls.Load(), kills, stalls, twice, lostOrWrong, interrupted, flipped, led.strayIntr, replays, engines,
		strings.Count(logs.String(), "\n"), strings.Join(perEngine, "; "))
	if len(led.errs) > 0 {
		t.Logf("errors met, by kind (retried, or final):%s", topClasses(led.errs, 15))
	}
	if testing.Verbose() && logs.String() != "" {
		t.Logf("the engines' log:\n%s", logs.String())
	}
}

// An engine killed while its fn runs: the engine runs in a child process,
// this test binary run again for TestHelperEngineProcess, connected over
// TCP to the test's cluster, and the test kills it with SIGKILL.

// engineChildEnv carries an engine child's config, as JSON.
const engineChildEnv = "IDEMNATS_TEST_HELPER_ENGINE"

// engineChildConfig is what an engine child does.
type engineChildConfig struct {
	URL    string        // a node's client URL
	Bucket string        // the bucket, which the test has created
	Window time.Duration // Options.LivenessWindow
	// Ledger is the file of the child's effects, one line each, appended
	// and fsynced by fn before it goes on: "start <key>" for a key of
	// Block, "effect <key>" for a key of Busy.
	Ledger string
	// Block are keys whose fn, once it has recorded its effect and printed
	// "started <key>", blocks until the process is killed.
	Block []string
	// Busy are keys called by Workers goroutines once the child has read
	// "go" on its standard input; fn records its effect and returns
	// childValue(key), and the child prints "done <key> <quoted value>"
	// (or "error <key> <error>").
	Busy    []string
	Workers int
}

// childValue is the value the engine child's fn returns for key.
func childValue(key string) string { return "child's value of " + key }

// TestHelperEngineProcess is not a test: it is the engine child of
// TestFaultKillEngineProcess, and skips unless started as one. It opens an
// engine on the bucket, prints "opened", starts the calls of Block, and on
// "go" runs the calls of Busy (see engineChildConfig), then prints "busy
// finished" and waits, until it is killed or its standard input closes.
func TestHelperEngineProcess(t *testing.T) {
	js := os.Getenv(engineChildEnv)
	if js == "" {
		t.Skip("the engine child of TestFaultKillEngineProcess only")
	}
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "engine child: "+format+"\n", args...)
		os.Exit(2)
	}
	var cfg engineChildConfig
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		fail("bad config: %v", err)
	}
	nc, err := nats.Connect(cfg.URL, nats.MaxReconnects(-1))
	if err != nil {
		fail("connect: %v", err)
	}
	e, err := idemnats.Open(nc, &idemnats.Options{Bucket: cfg.Bucket, Replicas: 3, LivenessWindow: cfg.Window,
		Engine: &idem.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}})
	if err != nil {
		fail("open: %v", err)
	}
	ledger, err := os.OpenFile(cfg.Ledger, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fail("ledger: %v", err)
	}
	var mu sync.Mutex // guards ledger and standard output: a line at a time
	effect := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := ledger.WriteString(line + "\n"); err != nil {
			fail("ledger: %v", err)
		}
		if err := ledger.Sync(); err != nil {
			fail("ledger: %v", err)
		}
	}
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	say("opened")
	ctx := context.Background()
	never := make(chan struct{})
	for _, key := range cfg.Block {
		go e.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
			effect("start " + key)
			say("started %s", key)
			<-never
			return nil, errors.New("unreachable")
		})
	}
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		os.Exit(0)
	}
	jobs := make(chan string)
	var wg sync.WaitGroup
	for w := range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for key := range jobs {
				res, err := e.Do(ctx, key, faultFingerprint(key), func(context.Context) ([]byte, error) {
					effect("effect " + key)
					time.Sleep(time.Duration(w*5) * time.Millisecond) // a kill may find fn past its effect
					return []byte(childValue(key)), nil
				})
				if err != nil {
					say("error %s %v", key, err)
					continue
				}
				say("done %s %q", key, res.Value)
			}
		}()
	}
	for _, key := range cfg.Busy {
		jobs <- key
	}
	close(jobs)
	wg.Wait()
	say("busy finished")
	for in.Scan() {
	}
	os.Exit(0)
}

// engineChild is a running engine child.
type engineChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *lockedBuffer
	mu     sync.Mutex    // guards out
	out    []string      // the lines of its standard output so far
	more   chan struct{} // a line came (capacity 1, sent without blocking)
	eof    chan struct{} // closed when its standard output has ended
	waited bool
}

// startEngineChild starts an engine child with cfg. It is killed and waited
// for when t ends, if the test did not kill it.
func startEngineChild(t *testing.T, cfg engineChildConfig) *engineChild {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// testproc: the child dies with the test binary, and has a deadline
	// of its own besides.
	cmd := testproc.Command(t, os.Args[0], "-test.run=^TestHelperEngineProcess$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), engineChildEnv+"="+string(js))
	c := &engineChild{cmd: cmd, stderr: &lockedBuffer{}, more: make(chan struct{}, 1), eof: make(chan struct{})}
	cmd.Stderr = c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { // reads stdout to its end, which the child's exit brings
		defer close(c.eof)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.out = append(c.out, sc.Text())
			c.mu.Unlock()
			select {
			case c.more <- struct{}{}:
			default:
			}
		}
	}()
	// Registered after testproc's, so it runs first: the child is waited
	// for here, in the test's goroutine, and testproc's cleanup finds it
	// done.
	t.Cleanup(func() { c.kill() })
	return c
}

// waitFor waits until cond holds for the lines printed so far; it fails
// the test if the child exits first, or after faultHang.
func (c *engineChild) waitFor(t *testing.T, what string, cond func(lines []string) bool) {
	t.Helper()
	guard := time.NewTimer(faultHang)
	defer guard.Stop()
	for {
		c.mu.Lock()
		ok := cond(c.out)
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.more:
		case <-c.eof:
			c.kill()
			t.Fatalf("engine child exited before %s: %v; stdout:\n%s\nstderr:\n%s", what, c.cmd.ProcessState, c.lines(), c.stderr.String())
		case <-guard.C:
			t.Fatalf("hang guard: engine child: %s; stdout:\n%s\nstderr:\n%s", what, c.lines(), c.stderr.String())
		}
	}
}

// kill sends the child SIGKILL, reads its output to the end and waits for
// it. After the first call it does nothing.
func (c *engineChild) kill() {
	if c.waited {
		return
	}
	c.waited = true
	_ = c.cmd.Process.Kill()
	<-c.eof
	_ = c.cmd.Wait()
}

func (c *engineChild) lines() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.out, "\n")
}

// waitStat polls cond, an engine's counters, until it holds; it fails the
// test if ctx ends first (a hang guard).
func waitStat(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("hang guard: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// countPrefix counts the lines that begin with prefix.
func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// TestFaultKillEngineProcess kills, with SIGKILL, an engine whose fn is
// running, and checks what the engines that share its bucket make of its
// keys; see RELIABILITY.md. Each round starts an engine child (on a node
// of a 3-node cluster in this process, over TCP) whose fn blocks for a few
// keys, and which completes other keys with several goroutines. While the
// child is alive, engines here get ErrInFlight for the blocked keys with
// NoWait, and wait without one. The test kills the child in the middle of
// its busy keys; then, once its liveness window (2 s) has lapsed, the calls
// that waited return ErrInterrupted, and every engine reports
// ErrInterrupted for the keys whose fn had started (the child's ledger
// says which), never running fn for them, while the keys the child
// completed replay its values; keys whose fn never started run here. An
// engine with RetryInterrupted runs one interrupted key again, and then
// every engine replays its value.
func TestFaultKillEngineProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills engine processes")
	}
	if runtime.GOOS == "windows" {
		t.Skip("SIGKILL")
	}
	requireLongTimeout(t, 10*time.Minute)
	var (
		rounds = testSize(2, 10)
		blockN = 3
		busyN  = testSize(60, 200)
	)
	const bucket, window = "faultengine", 2 * time.Second
	nodes := startCluster(t, 3)
	// The hang guard of the whole test: see TestFaultKillStreamLeader.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(testSize(4, 20))*time.Minute)
	defer cancel()

	open := func(node int, mod func(*idem.Options)) *idem.Engine {
		nc, err := nodes[node].Connect()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		eo := &idem.Options{Logger: discardLogger}
		if mod != nil {
			mod(eo)
		}
		return openRetry(t, nc, &idemnats.Options{Bucket: bucket, Replicas: 3, LivenessWindow: window, Engine: eo})
	}
	pA := open(0, nil)
	pB := open(1, nil)
	pN := open(2, func(o *idem.Options) { o.NoWait = true })
	pR := open(1, func(o *idem.Options) { o.RetryInterrupted = true })
	engines := map[string]*idem.Engine{"A": pA, "B": pB, "NoWait": pN}

	var runsMu sync.Mutex          // guards parentRuns
	parentRuns := map[string]int{} // key -> executions of fn in this process
	parentValue := func(key string) string { return "parent's value of " + key }
	parentFn := func(key string) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			runsMu.Lock()
			parentRuns[key]++
			runsMu.Unlock()
			return []byte(parentValue(key)), nil
		}
	}
	runsOf := func(key string) int {
		runsMu.Lock()
		defer runsMu.Unlock()
		return parentRuns[key]
	}

	type tally struct {
		blocked, busyDone, busyActedInterrupted, busyRanHere, busyInterrupted, busyReplayedAfterKill int
		nowaitAfterKill                                                                              map[string]int
		reported                                                                                     []time.Duration
	}
	tot := tally{nowaitAfterKill: map[string]int{}}
	for round := range rounds {
		prefix := fmt.Sprintf("r%d-", round)
		block := make([]string, blockN)
		for i := range block {
			block[i] = fmt.Sprintf("%sblock-%d", prefix, i)
		}
		busy := make([]string, busyN)
		for i := range busy {
			busy[i] = fmt.Sprintf("%sbusy-%03d", prefix, i)
		}
		ledger := filepath.Join(t.TempDir(), "ledger")
		child := startEngineChild(t, engineChildConfig{URL: nodes[round%len(nodes)].ClientURL(), Bucket: bucket, Window: window,
			Ledger: ledger, Block: block, Busy: busy, Workers: 4})
		child.waitFor(t, "its fn started for the blocked keys", func(lines []string) bool {
			return countPrefix(lines, "started "+prefix+"block-") == blockN
		})

		// The child is alive: its claims hold.
		for _, key := range block {
			_, err := pN.Do(ctx, key, faultFingerprint(key), parentFn(key))
			if !errors.Is(err, idem.ErrInFlight) {
				t.Fatalf("round %d: NoWait Do(%s) while the child's fn runs: %v, want ErrInFlight", round, key, err)
			}
		}
		// A call without NoWait waits, until its context ends.
		waitsA := pA.Stats().Waits
		wctx, wcancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := pA.Do(wctx, block[0], faultFingerprint(block[0]), parentFn(block[0]))
			errc <- err
		}()
		waitStat(ctx, t, "a call on a blocked key waits", func() bool { return pA.Stats().Waits > waitsA })
		wcancel()
		if err := <-errc; !errors.Is(err, idem.ErrInFlight) || !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: Do(%s) waiting on the child's claim until its context ended: %v, want ErrInFlight and Canceled", round, block[0], err)
		}
		// Calls that wait on the claims when the child dies.
		type waited struct {
			key string
			err error
			at  time.Time
		}
		waits0 := pB.Stats().Waits
		waitedc := make(chan waited, blockN)
		for _, key := range block {
			go func() {
				_, err := pB.Do(ctx, key, faultFingerprint(key), parentFn(key))
				waitedc <- waited{key, err, time.Now()}
			}()
		}
		waitStat(ctx, t, "the calls on the blocked keys wait", func() bool { return pB.Stats().Waits >= waits0+uint64(blockN) })

		// Kill it in the middle of its busy keys.
		if _, err := io.WriteString(child.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
		child.waitFor(t, "a third of the busy keys done", func(lines []string) bool {
			return countPrefix(lines, "done "+prefix) >= busyN/3
		})
		child.kill()
		killed := time.Now()
		key0 := block[0]
		_, err := pN.Do(ctx, key0, faultFingerprint(key0), parentFn(key0))
		switch {
		case errors.Is(err, idem.ErrInFlight):
			tot.nowaitAfterKill["ErrInFlight (heartbeat not lapsed yet)"]++
		case errors.Is(err, idem.ErrInterrupted):
			tot.nowaitAfterKill["ErrInterrupted (heartbeat lapsed already)"]++
		default:
			t.Fatalf("round %d: NoWait Do(%s) just after the kill: %v", round, key0, err)
		}
		if strings.Contains(child.stderr.String(), "DATA RACE") {
			t.Errorf("round %d: the engine child reported a data race:\n%s", round, child.stderr.String())
		}

		// The calls that waited get ErrInterrupted once its heartbeat
		// lapsed.
		var last time.Duration
		for range blockN {
			var w waited
			select {
			case w = <-waitedc:
			case <-ctx.Done():
				t.Fatalf("hang guard: round %d: the calls waiting on the dead child's claims did not return", round)
			}
			if !errors.Is(w.err, idem.ErrInterrupted) {
				t.Errorf("round %d: Do(%s) that waited on the killed child's claim: %v, want ErrInterrupted", round, w.key, w.err)
			}
			last = max(last, w.at.Sub(killed))
		}
		tot.reported = append(tot.reported, last)

		// The blocked keys are interrupted for every engine.
		for _, key := range block {
			for name, e := range engines {
				if _, err := e.Do(ctx, key, faultFingerprint(key), parentFn(key)); !errors.Is(err, idem.ErrInterrupted) {
					t.Errorf("round %d: engine %s: Do(%s) after the window: %v, want ErrInterrupted", round, name, key, err)
				}
			}
			if rec, err := pA.Lookup(key); err != nil || rec.State != idem.StateInterrupted {
				t.Errorf("round %d: Lookup(%s) = %v, %v; want interrupted", round, key, rec.State, err)
			}
			if n := runsOf(key); n != 0 {
				t.Errorf("round %d: fn of the interrupted key %s ran %d times here", round, key, n)
			}
		}
		tot.blocked += blockN

		// The busy keys, against the child's ledger and output.
		effects := map[string]int{}
		eachLine(t, ledger, func(l string) {
			if k, ok := strings.CutPrefix(l, "effect "); ok {
				effects[k]++
			} else if k, ok := strings.CutPrefix(l, "start "); ok {
				effects[k]++
			} else {
				t.Errorf("round %d: bad ledger line %q", round, l)
			}
		})
		done := map[string]string{}
		for _, l := range strings.Split(child.lines(), "\n") {
			if rest, ok := strings.CutPrefix(l, "done "); ok {
				k, q, _ := strings.Cut(rest, " ")
				v, err := strconv.Unquote(q)
				if err != nil {
					t.Fatalf("round %d: bad line %q", round, l)
				}
				done[k] = v
			}
		}
		interrupted := map[string]bool{}
		for _, key := range block {
			interrupted[key] = true
		}
		outcome := map[string]string{}
		for _, key := range busy {
			if effects[key] > 1 {
				t.Errorf("round %d: key %s: the child's fn acted %d times", round, key, effects[key])
			}
			res, err := pA.Do(ctx, key, faultFingerprint(key), parentFn(key))
			ran := runsOf(key)
			out := string(res.Value)
			switch {
			case ran > 0 && effects[key] > 0:
				t.Errorf("round %d: key %s: fn ran here after the child's fn acted (twice)", round, key)
			case ran > 1:
				t.Errorf("round %d: key %s: fn ran %d times here", round, key, ran)
			case done[key] != "":
				// Acknowledged to the child: replays.
				if err != nil || !res.Replayed || out != done[key] {
					t.Errorf("round %d: key %s acknowledged to the child as %q: %q (replayed %v), %v", round, key, done[key], out, res.Replayed, err)
				}
				tot.busyDone++
			case effects[key] > 0 && err == nil:
				// Stored by the child, but killed before it printed.
				if !res.Replayed || out != childValue(key) {
					t.Errorf("round %d: key %s: the child's fn acted; got %q (replayed %v)", round, key, out, res.Replayed)
				}
				tot.busyReplayedAfterKill++
			case errors.Is(err, idem.ErrInterrupted):
				// Claimed by the child; its fn acted, or was about to.
				interrupted[key] = true
				out = "interrupted"
				tot.busyInterrupted++
				if effects[key] > 0 {
					tot.busyActedInterrupted++
				}
			case effects[key] > 0:
				t.Errorf("round %d: key %s: the child's fn acted; got %v", round, key, err)
			case err != nil || res.Replayed || out != parentValue(key):
				t.Errorf("round %d: key %s, never started by the child: %q (replayed %v), %v; want fn to run here", round, key, out, res.Replayed, err)
			default:
				tot.busyRanHere++
			}
			outcome[key] = out
		}
		// Every other engine agrees, and runs nothing.
		for _, key := range busy {
			before := runsOf(key)
			for name, e := range engines {
				res, err := e.Do(ctx, key, faultFingerprint(key), parentFn(key))
				out := string(res.Value)
				if errors.Is(err, idem.ErrInterrupted) {
					out = "interrupted"
				} else if err != nil || !res.Replayed {
					out = fmt.Sprintf("%q (replayed %v), %v", out, res.Replayed, err)
				}
				if out != outcome[key] {
					t.Errorf("round %d: engine %s: key %s: %s, want %q", round, name, key, out, outcome[key])
				}
			}
			if runsOf(key) != before {
				t.Errorf("round %d: key %s: fn ran again", round, key)
			}
		}
		listed := map[string]bool{}
		for r, err := range pA.Interrupted() {
			if err != nil {
				t.Fatalf("Interrupted: %v", err)
			}
			if strings.HasPrefix(r.Key, prefix) {
				listed[r.Key] = true
			}
		}
		if !maps.Equal(listed, interrupted) {
			t.Errorf("round %d: Interrupted lists %v of the round's keys, want %v", round, slices.Sorted(maps.Keys(listed)), slices.Sorted(maps.Keys(interrupted)))
		}

		// RetryInterrupted runs one key again; then it replays everywhere.
		res, err := pR.Do(ctx, key0, faultFingerprint(key0), parentFn(key0))
		if err != nil || res.Replayed || string(res.Value) != parentValue(key0) || runsOf(key0) != 1 {
			t.Errorf("round %d: RetryInterrupted Do(%s): %q (replayed %v), %v, fn ran %d times; want it run once", round, key0, res.Value, res.Replayed, err, runsOf(key0))
		}
		for name, e := range engines {
			res, err := e.Do(ctx, key0, faultFingerprint(key0), parentFn(key0))
			if err != nil || !res.Replayed || string(res.Value) != parentValue(key0) {
				t.Errorf("round %d: engine %s: Do(%s) after RetryInterrupted: %q (replayed %v), %v", round, name, key0, res.Value, res.Replayed, err)
			}
		}
		if runsOf(key0) != 1 {
			t.Errorf("round %d: key %s ran %d times here, want once", round, key0, runsOf(key0))
		}
		if t.Failed() {
			t.Fatalf("round %d failed; the child's stdout:\n%s\nstderr:\n%s", round, child.lines(), child.stderr.String())
		}
	}
	var reported []string
	for _, d := range tot.reported {
		reported = append(reported, d.Round(time.Millisecond).String())
	}
	t.Logf("%d engine processes killed with SIGKILL, liveness window %v: %d keys whose fn was blocked, each ErrInFlight (NoWait) and waited on before the kill; "+
		"calls waiting on them returned ErrInterrupted after the kill, the last after %v per round; NoWait just after the kill: %v; "+
		"of %d busy keys: %d acknowledged to the child replayed, %d stored by the child but not acknowledged replayed, %d interrupted (%d of them after the child's fn acted), "+
		"%d never started by the child ran here; no fn ran twice; 1 interrupted key per round ran again with RetryInterrupted",
		rounds, window, tot.blocked, reported, tot.nowaitAfterKill, rounds*busyN, tot.busyDone, tot.busyReplayedAfterKill,
		tot.busyInterrupted, tot.busyActedInterrupted, tot.busyRanHere)
}

// eachLine calls fn for each complete line of the file at path (a line
// without its newline, cut short by a kill, is no effect: fn wrote it in
// one write, with its newline).
func eachLine(t *testing.T, path string, fn func(string)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range lines[:len(lines)-1] {
		fn(l)
	}
}
