package idemnats_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem/idemnats"
)

// testTimeout bounds each wait of these tests: generous, for a loaded
// 2-core machine under -race. No test asserts how fast anything is.
const testTimeout = 60 * time.Second

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// connectJS connects to nd in-process and returns a JetStream handle; the
// connection is closed in t.Cleanup.
func connectJS(t testing.TB, nd *idemnats.Node) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nd.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// waitGoroutines waits until at most want goroutines run, and fails with
// their stacks if that does not happen before the deadline.
func waitGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), want, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNodeSingle(t *testing.T) {
	ctx := testCtx(t)
	before := runtime.NumGoroutine()

	nd, err := idemnats.StartNode(idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	if err := nd.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if nd.ClusterAddr() != "" {
		t.Errorf("ClusterAddr = %q for a single node", nd.ClusterAddr())
	}
	if nd.Server().JetStreamIsClustered() {
		t.Error("a single node runs clustered JetStream")
	}

	nc, err := nd.Connect()
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "single"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Value()) != "v1" {
		t.Fatalf("Get = %q, want v1", e.Value())
	}

	// The TCP listener serves clients too.
	tc, err := nats.Connect(nd.ClientURL())
	if err != nil {
		t.Fatalf("TCP connect to %s: %v", nd.ClientURL(), err)
	}
	tjs, err := jetstream.New(tc)
	if err != nil {
		t.Fatal(err)
	}
	tkv, err := tjs.KeyValue(ctx, "single")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := tkv.Get(ctx, "k"); err != nil || string(e.Value()) != "v1" {
		t.Fatalf("Get over TCP = %v, %v", e, err)
	}
	tc.Close()

	nc.Close()
	nd.Shutdown()
	nd.Shutdown() // idempotent
	if nd.Server().Running() {
		t.Fatal("server running after Shutdown")
	}
	if err := nd.WaitReady(ctx); err == nil {
		t.Fatal("WaitReady after Shutdown: no error")
	}
	waitGoroutines(t, before)
}

func TestNodeSingleRestartKeepsData(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	cfg := idemnats.NodeConfig{Dir: dir, Listen: "127.0.0.1:-1"}
	nd, err := idemnats.StartNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, js := connectJS(t, nd)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "keep"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	nd.Shutdown()

	nd, err = idemnats.StartNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	_, js = connectJS(t, nd)
	kv, err = js.KeyValue(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("Get after restart = %v, %v", e, err)
	}
}

func TestNodeSyncAlways(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoSyncAlways=%v", noSync), func(t *testing.T) {
			nd, err := idemnats.StartNode(idemnats.NodeConfig{
				Dir:          t.TempDir(),
				Listen:       "127.0.0.1:-1",
				NoSyncAlways: noSync,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer nd.Shutdown()
			if got := nd.Server().JetStreamConfig().SyncAlways; got == noSync {
				t.Errorf("JetStreamConfig().SyncAlways = %v", got)
			}
			jsi, err := nd.Server().Jsz(&server.JSzOptions{Config: true})
			if err != nil {
				t.Fatal(err)
			}
			if jsi.Config.SyncAlways == noSync {
				t.Errorf("jsz config sync_always = %v", jsi.Config.SyncAlways)
			}
			if jsi.Config.StoreDir == "" || !strings.HasPrefix(jsi.Config.StoreDir, nd.Config().Dir) {
				t.Errorf("jsz store dir %q not in Dir %q", jsi.Config.StoreDir, nd.Config().Dir)
			}
		})
	}
}

func TestNodeConfigDefaults(t *testing.T) {
	in := idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:0", Peers: nil}
	nd, err := idemnats.StartNode(in)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	got := nd.Config()
	if got.ClusterName != idemnats.DefaultClusterName || got.StartTimeout != idemnats.DefaultStartTimeout {
		t.Errorf("defaults not filled in: %+v", got)
	}
	if got.Name == "" || got.Name != nd.Name() {
		t.Errorf("Name %q, server name %q", got.Name, nd.Name())
	}
	if in.Name != "" || in.ClusterName != "" {
		t.Errorf("StartNode modified the caller's config: %+v", in)
	}
	if strings.HasSuffix(nd.ClientURL(), ":0") || strings.HasSuffix(nd.ClientURL(), ":-1") {
		t.Errorf("ClientURL %q has no real port", nd.ClientURL())
	}
}

