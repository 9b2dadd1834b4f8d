package idemgql_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemgql/internal/testgql"
)

func TestResolverRunsOncePerKeyAndReplays(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	first := srv.mustData(t, adjustQuery, vars("4f5b6ebf-1", 5))
	second := srv.mustData(t, adjustQuery, vars("4f5b6ebf-1", 5))
	require.Equal(t, int64(1), s.adjustRuns.Load(), "the resolver ran again for a retry")
	require.JSONEq(t, first, second, "a retry gets the first result, createdAt included")
	contains(t, first, `"quantityAfterChange":5`, `"sku":"SKU-1"`)

	// Another key runs the resolver again.
	third := srv.mustData(t, adjustQuery, vars("4f5b6ebf-2", 5))
	require.Equal(t, int64(2), s.adjustRuns.Load())
	contains(t, third, `"quantityAfterChange":10`, `InventoryAdjustmentGroup/2`)

	rec, err := e.Lookup(idemgql.EngineKey("", "4f5b6ebf-1"))
	require.NoError(t, err, "the result is stored under EngineKey")
	require.Equal(t, idem.StateCompleted, rec.State)
}

func TestReplaySelectsOtherFields(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	small := srv.mustData(t, `mutation { inventoryAdjustQuantities(input: {reason: "correction", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 3}]}) @idempotent(key: "k") { inventoryAdjustmentGroup { id } } }`, nil)
	require.JSONEq(t, `{"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1"}}}`, small)

	// The same mutation, with an alias and a larger selection: a replay of
	// the stored value, not a second run.
	big := srv.mustData(t, `mutation { adj: inventoryAdjustQuantities(input: {reason: "correction", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 3}]}) @idempotent(key: "k") {
		inventoryAdjustmentGroup { id reason changes { delta quantityAfterChange item { id sku } } }
		userErrors { code }
	} }`, nil)
	require.Equal(t, int64(1), s.adjustRuns.Load())
	require.JSONEq(t, `{"adj":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1","reason":"correction","changes":[{"delta":3,"quantityAfterChange":3,"item":{"id":"1","sku":"SKU-1"}}]},"userErrors":[]}}`, big)
}

func TestKeyReusedWithOtherArgumentsIsRefused(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	srv.mustData(t, adjustQuery, vars("k", 5))
	r := srv.wantCode(t, idemgql.CodeKeyParameterMismatch, adjustQuery, vars("k", 6))
	require.Equal(t, []any{"inventoryAdjustQuantities"}, r.Errors[0].Path)
	require.JSONEq(t, `{"inventoryAdjustQuantities":null}`, string(r.Data))

	// The same key on another mutation is a mismatch too: one key space.
	srv.wantCode(t, idemgql.CodeKeyParameterMismatch, billingQuery, map[string]any{"key": "k", "contract": "gid://c/1"})
	require.Equal(t, int64(1), s.adjustRuns.Load())
	require.Equal(t, int64(0), s.billingRuns.Load())
}

