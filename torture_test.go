package idem_test

// Crash torture with real processes: a worker (internal/torture) runs Do with
// many goroutines on a real directory and is killed, or fails, while it
// works; after each death the test opens the directory and checks the
// promise "never twice, never lost" against the worker's side-effect and
// acknowledgement logs. See RELIABILITY.md.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/internal/testproc"
)

var (
	tortureRounds = flag.Int("torture.rounds", 0, "kill rounds per durability mode in TestTorture (0: 10; IDEM_TEST_LONG=1: 30)")
	tortureFaults = flag.Int("torture.faults", 0, "rounds of each fault mode (WAL sync, WAL write, disk full...) in TestTorture, and five times as many write faults in Open (0: 3; IDEM_TEST_LONG=1: 6)")
	tortureSeed   = flag.Uint64("torture.seed", 0, "seed of TestTorture's kill delays and worker seeds (0: random)")
)

// buildTortureWorker builds internal/torture into dir. Under -race the
// worker is built with -race too: its packages are then the test binary's,
// already compiled, and the worker is checked for races as it runs.
func buildTortureWorker(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds the worker")
	bin := filepath.Join(dir, "worker")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := testproc.Command(t, goBin, append(args, "./internal/torture")...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "building the worker: %s", out)
	return bin
}

// tortureWorker is one run of the worker process in a directory of its own.
type tortureWorker struct {
	bin                 string
	dir                 string // holds db/, effects and acks
	durability          string
	seed                uint64
	extra               []string
	stderr              bytes.Buffer
	exitCode            int  // -1 if killed by a signal
	killed              bool // by the test's SIGKILL
	effectsLog, acksLog string
}

func newTortureWorker(bin, dir, durability string) *tortureWorker {
	return &tortureWorker{bin: bin, dir: dir, durability: durability,
		effectsLog: filepath.Join(dir, "effects"), acksLog: filepath.Join(dir, "acks")}
}

func (w *tortureWorker) dbDir() string { return filepath.Join(w.dir, "db") }

// tortureHang is how long a worker may run before the test takes it for
// hung: a hang guard, not a timing assertion. The worker's own deadline
// (-timeout) is a minute later, for when the test binary is gone.
const tortureHang = 2 * time.Minute

// command returns the worker's command. The worker dies with the test
// binary, and is killed and waited for when t ends (internal/testproc);
// should neither happen, it exits by itself after -timeout.
func (w *tortureWorker) command(t *testing.T) *exec.Cmd {
	args := append([]string{"-dir", w.dbDir(), "-effects", w.effectsLog, "-acks", w.acksLog,
		"-durability", w.durability, "-keys", "50000", "-seed", fmt.Sprint(w.seed),
		"-timeout", (tortureHang + time.Minute).String()}, w.extra...)
	cmd := testproc.Command(t, w.bin, args...)
	w.stderr.Reset()
	cmd.Stderr = &w.stderr
	return cmd
}

// runAndKill runs the worker and kills it with SIGKILL after delay.
func (w *tortureWorker) runAndKill(t *testing.T, delay time.Duration) {
	t.Helper()
	cmd := w.command(t)
	require.NoError(t, cmd.Start())
	timer := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
	err := cmd.Wait()
	timer.Stop()
	w.record(t, err)
}

// runToEnd runs the worker until it exits by itself. A worker that hangs
// gets SIGQUIT after tortureHang, which makes it print its goroutines and
// exit, then SIGKILL, and fails the test.
func (w *tortureWorker) runToEnd(t *testing.T) {
	t.Helper()
	cmd := w.command(t)
	require.NoError(t, cmd.Start())
	hung := make(chan struct{})
	quit := time.AfterFunc(tortureHang, func() { close(hung); cmd.Process.Signal(syscall.SIGQUIT) })
	kill := time.AfterFunc(tortureHang+10*time.Second, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	quit.Stop()
	kill.Stop()
	select {
	case <-hung:
		t.Fatalf("the worker hung; its goroutines:\n%s", w.stderr.String())
	default:
	}
	w.record(t, err)
}

// record notes how the worker's process ended, from cmd.Wait's error.
func (w *tortureWorker) record(t *testing.T, err error) {
	t.Helper()
	w.exitCode, w.killed = 0, false
	if err == nil {
		return
	}
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	ws := exitErr.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		w.exitCode = -1
		w.killed = ws.Signal() == syscall.SIGKILL
	default:
		w.exitCode = ws.ExitStatus()
	}
}

