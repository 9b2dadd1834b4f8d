package idemgql_test

import (
	"log/slog"
	"testing"

	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/stretchr/testify/require"

	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemgql/internal/testgql"
)

// @idempotent anywhere but on a root field of a mutation refuses the whole
// operation before anything runs.
func TestMisplacedDirectiveIsRefused(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	cases := []struct {
		name, query string
		path        []any
		message     string
	}{
		{"query", `query { available(inventoryItemId: "1", locationId: "1") @idempotent(key: "k") }`,
			[]any{"available"}, `"available" is in a query`},
		{"nested in a mutation", `mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) {
			inventoryAdjustmentGroup @idempotent(key: "k") { id } } }`,
			[]any{"inventoryAdjustQuantities", "inventoryAdjustmentGroup"}, `nested in "inventoryAdjustQuantities"`},
		{"nested, with a key on the mutation too", `mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) @idempotent(key: "k") {
			userErrors @idempotent(key: "k2") { code } } }`,
			[]any{"inventoryAdjustQuantities", "userErrors"}, "nested"},
		{"nested in a fragment", `mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) { ...P } }
			fragment P on InventoryAdjustQuantitiesPayload { userErrors @idempotent(key: "k") { code } }`,
			[]any{"inventoryAdjustQuantities", "userErrors"}, "nested"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := srv.wantCode(t, idemgql.CodeUnsupportedPlacement, c.query, nil)
			require.Equal(t, "null", string(r.Data), "the operation is refused whole")
			require.Equal(t, c.path, r.Errors[0].Path)
			contains(t, r.Errors[0].Message, c.message)
		})
	}
	require.Equal(t, int64(0), s.adjustRuns.Load(), "no mutation ran")
}

func TestDirectiveOnAnUnregisteredMutationIsRefused(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	r := srv.wantCode(t, idemgql.CodeUnsupportedMutation, `mutation { ping(message: "hi") @idempotent(key: "k") }`, nil)
	contains(t, r.Errors[0].Message, `"ping" does not support @idempotent`)
	// With a registered mutation before it, nothing runs either.
	srv.wantCode(t, idemgql.CodeUnsupportedMutation, `mutation($key: String!) {
		inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) @idempotent(key: $key) { userErrors { code } }
		ping(message: "hi") @idempotent(key: "k") }`, map[string]any{"key": "k1"})
	require.Equal(t, int64(0), s.pingRuns.Load()+s.adjustRuns.Load())

	// Without the directive, an unregistered mutation is none of the
	// extension's business.
	srv.mustData(t, `mutation { ping(message: "hi") }`, nil)
	srv.mustData(t, `mutation { ping(message: "hi") }`, nil)
	require.Equal(t, int64(2), s.pingRuns.Load())
}

// Each mutation of a document has its own key, and they run one after the
// other, in order.
func TestSeveralMutationsInOneDocument(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	doc := `mutation {
  a: inventoryAdjustQuantities(input: {reason: "r", name: "a", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) @idempotent(key: "k1") { inventoryAdjustmentGroup { id changes { quantityAfterChange } } }
  b: inventoryAdjustQuantities(input: {reason: "r", name: "b", changes: [{inventoryItemId: "1", locationId: "1", delta: 10}]}) @idempotent(key: "k2") { inventoryAdjustmentGroup { id changes { quantityAfterChange } } }
  c: inventoryAdjustQuantities(input: {reason: "r", name: "a", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) @idempotent(key: "k1") { inventoryAdjustmentGroup { id changes { quantityAfterChange } } }
  d: inventoryAdjustQuantities(input: {reason: "r", name: "d", changes: [{inventoryItemId: "1", locationId: "1", delta: 100}]}) @idempotent(key: "k1") { inventoryAdjustmentGroup { id } }
  ...F
}
fragment F on Mutation {
  e: inventoryAdjustQuantities(input: {reason: "r", name: "e", changes: [{inventoryItemId: "1", locationId: "1", delta: 1000}]}) @idempotent(key: "k3") { inventoryAdjustmentGroup { id } }
}`
	r := srv.post(t, doc, nil)
	require.Equal(t, []string{idemgql.CodeKeyParameterMismatch}, r.codes(), "d reuses a's key with other arguments")
	require.Equal(t, []any{"d"}, r.Errors[0].Path)
	require.JSONEq(t, `{
		"a":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1","changes":[{"quantityAfterChange":1}]}},
		"b":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/2","changes":[{"quantityAfterChange":11}]}},
		"c":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1","changes":[{"quantityAfterChange":1}]}},
		"d":null,
		"e":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/3"}}}`, string(r.Data))
	require.Equal(t, int64(3), s.adjustRuns.Load(), "a, b and e ran; c replayed a")
	require.Equal(t, []string{"a", "b", "e"}, s.order, "in the document's order")

	// The whole document again: all replays (d is still a mismatch).
	r2 := srv.post(t, doc, nil)
	require.JSONEq(t, string(r.Data), string(r2.Data))
	require.Equal(t, int64(3), s.adjustRuns.Load())

	// A document with one invalid key runs none of its mutations.
	srv.wantCode(t, idemgql.CodeKeyInvalid, `mutation {
		a: inventoryAdjustQuantities(input: {reason: "r", name: "x", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) @idempotent(key: "k9") { userErrors { code } }
		b: inventoryAdjustQuantities(input: {reason: "r", name: "y", changes: [{inventoryItemId: "1", locationId: "1", delta: 1}]}) @idempotent(key: "") { userErrors { code } } }`, nil)
	require.Equal(t, int64(3), s.adjustRuns.Load())
}

// A server that wires Directive but forgets to Use the extension refuses
// @idempotent instead of running the mutation unprotected.
func TestDirectiveWithoutTheExtensionRefuses(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	logs := &logBuffer{}
	o := options()
	o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ext := idemgql.New(e, o)
	srv := handler.New(testgql.NewExecutableSchema(testgql.Config{
		Resolvers:  s.resolver(),
		Directives: testgql.DirectiveRoot{Idempotent: ext.Directive},
	}))
	srv.AddTransport(transport.POST{})
	// no srv.Use(ext)
	hs := serve(t, srv, ext, logs)

	r := hs.wantCode(t, idemgql.CodeInternal, adjustQuery, vars("k", 1))
	contains(t, r.Errors[0].Message, "the mutation did not run")
	require.Equal(t, int64(0), s.adjustRuns.Load())
	contains(t, logs.String(), "without the idemgql extension")
}
