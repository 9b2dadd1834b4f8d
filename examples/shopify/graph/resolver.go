// Package graph is the example's GraphQL API: the schema (*.graphqls), the
// code gqlgen generates from it (generated.go, model/), and the resolvers.
package graph

//go:generate go tool gqlgen generate --config gqlgen.yml

import "github.com/idemkv/idem/examples/shopify/shop"

// Resolver resolves the schema's fields on the inventory and the ledger.
type Resolver struct {
	Inventory *shop.Inventory
	Ledger    *shop.Ledger
}