// tortureLogs are the worker's logs, read after it died.
type tortureLogs struct {
	effects map[string]int    // key -> times fn acted
	acks    map[string]string // key -> acknowledged outcome ("!msg" for a Permanent error)
	nAcks   int
	torn    int // lines cut short by a SIGKILL, skipped
}

// readTortureLogs reads the worker's logs. Each line ends with its
// payload's CRC-32 (see internal/torture): a line whose checksum does not
// match was cut short by a SIGKILL in the middle of its write, at a page
// boundary, and is skipped. A torn effect line is an fn killed while it
// acted, whose Do never returned; a torn acknowledgement is one not made.
func readTortureLogs(t *testing.T, w *tortureWorker) tortureLogs {
	t.Helper()
	l := tortureLogs{effects: map[string]int{}, acks: map[string]string{}}
	eachLine(t, w.effectsLog, func(line string) {
		if key, ok := parseTortureLine(line); ok {
			l.effects[key]++
		} else {
			l.torn++
		}
	})
	eachLine(t, w.acksLog, func(line string) {
		payload, ok := parseTortureLine(line)
		if !ok {
			l.torn++
			return
		}
		key, value, ok := strings.Cut(payload, "=")
		require.True(t, ok, "bad acknowledgement line %q", line)
		if prev, ok := l.acks[key]; ok && prev != value {
			t.Errorf("key %s was acknowledged with two outcomes: %q and %q", key, prev, value)
		}
		l.acks[key] = value
		l.nAcks++
	})
	return l
}

// parseTortureLine returns a log line's payload, or false for a torn line.
func parseTortureLine(line string) (string, bool) {
	i := strings.LastIndexByte(line, ' ')
	if i < 0 {
		return "", false
	}
	return line[:i], line[i+1:] == fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(line[:i])))
}

func eachLine(t *testing.T, path string, fn func(string)) {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fn(sc.Text())
	}
	require.NoError(t, sc.Err())
}

// tortureCheck is what one check of a worker's directory found.
type tortureCheck struct {
	keys        int // distinct keys in the logs, each checked
	effects     int // lines of the side-effect log
	acks        int // lines of the acknowledgement log
	interrupted int // keys listed by Interrupted
	twice       int // keys whose fn acted more than once
	lost        int // acknowledged keys whose outcome does not replay
	unaccounted int // keys whose fn acted, not acknowledged, neither stored nor interrupted
	torn        int // log lines cut short by a SIGKILL
}

