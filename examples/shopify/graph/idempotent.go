package graph

import (
	"github.com/idemkv/idem/idemgql"

	"github.com/idemkv/idem/examples/shopify/graph/model"
)

// Mutations are the schema's idempotent mutations, for
// idemgql.Options.Mutations. Both require a key, and report Shopify's
// errors of idempotency (a key reused with other arguments, a request with
// the key still running) in their payload's userErrors, as Shopify does,
// rather than as GraphQL errors. Their userErrors code enums hold
// Shopify's values only, so they decline idemgql's other two codes, of a
// request cut off by a crash (IDEMPOTENCY_OUTCOME_UNKNOWN) and of a store
// that is closed (IDEMPOTENCY_UNAVAILABLE): those are GraphQL errors with
// extensions.code.
func Mutations() map[string]idemgql.Field {
	return map[string]idemgql.Field{
		// The key in the @idempotent(key:) directive on the field, as
		// Shopify requires it from API version 2026-04.
		"inventoryAdjustQuantities": idemgql.Mutation[*model.InventoryAdjustQuantitiesPayload]{
			Required: true,
			UserErrors: func(err *idemgql.Error) (*model.InventoryAdjustQuantitiesPayload, bool) {
				code := model.InventoryAdjustQuantitiesUserErrorCode(err.Code)
				if !code.IsValid() {
					return nil, false
				}
				return &model.InventoryAdjustQuantitiesPayload{
					UserErrors: []*model.InventoryAdjustQuantitiesUserError{{Field: err.Field, Message: err.Message, Code: &code}},
				}, true
			},
		},
		// The key as an argument, as in Shopify's older mutations.
		"subscriptionBillingAttemptCreate": idemgql.Mutation[*model.SubscriptionBillingAttemptCreatePayload]{
			KeyArgument: "input.idempotencyKey",
			Required:    true,
			UserErrors: func(err *idemgql.Error) (*model.SubscriptionBillingAttemptCreatePayload, bool) {
				code := model.BillingAttemptUserErrorCode(err.Code)
				if !code.IsValid() {
					return nil, false
				}
				return &model.SubscriptionBillingAttemptCreatePayload{
					UserErrors: []*model.BillingAttemptUserError{{Field: err.Field, Message: err.Message, Code: &code}},
				}, true
			},
		},
	}
}
