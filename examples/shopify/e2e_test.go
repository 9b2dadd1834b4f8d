package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/idemkv/idem/idemhttp"
	"github.com/idemkv/idem/idemnats"
	"github.com/idemkv/idem/internal/testproc"
)

// The seed's IDs (see shop.New).
const (
	item1     = "gid://shopify/InventoryItem/1"
	item3     = "gid://shopify/InventoryItem/3"
	location1 = "gid://shopify/Location/1"
	location2 = "gid://shopify/Location/2"
	contract1 = "gid://shopify/SubscriptionContract/1"
	contract2 = "gid://shopify/SubscriptionContract/2"
	checkout1 = "b490a9220cd14d7344024f4874f640a6"
)

const adjustDoc = `mutation Adjust($input: InventoryAdjustQuantitiesInput!, $key: String!) {
  inventoryAdjustQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id createdAt reason changes { name delta quantityAfterChange item { id } location { id } } }
    userErrors { field message code }
  }
}`

const levelDoc = `query Level($item: ID!, $location: ID!) {
  inventoryLevel(inventoryItemId: $item, locationId: $location) {
    id
    quantities(names: ["available", "on_hand"]) { name quantity }
  }
}`

const billDoc = `mutation Bill($contract: ID!, $key: String!) {
  subscriptionBillingAttemptCreate(input: {subscriptionContractId: $contract, idempotencyKey: $key}) {
    subscriptionBillingAttempt {
      id idempotencyKey ready createdAt
      order { id name totalPriceSet { shopMoney { amount currencyCode } } }
      subscriptionContract { id }
    }
    userErrors { field message code }
  }
}`

type userError struct {
	Field   []string `json:"field"`
	Message string   `json:"message"`
	Code    string   `json:"code"`
}

type adjustPayload struct {
	InventoryAdjustmentGroup *struct {
		ID      string `json:"id"`
		Reason  string `json:"reason"`
		Changes []struct {
			Name                string `json:"name"`
			Delta               int    `json:"delta"`
			QuantityAfterChange int    `json:"quantityAfterChange"`
			Item                struct{ ID string }
			Location            struct{ ID string }
		} `json:"changes"`
	} `json:"inventoryAdjustmentGroup"`
	UserErrors []userError `json:"userErrors"`
}

func adjustInput(delta int, item, location string) map[string]any {
	return map[string]any{
		"reason": "correction",
		"name":   "available",
		"changes": []map[string]any{
			{"delta": delta, "inventoryItemId": item, "locationId": location},
		},
	}
}

// adjust runs inventoryAdjustQuantities and returns its payload and the
// whole response.
func (s *service) adjust(key string, input map[string]any) (adjustPayload, []byte) {
	s.t.Helper()
	r, raw := s.graphql(adjustDoc, map[string]any{"input": input, "key": key})
	var p adjustPayload
	r.field(s.t, "inventoryAdjustQuantities", &p)
	return p, raw
}

// quantities returns an item's available and on_hand quantities at a
// location, read with the inventoryLevel query.
func (s *service) quantities(item, location string) (available, onHand int) {
	s.t.Helper()
	r, _ := s.graphql(levelDoc, map[string]any{"item": item, "location": location})
	var level *struct {
		Quantities []struct {
			Name     string
			Quantity int
		}
	}
	r.field(s.t, "inventoryLevel", &level)
	if level == nil {
		s.t.Fatalf("%s is not stocked at %s", item, location)
	}
	for _, q := range level.Quantities {
		switch q.Name {
		case "available":
			available = q.Quantity
		case "on_hand":
			onHand = q.Quantity
		}
	}
	return available, onHand
}

// checkAvailable fails the test if the available quantity is not want.
func (s *service) checkAvailable(item, location string, want int) {
	s.t.Helper()
	if got, onHand := s.quantities(item, location); got != want || onHand != want {
		s.t.Errorf("%s at %s: available %d, on_hand %d; want %d for both", item, location, got, onHand, want)
	}
}

