package shop_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemkv/idem/examples/shopify/shop"
)

const (
	item1     = "gid://shopify/InventoryItem/1"
	item2     = "gid://shopify/InventoryItem/2"
	location1 = "gid://shopify/Location/1"
)

func available(t *testing.T, inv *shop.Inventory, item, location string) int {
	t.Helper()
	l, ok := inv.Level(item, location)
	if !ok {
		t.Fatalf("%s is not stocked at %s", item, location)
	}
	if l.OnHand != l.Available {
		t.Errorf("on_hand %d, available %d: nothing is set aside here, so they should be equal", l.OnHand, l.Available)
	}
	return l.Available
}

func TestParseMoney(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want shop.Money
	}{
		{"398.00", 39800}, {"398", 39800}, {"0.5", 50}, {"0.05", 5}, {"12.34", 1234},
	} {
		if got, err := shop.ParseMoney(tc.in); err != nil || got != tc.want || got.String() != shop.Money(tc.want).String() {
			t.Errorf("ParseMoney(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", ".5", "1.234", "-1", "+1", "1.-5", "1.+5", "abc", "1e3", "1,00"} {
		if got, err := shop.ParseMoney(bad); err == nil {
			t.Errorf("ParseMoney(%q) = %v; want an error", bad, got)
		}
	}
	if s := shop.Money(39800).String(); s != "398.00" {
		t.Errorf("String: %q", s)
	}
}

// TestAdjustAllOrNone checks that an adjustment whose second change fails
// changes nothing.
func TestAdjustAllOrNone(t *testing.T) {
	inv, _ := shop.New(nil)
	g, errs, err := inv.Adjust(context.Background(), shop.Adjustment{
		Reason: "correction", Name: "available",
		Changes: []shop.Change{
			{ItemID: item1, LocationID: location1, Delta: 5},
			{ItemID: item2, LocationID: location1, Delta: 2_000_000_000},
		},
	})
	if err != nil || g != nil || len(errs) != 1 || errs[0].Code != shop.CodeInvalidQuantityTooHigh {
		t.Fatalf("Adjust: %v, %+v, %v; want the user error %s", g, errs, err, shop.CodeInvalidQuantityTooHigh)
	}
	if a := available(t, inv, item1, location1); a != 10 {
		t.Errorf("item 1: %d available, want 10 (unchanged)", a)
	}
	if n := inv.Groups(); n != 0 {
		t.Errorf("%d groups, want 0", n)
	}
}

// TestAdjustCancelled checks that an adjustment whose context ends during
// its latency changes nothing.
func TestAdjustCancelled(t *testing.T) {
	inv, _ := shop.New(&shop.Options{Latency: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := inv.Adjust(ctx, shop.Adjustment{Reason: "correction", Name: "available",
			Changes: []shop.Change{{ItemID: item1, LocationID: location1, Delta: 1}}})
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Adjust: %v, want context.Canceled", err)
	}
	if a := available(t, inv, item1, location1); a != 10 {
		t.Errorf("%d available, want 10", a)
	}
}

// TestAdjustConcurrent checks that concurrent adjustments all apply: the
// inventory itself has no idempotency, which is idem's part.
func TestAdjustConcurrent(t *testing.T) {
	inv, _ := shop.New(nil)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, errs, err := inv.Adjust(context.Background(), shop.Adjustment{Reason: "received", Name: "available",
				Changes: []shop.Change{{ItemID: item1, LocationID: location1, Delta: 1}}}); err != nil || len(errs) > 0 {
				t.Errorf("Adjust: %+v, %v", errs, err)
			}
		})
	}
	wg.Wait()
	if a := available(t, inv, item1, location1); a != 60 {
		t.Errorf("%d available, want 60", a)
	}
	if n := inv.Groups(); n != 50 {
		t.Errorf("%d groups, want 50", n)
	}
}

func TestPay(t *testing.T) {
	_, led := shop.New(nil)
	const token = "2d7f0a1c3e4b5a69788796a5b4c3d2e1" // 49.50 due
	ctx := context.Background()
	var se *shop.Error
	if _, err := led.Pay(ctx, "nope", shop.PaymentRequest{Amount: "1.00", SessionID: "s"}); !errors.As(err, &se) || se.Status != 404 {
		t.Errorf("a checkout that does not exist: %v", err)
	}
	for _, req := range []shop.PaymentRequest{
		{Amount: "", SessionID: "s"},
		{Amount: "0", SessionID: "s"},
		{Amount: "1.00"},
		{Amount: "49.51", SessionID: "s"},
	} {
		if _, err := led.Pay(ctx, token, req); !errors.As(err, &se) || se.Status != 422 {
			t.Errorf("%+v: %v, want a 422 error", req, err)
		}
	}
	p, err := led.Pay(ctx, token, shop.PaymentRequest{Amount: "40.00", SessionID: "s", UniqueToken: "u"})
	if err != nil || p.ID != 1 || p.Checkout.PaymentDue != 950 || p.Transaction.Amount != 4000 || p.UniqueToken != "u" {
		t.Fatalf("Pay: %+v, %v", p, err)
	}
	if ps, ok := led.Payments(token); !ok || len(ps) != 1 {
		t.Errorf("Payments: %v, %v", ps, ok)
	}
}

func TestBill(t *testing.T) {
	_, led := shop.New(nil)
	ctx := context.Background()
	for _, tc := range []struct{ contract, key, code string }{
		{"gid://shopify/SubscriptionContract/1", "", shop.CodeBlank},
		{"gid://shopify/SubscriptionContract/9", "k", shop.CodeContractNotFound},
		{"gid://shopify/SubscriptionContract/2", "k", shop.CodeContractTerminated},
	} {
		if a, errs, err := led.Bill(ctx, tc.contract, tc.key, nil); err != nil || a != nil || len(errs) != 1 || errs[0].Code != tc.code {
			t.Errorf("Bill(%s, %q): %v, %+v, %v; want %s", tc.contract, tc.key, a, errs, err, tc.code)
		}
	}
	a, errs, err := led.Bill(ctx, "gid://shopify/SubscriptionContract/1", "k", nil)
	if err != nil || len(errs) > 0 || a.Order.Total != 2900 || a.Order.Name != "#1001" {
		t.Fatalf("Bill: %+v, %+v, %v", a, errs, err)
	}
	if as := led.Attempts("gid://shopify/SubscriptionContract/1"); len(as) != 1 || as[0].ID != a.ID {
		t.Errorf("Attempts: %+v", as)
	}
}
