package idemnats_test

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
	"github.com/idemkv/idem/idemtest"
)

// natsHarness runs the conformance suite on buckets of a 3-node cluster:
// each Open a fresh bucket, through a connection of its own to the first
// node; a shared engine connects to the next node, so that engines of one
// bucket talk to different servers. The buckets have one replica, placed
// on any node: the suite's cases run in parallel, and every write to a
// bucket of three is fsynced three times on this machine's one disk. (The
// engine tests, engine_test.go, run on buckets of three.) With buckets
// above 1, each engine spreads its records over that many buckets
// (Options.Buckets). It implements idemtest.Reopener, idemtest.Sharer and
// idemtest.SelfSweeping.
type natsHarness struct {
	nodes   []*idemnats.Node
	buckets int          // Options.Buckets
	prefix  string       // of the buckets' names
	seq     atomic.Int64 // numbers the buckets

	mu      sync.Mutex // guards engines
	engines map[*idem.Engine]harnessEngine
}

// harnessEngine is what the harness knows of an engine it opened.
type harnessEngine struct {
	bucket string
	node   int
}

// discardLogger drops the engines' log records (the warnings of buckets
// of fewer than 3 replicas, say).
var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func (h *natsHarness) open(t *testing.T, bucket string, node int, opts *idem.Options) *idem.Engine {
	t.Helper()
	nc, err := h.nodes[node].Connect()
	require.NoError(t, err)
	t.Cleanup(nc.Close) // after the engine's Close, registered below
	o := *opts
	o.Logger = discardLogger
	e, err := idemnats.Open(nc, &idemnats.Options{Bucket: bucket, Replicas: 1, Buckets: h.buckets, Engine: &o})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	h.mu.Lock()
	h.engines[e] = harnessEngine{bucket: bucket, node: node}
	h.mu.Unlock()
	return e
}

func (h *natsHarness) engine(t *testing.T, e *idem.Engine) harnessEngine {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	he, ok := h.engines[e]
	require.True(t, ok, "an engine this harness did not open")
	return he
}

func (h *natsHarness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
	return h.open(t, fmt.Sprintf("%s-%d", h.prefix, h.seq.Add(1)), 0, opts)
}

func (h *natsHarness) Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	he := h.engine(t, e)
	require.NoError(t, e.Close())
	return h.open(t, he.bucket, he.node, opts)
}

func (h *natsHarness) OpenShared(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	he := h.engine(t, e)
	return h.open(t, he.bucket, (he.node+1)%len(h.nodes), opts)
}

// SelfSweeping says that the bucket expires records itself (per-message
// TTLs): Sweep removes nothing.
func (h *natsHarness) SelfSweeping() {}

// TestConformance runs the suite on engines of one bucket (the default)
// and, in the long size (IDEM_TEST_LONG=1), on engines of two
// (Options.Buckets), on one cluster. The suite on two buckets takes about
// as long again as on one (7 s under -race on two cores); what it checks
// of the buckets (each key's reads and writes in its own bucket, Watch on
// any bucket, Records merged in key order and paged) the engine and store
// tests check in the default size too (testBuckets, testStoreBuckets).
func TestConformance(t *testing.T) {
	nodes := startCluster(t, 3)
	for _, c := range []struct {
		name    string
		buckets int
		long    bool
	}{{"OneBucket", 0, false}, {"TwoBuckets", 2, true}} {
		t.Run(c.name, func(t *testing.T) {
			if c.long && !longTests {
				t.Skip("in the long size only (IDEM_TEST_LONG=1)")
			}
			h := &natsHarness{nodes: nodes, buckets: c.buckets, prefix: fmt.Sprint("conf", c.buckets),
				engines: make(map[*idem.Engine]harnessEngine)}
			idemtest.Run(t, h)
		})
	}
}
