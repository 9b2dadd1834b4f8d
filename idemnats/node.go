package idemnats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Defaults of NodeConfig.
const (
	// DefaultListen is the client listen address of a node whose
	// NodeConfig.Listen is empty: NATS's standard port, on loopback only.
	DefaultListen = "127.0.0.1:4222"
	// DefaultClusterName is the cluster name of a node whose
	// NodeConfig.ClusterName is empty.
	DefaultClusterName = "idem"
	// DefaultStartTimeout is how long StartNode waits for a node to be
	// ready for connections when NodeConfig.StartTimeout is zero.
	DefaultStartTimeout = 30 * time.Second
)

// NodeConfig configures an embedded NATS server with JetStream, started by
// StartNode. Only Dir is required; StartNode does not modify the config.
type NodeConfig struct {
	// Dir is the directory of JetStream's file store (streams, KV buckets
	// and, when clustered, the Raft logs, under Dir/jetstream). Required.
	// A node restarted on the same Dir recovers its data; a clustered node
	// also rejoins its cluster with it, provided it keeps its Name.
	Dir string

	// Name is the server's name, which must be unique in the cluster and,
	// for a clustered node, the same every time the node starts on Dir: a
	// clustered node that comes back under another name is a new peer to
	// the others, and the old one counts as down.
	//
	// If empty, the name is derived from the cluster address (Cluster) of a
	// clustered node or the client address (Listen) of a single one: the
	// address host:port as given, with the machine's host name in place of
	// an unspecified host (empty, 0.0.0.0 or ::). If that address has a
	// random port, the name is random: fine for a single node, not for a
	// clustered one that is ever restarted.
	Name string

	// Listen is the host:port on which the node accepts client connections
	// over TCP; an engine in the same process does not need it (Connect is
	// in-process), but other processes and the nats CLI do. Port 0 or -1
	// picks a random free port (ClientURL tells which). If empty,
	// DefaultListen ("127.0.0.1:4222").
	Listen string

	// Cluster is the host:port on which the node accepts route connections
	// from the other members of its cluster. Port 0 or -1 picks a random
	// free port, which only suits a node that dials every peer itself (the
	// others cannot list it in their Peers). If empty, the node runs alone:
	// no routes, no Raft, streams of one replica only. A node runs alone
	// or in a cluster for the life of its Dir: JetStream's store of a
	// single node is not the store of a cluster member.
	Cluster string

	// Peers are the route addresses (host:port, their Cluster setting) of
	// all the members of the cluster. The node's own address may be in the
	// list, so that every member can be given the same list: written as in
	// Cluster, it is skipped; written otherwise (another name of the same
	// host), the server finds it has dialed itself and drops that route.
	// A cluster of three is the usual size: it keeps accepting writes to
	// replicas-3 streams with one member down. Peers needs Cluster, and
	// Cluster needs at least one other member in Peers.
	Peers []string

	// ClusterName is the name that all the members of a cluster share;
	// routes from a server of another cluster name are refused. If empty,
	// DefaultClusterName ("idem").
	ClusterName string

	// MaxMemory limits the memory of JetStream's memory-backed streams, in
	// bytes. If 0, nats-server's default: 75% of the machine's memory, or
	// of GOMEMLIMIT if that is lower (a limit, not a reservation). Negative
	// is an error. File-backed streams and buckets, the default kind, do
	// not count here.
	MaxMemory int64

	// MaxStore limits the disk space of JetStream's file-backed streams in
	// Dir, in bytes. If 0, nats-server's default: 75% of the space
	// available on Dir's file system when the node starts (1 TiB if that
	// cannot be found). Negative is an error.
	MaxStore int64

	// MaxPayload is the largest message a client may publish to the node,
	// in bytes: a stored record (key, value and headers) must fit. All the
	// members of a cluster should have the same. If 0, NATS's default of
	// 1 MiB. nats-server warns above 8 MiB and refuses more than 64 MiB;
	// negative is an error.
	MaxPayload int32

	// NoSyncAlways turns off the fsync of every write. By default
	// (false) the node runs with JetStream's sync_interval set to
	// "always": a single node fsyncs each write to a stream before
	// acknowledging it, and a clustered one fsyncs each Raft log entry (a
	// replicated stream's store is then synced with its snapshots), so an
	// acknowledged write survives a power loss of every member. Jepsen's
	// tests of NATS 2.12 lost acknowledged writes without it.
	// With NoSyncAlways, writes are fsynced every two minutes, and a crash
	// of the machines may lose what was acknowledged since.
	NoSyncAlways bool

	// StartTimeout bounds how long StartNode waits for the node to listen
	// and start JetStream. If 0, DefaultStartTimeout (30 s).
	StartTimeout time.Duration

	// Logger receives the server's log lines: its notices at Info, its
	// warnings at Warn, its errors at Error, debug lines at Debug (only if
	// Logger is enabled at Debug when the node starts). Trace lines are
	// never logged. If nil, the server logs nothing; errors that stop the
	// node from starting are returned by StartNode either way.
	Logger *slog.Logger
}

