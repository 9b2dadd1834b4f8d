package idemgql_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/stretchr/testify/require"
	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"

	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemgql/internal/testgql"
)

// useOn returns the message of the panic of a gqlgen server's Use of the
// extension on es, or "" if it accepts it.
func useOn(es graphql.ExecutableSchema, ext *idemgql.Extension) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	handler.New(es).Use(ext)
	return ""
}

// generated returns the test schema's executable schema, with the
// extension's Directive if wire.
func generated(s *shop, ext *idemgql.Extension, wire bool) graphql.ExecutableSchema {
	cfg := testgql.Config{Resolvers: s.resolver()}
	if wire {
		cfg.Directives.Idempotent = ext.Directive
	}
	return testgql.NewExecutableSchema(cfg)
}

func TestValidateGeneratedSchema(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()

	ext := idemgql.New(e, options())
	require.Empty(t, useOn(generated(s, ext, true), ext))

	ext = idemgql.New(e, options())
	contains(t, useOn(generated(s, ext, false), ext), "DirectiveRoot.Idempotent is nil")

	cases := map[string]struct {
		field idemgql.Field
		name  string
		want  string
	}{
		"value instead of pointer": {idemgql.Mutation[testgql.InventoryAdjustQuantitiesPayload]{}, "inventoryAdjustQuantities",
			"the resolver returns a *testgql.InventoryAdjustQuantitiesPayload"},
		"another payload": {idemgql.Mutation[billingPayload]{}, "inventoryAdjustQuantities",
			"register Mutation[*testgql.InventoryAdjustQuantitiesPayload]"},
		"no such field":    {idemgql.Mutation[adjustPayload]{}, "inventoryAdjust", `has no field "inventoryAdjust"`},
		"no such argument": {idemgql.Mutation[billingPayload]{KeyArgument: "idempotencyKey"}, "subscriptionBillingAttemptCreate", `no argument "idempotencyKey"`},
		"no such input field": {idemgql.Mutation[billingPayload]{KeyArgument: "input.key"}, "subscriptionBillingAttemptCreate",
			`SubscriptionBillingAttemptInput has no field "key"`},
		"an input object": {idemgql.Mutation[billingPayload]{KeyArgument: "input"}, "subscriptionBillingAttemptCreate", "not a String or an ID"},
		"below a string": {idemgql.Mutation[billingPayload]{KeyArgument: "input.idempotencyKey.x"}, "subscriptionBillingAttemptCreate",
			"input.idempotencyKey is a String!, not an input object"},
		"a time": {idemgql.Mutation[billingPayload]{KeyArgument: "input.originTime"}, "subscriptionBillingAttemptCreate", "Time, not a String or an ID"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			o := options()
			o.Mutations[c.name] = c.field
			ext := idemgql.New(e, o)
			contains(t, useOn(generated(s, ext, true), ext), c.want)
		})
	}

	ext = idemgql.New(e, &idemgql.Options{})
	contains(t, useOn(generated(s, ext, true), ext), "Options.Mutations is empty")

	// An ID key argument is fine.
	o := options()
	o.Mutations["subscriptionBillingAttemptCreate"] = idemgql.Mutation[billingPayload]{KeyArgument: "input.subscriptionContractId"}
	ext = idemgql.New(e, o)
	require.Empty(t, useOn(generated(s, ext, true), ext))

	// The same schema again is fine.
	require.Empty(t, useOn(generated(s, ext, true), ext))
}

// sdlSchema is an executable schema of SDL alone, for Validate: not one
// gqlgen generated, so Validate checks what the SDL says.
type sdlSchema struct{ s *ast.Schema }

func newSDLSchema(t *testing.T, sdl string) *sdlSchema {
	t.Helper()
	s, err := gqlparser.LoadSchema(&ast.Source{Name: "schema.graphqls", Input: sdl})
	require.NoError(t, err)
	return &sdlSchema{s: s}
}

func (s *sdlSchema) Schema() *ast.Schema { return s.s }
func (s *sdlSchema) Complexity(context.Context, string, string, int, map[string]any) (int, bool) {
	return 0, false
}
func (s *sdlSchema) Exec(context.Context) graphql.ResponseHandler { return nil }

