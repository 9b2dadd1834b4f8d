package shop

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Money is an amount in cents.
type Money int64

// String formats m as Shopify's REST API does: "398.00".
func (m Money) String() string {
	sign := ""
	if m < 0 {
		sign, m = "-", -m
	}
	return fmt.Sprintf("%s%d.%02d", sign, m/100, m%100)
}

// ParseMoney parses a decimal amount of at most two decimals, "398" or
// "398.00".
func ParseMoney(s string) (Money, error) {
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" || len(frac) > 2 || strings.HasPrefix(whole, "+") || strings.HasPrefix(whole, "-") {
		return 0, fmt.Errorf("%q is not an amount such as 10.00", s)
	}
	w, err := strconv.ParseInt(whole, 10, 64)
	if err != nil || w > 1e12 {
		return 0, fmt.Errorf("%q is not an amount such as 10.00", s)
	}
	var f int64
	if frac != "" {
		if f, err = strconv.ParseInt(frac, 10, 64); err != nil || frac[0] == '+' || frac[0] == '-' {
			return 0, fmt.Errorf("%q is not an amount such as 10.00", s)
		}
		if len(frac) == 1 {
			f *= 10
		}
	}
	return Money(w*100 + f), nil
}

// Checkout is a checkout that payments are made on.
type Checkout struct {
	Token      string
	Currency   string
	TotalPrice Money
	PaymentDue Money // what is left to pay
}

// PaymentRequest is the input of Pay, Shopify's REST Payment as created.
type PaymentRequest struct {
	Amount      string // "398.00"
	SessionID   string // the card vault's session; any non-empty string here
	UniqueToken string // the client's idempotency key, kept on the payment
}

// Transaction is what the gateway recorded for a payment.
type Transaction struct {
	ID        int64
	Kind      string // "sale"
	Status    string // "success"
	Amount    Money
	Currency  string
	Gateway   string // "bogus", Shopify's test gateway
	CreatedAt time.Time
}

// Payment is a payment made on a checkout.
type Payment struct {
	ID          int64
	UniqueToken string
	Checkout    Checkout // as the payment left it
	Transaction Transaction
}

// Error is a request that Pay refuses: Status is the HTTP status the
// REST API answers it with (404, 422), Field the request's field at fault,
// if any.
type Error struct {
	Status  int
	Field   string
	Message string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + " " + e.Message
}

// ContractActive and ContractCancelled are the statuses of a subscription
// contract.
const (
	ContractActive    = "ACTIVE"
	ContractCancelled = "CANCELLED"
)

// Contract is a subscription contract, billed by Bill.
type Contract struct {
	ID       string // gid://shopify/SubscriptionContract/N
	Status   string
	Amount   Money // what each billing cycle costs
	Currency string
}

// Order is the order a successful billing attempt creates.
type Order struct {
	ID       string // gid://shopify/Order/N
	Name     string // "#1001"
	Total    Money
	Currency string
}

// BillingAttempt is a charge of a subscription contract.
type BillingAttempt struct {
	ID             string // gid://shopify/SubscriptionBillingAttempt/N
	IdempotencyKey string
	ContractID     string
	OriginTime     *time.Time
	CreatedAt      time.Time
	CompletedAt    time.Time
	Order          Order
}

// Ledger records the payments made on checkouts and the billing attempts
// of subscription contracts. Its methods are safe for concurrent use.
type Ledger struct {
	latency time.Duration
	logf    func(format string, args ...any)

	mu        sync.Mutex           // guards everything below
	checkouts map[string]*Checkout // by token
	contracts map[string]*Contract // by ID
	payments  []Payment            // in the order they were made
	attempts  []BillingAttempt     // in the order they were made
	txns      int64                // transactions made so far
}

