package graph

import (
	"time"

	"github.com/idemkv/idem/examples/shopify/graph/model"
	"github.com/idemkv/idem/examples/shopify/shop"
)

// The conversions from the shop's types to the schema's.

func item(it shop.Item) *model.InventoryItem {
	return &model.InventoryItem{ID: it.ID, Sku: &it.SKU}
}

func location(l shop.Location) *model.Location {
	return &model.Location{ID: l.ID, Name: l.Name}
}

func inventoryLevel(l shop.Level) *model.InventoryLevel {
	return &model.InventoryLevel{ID: l.ID(), Item: item(l.Item), Location: location(l.Location)}
}

func adjustmentGroup(g *shop.AdjustmentGroup) *model.InventoryAdjustmentGroup {
	m := &model.InventoryAdjustmentGroup{
		ID:                   g.ID,
		CreatedAt:            g.CreatedAt,
		Reason:               g.Reason,
		ReferenceDocumentURI: optional(g.ReferenceDocumentURI),
		Changes:              make([]*model.InventoryChange, 0, len(g.Changes)),
	}
	for _, c := range g.Changes {
		m.Changes = append(m.Changes, &model.InventoryChange{
			Name:                c.Name,
			Delta:               c.Delta,
			QuantityAfterChange: &c.QuantityAfterChange,
			Item:                item(c.Item),
			Location:            location(c.Location),
		})
	}
	return m
}

func inventoryUserErrors(errs []shop.UserError) []*model.InventoryAdjustQuantitiesUserError {
	m := make([]*model.InventoryAdjustQuantitiesUserError, 0, len(errs))
	for _, e := range errs {
		code := model.InventoryAdjustQuantitiesUserErrorCode(e.Code)
		m = append(m, &model.InventoryAdjustQuantitiesUserError{Field: e.Field, Message: e.Message, Code: &code})
	}
	return m
}

func billingUserErrors(errs []shop.UserError) []*model.BillingAttemptUserError {
	m := make([]*model.BillingAttemptUserError, 0, len(errs))
	for _, e := range errs {
		code := model.BillingAttemptUserErrorCode(e.Code)
		m = append(m, &model.BillingAttemptUserError{Field: e.Field, Message: e.Message, Code: &code})
	}
	return m
}

func contract(c shop.Contract) *model.SubscriptionContract {
	return &model.SubscriptionContract{ID: c.ID, Status: c.Status}
}

func billingAttempt(a *shop.BillingAttempt, c shop.Contract) *model.SubscriptionBillingAttempt {
	completed := a.CompletedAt
	return &model.SubscriptionBillingAttempt{
		ID:             a.ID,
		IdempotencyKey: a.IdempotencyKey,
		CreatedAt:      a.CreatedAt,
		CompletedAt:    &completed,
		OriginTime:     a.OriginTime,
		Ready:          true,
		Order: &model.Order{
			ID:   a.Order.ID,
			Name: a.Order.Name,
			TotalPriceSet: &model.MoneyBag{ShopMoney: &model.MoneyV2{
				Amount:       a.Order.Total.String(),
				CurrencyCode: a.Order.Currency,
			}},
		},
		SubscriptionContract: contract(c),
	}
}

// optional returns nil for "", else a pointer to s.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// timeOrNil returns nil for the zero time, else a pointer to t.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