// The fingerprint covers the coerced arguments: the forms of one value are
// the same call; the key, the alias and the selection are not part of it.
func TestFingerprintCoercesArguments(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	base := `mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2}]}) @idempotent(key: "k") { userErrors { code } } }`
	srv.mustData(t, base, nil)
	same := []struct {
		query string
		vars  map[string]any
	}{
		// Variables instead of literals.
		{`mutation($in: InventoryAdjustQuantitiesInput!) { inventoryAdjustQuantities(input: $in) @idempotent(key: "k") { userErrors { code } } }`,
			map[string]any{"in": map[string]any{"reason": "r", "name": "available", "changes": []any{map[string]any{"inventoryItemId": "1", "locationId": "1", "delta": 2}}}}},
		// The ID as a number, the default weight given, the list of one as its element, other field order.
		{`mutation { inventoryAdjustQuantities(input: {changes: {locationId: 1, inventoryItemId: 1, delta: 2, weight: 1}, name: "available", reason: "r"}) @idempotent(key: "k") { userErrors { code } } }`, nil},
		// The weight as a float variable, the key as a variable.
		{`mutation($w: Float, $k: String!) { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2, weight: $w}]}) @idempotent(key: $k) { userErrors { code } } }`,
			map[string]any{"w": 1.0, "k": "k"}},
	}
	for i, c := range same {
		r := srv.post(t, c.query, c.vars)
		require.Empty(t, r.Errors, "form %d", i)
	}
	require.Equal(t, int64(1), s.adjustRuns.Load())

	differ := []string{
		`mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2, weight: 2}]}) @idempotent(key: "k") { userErrors { code } } }`,
		`mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2}], referenceDocumentUri: "x"}) @idempotent(key: "k") { userErrors { code } } }`,
		`mutation { inventoryAdjustQuantities(input: {reason: "r", name: "on_hand", changes: [{inventoryItemId: "1", locationId: "1", delta: 2}]}) @idempotent(key: "k") { userErrors { code } } }`,
	}
	for _, q := range differ {
		srv.wantCode(t, idemgql.CodeKeyParameterMismatch, q, nil)
	}
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

func TestKeyInAnArgument(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	first := srv.mustData(t, billingQuery, map[string]any{"key": "bill-1", "contract": "gid://c/1"})
	second := srv.mustData(t, billingQuery, map[string]any{"key": "bill-1", "contract": "gid://c/1"})
	require.JSONEq(t, first, second)
	require.Equal(t, int64(1), s.billingRuns.Load())

	// The key is not part of the fingerprint: the same input with another
	// key is another call.
	srv.mustData(t, billingQuery, map[string]any{"key": "bill-2", "contract": "gid://c/1"})
	require.Equal(t, int64(2), s.billingRuns.Load())

	// The same key with another contract is a mismatch.
	srv.wantCode(t, idemgql.CodeKeyParameterMismatch, billingQuery, map[string]any{"key": "bill-1", "contract": "gid://c/2"})

	// The key given as a literal, and in the directive too: the same call.
	srv.mustData(t, `mutation { subscriptionBillingAttemptCreate(input: {subscriptionContractId: "gid://c/1", idempotencyKey: "bill-1"}) @idempotent(key: "bill-1") { userErrors { code } } }`, nil)
	require.Equal(t, int64(2), s.billingRuns.Load())

	// Two different keys are refused.
	r := srv.wantCode(t, idemgql.CodeKeyInvalid, `mutation { subscriptionBillingAttemptCreate(input: {subscriptionContractId: "gid://c/1", idempotencyKey: "bill-1"}) @idempotent(key: "bill-3") { userErrors { code } } }`, nil)
	contains(t, r.Errors[0].Message, "two different idempotency keys")
	require.Equal(t, int64(2), s.billingRuns.Load())

	// An empty key in the argument is refused, naming the argument.
	r = srv.wantCode(t, idemgql.CodeKeyInvalid, billingQuery, map[string]any{"key": "", "contract": "gid://c/1"})
	contains(t, r.Errors[0].Message, "input.idempotencyKey", "empty")
}

func TestInvalidKeys(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())

	cases := map[string]string{
		"empty":     "",
		"too long":  strings.Repeat("k", idemgql.DefaultMaxKeyLength+1),
		"non-ASCII": "clé",
		"control":   "a\nb",
	}
	for name, key := range cases {
		t.Run(name, func(t *testing.T) {
			r := srv.wantCode(t, idemgql.CodeKeyInvalid, adjustQuery, vars(key, 1))
			require.Equal(t, "null", string(r.Data), "the operation is refused whole")
			require.Equal(t, []any{"inventoryAdjustQuantities"}, r.Errors[0].Path)
		})
	}
	require.Equal(t, int64(0), s.adjustRuns.Load())

	srv.mustData(t, adjustQuery, vars(strings.Repeat("k", idemgql.DefaultMaxKeyLength), 1))
	require.Equal(t, int64(1), s.adjustRuns.Load(), "a key of MaxKeyLength bytes is valid")

	o := options()
	o.MaxKeyLength = 4
	short := newServer(t, e, s, o)
	short.mustData(t, adjustQuery, vars("1234", 1))
	short.wantCode(t, idemgql.CodeKeyInvalid, adjustQuery, vars("12345", 1))
}