var (
	adjustingRe = regexp.MustCompile(`inventory: adjusting`)
	appliedRe   = regexp.MustCompile(`inventory: gid://shopify/InventoryAdjustmentGroup/\d+ applied`)
)

// checkAdjustments fails the test if the service did not apply exactly n
// adjustments so far.
func (s *service) checkAdjustments(n int) {
	s.t.Helper()
	if got := s.countLines(appliedRe); got != n {
		s.t.Errorf("the service applied %d adjustments, want %d; its output:\n%s", got, n, s.output())
	}
}

func TestAdjustSameRequestTwice(t *testing.T) {
	t.Parallel()
	s := startService(t)
	s.checkAvailable(item1, location1, 10)
	in := adjustInput(-4, item1, location1)
	p1, raw1 := s.adjust("3f5b6ebf-143c-4da5-8d0f-fb8553bfd85d", in)
	p2, raw2 := s.adjust("3f5b6ebf-143c-4da5-8d0f-fb8553bfd85d", in)

	g := p1.InventoryAdjustmentGroup
	if g == nil || len(p1.UserErrors) > 0 {
		t.Fatalf("first call: %+v", p1)
	}
	if len(g.Changes) != 1 || g.Changes[0].Delta != -4 || g.Changes[0].QuantityAfterChange != 6 ||
		g.Changes[0].Item.ID != item1 || g.Changes[0].Location.ID != location1 || g.Reason != "correction" {
		t.Errorf("first call's group: %+v", g)
	}
	// The second call replays the first's result, byte for byte (its
	// createdAt included): the resolver did not run again.
	if !bytes.Equal(raw1, raw2) {
		t.Errorf("the second call's response differs from the first's:\n%s\n%s", raw1, raw2)
	}
	if p2.InventoryAdjustmentGroup == nil || p2.InventoryAdjustmentGroup.ID != g.ID {
		t.Errorf("second call: %+v", p2)
	}

	// A retry may select other fields, under an alias and another
	// operation name: it is the same request, whose result it gets.
	r, raw := s.graphql(`mutation Retry($input: InventoryAdjustQuantitiesInput!) {
  retried: inventoryAdjustQuantities(input: $input) @idempotent(key: "3f5b6ebf-143c-4da5-8d0f-fb8553bfd85d") { inventoryAdjustmentGroup { id } }
}`, map[string]any{"input": in})
	var p3 adjustPayload
	r.field(t, "retried", &p3)
	if p3.InventoryAdjustmentGroup == nil || p3.InventoryAdjustmentGroup.ID != g.ID {
		t.Errorf("a retry with another selection: %s; want the group %s", raw, g.ID)
	}
	s.checkAvailable(item1, location1, 6)
	s.checkAdjustments(1)
}

func TestAdjustKeyReusedWithOtherDelta(t *testing.T) {
	t.Parallel()
	s := startService(t)
	const key = "0b1c5a4e-5e0f-4b8e-9d43-6a1f8f0c2d11"
	first, raw1 := s.adjust(key, adjustInput(-4, item1, location1))
	if first.InventoryAdjustmentGroup == nil {
		t.Fatalf("first call: %+v", first)
	}
	p, _ := s.adjust(key, adjustInput(-5, item1, location1))
	if p.InventoryAdjustmentGroup != nil || len(p.UserErrors) != 1 || p.UserErrors[0].Code != "IDEMPOTENCY_KEY_PARAMETER_MISMATCH" {
		t.Errorf("the key with another delta: %+v; want no group and the user error IDEMPOTENCY_KEY_PARAMETER_MISMATCH", p)
	}
	// So with another item, or another location.
	for _, in := range []map[string]any{adjustInput(-4, item3, location2), adjustInput(-4, item1, location2)} {
		p, _ := s.adjust(key, in)
		if p.InventoryAdjustmentGroup != nil || len(p.UserErrors) != 1 || p.UserErrors[0].Code != "IDEMPOTENCY_KEY_PARAMETER_MISMATCH" {
			t.Errorf("the key with %v: %+v; want the user error IDEMPOTENCY_KEY_PARAMETER_MISMATCH", in, p)
		}
	}
	s.checkAvailable(item1, location1, 6) // adjusted once, by -4
	s.checkAvailable(item1, location2, 5)
	s.checkAvailable(item3, location2, 3)
	s.checkAdjustments(1)

	// The first request still replays.
	if _, raw := s.adjust(key, adjustInput(-4, item1, location1)); !bytes.Equal(raw, raw1) {
		t.Errorf("the first request again: %s; want its first response %s", raw, raw1)
	}
}