func TestNodeMaxPayload(t *testing.T) {
	ctx := testCtx(t)
	nd, err := idemnats.StartNode(idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:-1", MaxPayload: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	nc, js := connectJS(t, nd)
	if got := nc.MaxPayload(); got != 4<<20 {
		t.Fatalf("MaxPayload = %d", got)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "big"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", make([]byte, 2<<20)); err != nil {
		t.Fatal(err)
	}
}

func TestNodeDefaultNameFromClusterAddr(t *testing.T) {
	addrs := freeAddrs(t, 2)
	addr := addrs[0]
	nd, err := idemnats.StartNode(idemnats.NodeConfig{
		Dir:     t.TempDir(),
		Listen:  "127.0.0.1:-1",
		Cluster: addr,
		Peers:   addrs, // itself (skipped) and a peer that is not up
	})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	if nd.Name() != addr {
		t.Errorf("Name = %q, want %q", nd.Name(), addr)
	}
	if nd.ClusterAddr() != addr {
		t.Errorf("ClusterAddr = %q, want %q", nd.ClusterAddr(), addr)
	}
	if n := nd.Server().NumRoutes(); n != 0 {
		t.Errorf("%d routes to itself", n)
	}
}

func TestNodeBadConfig(t *testing.T) {
	// A port in use, for the listen errors.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().String()

	// A file where Dir should be a directory.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		cfg  func(dir string) idemnats.NodeConfig
		want string // in the error
	}{
		{"NoDir", func(string) idemnats.NodeConfig { return idemnats.NodeConfig{Listen: "127.0.0.1:-1"} }, "Dir is required"},
		{"PeersWithoutCluster", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Peers: []string{"127.0.0.1:6222"}}
		}, "Peers needs"},
		{"ListenNoPort", func(d string) idemnats.NodeConfig { return idemnats.NodeConfig{Dir: d, Listen: "localhost"} }, "not host:port"},
		{"ListenBadPort", func(d string) idemnats.NodeConfig { return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:70000"} }, "not in 1..65535"},
		{"ListenPortNotNumber", func(d string) idemnats.NodeConfig { return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:http"} }, "bad port"},
		{"ClusterBad", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Cluster: "127.0.0.1"}
		}, "Cluster"},
		{"PeerBad", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Cluster: "127.0.0.1:-1", Peers: []string{"127.0.0.1:0"}}
		}, "Peers"},
		{"ClusterWithoutPeers", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Cluster: "127.0.0.1:-1"}
		}, "another member"},
		{"ClusterOnlySelf", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Cluster: "127.0.0.1:6222", Peers: []string{"127.0.0.1:6222"}}
		}, "another member"},
		{"PeerNoHost", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Cluster: "127.0.0.1:-1", Peers: []string{":6222"}}
		}, "no host"},
		{"NameWithSpace", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Name: "a b"}
		}, "white space"},
		{"NegativeMaxStore", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", MaxStore: -1}
		}, "MaxStore"},
		{"NegativeMaxPayload", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", MaxPayload: -1}
		}, "MaxPayload"},
		{"HugeMaxPayload", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", MaxPayload: 128 << 20}
		}, "max_payload"},
		{"ListenPortInUse", func(d string) idemnats.NodeConfig { return idemnats.NodeConfig{Dir: d, Listen: busy} }, "address already in use"},
		{"ClusterPortInUse", func(d string) idemnats.NodeConfig {
			return idemnats.NodeConfig{Dir: d, Listen: "127.0.0.1:-1", Cluster: busy, Peers: []string{"127.0.0.1:1"}}
		}, "router port"},
		{"DirIsAFile", func(string) idemnats.NodeConfig { return idemnats.NodeConfig{Dir: file, Listen: "127.0.0.1:-1"} }, "not a directory"},
	}
	before := runtime.NumGoroutine()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nd, err := idemnats.StartNode(tt.cfg(t.TempDir()))
			if err == nil {
				nd.Shutdown()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "idemnats: ") {
				t.Fatalf("error %q, want one with %q", err, tt.want)
			}
			t.Logf("%v", err)
		})
	}
	// A failed start leaves nothing running.
	waitGoroutines(t, before)
}

