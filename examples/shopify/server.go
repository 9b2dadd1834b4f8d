package main

import (
	"bytes"
	"encoding/json"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/handler/transport"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemgql"
	"github.com/idemkv/idem/idemhttp"

	"github.com/idemkv/idem/examples/shopify/graph"
	"github.com/idemkv/idem/examples/shopify/shop"
)

// newHandler returns the service's routes, with the inventory and the
// ledger seeded anew, on the engine e.
func newHandler(e *idem.Engine, c config, logger *log.Logger) http.Handler {
	inv, led := shop.New(&shop.Options{Latency: c.latency, Logf: logger.Printf})

	// How long a request whose key is in use waits for the running
	// request's result: 0, each adapter's default (5 s); negative, not at
	// all.
	var wait time.Duration
	if c.noWait {
		wait = -1
	}

	// GraphQL, with idemgql's extension: it runs the registered mutations
	// through the engine, and implements @idempotent.
	ext := idemgql.New(e, &idemgql.Options{Mutations: graph.Mutations(), Wait: wait})
	gql := handler.New(graph.NewExecutableSchema(graph.Config{
		Resolvers:  &graph.Resolver{Inventory: inv, Ledger: led},
		Directives: graph.DirectiveRoot{Idempotent: ext.Directive},
	}))
	gql.AddTransport(transport.POST{})    // Content-Type: application/json: {"query": ..., "variables": ...}
	gql.AddTransport(transport.GRAPHQL{}) // Content-Type: application/graphql: the document alone, as README.md's commands send it
	gql.Use(extension.Introspection{})
	gql.Use(ext)

	// REST, with idemhttp's middleware on the route that pays: the key is
	// the body's payment.unique_token, which Shopify requires.
	pay := &paymentsAPI{ledger: led}
	idempotent := idemhttp.New(e, &idemhttp.Options{
		Key:      idemhttp.JSONKey("payment.unique_token"),
		Required: true,
		Wait:     wait,
	})

	mux := http.NewServeMux()
	mux.Handle("POST /graphql", gql)
	mux.Handle("POST /admin/checkouts/{token}/payments.json", idempotent(http.HandlerFunc(pay.create)))
	mux.HandleFunc("GET /admin/checkouts/{token}/payments.json", pay.list)
	mux.HandleFunc("GET /admin/checkouts/{token}/payments/{file}", pay.get)
	return indented(mux)
}

// indented answers with the JSON responses of h indented, and ended with a
// newline, for people who read curl's output; other responses pass as
// they are. It buffers each response whole, which the service's responses
// are anyway (idemhttp buffers those it covers).
func indented(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := &bufferedWriter{ResponseWriter: w}
		h.ServeHTTP(b, r)
		if b.status == 0 && b.buf.Len() == 0 {
			return // nothing written: leave it to net/http
		}
		body := b.buf.Bytes()
		var out bytes.Buffer
		if len(body) > 0 && json.Indent(&out, body, "", "  ") == nil {
			out.WriteByte('\n')
			body = out.Bytes()
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(b.status)
		w.Write(body)
	})
}

// bufferedWriter keeps a response's status and body for indented.
type bufferedWriter struct {
	http.ResponseWriter
	status int
	buf    bytes.Buffer
}

func (b *bufferedWriter) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.buf.Write(p)
}
