package idemgql_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemhttp"
)

// idemhttp and idemgql share an engine without their keys meeting: the
// same client key under both, nested, neither waits for the other.
func TestSharedEngineWithIdemhttp(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServerWith(t, e, s, options(), idemhttp.New(e, nil))

	first := srv.mustData(t, adjustQuery, vars("k", 1), "Idempotency-Key", `"k"`)
	again := srv.mustData(t, adjustQuery, vars("k", 1), "Idempotency-Key", `"k"`)
	require.JSONEq(t, first, again)
	require.Equal(t, int64(1), s.adjustRuns.Load())
	_, err := e.Lookup(idemhttp.EngineKey("", "k"))
	require.NoError(t, err)
	_, err = e.Lookup(idemgql.EngineKey("", "k"))
	require.NoError(t, err)
}
