package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/idemkv/idem/examples/shopify/shop"
)

// paymentsAPI is the REST part: Shopify's Payment resource on a checkout,
// simplified. Creating a payment is made idempotent by the idemhttp
// middleware around create, which takes the key from the body's
// payment.unique_token; this handler only pays.
type paymentsAPI struct {
	ledger *shop.Ledger
}

// paymentRequest is the body of POST /admin/checkouts/{token}/payments.json.
type paymentRequest struct {
	Payment *struct {
		Amount         string          `json:"amount"`
		SessionID      string          `json:"session_id"`
		UniqueToken    string          `json:"unique_token"`
		RequestDetails json.RawMessage `json:"request_details,omitempty"` // ip_address, accept_language, user_agent: kept by Shopify, unused here
	} `json:"payment"`
}

// paymentJSON is a payment as the REST API shows it.
type paymentJSON struct {
	ID                            int64           `json:"id"`
	UniqueToken                   string          `json:"unique_token"`
	PaymentProcessingErrorMessage *string         `json:"payment_processing_error_message"`
	Transaction                   transactionJSON `json:"transaction"`
	Checkout                      checkoutJSON    `json:"checkout"`
}

type transactionJSON struct {
	ID        int64  `json:"id"`
	Kind      string `json:"kind"`
	Status    string `json:"status"`
	Amount    string `json:"amount"`
	Currency  string `json:"currency"`
	Gateway   string `json:"gateway"`
	CreatedAt string `json:"created_at"`
}

type checkoutJSON struct {
	Token      string `json:"token"`
	TotalPrice string `json:"total_price"`
	PaymentDue string `json:"payment_due"`
	Currency   string `json:"currency"`
}

func toJSON(p shop.Payment) paymentJSON {
	t := p.Transaction
	return paymentJSON{
		ID:          p.ID,
		UniqueToken: p.UniqueToken,
		Transaction: transactionJSON{
			ID:        t.ID,
			Kind:      t.Kind,
			Status:    t.Status,
			Amount:    t.Amount.String(),
			Currency:  t.Currency,
			Gateway:   t.Gateway,
			CreatedAt: t.CreatedAt.Format(time.RFC3339),
		},
		Checkout: checkoutJSON{
			Token:      p.Checkout.Token,
			TotalPrice: p.Checkout.TotalPrice.String(),
			PaymentDue: p.Checkout.PaymentDue.String(),
			Currency:   p.Checkout.Currency,
		},
	}
}

// create handles POST /admin/checkouts/{token}/payments.json: it pays,
// and answers 202 Accepted with the payment, as Shopify does (the payment
// here is processed before the answer: its transaction is in it).
func (a *paymentsAPI) create(w http.ResponseWriter, r *http.Request) {
	var req paymentRequest
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"errors": "the request body is not valid JSON: " + err.Error()})
		return
	}
	if req.Payment == nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"errors": map[string]string{"payment": "Required parameter missing or invalid"}})
		return
	}
	token := r.PathValue("token")
	p, err := a.ledger.Pay(r.Context(), token, shop.PaymentRequest{
		Amount:      req.Payment.Amount,
		SessionID:   req.Payment.SessionID,
		UniqueToken: req.Payment.UniqueToken,
	})
	var se *shop.Error
	switch {
	case errors.As(err, &se):
		writeShopError(w, se)
		return
	case err != nil:
		// The request's context ended: the client has gone and nothing
		// was paid. Writing nothing lets idemhttp release the key.
		return
	}
	w.Header().Set("Location", fmt.Sprintf("/admin/checkouts/%s/payments/%d.json", token, p.ID))
	writeJSON(w, http.StatusAccepted, map[string]any{"payment": toJSON(p)})
}

// list handles GET /admin/checkouts/{token}/payments.json.
func (a *paymentsAPI) list(w http.ResponseWriter, r *http.Request) {
	ps, ok := a.ledger.Payments(r.PathValue("token"))
	if !ok {
		writeShopError(w, &shop.Error{Status: http.StatusNotFound, Message: "Not Found"})
		return
	}
	out := make([]paymentJSON, 0, len(ps))
	for _, p := range ps {
		out = append(out, toJSON(p))
	}
	writeJSON(w, http.StatusOK, map[string]any{"payments": out})
}

// get handles GET /admin/checkouts/{token}/payments/{id}.json.
func (a *paymentsAPI) get(w http.ResponseWriter, r *http.Request) {
	ps, ok := a.ledger.Payments(r.PathValue("token"))
	id, err := strconv.ParseInt(strings.TrimSuffix(r.PathValue("file"), ".json"), 10, 64)
	if ok && err == nil && strings.HasSuffix(r.PathValue("file"), ".json") {
		for _, p := range ps {
			if p.ID == id {
				writeJSON(w, http.StatusOK, map[string]any{"payment": toJSON(p)})
				return
			}
		}
	}
	writeShopError(w, &shop.Error{Status: http.StatusNotFound, Message: "Not Found"})
}

// writeShopError answers as Shopify's REST API does: {"errors": "Not
// Found"}, or {"errors": {"amount": ["can't be blank"]}} for a field.
func writeShopError(w http.ResponseWriter, e *shop.Error) {
	if e.Field == "" {
		writeJSON(w, e.Status, map[string]any{"errors": e.Message})
		return
	}
	writeJSON(w, e.Status, map[string]any{"errors": map[string][]string{e.Field: {e.Message}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}