func TestScopesKeepClientsApart(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	o := options()
	type shopKey struct{}
	o.Scope = func(ctx context.Context) string {
		v, _ := ctx.Value(shopKey{}).(string)
		return v
	}
	// The scope comes from the request, through an HTTP middleware as an
	// authentication layer would set it.
	srv2 := newServerWith(t, e, s, o, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), shopKey{}, r.Header.Get("X-Shop"))))
		})
	})

	srv2.mustData(t, adjustQuery, vars("k", 1), "X-Shop", "acme")
	srv2.mustData(t, adjustQuery, vars("k", 1), "X-Shop", "globex")
	require.Equal(t, int64(2), s.adjustRuns.Load(), "two shops' keys are two keys")
	srv2.mustData(t, adjustQuery, vars("k", 1), "X-Shop", "acme")
	require.Equal(t, int64(2), s.adjustRuns.Load())
	// Another shop's key with other arguments is no mismatch.
	srv2.mustData(t, adjustQuery, vars("k", 7), "X-Shop", "initech")
	require.Equal(t, int64(3), s.adjustRuns.Load())

	_, err := e.Lookup(idemgql.EngineKey("acme", "k"))
	require.NoError(t, err)
	_, err = e.Lookup(idemgql.EngineKey("", "k"))
	require.ErrorIs(t, err, idem.ErrNotFound)
}

func TestEngineKey(t *testing.T) {
	require.Equal(t, "gql:0:k", idemgql.EngineKey("", "k"))
	require.Equal(t, "gql:4:acmek", idemgql.EngineKey("acme", "k"))
	require.NotEqual(t, idemgql.EngineKey("a", "bc"), idemgql.EngineKey("ab", "c"))
}

func TestResolverErrors(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())
	var fail error
	s.adjust = func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (adjustPayload, error) {
		if fail != nil {
			return nil, fail
		}
		return s.applyAdjustment(in), nil
	}

	t.Run("an error releases the key", func(t *testing.T) {
		fail = errors.New("warehouse offline")
		r := srv.post(t, adjustQuery, vars("err", 1))
		require.Len(t, r.Errors, 1)
		require.Equal(t, "warehouse offline", r.Errors[0].Message)
		fail = nil
		srv.mustData(t, adjustQuery, vars("err", 1))
		require.Equal(t, int64(2), s.adjustRuns.Load(), "the retry ran the resolver again")
	})

	t.Run("a Permanent error is stored", func(t *testing.T) {
		fail = idem.Permanent(&gqlerror.Error{Message: "item discontinued", Extensions: map[string]any{"code": "DISCONTINUED"}})
		r := srv.post(t, adjustQuery, vars("perm", 1))
		require.Len(t, r.Errors, 1)
		require.Equal(t, "item discontinued", r.Errors[0].Message)
		require.Equal(t, "DISCONTINUED", r.Errors[0].Extensions["code"], "the first call gets the resolver's error as it is")
		fail = nil
		r = srv.post(t, adjustQuery, vars("perm", 1))
		require.Len(t, r.Errors, 1)
		require.Equal(t, "item discontinued", r.Errors[0].Message, "the replay has the stored message")
		require.Nil(t, r.Errors[0].Extensions, "but not the extensions")
		require.Equal(t, []any{"inventoryAdjustQuantities"}, r.Errors[0].Path)
		require.Equal(t, int64(3), s.adjustRuns.Load(), "the resolver did not run for the replay")
	})

	t.Run("user errors are part of the value", func(t *testing.T) {
		first := srv.mustData(t, adjustQuery, vars("zero", 0))
		contains(t, first, `"code":"INVALID_QUANTITY"`)
		second := srv.mustData(t, adjustQuery, vars("zero", 0))
		require.JSONEq(t, first, second)
		require.Equal(t, int64(4), s.adjustRuns.Load())
	})

	t.Run("a panic releases the key", func(t *testing.T) {
		s.adjust = func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (adjustPayload, error) {
			panic("boom")
		}
		r := srv.post(t, adjustQuery, vars("panic", 1))
		require.Len(t, r.Errors, 1)
		s.adjust = nil
		srv.mustData(t, adjustQuery, vars("panic", 1))
		require.Equal(t, int64(6), s.adjustRuns.Load())
	})
}

