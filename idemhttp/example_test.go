package idemhttp_test

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// The middleware wraps a ServeMux: a client's retry of an order gets the
// first response back instead of a second order, and a reuse of the key for
// another order is refused.
func Example() {
	// A real service opens a directory on disk: idem.Open(dir, nil).
	e, err := idem.Open("orders", &idem.Options{FS: vfs.NewMem()})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	orders := 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		orders++
		w.Header().Set("Location", fmt.Sprintf("/orders/%d", orders))
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "order %d created", orders)
	})
	handler := idemhttp.New(e, nil)(mux) // the one line
	// A real service serves it: http.ListenAndServe(addr, handler).

	for _, body := range []string{`{"item":"book"}`, `{"item":"book"}`, `{"item":"pen"}`} {
		r := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
		r.Header.Set("Idempotency-Key", `"8e03978e-40d5-43e8-bc93-6894a57f9324"`)
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)

		if w.Header().Get("Content-Type") == "application/problem+json" {
			var p struct{ Type, Title string }
			json.Unmarshal(w.Body.Bytes(), &p)
			fmt.Printf("%d %s\n", w.Code, p.Title)
			continue
		}
		fmt.Printf("%d %s at %s (replayed: %q)\n", w.Code, w.Body, w.Header().Get("Location"), w.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("orders:", orders)
	// Output:
	// 201 order 1 created at /orders/1 (replayed: "")
	// 201 order 1 created at /orders/1 (replayed: "true")
	// 422 Idempotency key reused for a different request
	// orders: 1
}

// A payments endpoint in the style of Shopify's REST API, whose clients send
// the idempotency key in the body, as payment.unique_token, rather than in a
// header. A retry gets the first payment back; the same token with another
// amount is refused, as is a payment without a token.
func ExampleJSONKey() {
	e, err := idem.Open("payments", &idem.Options{FS: vfs.NewMem()})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	payments := 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST /admin/checkouts/{token}/payments.json", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Payment struct {
				Amount string `json:"amount"`
			} `json:"payment"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		payments++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"payment": {"id": %d, "checkout": %q, "amount": %q}}`, payments, r.PathValue("token"), req.Payment.Amount)
	})
	handler := idemhttp.New(e, &idemhttp.Options{
		Key:      idemhttp.JSONKey("payment.unique_token"),
		Required: true, // a payment without a unique_token gets 400
	})(mux)

	for _, body := range []string{
		`{"payment": {"unique_token": "b1946ac9-2f5c", "amount": "10.00"}}`,
		`{"payment": {"unique_token": "b1946ac9-2f5c", "amount": "10.00"}}`, // a retry
		`{"payment": {"unique_token": "b1946ac9-2f5c", "amount": "99.00"}}`, // the token reused
		`{"payment": {"amount": "10.00"}}`,                                  // no token
	} {
		r := httptest.NewRequest(http.MethodPost, "/admin/checkouts/c0ffee/payments.json", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)

		if w.Header().Get("Content-Type") == "application/problem+json" {
			var p struct{ Title string }
			json.Unmarshal(w.Body.Bytes(), &p)
			fmt.Printf("%d %s\n", w.Code, p.Title)
			continue
		}
		fmt.Printf("%d %s (replayed: %q)\n", w.Code, w.Body, w.Header().Get("Idempotent-Replayed"))
	}
	fmt.Println("payments:", payments)
	// Output:
	// 201 {"payment": {"id": 1, "checkout": "c0ffee", "amount": "10.00"}} (replayed: "")
	// 201 {"payment": {"id": 1, "checkout": "c0ffee", "amount": "10.00"}} (replayed: "true")
	// 422 Idempotency key reused for a different request
	// 400 Idempotency key required
	// payments: 1
}