func TestNodeLogger(t *testing.T) {
	var buf lockedBuffer
	lg := slog.New(slog.NewTextHandler(&buf, nil))
	nd, err := idemnats.StartNode(idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:-1", Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	nd.Shutdown()
	if !strings.Contains(buf.String(), "Server is ready") {
		t.Errorf("no server notice in the log:\n%s", buf.String())
	}
}

func TestClusterReplicas3(t *testing.T) {
	ctx := testCtx(t)
	before := runtime.NumGoroutine()
	start := time.Now()
	nodes := startCluster(t, 3)
	t.Logf("3-node cluster ready in %v", time.Since(start))

	for _, nd := range nodes {
		if !nd.Server().JetStreamIsClustered() {
			t.Fatalf("node %s not clustered", nd.Name())
		}
	}
	nc0, js0 := connectJS(t, nodes[0])
	kv, err := js0.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "r3", Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	info := streamInfo(ctx, t, js0, "KV_r3")
	if got := len(info.Cluster.Replicas) + 1; got != 3 {
		t.Fatalf("stream has %d peers, want 3", got)
	}
	// Every node serves the bucket.
	var conns []*nats.Conn
	for _, nd := range nodes {
		nc, js := connectJS(t, nd)
		conns = append(conns, nc)
		kv, err := js.KeyValue(ctx, "r3")
		if err != nil {
			t.Fatal(err)
		}
		if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value()) != "v" {
			t.Fatalf("Get via %s = %v, %v", nd.Name(), e, err)
		}
	}

	// Clients first: a client of a node that is gone keeps trying to
	// reconnect until closed.
	nc0.Close()
	for _, nc := range conns {
		nc.Close()
	}
	for _, nd := range nodes {
		nd.Shutdown()
	}
	waitGoroutines(t, before)
}

func TestClusterNodeDown(t *testing.T) {
	if testing.Short() {
		t.Skip("stops and restarts cluster nodes")
	}
	for _, victim := range []string{"leader", "follower"} {
		t.Run(victim, func(t *testing.T) {
			ctx := testCtx(t)
			nodes := startCluster(t, 3)
			_, js0 := connectJS(t, nodes[0])
			if _, err := js0.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "down", Replicas: 3}); err != nil {
				t.Fatal(err)
			}
			leader := streamInfo(ctx, t, js0, "KV_down").Cluster.Leader
			i := nodeIndex(t, nodes, leader)
			if victim == "follower" {
				i = (i + 1) % len(nodes)
			}
			survivor := nodes[(i+1)%len(nodes)]
			_, js := connectJS(t, survivor)
			kv, err := js.KeyValue(ctx, "down")
			if err != nil {
				t.Fatal(err)
			}
			putRetry(ctx, t, kv, "before", "1")

			killNode(t, nodes, i)
			t.Logf("stopped %s (%s); stream leader was %s", nodes[i].Name(), victim, leader)
			start := time.Now()
			putRetry(ctx, t, kv, "during", "2")
			t.Logf("first write after the stop acknowledged after %v", time.Since(start))
			if got := streamInfo(ctx, t, js, "KV_down").Cluster.Leader; got == nodes[i].Name() {
				t.Fatalf("leader is still the stopped node %s", got)
			}

			// The node comes back on its Dir and catches up.
			back := restartNode(t, nodes, i)
			_, jsb := connectJS(t, back)
			waitStreamCurrent(ctx, t, jsb, "KV_down", back.Name())
			waitLocalMessages(ctx, t, back, 2)
			kvb, err := jsb.KeyValue(ctx, "down")
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]string{"before": "1", "during": "2"} {
				if e, err := kvb.Get(ctx, k); err != nil || string(e.Value()) != v {
					t.Fatalf("Get %s via the restarted node = %v, %v", k, e, err)
				}
			}
			putRetry(ctx, t, kvb, "after", "3")
		})
	}
}

func TestClusterQuorumLost(t *testing.T) {
	if testing.Short() {
		t.Skip("stops cluster nodes")
	}
	ctx := testCtx(t)
	nodes := startCluster(t, 3)
	_, js := connectJS(t, nodes[0])
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "quorum", Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	putRetry(ctx, t, kv, "k", "1")
	killNode(t, nodes, 1)
	killNode(t, nodes, 2)
	// Two of three down: no write can be acknowledged.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := kv.Put(wctx, "k", []byte("2")); err == nil {
		t.Fatal("write acknowledged with two of three nodes down")
	} else {
		t.Logf("write with two nodes down: %v", err)
	}
	// One back: writes resume.
	restartNode(t, nodes, 1)
	putRetry(ctx, t, kv, "k", "3")
}