func TestValidateSchemaDefinition(t *testing.T) {
	e, _ := openEngine(t)
	const types = `
type Query { q: Int }
type Mutation { pay(input: PayInput!): Payment }
input PayInput { amount: Int!, idempotencyKey: String }
type Payment { id: ID! }
`
	type payment struct{ ID string }
	directive := idemgql.Mutation[*payment]{}
	argument := idemgql.Mutation[*payment]{KeyArgument: "input.idempotencyKey"}
	cases := []struct {
		name, sdl string
		field     idemgql.Field
		want      string // "" for none
	}{
		{"as DirectiveSDL", idemgql.DirectiveSDL + types, directive, ""},
		{"optional key", `directive @idempotent(key: String) on FIELD` + types, directive, "declares @idempotent otherwise"},
		{"other location", `directive @idempotent(key: String!) on FIELD | FIELD_DEFINITION` + types, directive, "declares @idempotent otherwise"},
		{"repeatable", `directive @idempotent(key: String!) repeatable on FIELD` + types, directive, "declares @idempotent otherwise"},
		{"another argument", `directive @idempotent(key: String!, ttl: Int) on FIELD` + types, directive, "declares @idempotent otherwise"},
		{"undeclared, needed", types, directive, "does not declare @idempotent"},
		{"undeclared, not needed", types, argument, ""},
		{"no mutation type", idemgql.DirectiveSDL + "\ntype Query { q: Int }", directive, "no mutation type"},
		{"an interface in the result", idemgql.DirectiveSDL + types, idemgql.Mutation[*struct{ Node fmt.Stringer }]{},
			"Node is of the interface type fmt.Stringer"},
		{"a func in the result", idemgql.DirectiveSDL + types, idemgql.Mutation[[]struct{ F func() }]{}, "F is a func"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ext := idemgql.New(e, &idemgql.Options{Mutations: map[string]idemgql.Field{"pay": c.field}})
			msg := useOn(newSDLSchema(t, c.sdl), ext)
			if c.want == "" {
				require.Empty(t, msg)
			} else {
				contains(t, msg, c.want)
			}
		})
	}

	// One Extension, one schema.
	ext := idemgql.New(e, &idemgql.Options{Mutations: map[string]idemgql.Field{"pay": directive}})
	require.Empty(t, useOn(newSDLSchema(t, idemgql.DirectiveSDL+types), ext))
	contains(t, useOn(newSDLSchema(t, idemgql.DirectiveSDL+types), ext), "in use with another schema")
}

func TestNewPanicsOnInvalidOptions(t *testing.T) {
	e, _ := openEngine(t)
	contains(t, mustPanic(t, func() { idemgql.New(nil, options()) }), "nil *idem.Engine")
	contains(t, mustPanic(t, func() { idemgql.New(e, &idemgql.Options{MaxKeyLength: -1}) }), "MaxKeyLength is negative")
	contains(t, mustPanic(t, func() {
		idemgql.New(e, &idemgql.Options{Mutations: map[string]idemgql.Field{"x": nil}})
	}), `Options.Mutations["x"] is nil`)
	contains(t, mustPanic(t, func() {
		idemgql.New(e, &idemgql.Options{Mutations: map[string]idemgql.Field{"x": (*idemgql.Mutation[int])(nil)}})
	}), `Options.Mutations["x"] is nil`)
	contains(t, mustPanic(t, func() {
		idemgql.New(e, &idemgql.Options{Mutations: map[string]idemgql.Field{"x": idemgql.Mutation[int]{KeyArgument: "input..key"}}})
	}), "has an empty part")
}

// New copies the options: a change to the caller's map after New is not
// seen.
func TestNewCopiesTheOptions(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	o := options()
	srv := newServer(t, e, s, o)
	delete(o.Mutations, "inventoryAdjustQuantities")
	srv.mustData(t, adjustQuery, vars("k", 1))
	srv.mustData(t, adjustQuery, vars("k", 1))
	require.Equal(t, int64(1), s.adjustRuns.Load())
}

// Where Validate cannot see the resolver's type (a schema wrapped in a type
// of the server's), a wrong registration is caught when the resolver first
// runs: its client gets its result, the error is logged, and the key is
// never run again.
func TestWrongTypeAtRunTimeNeverRunsTwice(t *testing.T) {
	e, _ := openEngine(t)
	s := newShop()
	logs := &logBuffer{}
	o := options()
	o.Mutations["inventoryAdjustQuantities"] = idemgql.Mutation[testgql.InventoryAdjustQuantitiesPayload]{}
	o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ext := idemgql.New(e, o)
	es := struct{ graphql.ExecutableSchema }{generated(s, ext, true)}
	h := handler.New(es)
	h.AddTransport(transport.POST{})
	h.Use(ext)
	srv := serve(t, h, ext, logs)

	first := srv.mustData(t, adjustQuery, vars("k", 1))
	contains(t, first, "InventoryAdjustmentGroup/1")
	contains(t, logs.String(), "not the testgql.InventoryAdjustQuantitiesPayload of its registration")
	r := srv.post(t, adjustQuery, vars("k", 1))
	require.Len(t, r.Errors, 1)
	contains(t, r.Errors[0].Message, "its result was not stored")
	require.Equal(t, int64(1), s.adjustRuns.Load())
}
