// Package shop is the example's store: an in-memory inventory (quantities
// per item and location) and a payment ledger (checkout payments and
// subscription billing attempts). It knows nothing of idempotency: every
// call acts, so a caller that must not act twice for one request wraps the
// call in idem.
//
// Everything is in memory and starts from the same seed on every start:
// see New.
package shop

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Error codes of the user errors, as Shopify's
// InventoryAdjustQuantitiesUserErrorCode and BillingAttemptUserErrorCode
// spell them.
const (
	CodeInvalidInventoryItem     = "INVALID_INVENTORY_ITEM"
	CodeInvalidLocation          = "INVALID_LOCATION"
	CodeInvalidQuantityName      = "INVALID_QUANTITY_NAME"
	CodeInvalidReason            = "INVALID_REASON"
	CodeItemNotStockedAtLocation = "ITEM_NOT_STOCKED_AT_LOCATION"
	CodeInvalidQuantityTooHigh   = "INVALID_QUANTITY_TOO_HIGH"
	CodeInvalidQuantityTooLow    = "INVALID_QUANTITY_TOO_LOW"
	CodeContractNotFound         = "CONTRACT_NOT_FOUND"
	CodeContractTerminated       = "CONTRACT_TERMINATED"
	CodeBlank                    = "BLANK"
)

// maxQuantity bounds a quantity either way, as Shopify does (1,000,000,000).
const maxQuantity = 1_000_000_000

// QuantityAvailable is the one quantity name that adjustments change here
// (Shopify has others: damaged, reserved, safety_stock...). Adjusting it
// changes on_hand by as much, as in Shopify, where on_hand is available
// plus the quantities set aside.
const QuantityAvailable = "available"

// QuantityOnHand is the other name a level's quantities can be read by.
const QuantityOnHand = "on_hand"

// reasons are the reasons Shopify accepts for an adjustment.
var reasons = []string{
	"correction", "cycle_count_available", "damaged", "movement_canceled",
	"movement_created", "movement_received", "movement_updated", "other",
	"promotion", "quality_control", "received", "reservation_created",
	"reservation_deleted", "reservation_updated", "restock", "safety_stock",
	"shrinkage",
}

// UserError is an error in a request's input, reported in a mutation's
// userErrors as Shopify does: the path to the input field, a message and a
// code.
type UserError struct {
	Field   []string
	Message string
	Code    string
}

// Item is an inventory item.
type Item struct {
	ID  string // gid://shopify/InventoryItem/N
	SKU string
}

// Location is where items are stocked.
type Location struct {
	ID   string // gid://shopify/Location/N
	Name string
}

// Level is an item's quantities at a location.
type Level struct {
	Item      Item
	Location  Location
	Available int
	OnHand    int
	UpdatedAt time.Time
}

// ID returns the level's ID as Shopify builds it: the location's number
// and the item's.
func (l Level) ID() string {
	return fmt.Sprintf("gid://shopify/InventoryLevel/%s?inventory_item_id=%s", gidNumber(l.Location.ID), gidNumber(l.Item.ID))
}

// Change is one change of an adjustment: delta added to the quantity of
// an item at a location.
type Change struct {
	ItemID     string
	LocationID string
	Delta      int
}

// Adjustment is the input of Adjust, Shopify's
// InventoryAdjustQuantitiesInput.
type Adjustment struct {
	Reason               string
	Name                 string // the quantity name: "available"
	ReferenceDocumentURI string
	Changes              []Change
}

// AppliedChange is a change as applied, with the quantity it left.
type AppliedChange struct {
	Name                string
	Delta               int
	QuantityAfterChange int
	Item                Item
	Location            Location
}

// AdjustmentGroup is the record of one Adjust call that changed the
// inventory, Shopify's InventoryAdjustmentGroup.
type AdjustmentGroup struct {
	ID                   string // gid://shopify/InventoryAdjustmentGroup/N
	CreatedAt            time.Time
	Reason               string
	ReferenceDocumentURI string
	Changes              []AppliedChange
}

type levelKey struct{ item, location string }

type level struct {
	available, onHand int
	updatedAt         time.Time
}

// Inventory holds quantities per item and location. Its methods are safe
// for concurrent use.
type Inventory struct {
	items     map[string]Item     // by ID; read-only after New
	locations map[string]Location // by ID; read-only after New
	latency   time.Duration
	logf      func(format string, args ...any)

	mu     sync.Mutex         // guards levels, groups
	levels map[levelKey]level // the items stocked at each location
	groups int                // adjustment groups made so far
}

