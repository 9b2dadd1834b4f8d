package idemnats_test

// Test helpers for the package's tests: in-process JetStream clusters on
// loopback.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkv/idem/internal/testproc"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem/idemnats"
)

// clusterTimeout bounds how long the helpers wait for a cluster to form or
// a node to rejoin: generous, for a loaded 2-core machine under -race.
const clusterTimeout = 60 * time.Second

// startCluster starts n nodes on loopback, each with its own t.TempDir(),
// a random client port and, for n > 1, a route port picked beforehand and
// all the others as Peers. It returns once JetStream is ready for streams
// of up to n replicas (a meta leader that sees all n peers as current), so
// that creating a replicas-n bucket succeeds at once, and shuts the nodes
// down in t.Cleanup. n = 1 is a single node, not clustered.
func startCluster(t testing.TB, n int) []*idemnats.Node {
	t.Helper()
	if n < 1 {
		t.Fatalf("startCluster: n = %d", n)
	}
	cfgs := make([]idemnats.NodeConfig, n)
	var peers []string
	if n > 1 {
		peers = freeAddrs(t, n)
	}
	for i := range cfgs {
		cfgs[i] = idemnats.NodeConfig{
			Dir:    t.TempDir(),
			Name:   "n" + strconv.Itoa(i),
			Listen: "127.0.0.1:-1",
		}
		if n > 1 {
			cfgs[i].Cluster = peers[i]
			cfgs[i].Peers = peers
		}
	}
	return startClusterWith(t, cfgs)
}

// startClusterWith starts one node per config, fills in the configs'
// listen ports with the ones the nodes got (so that restartNode restarts a
// node on the same ports), waits until the cluster is ready (see
// startCluster) and shuts the nodes down in t.Cleanup.
func startClusterWith(t testing.TB, cfgs []idemnats.NodeConfig) []*idemnats.Node {
	t.Helper()
	nodes := make([]*idemnats.Node, len(cfgs))
	t.Cleanup(func() {
		for _, nd := range nodes {
			if nd != nil {
				nd.Shutdown() // idempotent: fine after killNode or a test's own Shutdown
			}
		}
	})
	// Start them all before waiting for any: a clustered node does not
	// wait for its peers.
	for i, cfg := range cfgs {
		nd, err := idemnats.StartNode(cfg)
		if err != nil {
			t.Fatalf("startCluster: node %d: %v", i, err)
		}
		nodes[i] = nd
	}
	waitClusterReady(t, nodes)
	return nodes
}

// restartNode shuts nodes[i] down (if it is running) and starts it again
// on the same Dir, name, ports and peers; nodes[i] is replaced by the new
// Node, which t.Cleanup shuts down. It returns once the node has rejoined
// its cluster and JetStream is ready on every running node. The node's
// streams may still be catching up: wait for them by the stream's info.
func restartNode(t testing.TB, nodes []*idemnats.Node, i int) *idemnats.Node {
	t.Helper()
	old := nodes[i]
	cfg := old.Config()
	// Keep the client port the node got when it was started on a random one.
	if u := old.ClientURL(); u != "" {
		if _, port, err := net.SplitHostPort(u[len("nats://"):]); err == nil {
			host, _, _ := net.SplitHostPort(cfg.Listen)
			cfg.Listen = net.JoinHostPort(host, port)
		}
	}
	old.Shutdown()
	var nd *idemnats.Node
	var err error
	// The old listeners are closed by Shutdown; retry briefly in case the
	// kernel has not released a port yet.
	deadline := time.Now().Add(10 * time.Second)
	for {
		nd, err = idemnats.StartNode(cfg)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restartNode %d: %v", i, err)
	}
	nodes[i] = nd
	t.Cleanup(nd.Shutdown)
	var running []*idemnats.Node
	for _, x := range nodes {
		if x.Server().Running() {
			running = append(running, x)
		}
	}
	waitClusterReadyN(t, running, len(running))
	return nd
}

// killNode stops nodes[i] at once, without waiting for the cluster to
// notice. In-process, the server's Shutdown is the only way to stop a
// node: it is not a kill -9. Before closing its routes it steps down from
// the leadership of every Raft group it leads (meta, streams), handing it
// to a peer, so the election that follows is quicker than the 4-9 s that
// follows a hard kill of the leader's process. A true hard kill needs the
// node in another process. The node can be started again with
// restartNode.
func killNode(t testing.TB, nodes []*idemnats.Node, i int) {
	t.Helper()
	nodes[i].Shutdown()
}