// checkTortureDir opens the worker's directory and checks it against its
// logs. Under SyncAll every finding but the counts must be zero; under
// SyncResult (strict false) only lost results and contradictions fail the
// test, and twice and unaccounted are the documented trade-off, counted.
func checkTortureDir(t *testing.T, w *tortureWorker, strict bool) tortureCheck {
	t.Helper()
	logs := readTortureLogs(t, w)
	c := tortureCheck{acks: logs.nAcks, torn: logs.torn}
	for _, n := range logs.effects {
		c.effects += n
		if n > 1 {
			c.twice++
		}
	}
	e, err := idem.Open(w.dbDir(), &idem.Options{SweepInterval: -1})
	require.NoError(t, err, "Open after the worker died; its stderr:\n%s", w.stderr.String())
	defer func() { require.NoError(t, e.Close()) }()

	interrupted := map[string]bool{}
	for r, err := range e.Interrupted() {
		require.NoError(t, err)
		interrupted[r.Key] = true
	}
	c.interrupted = len(interrupted)
	for r, err := range e.Records("") {
		require.NoError(t, err)
		switch r.State {
		case idem.StateCompleted, idem.StateFailed:
			if logs.effects[r.Key] == 0 {
				t.Errorf("key %s is stored as %v but its fn never acted", r.Key, r.State)
			}
		case idem.StateInFlight:
			t.Errorf("key %s is in flight in an engine that runs nothing", r.Key)
		}
	}

	keys := map[string]bool{}
	for k := range logs.effects {
		keys[k] = true
	}
	for k := range logs.acks {
		keys[k] = true
	}
	c.keys = len(keys)
	ctx := context.Background()
	for key := range keys {
		if ack, ok := logs.acks[key]; ok {
			// The acknowledged outcome replays, and fn does not run.
			res, err := e.Do(ctx, key, []byte("fp-"+key), func(context.Context) ([]byte, error) {
				t.Errorf("fn ran again for the acknowledged key %s", key)
				return nil, errors.New("must not run")
			})
			var perm *idem.PermanentError
			switch {
			case err == nil && res.Replayed && string(res.Value) == ack:
			case errors.As(err, &perm) && ack == "!"+perm.Error():
			default:
				c.lost++
				t.Errorf("acknowledged key %s (%q) replays %q, %v", key, ack, res.Value, err)
			}
			if logs.effects[key] == 0 {
				t.Errorf("key %s was acknowledged but its fn never acted", key)
			}
			continue
		}
		rec, err := e.Lookup(key)
		switch {
		case err == nil && (rec.State == idem.StateCompleted || rec.State == idem.StateFailed):
		case err == nil && rec.State == idem.StateInterrupted:
			if !interrupted[key] {
				t.Errorf("key %s is interrupted but Interrupted does not list it", key)
			}
		default:
			c.unaccounted++
			if strict {
				t.Errorf("key %s: fn acted, no acknowledgement, and the key is neither stored nor interrupted: %+v, %v", key, rec, err)
			}
		}
	}
	if strict && c.twice > 0 {
		t.Errorf("%d keys ran fn more than once", c.twice)
	}
	return c
}