// Node is a NATS server with JetStream embedded in this process, started by
// StartNode. An idem engine reaches it through Connect, in-process.
//
// A node listens on two TCP ports: Listen for clients (by default
// 127.0.0.1:4222) and, when clustered, Cluster for the routes between the
// members. It serves no monitoring HTTP port, installs no signal handlers
// and writes only under its Dir.
//
// A cluster needs a majority of its members (its quorum) to accept writes:
// a three-node cluster keeps working with one node down, and with two down
// stops accepting writes to its replicated streams, and the creation or
// change of any stream, until one of them is back. Each replicated stream has a leader; while the
// members elect a new one, after the leader's node stopped or was cut off,
// writes to the stream stall: a few seconds (4 to 9 s measured after a hard
// kill of the leader's process; less after a clean Shutdown, which hands
// leadership over first). Callers should give writes a deadline longer than
// that, and retry.
//
// A Node is safe for concurrent use.
type Node struct {
	srv *server.Server
	cfg NodeConfig // with defaults filled in

	shutdownOnce sync.Once // makes Shutdown idempotent
}

// StartNode starts an embedded NATS server with JetStream, storing its
// data in cfg.Dir with every write fsynced (see NodeConfig.NoSyncAlways),
// and joining the cluster of cfg.Peers if cfg.Cluster is set. It returns
// once the node accepts connections and JetStream is enabled, or an error
// if cfg is invalid (no Dir, Peers without Cluster or Cluster without
// another member in Peers, an address that is not host:port), a port is
// taken, the store cannot be opened, or the node is
// not ready within cfg.StartTimeout.
//
// A clustered node returns without waiting for its peers: JetStream's
// requests fail (with "JetStream system temporarily unavailable" or a
// time-out) until a quorum of the cluster is up and has elected a meta
// leader. WaitReady waits for that.
//
// See Node for the ports it uses, the quorum rule and the stalls of
// elections. Shutdown stops the node.
func StartNode(cfg NodeConfig) (*Node, error) {
	opts, cfg, err := nodeOptions(cfg)
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("idemnats: node: %w", err)
	}
	lg := &nodeLogger{slog: cfg.Logger}
	debug := cfg.Logger != nil && cfg.Logger.Enabled(context.Background(), slog.LevelDebug)
	srv.SetLoggerV2(lg, debug, false, false)

	srv.Start()
	if err := nodeWaitStarted(srv, lg, cfg.StartTimeout); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	return &Node{srv: srv, cfg: cfg}, nil
}

// nodeWaitStarted waits until srv listens and runs JetStream, or a fatal
// error was logged, or timeout passed.
func nodeWaitStarted(srv *server.Server, lg *nodeLogger, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := lg.fatalErr(); err != nil {
			return fmt.Errorf("idemnats: node did not start: %w", err)
		}
		// ReadyForConnections polls every 25 ms up to its argument.
		if srv.ReadyForConnections(50*time.Millisecond) && srv.JetStreamEnabled() {
			return nil
		}
		if time.Now().After(deadline) {
			if err := lg.fatalErr(); err != nil {
				return fmt.Errorf("idemnats: node did not start: %w", err)
			}
			return fmt.Errorf("idemnats: node not ready for connections after %v", timeout)
		}
	}
}