func streamInfo(ctx context.Context, t testing.TB, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	for {
		s, err := js.Stream(ctx, name)
		if err == nil {
			var info *jetstream.StreamInfo
			info, err = s.Info(ctx)
			if err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
				return info
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("stream %s info: %v (%v)", name, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func nodeIndex(t testing.TB, nodes []*idemnats.Node, name string) int {
	t.Helper()
	for i, nd := range nodes {
		if nd.Name() == name {
			return i
		}
	}
	t.Fatalf("no node named %q", name)
	return -1
}

// putRetry puts until a put is acknowledged, as an engine would across a
// leader election, and fails the test when ctx ends.
func putRetry(ctx context.Context, t testing.TB, kv jetstream.KeyValue, k, v string) {
	t.Helper()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := kv.Put(pctx, k, []byte(v))
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// waitStreamCurrent waits until the stream's leader reports the peer
// named peer as current.
func waitStreamCurrent(ctx context.Context, t testing.TB, js jetstream.JetStream, stream, peer string) {
	t.Helper()
	for {
		info := streamInfo(ctx, t, js, stream)
		if info.Cluster.Leader == peer {
			return
		}
		for _, r := range info.Cluster.Replicas {
			if r.Name == peer && r.Current && !r.Offline {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("peer %s of stream %s not current: %+v", peer, stream, info.Cluster)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitLocalMessages waits until nd stores at least n messages itself.
func waitLocalMessages(ctx context.Context, t testing.TB, nd *idemnats.Node, n uint64) {
	t.Helper()
	for {
		jsi, err := nd.Server().Jsz(&server.JSzOptions{})
		if err == nil && jsi.Messages >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s stores %+v messages, want %d", nd.Name(), jsi, n)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestClusterHardKillLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("kills cluster nodes")
	}
	ctx := testCtx(t)
	nodes := startHardCluster(t, 3)
	conn := func(h *hardNode) jetstream.JetStream {
		nc, err := nats.Connect(h.URL, nats.MaxReconnects(-1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	js0 := conn(nodes[0])
	createKVRetry(ctx, t, js0, jetstream.KeyValueConfig{Bucket: "hard", Replicas: 3})
	leader := streamInfo(ctx, t, js0, "KV_hard").Cluster.Leader
	i := -1
	for j, h := range nodes {
		if h.Name == leader {
			i = j
		}
	}
	if i < 0 {
		t.Fatalf("no node named %q", leader)
	}
	js := conn(nodes[(i+1)%len(nodes)])
	kv, err := js.KeyValue(ctx, "hard")
	if err != nil {
		t.Fatal(err)
	}
	putRetry(ctx, t, kv, "before", "1")

	killHard(t, nodes, i)
	start := time.Now()
	putRetry(ctx, t, kv, "during", "2")
	t.Logf("kill -9 of stream leader %s: first write acknowledged after %v", leader, time.Since(start))

	back := restartHard(t, nodes, i)
	jsb := conn(back)
	waitStreamCurrent(ctx, t, jsb, "KV_hard", back.Name)
	kvb, err := jsb.KeyValue(ctx, "hard")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"before": "1", "during": "2"} {
		if e, err := kvb.Get(ctx, k); err != nil || string(e.Value()) != v {
			t.Fatalf("Get %s via the restarted node = %v, %v", k, e, err)
		}
	}
}

func ExampleStartNode() {
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
	nc, err := nd.Connect() // in-process, no TCP
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	ctx := context.Background()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "example"})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := kv.Put(ctx, "greeting", []byte("hello")); err != nil {
		log.Fatal(err)
	}
	e, err := kv.Get(ctx, "greeting")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(e.Value()))
	// Output: hello
}

// Each of three replicas of a service runs this, with its own route
// address in NODE_ADDR and the same list of the three in Peers.
func ExampleStartNode_cluster() {
	nd, err := idemnats.StartNode(idemnats.NodeConfig{
		Dir:     "/var/lib/myservice/nats",
		Cluster: os.Getenv("NODE_ADDR"), // app-0:6222 on the first replica
		Peers:   []string{"app-0:6222", "app-1:6222", "app-2:6222"},
		Logger:  slog.Default(),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer nd.Shutdown()

	// Wait for a quorum of the cluster (two of three) to be up.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := nd.WaitReady(ctx); err != nil {
		log.Fatal(err)
	}
	nc, err := nd.Connect()
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	// ... open the idem store on nc, with buckets of 3 replicas.
}
