package idem_test

import (
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemtest"
)

// memHarness runs the conformance suite on the Pebble engine, each store a
// directory on a MemFS of its own. It implements idemtest.Reopener (Open
// again on the same MemFS) and idemtest.Durabilities; not idemtest.Sharer:
// one directory is open in one Engine at a time.
type memHarness struct {
	mu  sync.Mutex              // guards fss
	fss map[*idem.Engine]vfs.FS // the MemFS of each engine opened
}

const memDir = "db"

func (h *memHarness) open(t *testing.T, fs vfs.FS, opts *idem.Options) *idem.Engine {
	t.Helper()
	o := *opts
	o.FS = fs
	e, err := idem.Open(memDir, &o)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	h.mu.Lock()
	h.fss[e] = fs
	h.mu.Unlock()
	return e
}

func (h *memHarness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
	return h.open(t, vfs.NewMem(), opts)
}

func (h *memHarness) Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	h.mu.Lock()
	fs := h.fss[e]
	h.mu.Unlock()
	require.NotNil(t, fs, "an engine this harness did not open")
	require.NoError(t, e.Close())
	return h.open(t, fs, opts)
}

func (h *memHarness) Durabilities() []idem.Durability {
	return []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone}
}

func TestConformance(t *testing.T) {
	idemtest.Run(t, &memHarness{fss: make(map[*idem.Engine]vfs.FS)})
}
