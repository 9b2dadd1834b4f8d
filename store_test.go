package idem_test

import (
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemtest"
)

// storeOnly hides the Pebble store's type from the engine, which then runs
// the paths it runs on any store that one engine uses alone (New): a read
// before each claim, no key filter, no sweep (storeOnly has no Sweeper), no
// compaction and no Pebble figures.
type storeOnly struct{ idem.Store }

// storeHarness runs the conformance suite on the engine's generic paths, on
// Pebble stores opened through New. It implements idemtest.Reopener and
// idemtest.SelfSweeping.
type storeHarness struct {
	mu  sync.Mutex
	fss map[*idem.Engine]vfs.FS
}

func (h *storeHarness) open(t *testing.T, fs vfs.FS, opts *idem.Options) *idem.Engine {
	t.Helper()
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
	require.NoError(t, err)
	e, err := idem.New(storeOnly{st}, opts)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	h.mu.Lock()
	h.fss[e] = fs
	h.mu.Unlock()
	return e
}

func (h *storeHarness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
	return h.open(t, vfs.NewMem(), opts)
}

func (h *storeHarness) Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	h.mu.Lock()
	fs := h.fss[e]
	h.mu.Unlock()
	require.NotNil(t, fs, "an engine this harness did not open")
	require.NoError(t, e.Close())
	return h.open(t, fs, opts)
}

func (h *storeHarness) SelfSweeping() {}

func TestConformanceNew(t *testing.T) {
	idemtest.Run(t, &storeHarness{fss: make(map[*idem.Engine]vfs.FS)})
}

func TestNewRefusesPebbleOnlyOptions(t *testing.T) {
	for _, c := range []struct {
		field string
		opts  idem.Options
	}{
		{"Durability", idem.Options{Durability: idem.SyncNone}},
		{"CacheSize", idem.Options{CacheSize: 1 << 20}},
		{"FS", idem.Options{FS: vfs.NewMem()}},
		{"ReadOnly", idem.Options{ReadOnly: true}},
	} {
		t.Run(c.field, func(t *testing.T) {
			fs := vfs.NewMem()
			st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
			require.NoError(t, err)
			_, err = idem.New(storeOnly{st}, &c.opts)
			require.ErrorContains(t, err, "Options."+c.field)
			// New closed the store: the directory can be opened again.
			e, err := idem.Open(memDir, &idem.Options{FS: fs})
			require.NoError(t, err)
			require.NoError(t, e.Close())
		})
	}
}

// sharedStore says that its store is shared, as a store of several engines
// would; it is used only to see what New accepts.
type sharedStore struct{ idem.Store }

func (s sharedStore) Info() idem.StoreInfo {
	info := s.Store.Info()
	info.Shared = true
	return info
}

func TestNewRefusesRecordCacheOnSharedStore(t *testing.T) {
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: vfs.NewMem()})
	require.NoError(t, err)
	_, err = idem.New(sharedStore{st}, &idem.Options{RecordCacheSize: 1 << 20})
	require.ErrorContains(t, err, "Options.RecordCacheSize")
}

func TestNewNilStore(t *testing.T) {
	_, err := idem.New(nil, nil)
	require.Error(t, err)
}

func TestNewBadOptionsClosesTheStore(t *testing.T) {
	fs := vfs.NewMem()
	st, err := idem.OpenPebbleStore(memDir, &idem.Options{FS: fs})
	require.NoError(t, err)
	_, err = idem.New(storeOnly{st}, &idem.Options{TTL: -1})
	require.ErrorContains(t, err, "TTL")
	e, err := idem.Open(memDir, &idem.Options{FS: fs})
	require.NoError(t, err, "New closed the store it refused")
	require.NoError(t, e.Close())
}