func TestAdjustConcurrent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
	}{
		// The second request waits for the first's result (up to 5 s).
		{"wait", nil},
		// The second request is refused at once, as Shopify does.
		{"nowait", []string{"-nowait"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each adjustment takes 2 s, so that the second request, sent
			// once the service has logged that the first one is adjusting,
			// finds it running. (If it did not, it would get a replay,
			// which the checks below accept too: nothing here depends on
			// timing but what is logged.)
			s := startService(t, append([]string{"-latency", "2s"}, tc.args...)...)
			const key = "c0ffee00-1111-4222-8333-944445555666"
			in := adjustInput(3, item1, location1)
			body, err := json.Marshal(map[string]any{"query": adjustDoc, "variables": map[string]any{"input": in, "key": key}})
			if err != nil {
				t.Fatal(err)
			}
			from := s.lineCount()
			first := make(chan []byte, 1)
			go func() {
				first <- postGraphQL(s.url, body)
			}()
			s.waitLine(adjustingRe, from)
			second, raw2 := s.adjust(key, in)
			raw1 := <-first
			if raw1 == nil {
				t.Fatal("the first request failed")
			}
			var r1 gqlResponse
			var p1 adjustPayload
			if err := json.Unmarshal(raw1, &r1); err != nil {
				t.Fatalf("first response: %v in %s", err, raw1)
			}
			r1.field(t, "inventoryAdjustQuantities", &p1)
			if p1.InventoryAdjustmentGroup == nil || p1.InventoryAdjustmentGroup.Changes[0].QuantityAfterChange != 13 {
				t.Fatalf("first request: %s", raw1)
			}

			switch {
			case bytes.Equal(raw1, raw2):
				t.Logf("the second request got the first's result")
			case tc.name == "nowait" && second.InventoryAdjustmentGroup == nil && len(second.UserErrors) == 1 &&
				second.UserErrors[0].Code == "IDEMPOTENCY_CONCURRENT_REQUEST":
				t.Logf("the second request got IDEMPOTENCY_CONCURRENT_REQUEST: %s", second.UserErrors[0].Message)
			default:
				t.Errorf("second request: %s; want the first's result %s (or, with -nowait, IDEMPOTENCY_CONCURRENT_REQUEST)", raw2, raw1)
			}
			s.checkAvailable(item1, location1, 13)
			s.checkAdjustments(1)
		})
	}
}

// postGraphQL posts a GraphQL request body and returns the response body,
// or nil if the request failed. It is for goroutines, which may not fail
// the test themselves.
func postGraphQL(url string, body []byte) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/graphql", bytes.NewReader(body))
	if err != nil {
		return nil
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	return b
}

func TestAdjustRequiresKey(t *testing.T) {
	t.Parallel()
	s := startService(t)
	doc := strings.Replace(adjustDoc, " @idempotent(key: $key)", "", 1)
	doc = strings.Replace(doc, ", $key: String!", "", 1)
	r, raw := s.graphql(doc, map[string]any{"input": adjustInput(-4, item1, location1)})
	if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "IDEMPOTENCY_KEY_REQUIRED" {
		t.Errorf("without @idempotent: %s; want one error with extensions.code IDEMPOTENCY_KEY_REQUIRED", raw)
	}
	s.checkAvailable(item1, location1, 10)
	s.checkAdjustments(0)
}

