package idempg_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idempg"
	"github.com/idemkv/idem/idempg/internal/pgtest"
	"github.com/idemkv/idem/idemtest"
)

// pgHarness runs the conformance suite on tables of one database: each
// Open a fresh table, through a pool of its own; a shared engine opens the
// same table through another pool. It implements idemtest.Reopener and
// idemtest.Sharer.
type pgHarness struct {
	url string
	seq atomic.Int64 // numbers the tables

	mu     sync.Mutex // guards tables
	tables map[*idem.Engine]string
}

// discardLogger drops the engines' log records.
var discardLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func (h *pgHarness) open(t *testing.T, table string, opts *idem.Options) *idem.Engine {
	t.Helper()
	pool := newPool(t, h.url)
	o := *opts
	o.Logger = discardLogger
	e, err := idempg.Open(context.Background(), pool, &idempg.Options{Table: table, Engine: &o})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() }) // before the pool's Close, registered earlier
	h.mu.Lock()
	h.tables[e] = table
	h.mu.Unlock()
	return e
}

func (h *pgHarness) table(t *testing.T, e *idem.Engine) string {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	table, ok := h.tables[e]
	require.True(t, ok, "an engine this harness did not open")
	return table
}

func (h *pgHarness) Open(t *testing.T, opts *idem.Options) *idem.Engine {
	return h.open(t, fmt.Sprintf("conf_%d", h.seq.Add(1)), opts)
}

func (h *pgHarness) Reopen(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	table := h.table(t, e)
	require.NoError(t, e.Close())
	return h.open(t, table, opts)
}

func (h *pgHarness) OpenShared(t *testing.T, e *idem.Engine, opts *idem.Options) *idem.Engine {
	return h.open(t, h.table(t, e), opts)
}

// newPool returns a pool on url, closed when t ends.
func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func TestConformance(t *testing.T) {
	idemtest.Run(t, &pgHarness{url: pgtest.Start(t).ConnString(), tables: make(map[*idem.Engine]string)})
}
