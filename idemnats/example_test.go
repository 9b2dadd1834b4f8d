package idemnats_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
)

// A service whose replicas share a NATS cluster connects to it by URL and
// opens the engine on a bucket of three replicas. For the example's sake,
// it starts a node of its own first, and its bucket has one replica.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "idemnats-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	nd, err := idemnats.StartNode(idemnats.NodeConfig{Dir: dir, Listen: "127.0.0.1:-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer nd.Shutdown()
	url := nd.ClientURL() // in production: "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"

	// The engine never closes the connection: close it after the engine.
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	e, err := idemnats.Open(nc, &idemnats.Options{
		Bucket:   "payments",
		Replicas: 1, // 3 on a cluster of three
		// Open warns of a bucket of fewer than 3 replicas: not here.
		Engine: &idem.Options{TTL: 24 * time.Hour, Logger: slog.New(slog.DiscardHandler)},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()

	ctx := context.Background()
	charge := func(ctx context.Context) ([]byte, error) {
		return []byte("receipt-1"), nil // charge the card
	}
	for range 2 {
		res, err := e.Do(ctx, "pay-42", []byte("EUR 12.50"), charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s (replayed: %v)\n", res.Value, res.Replayed)
	}
	// Output:
	// receipt-1 (replayed: false)
	// receipt-1 (replayed: true)
}

// Three replicas of a service, each embedding a node of a NATS cluster with
// an engine on it, share their records: a request retried on another
// replica replays the first one's result. For the example's sake, the three
// run in one process, on loopback ports; in production each replica starts
// its own node, as in the example of StartNode for a cluster.
func Example_embeddedCluster() {
	dir, err := os.MkdirTemp("", "idemnats-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	peers := examplePeers(3) // "app-0:6222", "app-1:6222", "app-2:6222" in production

	// Start the nodes together: a clustered node waits for a quorum.
	nodes := make([]*idemnats.Node, len(peers))
	for i, addr := range peers {
		nd, err := idemnats.StartNode(idemnats.NodeConfig{
			Dir:     filepath.Join(dir, fmt.Sprint("node", i)),
			Name:    fmt.Sprint("node", i),
			Listen:  "127.0.0.1:-1", // not the default port, taken by the first
			Cluster: addr,
			Peers:   peers,
		})
		if err != nil {
			log.Fatal(err)
		}
		defer nd.Shutdown()
		nodes[i] = nd
	}

	// Each replica waits for the cluster and opens its engine, in-process.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	engines := make([]*idem.Engine, len(nodes))
	for i, nd := range nodes {
		if err := nd.WaitReady(ctx); err != nil {
			log.Fatal(err)
		}
		nc, err := nd.Connect()
		if err != nil {
			log.Fatal(err)
		}
		defer nc.Close()
		var e *idem.Engine
		for {
			if e, err = idemnats.Open(nc, &idemnats.Options{Replicas: 3}); err == nil {
				break
			}
			// Creating the bucket fails ("no suitable peers for
			// placement") until the cluster knows its three nodes, a
			// moment after they are ready: a replica tries again.
			select {
			case <-ctx.Done():
				log.Fatal(err)
			case <-time.After(100 * time.Millisecond):
			}
		}
		defer e.Close()
		engines[i] = e
	}

	// A payment on the first replica, retried on the third.
	charge := func(ctx context.Context) ([]byte, error) {
		return []byte("receipt-1"), nil // charge the card
	}
	for _, i := range []int{0, 2} {
		res, err := engines[i].Do(ctx, "pay-42", []byte("EUR 12.50"), charge)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("node%d: %s (replayed: %v)\n", i, res.Value, res.Replayed)
	}
	// Output:
	// node0: receipt-1 (replayed: false)
	// node2: receipt-1 (replayed: true)
}

// examplePeers returns n loopback addresses whose ports were free a moment
// ago, for the routes of an example's cluster.
func examplePeers(n int) []string {
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}