// nodeOptions validates cfg, fills in its defaults and translates it to the
// server's options. cfg is a copy: the caller's is not modified.
func nodeOptions(cfg NodeConfig) (*server.Options, NodeConfig, error) {
	cfg.Peers = append([]string(nil), cfg.Peers...)
	if cfg.Dir == "" {
		return nil, cfg, errors.New("idemnats: node: NodeConfig.Dir is required")
	}
	if len(cfg.Peers) > 0 && cfg.Cluster == "" {
		return nil, cfg, errors.New("idemnats: node: NodeConfig.Peers needs NodeConfig.Cluster, this node's route address")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = DefaultClusterName
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if strings.ContainsAny(cfg.Name, " \t\r\n") {
		return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.Name %q has white space", cfg.Name)
	}
	if strings.ContainsAny(cfg.ClusterName, " \t\r\n") {
		return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.ClusterName %q has white space", cfg.ClusterName)
	}

	host, port, err := nodeParseAddr(cfg.Listen, true)
	if err != nil {
		return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.Listen: %w", err)
	}
	opts := &server.Options{
		Host:       host,
		Port:       port,
		NoSigs:     true,
		NoLog:      true,
		JetStream:  true,
		StoreDir:   cfg.Dir,
		SyncAlways: !cfg.NoSyncAlways,
		// server.Options.SyncInterval is left 0: the server sets its
		// default (2 minutes), the interval of the background syncs.
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
	}
	if cfg.MaxMemory < 0 {
		return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.MaxMemory is negative (%d)", cfg.MaxMemory)
	}
	if cfg.MaxStore < 0 {
		return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.MaxStore is negative (%d)", cfg.MaxStore)
	}
	if cfg.MaxPayload < 0 {
		return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.MaxPayload is negative (%d)", cfg.MaxPayload)
	}
	opts.MaxPayload = cfg.MaxPayload

	nameAddr := cfg.Listen
	if cfg.Cluster != "" {
		chost, cport, err := nodeParseAddr(cfg.Cluster, true)
		if err != nil {
			return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.Cluster: %w", err)
		}
		opts.Cluster = server.ClusterOpts{
			Name: cfg.ClusterName,
			Host: chost,
			Port: cport,
		}
		self := net.JoinHostPort(chost, strconv.Itoa(cport))
		for _, p := range cfg.Peers {
			phost, pport, err := nodeParseAddr(p, false)
			if err != nil {
				return nil, cfg, fmt.Errorf("idemnats: node: NodeConfig.Peers: %w", err)
			}
			hp := net.JoinHostPort(phost, strconv.Itoa(pport))
			if hp == self {
				continue
			}
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats-route", Host: hp})
		}
		if len(opts.Routes) == 0 {
			// The server refuses to start JetStream clustered without routes.
			return nil, cfg, errors.New("idemnats: node: NodeConfig.Cluster needs the address of another member in NodeConfig.Peers")
		}
		nameAddr = cfg.Cluster
	}
	if cfg.Name == "" {
		cfg.Name = nodeDefaultName(nameAddr)
	}
	opts.ServerName = cfg.Name
	return opts, cfg, nil
}

// nodeParseAddr parses a host:port address. With listen, port 0 and -1
// mean a random port, returned as server.RANDOM_PORT; without it, the port
// must be one that can be dialed.
func nodeParseAddr(addr string, listen bool) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q is not host:port: %w", addr, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return "", 0, fmt.Errorf("address %q has a bad port: %w", addr, err)
	}
	switch {
	case listen && (port == 0 || port == -1):
		port = server.RANDOM_PORT
	case port < 1 || port > 65535:
		return "", 0, fmt.Errorf("address %q has port %d, not in 1..65535", addr, port)
	}
	if host == "" {
		if !listen {
			return "", 0, fmt.Errorf("address %q has no host", addr)
		}
		host = "0.0.0.0"
	}
	return host, port, nil
}

// nodeDefaultName derives a server name from a listen address (already
// validated): see NodeConfig.Name.
func nodeDefaultName(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if port == "0" || port == "-1" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return "idem-" + hex.EncodeToString(b[:])
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return strings.ReplaceAll(net.JoinHostPort(host, port), " ", "_")
}

// Connect returns a client connection to the node, in-process (a pipe, no
// TCP), with opts applied after the in-process option. Close it when done.
// Shutdown ends the connection from the server's side; the client then
// tries to reconnect to the stopped node, in vain, as its reconnect options
// say (by default every 2 s, 60 times) until it is closed: a restarted node
// needs a new connection.
func (n *Node) Connect(opts ...nats.Option) (*nats.Conn, error) {
	all := make([]nats.Option, 0, len(opts)+2)
	all = append(all, nats.InProcessServer(n.srv), nats.Name("idem "+n.cfg.Name))
	all = append(all, opts...)
	nc, err := nats.Connect("", all...)
	if err != nil {
		return nil, fmt.Errorf("idemnats: connect to node %s: %w", n.cfg.Name, err)
	}
	return nc, nil
}