func TestAdjustUserErrors(t *testing.T) {
	t.Parallel()
	s := startService(t)
	for _, tc := range []struct {
		input map[string]any
		code  string
		field []string
	}{
		{adjustInput(1, "gid://shopify/InventoryItem/99", location1), "INVALID_INVENTORY_ITEM", []string{"input", "changes", "0", "inventoryItemId"}},
		{adjustInput(1, item1, "gid://shopify/Location/99"), "INVALID_LOCATION", []string{"input", "changes", "0", "locationId"}},
		{adjustInput(1, item3, location1), "ITEM_NOT_STOCKED_AT_LOCATION", []string{"input", "changes", "0", "inventoryItemId"}},
		{map[string]any{"reason": "whim", "name": "available", "changes": []any{}}, "INVALID_REASON", []string{"input", "reason"}},
		{map[string]any{"reason": "correction", "name": "damaged", "changes": []any{}}, "INVALID_QUANTITY_NAME", []string{"input", "name"}},
	} {
		p, _ := s.adjust("key-"+tc.code, tc.input)
		if p.InventoryAdjustmentGroup != nil || len(p.UserErrors) != 1 || p.UserErrors[0].Code != tc.code ||
			strings.Join(p.UserErrors[0].Field, ".") != strings.Join(tc.field, ".") {
			t.Errorf("%v: %+v; want the user error %s on %v", tc.input, p, tc.code, tc.field)
		}
	}
	s.checkAvailable(item1, location1, 10)
	s.checkAdjustments(0)
}

func TestInventoryQuery(t *testing.T) {
	t.Parallel()
	s := startService(t)
	s.checkAvailable(item1, location1, 10)
	s.checkAvailable(item1, location2, 5)
	s.checkAvailable(item3, location2, 3)

	r, raw := s.graphql(`query($id: ID!) {
  inventoryItem(id: $id) {
    id sku
    warehouse: inventoryLevel(locationId: "gid://shopify/Location/1") { id location { name } quantities(names: ["available"]) { quantity } }
    store: inventoryLevel(locationId: "gid://shopify/Location/2") { id }
  }
}`, map[string]any{"id": item3})
	var it struct {
		ID        string
		SKU       string
		Warehouse *struct{ ID string }
		Store     *struct{ ID string }
	}
	r.field(t, "inventoryItem", &it)
	if it.ID != item3 || it.SKU != "MUG" || it.Warehouse != nil || it.Store == nil ||
		it.Store.ID != "gid://shopify/InventoryLevel/2?inventory_item_id=3" {
		t.Errorf("inventoryItem: %s", raw)
	}
}

