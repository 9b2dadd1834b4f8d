// Command shopify is a small service that implements with idem what
// Shopify's idempotency documents describe, on an in-memory inventory and
// payment ledger:
//
//   - GraphQL at POST /graphql: inventoryAdjustQuantities, idempotent with
//     the @idempotent(key:) directive, and subscriptionBillingAttemptCreate,
//     idempotent by the key in its argument, input.idempotencyKey (package
//     idemgql);
//   - REST at POST /admin/checkouts/{token}/payments.json, idempotent by
//     payment.unique_token in the JSON body (package idemhttp).
//
// Run it from the repository's root with
//
//	go -C examples/shopify run . -addr 127.0.0.1:8080
//
// and see README.md for the requests to send it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var usage usageError
		if errors.As(err, &usage) {
			os.Exit(2) // the flag package has printed the error and the usage
		}
		fmt.Fprintln(os.Stderr, "shopify:", err)
		os.Exit(1)
	}
}

// usageError is a command line that the flag package refused.
type usageError struct{ error }

// config is the command line.
type config struct {
	addr    string
	dir     string
	natsURL string
	latency time.Duration
	noWait  bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("shopify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "the `host:port` to listen on (port 0: any free port, which the service prints)")
	fs.StringVar(&c.dir, "dir", "", "idem's data `directory` (Pebble). Default: a new temporary directory, removed at exit")
	fs.StringVar(&c.natsURL, "nats", "", "a NATS server's `URL` (nats://127.0.0.1:4222, JetStream enabled): keep idem's records in its key-value bucket \""+natsBucket+"\" (package idemnats) instead of a directory")
	fs.DurationVar(&c.latency, "latency", 0, "how long each inventory adjustment, payment and billing attempt takes, as a slow database would: long enough, and two concurrent requests overlap")
	fs.BoolVar(&c.noWait, "nowait", false, "answer a request whose key is in use by a running request at once, with IDEMPOTENCY_CONCURRENT_REQUEST (409 for REST), as Shopify does, rather than wait up to 5 s for its result")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go -C examples/shopify run . [flags]\n\nA Shopify-like service on an in-memory inventory and payment ledger, made idempotent with idem.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, usageError{err}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return c, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if c.dir != "" && c.natsURL != "" {
		fmt.Fprintln(stderr, "-dir and -nats exclude each other: the records are in one or the other")
		fs.Usage()
		return c, usageError{errors.New("-dir and -nats together")}
	}
	return c, nil
}

// natsBucket is the key-value bucket of the records with -nats.
const natsBucket = "idem-shopify-example"

// run runs the service until SIGINT or SIGTERM, then stops it: the
// server first (the requests in progress finish), then the engine, which
// stores their outcomes.
func run(args []string, stderr io.Writer) (err error) {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logger := log.New(stderr, "", log.Ltime|log.Lmicroseconds)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	e, closeEngine, err := openEngine(c, logger)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := closeEngine(); cerr != nil && err == nil {
			err = fmt.Errorf("closing idem: %w", cerr)
		}
	}()

	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           newHandler(e, c, logger),
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Printf("listening on http://%s (GraphQL: POST /graphql; REST: POST /admin/checkouts/{token}/payments.json)", ln.Addr())

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stop() // a second signal kills at once
	logger.Printf("shutting down: waiting for the requests in progress")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down the server: %w", err)
	}
	return nil
}

// openEngine opens idem's engine as c says: on a NATS server (-nats), on
// a directory (-dir), or on a new temporary directory. The returned
// function closes it and removes the temporary directory.
func openEngine(c config, logger *log.Logger) (*idem.Engine, func() error, error) {
	if c.natsURL != "" {
		nc, err := nats.Connect(c.natsURL, nats.Name("idem shopify example"))
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to NATS at %s: %w", c.natsURL, err)
		}
		e, err := idemnats.Open(nc, &idemnats.Options{Bucket: natsBucket})
		if err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("opening idem on NATS at %s: %w", c.natsURL, err)
		}
		logger.Printf("idem: records in the NATS JetStream bucket %q at %s", natsBucket, c.natsURL)
		warnEarlierRecords(e, logger)
		return e, func() error {
			defer nc.Close() // after the engine, which deletes its heartbeat
			return e.Close()
		}, nil
	}

	dir, temporary := c.dir, c.dir == ""
	if temporary {
		var err error
		if dir, err = os.MkdirTemp("", "idem-shopify-"); err != nil {
			return nil, nil, err
		}
	}
	e, err := idem.Open(dir, nil)
	if err != nil {
		if temporary {
			os.RemoveAll(dir)
		}
		return nil, nil, err
	}
	if temporary {
		logger.Printf("idem: records in the temporary directory %s, removed at exit (-dir to keep them)", dir)
	} else {
		logger.Printf("idem: records in %s", dir)
		warnEarlierRecords(e, logger)
	}
	return e, func() error {
		err := e.Close()
		if temporary {
			if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
				err = rerr
			} else if rerr == nil {
				logger.Printf("idem: removed %s", dir)
			}
		}
		return err
	}, nil
}

// warnEarlierRecords says so if the engine has records of an earlier run:
// their keys replay that run's results, which the inventory and ledger,
// seeded anew at each start, do not reflect.
func warnEarlierRecords(e *idem.Engine, logger *log.Logger) {
	n := 0
	for _, err := range e.Records("") {
		if err != nil {
			logger.Printf("idem: listing the records: %v", err)
			return
		}
		n++
	}
	if n > 0 {
		logger.Printf("idem: %d record(s) of an earlier run: their keys replay that run's results, but the inventory and ledger are in memory and start from their seed again (see README.md)", n)
	}
}
