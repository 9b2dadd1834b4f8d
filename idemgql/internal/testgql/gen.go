// Package testgql is a small gqlgen schema, a part of Shopify's Admin API,
// for idemgql's tests and example: its resolvers call the functions a test
// sets in Resolver.
package testgql

//go:generate go tool gqlgen generate --config gqlgen.yml
