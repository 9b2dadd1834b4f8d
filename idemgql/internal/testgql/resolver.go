package testgql

import (
	"context"
)

// Resolver is the ResolverRoot: each mutation calls the function of its
// name, which a test sets. A nil function makes the mutation return an
// error.
type Resolver struct {
	Adjust        func(ctx context.Context, input InventoryAdjustQuantitiesInput) (*InventoryAdjustQuantitiesPayload, error)
	BillingCreate func(ctx context.Context, input SubscriptionBillingAttemptInput) (*SubscriptionBillingAttemptCreatePayload, error)
	Ping          func(ctx context.Context, message *string) (*string, error)
	Available     func(ctx context.Context, inventoryItemID string, locationID string) (int, error)
}