// waitClusterReady waits until JetStream is ready on all nodes and, if
// they are clustered, the meta leader sees all of them as current peers.
func waitClusterReady(t testing.TB, nodes []*idemnats.Node) {
	t.Helper()
	waitClusterReadyN(t, nodes, len(nodes))
}

// waitClusterReadyN waits until JetStream is ready on the running nodes
// and, if they are clustered, the meta leader (one of nodes) sees want
// peers online and all of nodes are current.
func waitClusterReadyN(t testing.TB, nodes []*idemnats.Node, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	for _, nd := range nodes {
		if err := nd.WaitReady(ctx); err != nil {
			t.Fatalf("node %s not ready: %v", nd.Name(), err)
		}
	}
	if !nodes[0].Server().JetStreamIsClustered() {
		return
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ready := false
		for _, nd := range nodes {
			s := nd.Server()
			if s.JetStreamIsLeader() {
				ready = len(s.JetStreamClusterPeers()) >= want
				break
			}
		}
		for _, nd := range nodes {
			ready = ready && nd.Server().JetStreamIsCurrent()
		}
		if ready {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cluster of %d not ready within %v", want, clusterTimeout)
		case <-tick.C:
		}
	}
}

// freeAddrs returns n loopback addresses with ports free at the time of
// the call. A port can be taken by another process before it is used; the
// window is short, and a test that hits it fails with a clear error.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	ls := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		ls[i] = l
		addrs[i] = l.Addr().String()
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return addrs
}

// A hard kill needs the node in another process: a hardNode runs in a
// child, this test binary run again for TestHelperNodeProcess, and
// killHard ends it with SIGKILL. Its clients connect over TCP (URL).

// hardNodeEnv carries the child's NodeConfig, as JSON.
const hardNodeEnv = "IDEMNATS_TEST_HELPER_NODE"

// hardNode is a node running in a child process.
type hardNode struct {
	Name string // server name
	URL  string // client URL, over TCP

	cfg   idemnats.NodeConfig // with the client port it got, for a restart
	cmd   *exec.Cmd
	stdin io.Closer     // closing it shuts the child down cleanly
	log   *lockedBuffer // the child's stderr
	ready chan struct{} // closed when the child printed "ready"
	done  chan struct{} // closed when the child has exited
}