func TestUserErrorsReportsInThePayload(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	o := options()
	o.Mutations["inventoryAdjustQuantities"] = idemgql.Mutation[adjustPayload]{
		UserErrors: func(err *idemgql.Error) (adjustPayload, bool) {
			code := testgql.InventoryAdjustQuantitiesUserErrorCode(err.Code)
			return &testgql.InventoryAdjustQuantitiesPayload{UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{
				{Field: err.Field, Message: err.Message, Code: &code},
			}}, true
		},
	}
	o.Mutations["subscriptionBillingAttemptCreate"] = idemgql.Mutation[billingPayload]{
		KeyArgument: "input.idempotencyKey",
		UserErrors: func(err *idemgql.Error) (billingPayload, bool) {
			return &testgql.SubscriptionBillingAttemptCreatePayload{UserErrors: []*testgql.BillingAttemptUserError{
				{Field: err.Field, Message: err.Message, Code: &err.Code},
			}}, true
		},
	}
	srv := newServer(t, e, s, o)

	srv.mustData(t, adjustQuery, vars("k", 1))
	got := srv.mustData(t, `mutation { inventoryAdjustQuantities(input: {reason: "correction", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2}]}) @idempotent(key: "k") {
		inventoryAdjustmentGroup { id } userErrors { field message code } } }`, nil)
	require.JSONEq(t, `{"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":null,"userErrors":[
		{"field":null,"message":"The idempotency key was used for another mutation, or with other arguments.","code":"IDEMPOTENCY_KEY_PARAMETER_MISMATCH"}]}}`, got)

	srv.mustData(t, billingQuery, map[string]any{"key": "b", "contract": "gid://c/1"})
	got = srv.mustData(t, billingQuery, map[string]any{"key": "b", "contract": "gid://c/2"})
	require.JSONEq(t, `{"subscriptionBillingAttemptCreate":{"subscriptionBillingAttempt":null,"userErrors":[
		{"field":["input","idempotencyKey"],"message":"The idempotency key was used for another mutation, or with other arguments.","code":"IDEMPOTENCY_KEY_PARAMETER_MISMATCH"}]}}`, got)

	// Errors of the document are not the payload's: the operation is refused.
	srv.wantCode(t, idemgql.CodeKeyInvalid, adjustQuery, vars("", 1))

	// Nor is a closed store's, but it concerns the call, so it is.
	require.NoError(t, e.Close())
	got = srv.mustData(t, adjustQuery, vars("k2", 1))
	contains(t, got, `"code":"IDEMPOTENCY_UNAVAILABLE"`)
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

// TestUserErrorsDeclines checks that a UserErrors that returns false for a
// code leaves it a GraphQL error with extensions.code, as without
// UserErrors, while the codes it accepts go in the payload: a userErrors
// code enum with Shopify's two values only cannot hold the others.
func TestUserErrorsDeclines(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	o := options()
	var got []string // the codes UserErrors was called with
	o.Mutations["inventoryAdjustQuantities"] = idemgql.Mutation[adjustPayload]{
		UserErrors: func(err *idemgql.Error) (adjustPayload, bool) {
			got = append(got, err.Code)
			if err.Code != idemgql.CodeKeyParameterMismatch {
				// The payload returned with false is ignored.
				return &testgql.InventoryAdjustQuantitiesPayload{}, false
			}
			code := testgql.InventoryAdjustQuantitiesUserErrorCode(err.Code)
			return &testgql.InventoryAdjustQuantitiesPayload{UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{
				{Field: err.Field, Message: err.Message, Code: &code},
			}}, true
		},
	}
	srv := newServer(t, e, s, o)

	srv.mustData(t, adjustQuery, vars("k", 1))
	data := srv.mustData(t, adjustQuery, vars("k", 2))
	require.JSONEq(t, `{"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":null,"userErrors":[
		{"field":null,"message":"The idempotency key was used for another mutation, or with other arguments.","code":"IDEMPOTENCY_KEY_PARAMETER_MISMATCH"}]}}`, data)

	// Declined: the field is null with the error, and the document's
	// other fields still resolve.
	require.NoError(t, e.Close())
	r := srv.post(t, `mutation($key: String!) {
  ping(message: "before")
  inventoryAdjustQuantities(input: {reason: "correction", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 3}]}) @idempotent(key: $key) {
    userErrors { field message code }
  }
}`, map[string]any{"key": "k2"})
	require.Equal(t, []string{idemgql.CodeUnavailable}, r.codes(), "errors %+v", r.Errors)
	require.JSONEq(t, `{"ping":"before","inventoryAdjustQuantities":null}`, string(r.Data))
	require.Equal(t, []any{"inventoryAdjustQuantities"}, r.Errors[0].Path)
	contains(t, r.Errors[0].Message, "closed")

	require.Equal(t, []string{idemgql.CodeKeyParameterMismatch, idemgql.CodeUnavailable}, got)
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

func TestRequiredKey(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	o := options()
	o.Mutations["inventoryAdjustQuantities"] = idemgql.Mutation[adjustPayload]{Required: true}
	srv := newServer(t, e, s, o)

	noKey := `mutation { inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2}]}) { userErrors { code } } }`
	r := srv.wantCode(t, idemgql.CodeKeyRequired, noKey, nil)
	require.Equal(t, "null", string(r.Data))
	require.Equal(t, int64(0), s.adjustRuns.Load())

	// Skipped, it needs none.
	srv.mustData(t, `mutation($no: Boolean = false) { ping(message: "x") inventoryAdjustQuantities(input: {reason: "r", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: 2}]}) @include(if: $no) { userErrors { code } } }`, nil)
	require.Equal(t, int64(0), s.adjustRuns.Load())

	srv.mustData(t, adjustQuery, vars("k", 1))
	require.Equal(t, int64(1), s.adjustRuns.Load())

	// Without Required, a call without a key runs as if there were no
	// extension: every time.
	s2 := newShop()
	plain := newServer(t, e, s2, options())
	plain.mustData(t, noKey, nil)
	plain.mustData(t, noKey, nil)
	require.Equal(t, int64(2), s2.adjustRuns.Load())
}

func TestClosedAndReadOnlyEngines(t *testing.T) {
	e, dir := openEngine(t)
	s := newShop()
	srv := newServer(t, e, s, options())
	srv.mustData(t, adjustQuery, vars("k", 1))
	require.NoError(t, e.Close())

	r := srv.wantCode(t, idemgql.CodeUnavailable, adjustQuery, vars("k", 1))
	contains(t, r.Errors[0].Message, "closed")
	srv.wantCode(t, idemgql.CodeUnavailable, adjustQuery, vars("k2", 1))
	require.Equal(t, int64(1), s.adjustRuns.Load())

	ro := openDir(t, dir, &idem.Options{ReadOnly: true})
	srv = newServer(t, ro, s, options())
	r = srv.wantCode(t, idemgql.CodeUnavailable, adjustQuery, vars("k3", 1))
	contains(t, r.Errors[0].Message, "read-only")
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

func TestRestartReplaysIntoTheGoType(t *testing.T) {
	dir := t.TempDir()
	e, err := idem.Open(dir, nil)
	require.NoError(t, err)
	s := newShop()
	srv := newServer(t, e, s, options())
	first := srv.mustData(t, adjustQuery, vars("k", 4))
	bill := srv.mustData(t, billingQuery, map[string]any{"key": "b", "contract": "gid://c/1"})
	require.NoError(t, e.Close())

	// A new process: a new engine on the directory, a new extension, a new
	// server, with no memory of the first run.
	e2 := openDir(t, dir, nil)
	s2 := newShop()
	srv2 := newServer(t, e2, s2, options())
	require.JSONEq(t, first, srv2.mustData(t, adjustQuery, vars("k", 4)))
	require.JSONEq(t, bill, srv2.mustData(t, billingQuery, map[string]any{"key": "b", "contract": "gid://c/1"}))
	require.Equal(t, int64(0), s2.adjustRuns.Load()+s2.billingRuns.Load(), "no resolver ran after the restart")
	srv2.wantCode(t, idemgql.CodeKeyParameterMismatch, adjustQuery, vars("k", 5))

	// The stored value decodes into the Go type, time included.
	var got struct {
		Adjust struct {
			Group struct {
				CreatedAt string `json:"createdAt"`
			} `json:"inventoryAdjustmentGroup"`
		} `json:"inventoryAdjustQuantities"`
	}
	require.NoError(t, json.Unmarshal([]byte(first), &got))
	require.NotEmpty(t, got.Adjust.Group.CreatedAt)
}

func TestStoreErrorsAreInternal(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	o := options()
	o.Scope = func(context.Context) string { return strings.Repeat("s", 600) } // too long for the engine's keys
	srv := newServer(t, e, s, o)
	r := srv.wantCode(t, idemgql.CodeInternal, adjustQuery, vars("k", 1))
	require.Equal(t, "The idempotency store failed; retry later.", r.Errors[0].Message)
	require.Equal(t, int64(0), s.adjustRuns.Load())
	contains(t, srv.logs.String(), "engine key is too long")
}