func TestBillingAttemptKeyArgument(t *testing.T) {
	t.Parallel()
	s := startService(t)
	type billPayload struct {
		SubscriptionBillingAttempt *struct {
			ID             string
			IdempotencyKey string
			Ready          bool
			Order          struct {
				ID            string
				TotalPriceSet struct {
					ShopMoney struct{ Amount, CurrencyCode string }
				}
			}
			SubscriptionContract struct{ ID string }
		} `json:"subscriptionBillingAttempt"`
		UserErrors []userError `json:"userErrors"`
	}
	bill := func(contract, key string) (billPayload, []byte) {
		t.Helper()
		r, raw := s.graphql(billDoc, map[string]any{"contract": contract, "key": key})
		var p billPayload
		r.field(t, "subscriptionBillingAttemptCreate", &p)
		return p, raw
	}
	const key = "billing-2026-04-contract-1"
	p1, raw1 := bill(contract1, key)
	_, raw2 := bill(contract1, key)
	a := p1.SubscriptionBillingAttempt
	if a == nil || a.IdempotencyKey != key || !a.Ready || a.SubscriptionContract.ID != contract1 ||
		a.Order.TotalPriceSet.ShopMoney.Amount != "29.00" {
		t.Fatalf("first call: %s", raw1)
	}
	if !bytes.Equal(raw1, raw2) {
		t.Errorf("the second call's response differs from the first's:\n%s\n%s", raw1, raw2)
	}

	// The key with another contract: refused, with the key argument's path
	// as the user error's field.
	p, raw := bill(contract2, key)
	if p.SubscriptionBillingAttempt != nil || len(p.UserErrors) != 1 || p.UserErrors[0].Code != "IDEMPOTENCY_KEY_PARAMETER_MISMATCH" ||
		strings.Join(p.UserErrors[0].Field, ".") != "input.idempotencyKey" {
		t.Errorf("the key with another contract: %s", raw)
	}
	// A cancelled contract, with a key of its own: a user error of the
	// ledger.
	if p, raw := bill(contract2, "billing-contract-2"); p.SubscriptionBillingAttempt != nil || len(p.UserErrors) != 1 || p.UserErrors[0].Code != "CONTRACT_TERMINATED" ||
		strings.Join(p.UserErrors[0].Field, ".") != "input.subscriptionContractId" {
		t.Errorf("a cancelled contract: %s", raw)
	}

	// The contract was billed once.
	r, raw := s.graphql(`query($id: ID!) { subscriptionContract(id: $id) { billingAttempts { nodes { id idempotencyKey } } } }`, map[string]any{"id": contract1})
	var c struct {
		BillingAttempts struct {
			Nodes []struct{ ID, IdempotencyKey string }
		}
	}
	r.field(t, "subscriptionContract", &c)
	if n := c.BillingAttempts.Nodes; len(n) != 1 || n[0].ID != a.ID {
		t.Errorf("the contract's billing attempts: %s; want one, %s", raw, a.ID)
	}
	if n := s.countLines(regexp.MustCompile(`ledger: .* charged`)); n != 1 {
		t.Errorf("the ledger charged %d times, want 1", n)
	}
}

const paymentBody = `{"payment": {"request_details": {"ip_address": "123.1.1.1", "accept_language": "en-US,en;q=0.8", "user_agent": "Mozilla/5.0"}, "amount": "398.00", "session_id": "global-4f10a3a42a3b4e6c", "unique_token": "e5b8a8a1-2f6d-4c3b-9a61-6b1d6e1f7a10"}}`