// TestHelperNodeProcess is not a test: it is the child process of a
// hardNode, and skips unless started as one. It starts a node from the
// config in hardNodeEnv, prints "url <client URL>" and, once JetStream is
// ready, "ready", and runs until its standard input closes.
func TestHelperNodeProcess(t *testing.T) {
	js := os.Getenv(hardNodeEnv)
	if js == "" {
		t.Skip("the child process of a hardNode only")
	}
	var cfg idemnats.NodeConfig
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bad config:", err)
		os.Exit(2)
	}
	nd, err := idemnats.StartNode(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("url %s\n", nd.ClientURL())
	if err := nd.WaitReady(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	nd.Shutdown()
	os.Exit(0)
}

// startHardCluster starts n clustered nodes (n >= 2), each in a child
// process, like startCluster, and stops them in t.Cleanup. It returns once
// every node sees a meta leader; unlike startCluster it cannot see whether
// the leader counts every peer yet, so create replicated buckets with
// retries (createKVRetry).
func startHardCluster(t testing.TB, n int) []*hardNode {
	t.Helper()
	if n < 2 {
		t.Fatalf("startHardCluster: n = %d", n)
	}
	peers := freeAddrs(t, n)
	nodes := make([]*hardNode, n)
	t.Cleanup(func() {
		for _, h := range nodes {
			if h != nil {
				h.stop()
			}
		}
	})
	for i := range nodes {
		nodes[i] = startHardNode(t, idemnats.NodeConfig{
			Dir:     t.TempDir(),
			Name:    "h" + strconv.Itoa(i),
			Listen:  "127.0.0.1:-1",
			Cluster: peers[i],
			Peers:   peers,
		})
	}
	for _, h := range nodes {
		h.waitReady(t)
	}
	return nodes
}

// startHardNode starts a child process running a node with cfg and waits
// for its client URL (not for JetStream: see waitReady).
func startHardNode(t testing.TB, cfg idemnats.NodeConfig) *hardNode {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// testproc: the child dies with the test binary (Pdeathsig), and has a
	// deadline of its own besides.
	cmd := testproc.Command(t, os.Args[0], "-test.run=^TestHelperNodeProcess$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), hardNodeEnv+"="+string(js))
	h := &hardNode{
		Name:  cfg.Name,
		cfg:   cfg,
		cmd:   cmd,
		log:   &lockedBuffer{},
		ready: make(chan struct{}),
		done:  make(chan struct{}),
	}
	cmd.Stderr = h.log
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The goroutine below waits for the child, not testproc's cleanup:
	// this cleanup, registered after testproc's and so run before it,
	// kills the child and waits for that goroutine's Wait to return, so
	// that testproc's cleanup then finds the child reaped.
	t.Cleanup(h.kill)
	urlc := make(chan string, 1)
	scanned := make(chan struct{})
	go func() { // reads stdout to its end, which the child's exit brings
		defer close(scanned)
		sc := bufio.NewScanner(stdout)
		sentURL, sentReady := false, false
		for sc.Scan() {
			switch l := sc.Text(); {
			case strings.HasPrefix(l, "url ") && !sentURL:
				urlc <- strings.TrimPrefix(l, "url ")
				sentURL = true
			case l == "ready" && !sentReady:
				close(h.ready)
				sentReady = true
			}
		}
	}()
	go func() {
		<-scanned // Wait must not run before the pipe is read to its end
		_ = cmd.Wait()
		close(h.done)
	}()
	select {
	case h.URL = <-urlc:
	case <-h.done:
		t.Fatalf("hard node %s exited: %v; stderr:\n%s", cfg.Name, cmd.ProcessState, h.log.String())
	case <-time.After(clusterTimeout):
		h.kill()
		t.Fatalf("hard node %s did not start; stderr:\n%s", cfg.Name, h.log.String())
	}
	// Restart it on the port it got.
	h.cfg.Listen = strings.TrimPrefix(h.URL, "nats://")
	return h
}

// waitReady waits until the node has printed "ready": its JetStream has a
// meta leader.
func (h *hardNode) waitReady(t testing.TB) {
	t.Helper()
	select {
	case <-h.ready:
	case <-h.done:
		t.Fatalf("hard node %s exited: %v; stderr:\n%s", h.Name, h.cmd.ProcessState, h.log.String())
	case <-time.After(clusterTimeout):
		t.Fatalf("hard node %s: JetStream not ready; stderr:\n%s", h.Name, h.log.String())
	}
}

// kill sends the child SIGKILL and waits until it has exited: no step
// down, no flush, its routes cut as by a crash.
func (h *hardNode) kill() {
	_ = h.cmd.Process.Kill()
	<-h.done
}

// stop shuts the child down cleanly (or kills it if it does not exit in
// time) and waits for it; after kill, it does nothing.
func (h *hardNode) stop() {
	_ = h.stdin.Close()
	select {
	case <-h.done:
	case <-time.After(clusterTimeout):
		h.kill()
	}
}

// killHard kills nodes[i]'s process with SIGKILL, like kill -9.
func killHard(t testing.TB, nodes []*hardNode, i int) {
	t.Helper()
	nodes[i].kill()
}

// restartHard starts nodes[i] again, in a new child process, on the same
// Dir, name, ports and peers, replaces nodes[i] and waits until it sees a
// meta leader. t.Cleanup stops it.
func restartHard(t testing.TB, nodes []*hardNode, i int) *hardNode {
	t.Helper()
	nodes[i].stop()
	h := startHardNode(t, nodes[i].cfg)
	t.Cleanup(h.stop)
	nodes[i] = h
	h.waitReady(t)
	return h
}

// createKVRetry creates a bucket, retrying while the cluster is not ready
// for it yet (a meta leader still counting its peers, an election), until
// ctx ends.
func createKVRetry(ctx context.Context, t testing.TB, js jetstream.JetStream, cfg jetstream.KeyValueConfig) jetstream.KeyValue {
	t.Helper()
	for {
		kv, err := js.CreateKeyValue(ctx, cfg)
		if err == nil {
			return kv
		}
		select {
		case <-ctx.Done():
			t.Fatalf("create bucket %s: %v", cfg.Bucket, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use, for output
// written by other goroutines (a logger, a child's stderr).
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
