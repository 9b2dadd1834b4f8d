package idem_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/idemkv/idem"
)

// A client retries a payment with the same idempotency key: the charge runs
// once, and the retry gets the first response back, marked as a replay. A
// retry with another payload is refused.
func Example() {
	// A real service opens a directory on disk: idem.Open(dir, nil).
	e, err := idem.Open("payments", &idem.Options{FS: vfs.NewMem()})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	charges := 0
	charge := func(ctx context.Context) ([]byte, error) {
		charges++
		return []byte(fmt.Sprintf("receipt #%d: 42.00 EUR", charges)), nil
	}
	ctx := context.Background()
	key, payload := "order-1001", []byte(`{"amount":4200,"currency":"EUR"}`)

	for attempt := 1; attempt <= 2; attempt++ {
		res, err := e.Do(ctx, key, payload, charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("attempt %d: %s (replayed: %v)\n", attempt, res.Value, res.Replayed)
	}

	_, err = e.Do(ctx, key, []byte(`{"amount":9900,"currency":"EUR"}`), charge)
	fmt.Println("other payload refused:", errors.Is(err, idem.ErrFingerprintMismatch))
	fmt.Println("charges:", charges)
	// Output:
	// attempt 1: receipt #1: 42.00 EUR (replayed: false)
	// attempt 2: receipt #1: 42.00 EUR (replayed: true)
	// other payload refused: true
	// charges: 1
}