// Adjust applies the changes of a, all or none, and returns the group that
// records them, or the user errors that made it change nothing. It first
// waits the inventory's latency (see Options.Latency), then checks and
// applies every change under one lock. An error is ctx's, if ctx ended
// during the wait: nothing changed.
func (inv *Inventory) Adjust(ctx context.Context, a Adjustment) (*AdjustmentGroup, []UserError, error) {
	if errs := inv.check(a); len(errs) > 0 {
		return nil, errs, nil
	}
	inv.logf("inventory: adjusting %d change(s), reason %q", len(a.Changes), a.Reason)
	if err := sleep(ctx, inv.latency); err != nil {
		return nil, nil, err
	}

	inv.mu.Lock()
	defer inv.mu.Unlock()
	// Check the sums under the lock, then apply: all or nothing.
	after := make(map[levelKey]int, len(a.Changes))
	for i, c := range a.Changes {
		k := levelKey{c.ItemID, c.LocationID}
		q, ok := after[k]
		if !ok {
			q = inv.levels[k].available
		}
		q += c.Delta
		switch {
		case q > maxQuantity:
			return nil, []UserError{changeError(i, "delta", CodeInvalidQuantityTooHigh, "The quantity can't be higher than 1,000,000,000.")}, nil
		case q < -maxQuantity:
			return nil, []UserError{changeError(i, "delta", CodeInvalidQuantityTooLow, "The quantity can't be lower than -1,000,000,000.")}, nil
		}
		after[k] = q
	}
	now := time.Now().UTC().Truncate(time.Second)
	inv.groups++
	g := &AdjustmentGroup{
		ID:                   fmt.Sprintf("gid://shopify/InventoryAdjustmentGroup/%d", inv.groups),
		CreatedAt:            now,
		Reason:               a.Reason,
		ReferenceDocumentURI: a.ReferenceDocumentURI,
	}
	for _, c := range a.Changes {
		k := levelKey{c.ItemID, c.LocationID}
		l := inv.levels[k]
		l.available += c.Delta
		l.onHand += c.Delta
		l.updatedAt = now
		inv.levels[k] = l
		g.Changes = append(g.Changes, AppliedChange{
			Name:                a.Name,
			Delta:               c.Delta,
			QuantityAfterChange: l.available,
			Item:                inv.items[c.ItemID],
			Location:            inv.locations[c.LocationID],
		})
	}
	inv.logf("inventory: %s applied", g.ID)
	return g, nil, nil
}

// check returns the user errors of a's fields that do not depend on the
// quantities.
func (inv *Inventory) check(a Adjustment) []UserError {
	var errs []UserError
	if !slices.Contains(reasons, a.Reason) {
		errs = append(errs, UserError{Field: []string{"input", "reason"}, Code: CodeInvalidReason,
			Message: fmt.Sprintf("The specified reason %q is invalid.", a.Reason)})
	}
	if a.Name != QuantityAvailable {
		errs = append(errs, UserError{Field: []string{"input", "name"}, Code: CodeInvalidQuantityName,
			Message: fmt.Sprintf("The quantity name %q is not supported here: only %q can be adjusted.", a.Name, QuantityAvailable)})
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for i, c := range a.Changes {
		_, itemOK := inv.items[c.ItemID]
		_, locOK := inv.locations[c.LocationID]
		_, stocked := inv.levels[levelKey{c.ItemID, c.LocationID}]
		switch {
		case !itemOK:
			errs = append(errs, changeError(i, "inventoryItemId", CodeInvalidInventoryItem, "The specified inventory item could not be found."))
		case !locOK:
			errs = append(errs, changeError(i, "locationId", CodeInvalidLocation, "The specified location could not be found."))
		case !stocked:
			errs = append(errs, changeError(i, "inventoryItemId", CodeItemNotStockedAtLocation, "The specified inventory item is not stocked at the location."))
		}
	}
	return errs
}

func changeError(i int, field, code, msg string) UserError {
	return UserError{Field: []string{"input", "changes", fmt.Sprint(i), field}, Code: code, Message: msg}
}

// Level returns the quantities of an item at a location, and false if the
// item is not stocked there (or either does not exist).
func (inv *Inventory) Level(itemID, locationID string) (Level, bool) {
	inv.mu.Lock()
	l, ok := inv.levels[levelKey{itemID, locationID}]
	inv.mu.Unlock()
	if !ok {
		return Level{}, false
	}
	return Level{
		Item:      inv.items[itemID],
		Location:  inv.locations[locationID],
		Available: l.available,
		OnHand:    l.onHand,
		UpdatedAt: l.updatedAt,
	}, true
}

// Item returns the item with the ID, and false if there is none.
func (inv *Inventory) Item(id string) (Item, bool) {
	it, ok := inv.items[id]
	return it, ok
}

// Location returns the location with the ID, and false if there is none.
func (inv *Inventory) Location(id string) (Location, bool) {
	l, ok := inv.locations[id]
	return l, ok
}

// Groups returns the number of adjustment groups made since New: how many
// Adjust calls changed the inventory.
func (inv *Inventory) Groups() int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.groups
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gidNumber returns the last path element of a gid://shopify/Type/N ID.
func gidNumber(gid string) string {
	for i := len(gid) - 1; i >= 0; i-- {
		if gid[i] == '/' {
			return gid[i+1:]
		}
	}
	return gid
}
