package idem_test

import (
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemtest"
)

// fsHarness opens engines for the conformance suite, each on a directory
// of a MemFS of its own, with open; it implements idemtest.Reopener (open
// again on the same MemFS), not idemtest.Sharer: one directory is open in
// one Engine at a time.
type fsHarness struct {
	open func(fs vfs.FS, opts *idem.Options) (*idem.Engine, error)
	mu   sync.Mutex              // guards fss
	fss  map[*idem.Engine]vfs.FS // the MemFS of each engine opened
}

func newFSHarness(open func(fs vfs.FS, opts *idem.Options) (*idem.Engine, error)) fsHarness {
	return fsHarness{open: open, fss: make(map[*idem.Engine]vfs.FS)}
}

const memDir = "db"

func (h *fsHarness) openOn(t *testing.T, fs vfs.FS, opts *idem.Options) *idem.Engine {
	t.Helper()
	e, err := h.open(fs, opts)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	h.mu.Lock()
	h.fss[e] = fs
	h.mu.Unlock()
	return e
}

func (h *fsHarness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
	return h.openOn(t, vfs.NewMem(), opts)
}

func (h *fsHarness) Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	h.mu.Lock()
	fs := h.fss[e]
	h.mu.Unlock()
	require.NotNil(t, fs, "an engine this harness did not open")
	require.NoError(t, e.Close())
	return h.openOn(t, fs, opts)
}

// memHarness runs the conformance suite on the Pebble engine (Open), under
// each durability (idemtest.Durabilities).
type memHarness struct{ fsHarness }

func newMemHarness() *memHarness {
	return &memHarness{newFSHarness(func(fs vfs.FS, opts *idem.Options) (*idem.Engine, error) {
		o := *opts
		o.FS = fs
		return idem.Open(memDir, &o)
	})}
}

func (h *memHarness) Durabilities() []idem.Durability {
	return []idem.Durability{idem.SyncAll, idem.SyncResult, idem.SyncNone}
}

func TestConformance(t *testing.T) {
	idemtest.Run(t, newMemHarness())
}
