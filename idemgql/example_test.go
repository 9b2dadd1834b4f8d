package idemgql_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemgql/internal/testgql"
)

// The extension in a gqlgen server: a client's retry of an inventory
// adjustment gets the first result back instead of a second adjustment,
// and a reuse of the key for another adjustment is refused. (testgql is
// the package gqlgen generated for this package's test schema, whose
// schema.graphqls has idemgql.DirectiveSDL; a service uses its own.)
func Example() {
	// A real service opens a directory on disk: idem.Open(dir, nil).
	e, err := idem.Open("inventory", &idem.Options{FS: vfs.NewMem()})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	ext := idemgql.New(e, &idemgql.Options{
		Mutations: map[string]idemgql.Field{
			"inventoryAdjustQuantities":        idemgql.Mutation[*testgql.InventoryAdjustQuantitiesPayload]{},
			"subscriptionBillingAttemptCreate": idemgql.Mutation[*testgql.SubscriptionBillingAttemptCreatePayload]{KeyArgument: "input.idempotencyKey"},
		},
	})
	adjustments := 0
	resolvers := &testgql.Resolver{
		Adjust: func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (*testgql.InventoryAdjustQuantitiesPayload, error) {
			adjustments++
			return &testgql.InventoryAdjustQuantitiesPayload{
				InventoryAdjustmentGroup: &testgql.InventoryAdjustmentGroup{
					ID:     fmt.Sprintf("gid://shopify/InventoryAdjustmentGroup/%d", adjustments),
					Reason: in.Reason,
				},
				UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{},
			}, nil
		},
	}
	srv := handler.New(testgql.NewExecutableSchema(testgql.Config{
		Resolvers:  resolvers,
		Directives: testgql.DirectiveRoot{Idempotent: ext.Directive},
	}))
	srv.AddTransport(transport.POST{})
	srv.Use(ext)
	// A real service serves it: http.ListenAndServe(addr, srv).

	const mutation = `mutation($delta: Int!) {
  inventoryAdjustQuantities(input: {reason: "correction", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: $delta}]})
    @idempotent(key: "4f5b6ebf-8c55-4a3b-9d0e-6f2a1c3d4e5f") {
    inventoryAdjustmentGroup { id }
  }
}`
	for _, delta := range []int{5, 5, 7} {
		body, _ := json.Marshal(map[string]any{"query": mutation, "variables": map[string]any{"delta": delta}})
		r := httptest.NewRequest(http.MethodPost, "/graphql", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)

		var resp struct {
			Data   json.RawMessage
			Errors []struct {
				Extensions struct{ Code string }
			}
		}
		json.Unmarshal(w.Body.Bytes(), &resp)
		if len(resp.Errors) > 0 {
			fmt.Println(resp.Errors[0].Extensions.Code)
			continue
		}
		fmt.Println(string(resp.Data))
	}
	fmt.Println("adjustments:", adjustments)
	// Output:
	// {"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1"}}}
	// {"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1"}}}
	// IDEMPOTENCY_KEY_PARAMETER_MISMATCH
	// adjustments: 1
}

// Mutation.UserErrors reports Shopify's two codes in the payload's
// userErrors and declines the others, which stay GraphQL errors with
// extensions.code: for a payload whose userErrors code enum has Shopify's
// values only.
func ExampleMutation_userErrors() {
	e, err := idem.Open("inventory", &idem.Options{FS: vfs.NewMem()})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	ext := idemgql.New(e, &idemgql.Options{
		Mutations: map[string]idemgql.Field{
			"inventoryAdjustQuantities": idemgql.Mutation[*testgql.InventoryAdjustQuantitiesPayload]{
				UserErrors: func(err *idemgql.Error) (*testgql.InventoryAdjustQuantitiesPayload, bool) {
					switch err.Code {
					case idemgql.CodeConcurrentRequest, idemgql.CodeKeyParameterMismatch:
					default:
						return nil, false // a GraphQL error with extensions.code
					}
					code := testgql.InventoryAdjustQuantitiesUserErrorCode(err.Code)
					return &testgql.InventoryAdjustQuantitiesPayload{UserErrors: []*testgql.InventoryAdjustQuantitiesUserError{
						{Field: err.Field, Message: err.Message, Code: &code},
					}}, true
				},
			},
			"subscriptionBillingAttemptCreate": idemgql.Mutation[*testgql.SubscriptionBillingAttemptCreatePayload]{KeyArgument: "input.idempotencyKey"},
		},
	})
	resolvers := &testgql.Resolver{
		Adjust: func(ctx context.Context, in testgql.InventoryAdjustQuantitiesInput) (*testgql.InventoryAdjustQuantitiesPayload, error) {
			return &testgql.InventoryAdjustQuantitiesPayload{
				InventoryAdjustmentGroup: &testgql.InventoryAdjustmentGroup{ID: "gid://shopify/InventoryAdjustmentGroup/1", Reason: in.Reason},
				UserErrors:               []*testgql.InventoryAdjustQuantitiesUserError{},
			}, nil
		},
	}
	srv := handler.New(testgql.NewExecutableSchema(testgql.Config{
		Resolvers:  resolvers,
		Directives: testgql.DirectiveRoot{Idempotent: ext.Directive},
	}))
	srv.AddTransport(transport.POST{})
	srv.Use(ext)

	const mutation = `mutation($key: String!, $delta: Int!) {
  inventoryAdjustQuantities(input: {reason: "correction", name: "available", changes: [{inventoryItemId: "1", locationId: "1", delta: $delta}]})
    @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { code }
  }
}`
	post := func(key string, delta int) {
		body, _ := json.Marshal(map[string]any{"query": mutation, "variables": map[string]any{"key": key, "delta": delta}})
		r := httptest.NewRequest(http.MethodPost, "/graphql", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)

		var resp struct {
			Data   json.RawMessage
			Errors []struct {
				Extensions struct{ Code string }
			}
		}
		json.Unmarshal(w.Body.Bytes(), &resp)
		fmt.Print(string(resp.Data))
		for _, e := range resp.Errors {
			fmt.Print(" error ", e.Extensions.Code)
		}
		fmt.Println()
	}
	post("4f5b6ebf-8c55-4a3b-9d0e-6f2a1c3d4e5f", 5)
	post("4f5b6ebf-8c55-4a3b-9d0e-6f2a1c3d4e5f", 7) // the key with another delta: reported
	e.Close()                                       // the server is shutting down
	post("0b1c5a4e-5e0f-4b8e-9d43-6a1f8f0c2d11", 5) // IDEMPOTENCY_UNAVAILABLE: declined
	// Output:
	// {"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":{"id":"gid://shopify/InventoryAdjustmentGroup/1"},"userErrors":[]}}
	// {"inventoryAdjustQuantities":{"inventoryAdjustmentGroup":null,"userErrors":[{"code":"IDEMPOTENCY_KEY_PARAMETER_MISMATCH"}]}}
	// {"inventoryAdjustQuantities":null} error IDEMPOTENCY_UNAVAILABLE
}