func TestPaymentUniqueToken(t *testing.T) {
	t.Parallel()
	s := startService(t)
	path := "/admin/checkouts/" + checkout1 + "/payments.json"
	r1 := s.do(http.MethodPost, path, "application/json", []byte(paymentBody))
	r2 := s.do(http.MethodPost, path, "application/json", []byte(paymentBody))
	if r1.status != http.StatusAccepted || r2.status != http.StatusAccepted {
		t.Fatalf("statuses %d and %d, want 202: %s %s", r1.status, r2.status, r1.body, r2.body)
	}
	if r1.header.Get(idemhttp.HeaderReplayed) != "" || r2.header.Get(idemhttp.HeaderReplayed) != "true" {
		t.Errorf("%s: %q then %q, want none then true", idemhttp.HeaderReplayed, r1.header.Get(idemhttp.HeaderReplayed), r2.header.Get(idemhttp.HeaderReplayed))
	}
	if !bytes.Equal(r1.body, r2.body) || r1.header.Get("Location") != r2.header.Get("Location") {
		t.Errorf("the replay differs:\n%s\n%s", r1.body, r2.body)
	}
	var p struct {
		Payment struct {
			ID          int64  `json:"id"`
			UniqueToken string `json:"unique_token"`
			Transaction struct {
				Amount, Status string
			} `json:"transaction"`
			Checkout struct {
				PaymentDue string `json:"payment_due"`
			} `json:"checkout"`
		} `json:"payment"`
	}
	if err := json.Unmarshal(r1.body, &p); err != nil {
		t.Fatalf("%v in %s", err, r1.body)
	}
	if p.Payment.ID != 1 || p.Payment.UniqueToken != "e5b8a8a1-2f6d-4c3b-9a61-6b1d6e1f7a10" || p.Payment.Transaction.Amount != "398.00" ||
		p.Payment.Transaction.Status != "success" || p.Payment.Checkout.PaymentDue != "0.00" {
		t.Errorf("payment: %s", r1.body)
	}
	if loc := r1.header.Get("Location"); loc != "/admin/checkouts/"+checkout1+"/payments/1.json" {
		t.Errorf("Location: %q", loc)
	}

	// The token with another amount: 422, nothing paid.
	other := strings.Replace(paymentBody, `"398.00"`, `"10.00"`, 1)
	if r := s.do(http.MethodPost, path, "application/json", []byte(other)); r.status != http.StatusUnprocessableEntity ||
		!strings.Contains(string(r.body), idemhttp.ProblemKeyMismatch) {
		t.Errorf("the token with another amount: %d %s; want 422 %s", r.status, r.body, idemhttp.ProblemKeyMismatch)
	}
	// No token: 400, as Shopify requires one.
	none := strings.Replace(paymentBody, `, "unique_token": "e5b8a8a1-2f6d-4c3b-9a61-6b1d6e1f7a10"`, "", 1)
	if r := s.do(http.MethodPost, path, "application/json", []byte(none)); r.status != http.StatusBadRequest ||
		!strings.Contains(string(r.body), idemhttp.ProblemKeyRequired) {
		t.Errorf("no unique_token: %d %s; want 400 %s", r.status, r.body, idemhttp.ProblemKeyRequired)
	}

	// One payment on the checkout, as GET shows.
	r := s.do(http.MethodGet, path, "", nil)
	var list struct {
		Payments []json.RawMessage `json:"payments"`
	}
	if err := json.Unmarshal(r.body, &list); err != nil || len(list.Payments) != 1 {
		t.Errorf("GET %s: %d %s; want one payment", path, r.status, r.body)
	}
	if r := s.do(http.MethodGet, "/admin/checkouts/"+checkout1+"/payments/1.json", "", nil); r.status != http.StatusOK {
		t.Errorf("GET the payment: %d %s", r.status, r.body)
	}
	if r := s.do(http.MethodPost, "/admin/checkouts/nope/payments.json", "application/json", []byte(strings.Replace(paymentBody, "e5b8", "0000", 1))); r.status != http.StatusNotFound {
		t.Errorf("a payment on a checkout that does not exist: %d %s, want 404", r.status, r.body)
	}
}

// TestRestartWithDataDirectory checks what README.md says of -dir: the
// records survive a restart, and replay the results of the earlier run,
// while the inventory starts from its seed again.
func TestRestartWithDataDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := startService(t, "-dir", dir)
	const key = "restart-1"
	_, raw1 := s.adjust(key, adjustInput(-4, item1, location1))
	s.checkAvailable(item1, location1, 6)
	s.stop()

	s = startService(t, "-dir", dir)
	s.waitLine(regexp.MustCompile(`1 record\(s\) of an earlier run`), 0)
	if _, raw := s.adjust(key, adjustInput(-4, item1, location1)); !bytes.Equal(raw, raw1) {
		t.Errorf("after a restart: %s; want the earlier run's response %s", raw, raw1)
	}
	s.checkAvailable(item1, location1, 10) // the seed: the earlier run's adjustment is gone with its memory
	s.checkAdjustments(0)
}