// Pay makes a payment on the checkout with the token, after the ledger's
// latency (see Options.Latency). It returns an *Error if the checkout does
// not exist (404) or the request is invalid (422): a missing session_id,
// an amount that is not one, or that exceeds what is left to pay. Any
// other error is ctx's, if ctx ended during the wait: nothing was paid.
func (l *Ledger) Pay(ctx context.Context, token string, req PaymentRequest) (Payment, error) {
	l.mu.Lock()
	_, ok := l.checkouts[token]
	l.mu.Unlock()
	if !ok {
		return Payment{}, &Error{Status: 404, Message: "Not Found"}
	}
	amount, err := ParseMoney(req.Amount)
	switch {
	case req.Amount == "":
		return Payment{}, &Error{Status: 422, Field: "amount", Message: "can't be blank"}
	case err != nil || amount == 0:
		return Payment{}, &Error{Status: 422, Field: "amount", Message: "must be an amount greater than 0, such as 10.00"}
	case req.SessionID == "":
		return Payment{}, &Error{Status: 422, Field: "session_id", Message: "can't be blank"}
	}
	l.logf("ledger: paying %s on checkout %s", amount, token)
	if err := sleep(ctx, l.latency); err != nil {
		return Payment{}, err
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.checkouts[token]
	if amount > c.PaymentDue {
		return Payment{}, &Error{Status: 422, Field: "amount", Message: fmt.Sprintf("must be less than or equal to the payment due, %s", c.PaymentDue)}
	}
	c.PaymentDue -= amount
	l.txns++
	p := Payment{
		ID:          int64(len(l.payments) + 1),
		UniqueToken: req.UniqueToken,
		Checkout:    *c,
		Transaction: Transaction{
			ID:        l.txns,
			Kind:      "sale",
			Status:    "success",
			Amount:    amount,
			Currency:  c.Currency,
			Gateway:   "bogus",
			CreatedAt: time.Now().UTC().Truncate(time.Second),
		},
	}
	l.payments = append(l.payments, p)
	l.logf("ledger: payment %d of %s on checkout %s", p.ID, amount, token)
	return p, nil
}

// Payments returns the payments made on the checkout with the token, and
// false if there is no such checkout.
func (l *Ledger) Payments(token string) ([]Payment, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.checkouts[token] == nil {
		return nil, false
	}
	var ps []Payment
	for _, p := range l.payments {
		if p.Checkout.Token == token {
			ps = append(ps, p)
		}
	}
	return ps, true
}

// Bill charges the contract with the ID one billing cycle, after the
// ledger's latency, and returns the attempt, which created an order; or
// the user errors that made it charge nothing: the contract does not exist
// or is not active, the key is empty. An error is ctx's, if ctx ended
// during the wait: nothing was charged.
func (l *Ledger) Bill(ctx context.Context, contractID, key string, originTime *time.Time) (*BillingAttempt, []UserError, error) {
	l.mu.Lock()
	c, ok := l.contracts[contractID]
	var status string
	if ok {
		status = c.Status
	}
	l.mu.Unlock()
	switch {
	case key == "":
		return nil, []UserError{{Field: []string{"input", "idempotencyKey"}, Code: CodeBlank, Message: "Idempotency key can't be blank."}}, nil
	case !ok:
		return nil, []UserError{{Field: []string{"input", "subscriptionContractId"}, Code: CodeContractNotFound, Message: fmt.Sprintf("The subscription contract %s does not exist.", contractID)}}, nil
	case status != ContractActive:
		return nil, []UserError{{Field: []string{"input", "subscriptionContractId"}, Code: CodeContractTerminated, Message: fmt.Sprintf("The subscription contract %s is %s.", contractID, strings.ToLower(status))}}, nil
	}
	l.logf("ledger: billing %s", contractID)
	if err := sleep(ctx, l.latency); err != nil {
		return nil, nil, err
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.attempts) + 1
	now := time.Now().UTC().Truncate(time.Second)
	a := BillingAttempt{
		ID:             fmt.Sprintf("gid://shopify/SubscriptionBillingAttempt/%d", n),
		IdempotencyKey: key,
		ContractID:     contractID,
		OriginTime:     originTime,
		CreatedAt:      now,
		CompletedAt:    now,
		Order: Order{
			ID:       fmt.Sprintf("gid://shopify/Order/%d", n),
			Name:     fmt.Sprintf("#%d", 1000+n),
			Total:    c.Amount,
			Currency: c.Currency,
		},
	}
	l.attempts = append(l.attempts, a)
	l.logf("ledger: %s charged %s %s (%s)", contractID, c.Amount, c.Currency, a.ID)
	return &a, nil, nil
}

// Contract returns the contract with the ID, and false if there is none.
func (l *Ledger) Contract(id string) (Contract, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.contracts[id]
	if !ok {
		return Contract{}, false
	}
	return *c, true
}

// Attempts returns the billing attempts of the contract with the ID, oldest
// first.
func (l *Ledger) Attempts(contractID string) []BillingAttempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	var as []BillingAttempt
	for _, a := range l.attempts {
		if a.ContractID == contractID {
			as = append(as, a)
		}
	}
	return as
}