// ClientURL returns the URL on which the node accepts TCP client
// connections, such as "nats://127.0.0.1:4222", with the real port when
// NodeConfig.Listen asked for a random one.
func (n *Node) ClientURL() string {
	return n.srv.ClientURL()
}

// ClusterAddr returns the address (host:port) on which the node accepts
// route connections, with the real port when NodeConfig.Cluster asked for
// a random one, or "" if the node is not clustered.
func (n *Node) ClusterAddr() string {
	a := n.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return a.String()
}

// Name returns the node's server name (NodeConfig.Name, or the default
// derived from its addresses).
func (n *Node) Name() string {
	return n.srv.Name()
}

// Config returns the node's configuration with its defaults filled in
// (Name, Listen, ClusterName, StartTimeout). The Peers slice is a copy.
func (n *Node) Config() NodeConfig {
	c := n.cfg
	c.Peers = append([]string(nil), c.Peers...)
	return c
}

// Server returns the embedded server, for what Node does not offer (Jsz,
// Healthz, raft state). Calling its Shutdown is the same as Node.Shutdown.
func (n *Node) Server() *server.Server {
	return n.srv
}

// WaitReady waits until JetStream can serve requests through this node:
// for a single node, at once; for a clustered one, once the cluster has a
// meta leader (which needs a quorum of its members up and routed) and this
// node has caught up with it. It returns ctx.Err() if ctx ends first, or
// an error if the node was shut down.
//
// A new replicated stream also needs as many members up as it has
// replicas: a replicas-3 bucket cannot be created while one of three nodes
// is down, though an existing one keeps accepting writes.
func (n *Node) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if !n.srv.Running() {
			return fmt.Errorf("idemnats: node %s is shut down", n.cfg.Name)
		}
		if n.jetStreamReady() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// jetStreamReady reports whether JetStream serves requests through n.
func (n *Node) jetStreamReady() bool {
	if !n.srv.JetStreamEnabled() {
		return false
	}
	if !n.srv.JetStreamIsClustered() {
		return true
	}
	if !n.srv.JetStreamIsCurrent() {
		return false
	}
	jsi, err := n.srv.Jsz(&server.JSzOptions{})
	return err == nil && jsi.Meta != nil && jsi.Meta.Leader != ""
}

// Shutdown stops the node and waits until it has stopped: it closes the
// client connections (in-process ones included), hands the leadership of
// the streams it leads to other members, stops JetStream (flushing its
// store) and closes the listeners. Writes in progress through the node fail
// or time out on the client. Calling Shutdown again does nothing.
func (n *Node) Shutdown() {
	n.shutdownOnce.Do(func() {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	})
}

// nodeLogger adapts the server's logging to slog, and keeps its first
// fatal error: the server's own loggers exit the process on Fatalf, this one
// does not, and StartNode returns the error instead.
type nodeLogger struct {
	slog *slog.Logger // nil: log nothing

	mu    sync.Mutex // guards fatal
	fatal error
}

var _ server.Logger = (*nodeLogger)(nil)

func (l *nodeLogger) fatalErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}

func (l *nodeLogger) log(level slog.Level, format string, v []any) {
	if l.slog == nil || !l.slog.Enabled(context.Background(), level) {
		return
	}
	l.slog.Log(context.Background(), level, fmt.Sprintf(format, v...), "component", "nats-server")
}

func (l *nodeLogger) Noticef(format string, v ...any) { l.log(slog.LevelInfo, format, v) }
func (l *nodeLogger) Warnf(format string, v ...any)   { l.log(slog.LevelWarn, format, v) }
func (l *nodeLogger) Errorf(format string, v ...any)  { l.log(slog.LevelError, format, v) }
func (l *nodeLogger) Debugf(format string, v ...any)  { l.log(slog.LevelDebug, format, v) }
func (l *nodeLogger) Tracef(string, ...any)           {}

func (l *nodeLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	if l.fatal == nil {
		l.fatal = errors.New(msg)
	}
	l.mu.Unlock()
	l.log(slog.LevelError, "%s", []any{msg})
}