// TestAdjustOutcomeUnknownAfterCrash kills the service while an adjustment
// runs, as a crash would, and restarts it on the same -dir: a retry of the
// key gets IDEMPOTENCY_OUTCOME_UNKNOWN, which the userErrors codes, Shopify's
// only, cannot hold, so it is a GraphQL error with extensions.code; and the
// adjustment does not run again.
func TestAdjustOutcomeUnknownAfterCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// An adjustment that takes an hour is still running when the service
	// is killed, once it has logged that it is adjusting.
	s := startService(t, "-dir", dir, "-latency", "1h")
	const key = "crash-1"
	in := adjustInput(-4, item1, location1)
	body, err := json.Marshal(map[string]any{"query": adjustDoc, "variables": map[string]any{"input": in, "key": key}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte, 1)
	go func() { done <- postGraphQL(s.url, body) }()
	s.waitLine(adjustingRe, 0)
	s.kill()
	if raw := <-done; raw != nil {
		t.Fatalf("the request answered though the service was killed: %s", raw)
	}

	s = startService(t, "-dir", dir)
	s.waitLine(regexp.MustCompile(`1 record\(s\) of an earlier run`), 0)
	r, raw := s.graphql(adjustDoc, map[string]any{"input": in, "key": key})
	if len(r.Errors) != 1 || r.Errors[0].Extensions["code"] != "IDEMPOTENCY_OUTCOME_UNKNOWN" ||
		string(r.Data["inventoryAdjustQuantities"]) != "null" {
		t.Errorf("a retry after the crash: %s; want the field null and one error with extensions.code IDEMPOTENCY_OUTCOME_UNKNOWN", raw)
	}
	s.checkAvailable(item1, location1, 10)
	s.checkAdjustments(0)
	if n := s.countLines(adjustingRe); n != 0 {
		t.Errorf("the retry ran the adjustment again (%d lines %q)", n, adjustingRe)
	}
}

// TestNATS runs the service with -nats against a NATS server started here
// (idemnats's embedded node): the same behaviours, with the records in a
// JetStream bucket, which a restarted service finds again.
func TestNATS(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts a NATS server")
	}
	node, err := idemnats.StartNode(idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:0", NoSyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Shutdown)

	s := startService(t, "-nats", node.ClientURL())
	s.waitLine(regexp.MustCompile(`records in the NATS JetStream bucket`), 0)
	const key = "nats-1"
	in := adjustInput(-4, item1, location1)
	_, raw1 := s.adjust(key, in)
	if _, raw2 := s.adjust(key, in); !bytes.Equal(raw1, raw2) {
		t.Errorf("the second call's response differs from the first's:\n%s\n%s", raw1, raw2)
	}
	if p, _ := s.adjust(key, adjustInput(-5, item1, location1)); len(p.UserErrors) != 1 || p.UserErrors[0].Code != "IDEMPOTENCY_KEY_PARAMETER_MISMATCH" {
		t.Errorf("the key with another delta: %+v", p)
	}
	s.checkAvailable(item1, location1, 6)
	s.checkAdjustments(1)

	path := "/admin/checkouts/" + checkout1 + "/payments.json"
	r1 := s.do(http.MethodPost, path, "application/json", []byte(paymentBody))
	r2 := s.do(http.MethodPost, path, "application/json", []byte(paymentBody))
	if r1.status != http.StatusAccepted || r2.header.Get(idemhttp.HeaderReplayed) != "true" || !bytes.Equal(r1.body, r2.body) {
		t.Errorf("payment twice: %d %s, then %d %v %s", r1.status, r1.body, r2.status, r2.header, r2.body)
	}
	s.stop()

	s = startService(t, "-nats", node.ClientURL())
	s.waitLine(regexp.MustCompile(`record\(s\) of an earlier run`), 0)
	if _, raw := s.adjust(key, in); !bytes.Equal(raw, raw1) {
		t.Errorf("after a restart: %s; want the earlier run's response %s", raw, raw1)
	}
}

func TestFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-dir", "x", "-nats", "nats://127.0.0.1:4222"},
		{"extra"},
		{"-latency", "soon"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		out, err := testproc.CommandContext(t, ctx, binary, args...).CombinedOutput()
		cancel()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "Usage:") {
			t.Errorf("%v: %v, want exit status 2 and the usage; output:\n%s", args, err, out)
		}
	}
}
