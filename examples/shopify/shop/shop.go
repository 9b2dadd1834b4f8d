package shop

import "time"

// Options configure New. A nil *Options, and every zero field, means the
// default.
type Options struct {
	// Latency is how long each inventory adjustment, payment and billing
	// attempt takes before it acts, as a slow database or payment gateway
	// would: long enough, and two concurrent requests for one operation
	// overlap. If 0, none.
	Latency time.Duration

	// Logf, if not nil, is told of each operation as it starts and ends.
	Logf func(format string, args ...any)
}

// New returns an inventory and a ledger with their seed: the same on
// every call, so that the same requests get the same IDs and quantities.
//
//	gid://shopify/InventoryItem/1 (sku "T-SHIRT-S")  at Location/1 (Ottawa warehouse): 10 available; at Location/2 (Toronto store): 5
//	gid://shopify/InventoryItem/2 (sku "T-SHIRT-M")  at Location/1: 20 available
//	gid://shopify/InventoryItem/3 (sku "MUG")        at Location/2: 3 available
//	checkout b490a9220cd14d7344024f4874f640a6: 398.00 USD due
//	checkout 2d7f0a1c3e4b5a69788796a5b4c3d2e1: 49.50 USD due
//	gid://shopify/SubscriptionContract/1: active, 29.00 USD a cycle
//	gid://shopify/SubscriptionContract/2: cancelled, 15.00 USD a cycle
func New(opts *Options) (*Inventory, *Ledger) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	inv := &Inventory{
		items:     map[string]Item{},
		locations: map[string]Location{},
		levels:    map[levelKey]level{},
		latency:   o.Latency,
		logf:      o.Logf,
	}
	for _, it := range []Item{
		{ID: "gid://shopify/InventoryItem/1", SKU: "T-SHIRT-S"},
		{ID: "gid://shopify/InventoryItem/2", SKU: "T-SHIRT-M"},
		{ID: "gid://shopify/InventoryItem/3", SKU: "MUG"},
	} {
		inv.items[it.ID] = it
	}
	for _, l := range []Location{
		{ID: "gid://shopify/Location/1", Name: "Ottawa warehouse"},
		{ID: "gid://shopify/Location/2", Name: "Toronto store"},
	} {
		inv.locations[l.ID] = l
	}
	for _, s := range []struct {
		item, location string
		available      int
	}{
		{"gid://shopify/InventoryItem/1", "gid://shopify/Location/1", 10},
		{"gid://shopify/InventoryItem/1", "gid://shopify/Location/2", 5},
		{"gid://shopify/InventoryItem/2", "gid://shopify/Location/1", 20},
		{"gid://shopify/InventoryItem/3", "gid://shopify/Location/2", 3},
	} {
		inv.levels[levelKey{s.item, s.location}] = level{available: s.available, onHand: s.available}
	}

	led := &Ledger{
		latency:   o.Latency,
		logf:      o.Logf,
		checkouts: map[string]*Checkout{},
		contracts: map[string]*Contract{},
	}
	for _, c := range []Checkout{
		{Token: "b490a9220cd14d7344024f4874f640a6", Currency: "USD", TotalPrice: 39800, PaymentDue: 39800},
		{Token: "2d7f0a1c3e4b5a69788796a5b4c3d2e1", Currency: "USD", TotalPrice: 4950, PaymentDue: 4950},
	} {
		led.checkouts[c.Token] = &c
	}
	for _, c := range []Contract{
		{ID: "gid://shopify/SubscriptionContract/1", Status: ContractActive, Amount: 2900, Currency: "USD"},
		{ID: "gid://shopify/SubscriptionContract/2", Status: ContractCancelled, Amount: 1500, Currency: "USD"},
	} {
		led.contracts[c.ID] = &c
	}
	return inv, led
}