// TestTorture runs the worker process and kills it, or makes it fail, again
// and again; see RELIABILITY.md for what each part shows.
func TestTorture(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes for half a minute")
	}
	if runtime.GOOS == "windows" {
		t.Skip("SIGKILL")
	}
	rounds, faults := *tortureRounds, *tortureFaults
	if rounds == 0 && faults == 0 {
		requireLongTimeout(t, 4*time.Minute)
	}
	if rounds == 0 {
		rounds = testSize(10, 30)
	}
	if faults == 0 {
		faults = testSize(3, 6)
	}
	bin := buildTortureWorker(t, t.TempDir())
	seed := *tortureSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (-torture.seed=%d replays the same kill delays and worker seeds, subtest by subtest)", seed, seed)
	t.Logf("%d kill rounds per durability mode, %d rounds per fault mode, %d write faults in Open", rounds, faults, faults*5)
	// Each subtest draws from its own generator, so that one replays alone.
	subRNG := func(t *testing.T) *rand.Rand {
		h := fnv.New64a()
		h.Write([]byte(t.Name()))
		return rand.New(rand.NewPCG(seed, h.Sum64()))
	}

	for _, mode := range []struct {
		name, durability string
		strict           bool
	}{{"Kill/SyncAll", "all", true}, {"Kill/SyncResult", "result", false}} {
		t.Run(mode.name, func(t *testing.T) {
			rng := subRNG(t)
			w := newTortureWorker(bin, t.TempDir(), mode.durability)
			var last tortureCheck
			checks, lost, unaccounted := 0, 0, 0
			for round := range rounds {
				w.seed = rng.Uint64()
				delay := time.Duration(10+rng.IntN(291)) * time.Millisecond
				w.runAndKill(t, delay)
				if !w.killed {
					t.Fatalf("round %d: the worker exited (status %d) before it was killed:\n%s", round, w.exitCode, w.stderr.String())
				}
				last = checkTortureDir(t, w, mode.strict)
				checks += last.keys
				lost += last.lost
				unaccounted = max(unaccounted, last.unaccounted)
				if t.Failed() {
					t.Fatalf("round %d (kill after %v, worker seed %d) failed; worker stderr:\n%s", round, delay, w.seed, w.stderr.String())
				}
			}
			// The logs are cumulative: the last check covers every round.
			t.Logf("%s: %d rounds, each ended by SIGKILL; %d keys checked over the rounds (%d distinct); %d effects, %d acknowledgements, "+
				"%d keys interrupted at the end; keys whose fn ran twice: %d; acknowledged results lost: %d; "+
				"effects neither stored nor interrupted (most in a round): %d; log lines torn by a kill: %d",
				mode.durability, rounds, checks, last.keys, last.effects, last.acks, last.interrupted,
				last.twice, lost, unaccounted, last.torn)
		})
	}

	// Pebble treats a failed write or fsync of its WAL as fatal: it calls
	// Logger.Fatalf, or panics in the committing goroutine, and the engine
	// turns both into a panic of its own. The worker dies with the
	// message; every result that Do returned before is on disk.
	for _, f := range []struct{ name, flag, msg string }{
		{"WALSyncFailure", "-fail-wal-sync-after", "idem: fatal Pebble error"},
		{"WALWriteFailure", "-fail-wal-write-after", "idem: fatal Pebble error"},
	} {
		t.Run(f.name, func(t *testing.T) {
			rng := subRNG(t)
			for round := range faults {
				w := newTortureWorker(bin, t.TempDir(), "all")
				w.seed = rng.Uint64()
				// Round 0 fails the very first one, which Open makes.
				n := 0
				if round > 0 {
					n = rng.IntN(400)
				}
				w.extra = []string{f.flag, fmt.Sprint(n), "-calls", "1000000"}
				w.runToEnd(t)
				require.Equal(t, 2, w.exitCode, "round %d (%s %d): the worker must die of the panic; stderr:\n%s", round, f.flag, n, w.stderr.String())
				require.Contains(t, w.stderr.String(), f.msg)
				c := checkTortureDir(t, w, true)
				inOpen := !strings.Contains(w.stderr.String(), "torture: opened")
				t.Logf("round %d: %s %d: died (in Open: %v); %d effects, %d acknowledgements, %d interrupted; twice %d, lost %d, unaccounted %d",
					round, f.flag, n, inOpen, c.effects, c.acks, c.interrupted, c.twice, c.lost, c.unaccounted)
				if t.Failed() {
					t.Fatalf("worker stderr:\n%s", w.stderr.String())
				}
			}
		})
	}

	// A caller that recovers panics (net/http recovers its handlers') does
	// not keep the process alive: the engine panics in a goroutine of its
	// own, and the process stops with the message. Nothing acknowledged is
	// lost, and nothing hangs. (Before 1f09a12 the panic reached the caller,
	// and later calls, and Close, could block forever.)
	t.Run("FatalErrorRecoveredByCaller", func(t *testing.T) {
		rng := subRNG(t)
		for round := range faults {
			w := newTortureWorker(bin, t.TempDir(), "all")
			w.seed = rng.Uint64()
			n := 5 + rng.IntN(400)
			w.extra = []string{"-fail-wal-sync-after", fmt.Sprint(n), "-recover", "-calls", "1000000"}
			w.runToEnd(t)
			require.Equal(t, 2, w.exitCode, "round %d: the process must stop; stderr:\n%s", round, w.stderr.String())
			require.Contains(t, w.stderr.String(), "panic: idem: fatal Pebble error")
			c := checkTortureDir(t, w, true)
			t.Logf("round %d: sync failure after %d, callers recovering panics: stopped; %d effects, %d acknowledgements, %d interrupted; twice %d, lost %d",
				round, n, c.effects, c.acks, c.interrupted, c.twice, c.lost)
			if t.Failed() {
				t.Fatalf("worker stderr:\n%s", w.stderr.String())
			}
		}
	})

	// A disk that fills: writes fail with ENOSPC. Without a ballast the WAL
	// write fails and Pebble stops the process; with one, vfs.OnDiskFull's
	// callback removes it and the engine goes on.
	t.Run("DiskFull", func(t *testing.T) {
		rng := subRNG(t)
		for round := range faults {
			w := newTortureWorker(bin, t.TempDir(), "all")
			w.seed = rng.Uint64()
			quota := 48<<10 + rng.IntN(128<<10)
			w.extra = []string{"-disk-quota", fmt.Sprint(quota), "-calls", "1000000"}
			w.runToEnd(t)
			require.Equal(t, 2, w.exitCode, "round %d: the worker must die when the disk is full; stderr:\n%s", round, w.stderr.String())
			require.Contains(t, w.stderr.String(), "no space left on device")
			require.Contains(t, w.stderr.String(), "torture: disk full: no ballast")
			c := checkTortureDir(t, w, true)
			t.Logf("round %d: quota %d bytes: died; %d effects, %d acknowledgements, %d interrupted; twice %d, lost %d",
				round, quota, c.effects, c.acks, c.interrupted, c.twice, c.lost)
			if t.Failed() {
				t.Fatalf("worker stderr:\n%s", w.stderr.String())
			}
		}
	})
	t.Run("DiskFullBallast", func(t *testing.T) {
		rng := subRNG(t)
		w := newTortureWorker(bin, t.TempDir(), "all")
		w.seed = rng.Uint64()
		w.extra = []string{"-disk-quota", fmt.Sprint(128 << 10), "-ballast", fmt.Sprint(8 << 20), "-calls", "4000"}
		w.runToEnd(t)
		require.Equal(t, 0, w.exitCode, "stderr:\n%s", w.stderr.String())
		require.Contains(t, w.stderr.String(), "torture: disk full: ballast removed (<nil>)")
		c := checkTortureDir(t, w, true)
		t.Logf("the disk filled at 128 KiB, the ballast was removed and 4000 calls ended in a clean Close; %d effects, %d acknowledgements",
			c.effects, c.acks)
	})

	// A write that fails while Open works: Open returns an error, or Pebble
	// stops the process (a failed MANIFEST or marker write is fatal, through
	// Fatalf or a panic of its own, in a background flush), or the fault is
	// one Pebble retries. Whichever, the next Open succeeds and loses nothing.
	t.Run("OpenWriteFaults", func(t *testing.T) {
		rng := subRNG(t)
		// A directory with records, interrupted keys and a WAL to replay.
		tmpl := newTortureWorker(bin, t.TempDir(), "all")
		tmpl.seed = rng.Uint64()
		tmpl.extra = []string{"-calls", "300"}
		tmpl.runToEnd(t)
		require.Equal(t, 0, tmpl.exitCode, "stderr:\n%s", tmpl.stderr.String())
		tmpl.extra = nil
		tmpl.runAndKill(t, 150*time.Millisecond)

		outcomes := map[string][]int{} // outcome -> the write indices
		for idx := range faults * 5 {
			w := newTortureWorker(bin, t.TempDir(), "all")
			require.NoError(t, os.CopyFS(w.dir, os.DirFS(tmpl.dir)))
			w.seed = rng.Uint64()
			w.extra = []string{"-calls", "100", "-open-write-fault", fmt.Sprint(idx)}
			w.runToEnd(t)
			var outcome string
			switch {
			case w.exitCode == 0 && strings.Contains(w.stderr.String(), "injected: 0"):
				outcome = "no write at that index"
			case w.exitCode == 0:
				outcome = "opened despite the fault"
			case w.exitCode == 3:
				outcome = "Open returned an error"
				require.Contains(t, w.stderr.String(), "torture: open: idem: open ")
			case w.exitCode == 2 && strings.Contains(w.stderr.String(), "panic: idem: fatal Pebble error"):
				outcome = "Pebble's Fatalf (the engine's panic) stopped the process"
			case w.exitCode == 2 && strings.Contains(w.stderr.String(), "panic: "):
				outcome = "a panic of Pebble's own stopped the process"
			default:
				t.Fatalf("write fault %d in Open: exit status %d; stderr:\n%s", idx, w.exitCode, w.stderr.String())
			}
			outcomes[outcome] = append(outcomes[outcome], idx)
			checkTortureDir(t, w, true)
			if t.Failed() {
				t.Fatalf("write fault %d in Open: %s; worker stderr:\n%s", idx, outcome, w.stderr.String())
			}
		}
		t.Logf("write faults at each of the first %d write operations of Open (outcome: indices): %v", faults*5, outcomes)
	})
}
