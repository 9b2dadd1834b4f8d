// Package idemgql makes GraphQL mutations idempotent in a gqlgen server
// (github.com/99designs/gqlgen), on an idem.Engine, the way Shopify's Admin
// API does: the client marks a mutation with the executable directive
// @idempotent(key:), or passes the key in an argument, and the mutation's
// resolver runs once per key; a retry gets the stored result.
//
//	mutation {
//	  inventoryAdjustQuantities(input: {...}) @idempotent(key: "4f5b6ebf-8c55-4a3b-9d0e-6f2a1c3d4e5f") {
//	    inventoryAdjustmentGroup { id }
//	    userErrors { field message code }
//	  }
//	}
//
// # Basics
//
// Declare the directive in the schema (paste DirectiveSDL), regenerate, and
// wire the extension into the server in two places:
//
//	e, err := idem.Open("/var/lib/myapp/idem", nil)
//	...
//	ext := idemgql.New(e, &idemgql.Options{
//		Mutations: map[string]idemgql.Field{
//			"inventoryAdjustQuantities":        idemgql.Mutation[*model.InventoryAdjustQuantitiesPayload]{},
//			"subscriptionBillingAttemptCreate": idemgql.Mutation[*model.SubscriptionBillingAttemptCreatePayload]{KeyArgument: "input.idempotencyKey"},
//		},
//		Scope: func(ctx context.Context) string { return auth.ShopID(ctx) },
//	})
//	srv := handler.New(generated.NewExecutableSchema(generated.Config{
//		Resolvers:  &graph.Resolver{},
//		Directives: generated.DirectiveRoot{Idempotent: ext.Directive}, // 1
//	}))
//	srv.AddTransport(transport.POST{})
//	srv.Use(ext) // 2: panics if the wiring or a registration is wrong
//
// The extension (Use) does the work: it is a graphql.FieldInterceptor, which
// sees every field with its arguments, directives and operation, the key
// argument of a mutation without the directive included. It checks each
// operation before it runs (graphql.OperationContextMutator), and the
// schema when it is installed (Validate). gqlgen itself runs an executable
// directive through a function of the generated DirectiveRoot, and refuses
// the field if that function is nil: Directive is that function, and only
// lets the resolver run under the extension. So a server that forgets
// either line fails loudly (Validate panics in Use for a nil
// DirectiveRoot.Idempotent; Directive refuses @idempotent when the
// extension is not installed): the directive never silently does nothing.
// For the same reason, do not set skip_runtime for @idempotent in
// gqlgen.yml, which Validate refuses: a server without the extension would
// ignore the directive.
//
// Each idempotent mutation is registered in Options.Mutations with the Go
// type its resolver returns, Mutation[T]: a replay, even in a new process,
// decodes the stored result into a T before the resolver has run, so the
// type must be known beforehand. Validate checks every registration against
// the schema, and against the resolver's type in gqlgen's generated code. A
// mutation that is not registered refuses @idempotent rather than running
// without it.
//
// # The key
//
//   - The client gives it with @idempotent(key:) on the mutation field, or,
//     for a mutation registered with Mutation.KeyArgument, in that argument
//     (a String or an ID, possibly inside an input object:
//     "input.idempotencyKey"). Given both ways, the two must be equal.
//   - It must be 1 to Options.MaxKeyLength (255) bytes of printable ASCII
//     (a UUID, typically).
//   - A call of a registered mutation without a key runs as if the
//     extension were not there, unless the mutation is registered with
//     Required.
//   - Options.Scope prefixes it with what the server knows of the client
//     (a shop, an account), so that keys of different clients never
//     collide. The engine key (EngineKey) is "gql:", the scope's length, a
//     colon, the scope, then the key: unambiguous, and never equal to a key
//     of package idemhttp (which begin with a digit), so one engine may
//     serve both. Keys share one space across the mutations of a scope, as
//     Stripe's and Shopify's do: a key used for one mutation and then for
//     another is a mismatch.
//
// # What runs once
//
// The resolver of a registered mutation runs once per engine key. Every
// later call with the key and the same fingerprint gets the stored result
// back, until the record expires (the engine's Options.TTL, 24 hours by
// default), and the resolver does not run:
//
//   - The fingerprint is the SHA-256 of the field's name and its arguments,
//     coerced by their schema types (an Int given as a literal or a
//     variable, an ID as a number or a string, a default given or left
//     out, are the same) and encoded with sorted object keys, without the
//     key argument. The selection set, the alias and the directives are not
//     part of it: a retry may select other fields of the same result, and
//     gets them. A key reused with another fingerprint is refused
//     (IDEMPOTENCY_KEY_PARAMETER_MISMATCH); the resolver does not run.
//   - A call with a key whose resolver is running waits up to Options.Wait
//     (5 s) for its result and gets it as a retry would, then gets
//     IDEMPOTENCY_CONCURRENT_REQUEST. A negative Wait answers that at once,
//     as Shopify does.
//   - A key whose resolver was running when the process stopped reports
//     IDEMPOTENCY_OUTCOME_UNKNOWN (idem.ErrInterrupted): whether its effect
//     happened is unknown, so it does not run again until an operator who
//     has reconciled it calls the engine's Forget with its EngineKey (or
//     the engine runs with Options.RetryInterrupted).
//   - A document may hold several mutations, each with its own key: GraphQL
//     runs a mutation's root fields one after the other, in order, and each
//     is a call of its own. A key used twice in one document makes the
//     second a retry of the first.
//
// # What is stored
//
//   - The resolver's Go value, msgpack-encoded with idem.DoValue, and
//     decoded into a new T for replays. msgpack rather than JSON, which
//     would round-trip gqlgen's models too: it is DoValue's codec, whose
//     checks tell a damaged record (idem.ErrCorrupt) from one stored with
//     another type (idem.ErrValueType) and refuse the lengths a damaged
//     record may claim; its records are smaller; and it keeps what JSON
//     loses in values of type any (a Map or Any scalar): integers stay
//     integers, bytes stay bytes. The payload's userErrors are part of the
//     value: stored and replayed.
//   - An error of the resolver stores nothing, as in idem: the key is
//     released, the client gets the error, and its retry runs the resolver
//     again. Return an error only when the mutation committed nothing it
//     cannot redo.
//   - An error wrapped with idem.Permanent is stored as the outcome: the
//     first call gets it as the resolver returned it, every replay a
//     GraphQL error with its message (that of the *gqlerror.Error in it, if
//     any), without its extensions. What a client must branch on belongs
//     in the payload's userErrors, which are stored whole.
//   - A panic in the resolver releases the key and reaches gqlgen's
//     recovery, as without the extension.
//   - The result of a call that runs the resolver reaches its client even
//     if storing it fails: a result larger than the engine's MaxValueSize
//     (the key is released, a retry runs the resolver again), or a storage
//     error (a retry gets IDEMPOTENCY_OUTCOME_UNKNOWN). Both are logged
//     (Options.Logger).
//
// # Where @idempotent may go
//
// Only on a root field of a mutation operation, registered in
// Options.Mutations. The extension checks the whole operation before
// anything runs, and refuses it whole (one GraphQL error, no data, no
// mutation run) if @idempotent is:
//
//   - on a field of a query or a subscription: reads have no effect to
//     repeat, and a key on one is a client's mistake that it is better told
//     of than left to believe in a guarantee it does not have;
//   - on a field nested in a mutation's selection: by the time gqlgen
//     reaches it, the mutation above it has run, unprotected;
//   - on a mutation that is not registered.
//
// Invalid keys, and missing ones of Required mutations, refuse the
// operation whole too: a document with several mutations runs none of them.
//
// # Errors
//
// The extension's errors are GraphQL errors whose extensions.code is one of
// the Code constants, with the field's path and location; their Err is an
// *Error, which a custom error presenter finds with errors.As. Those that
// concern one call are answered when the mutation's turn comes: the field
// is null with the error, and the document's other mutations run.
// Mutation.UserErrors may report any of the first four in the mutation's
// payload instead, as Shopify's userErrors list does. Those that concern the
// document refuse the operation whole before anything runs: no data, one
// error.
//
//	code                                 when                                                                       answered
//	IDEMPOTENCY_CONCURRENT_REQUEST       the key's resolver is still running after Options.Wait; retry later        call
//	IDEMPOTENCY_KEY_PARAMETER_MISMATCH   the key was used for another mutation or other arguments; use a new key    call
//	IDEMPOTENCY_OUTCOME_UNKNOWN          the key's resolver was cut off by a crash (idem.ErrInterrupted)            call
//	IDEMPOTENCY_UNAVAILABLE              the engine is closed or read-only; retry later                             call
//	IDEMPOTENCY_INTERNAL_ERROR           the engine failed, a stored result does not decode, misconfiguration      call, logged
//	IDEMPOTENCY_KEY_INVALID              empty, too long, not printable ASCII, or two different keys                operation
//	IDEMPOTENCY_KEY_REQUIRED             no key for a mutation registered with Required                             operation
//	IDEMPOTENCY_UNSUPPORTED_PLACEMENT    @idempotent on a field of a query or subscription, or a nested field       operation
//	IDEMPOTENCY_UNSUPPORTED_MUTATION     @idempotent on a mutation not in Options.Mutations                         operation
//
// None of them stores anything: a client may retry with the same key.
//
// # Reporting errors in userErrors
//
// Shopify's mutations report IDEMPOTENCY_CONCURRENT_REQUEST and
// IDEMPOTENCY_KEY_PARAMETER_MISMATCH as codes of their payload's userErrors.
// Mutation.UserErrors builds that payload from the *Error and returns true,
// and the field resolves to it, with no GraphQL error (nor anything
// stored); or it returns false, and the error is a GraphQL error with
// extensions.code, as without UserErrors. With a user error code enum of
// Shopify's two values only, the function declines the other two codes,
// which the enum cannot hold (gqlgen would refuse the value); the IsValid
// method that gqlgen generates for an enum tells them apart:
//
//	idemgql.Mutation[*model.InventoryAdjustQuantitiesPayload]{
//		UserErrors: func(err *idemgql.Error) (*model.InventoryAdjustQuantitiesPayload, bool) {
//			code := model.InventoryAdjustQuantitiesUserErrorCode(err.Code)
//			if !code.IsValid() {
//				return nil, false // IDEMPOTENCY_OUTCOME_UNKNOWN, IDEMPOTENCY_UNAVAILABLE
//			}
//			return &model.InventoryAdjustQuantitiesPayload{UserErrors: []*model.InventoryAdjustQuantitiesUserError{
//				{Field: err.Field, Message: err.Message, Code: &code},
//			}}, true
//		},
//	}
//
// Error.Field is the key argument's path when the key came from it. The
// function gets only the four codes that concern one call (see Errors);
// the others are always GraphQL errors.
//
// # Caveats
//
//   - Only the mutation field's Go value is stored. Fields below it that
//     have resolvers of their own (a payload's object fetched by ID, say)
//     run again for every response, replays included, on the decoded
//     value: keep the mutation's effects in its own resolver.
//   - msgpack keeps a time.Time's instant but not its location: a replayed
//     time is in the server's local time zone (time.Local), and renders
//     with that offset. Run the server with TZ=UTC, or keep times in UTC
//     with a scalar of your own, if replays must match byte for byte.
//   - Calls that wait in the engine are released (after Options.Wait) by
//     the call whose resolver runs, which only this Extension knows of. A
//     call whose key is running through another Extension, or a direct Do,
//     on the same engine waits for it until its request's context ends
//     (it still never runs twice). An Extension serves one schema
//     (Validate refuses a second one), in as many gqlgen servers as need
//     it: use one Extension for all the servers of a schema on an engine,
//     and give servers of other schemas on the same engine scopes of their
//     own.
//   - Arguments of the Upload scalar are fingerprinted by their file name,
//     size and content type, not their content.
package idemgql
