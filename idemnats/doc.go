// Package idemnats runs idem's engine on records in NATS JetStream, so that
// the replicas of a service share one set of idempotency records: fn runs
// once per key among all their engines, and every engine replays what any
// of them stored. It embeds the JetStream server too, so that a service
// needs no NATS of its own to deploy or operate.
//
// # Deployments
//
// Open returns an *idem.Engine whose records are in a JetStream key-value
// bucket, which any number of engines, in any number of processes, share.
// The bucket is on either of:
//
//   - Nodes embedded in the service: each replica of the service runs a
//     node (StartNode: a NATS server with JetStream in the service's own
//     process, its data in a directory), the nodes of three replicas,
//     given each other's route addresses, form a cluster that keeps
//     accepting writes with one of them down, and each engine opens on
//     its own node's in-process connection (Node.Connect).
//   - An existing NATS cluster (server 2.11 or later, JetStream enabled):
//     nats.Connect(url), then Open.
//
// Open creates the bucket if it does not exist, and retries, for up to
// Options.Timeout a step, while the cluster is not ready for it (no meta leader
// yet, or fewer nodes up than the bucket's replicas), as it is for a
// moment after its nodes start.
//
// # Durability
//
// For records that survive the loss of a machine, give the bucket three
// replicas (Options.Replicas: 3, on a cluster of three or more: it keeps
// accepting writes with one node down) and run the servers with
// sync_interval: always (StartNode does, unless NodeConfig.NoSyncAlways).
// Jepsen's analysis of NATS 2.12.1 found acknowledged writes lost without
// sync_interval: always (the default fsyncs every two minutes) when nodes
// crashed. A client cannot see a server's sync interval, so Open does not
// check it; it logs a warning when a bucket has fewer than three replicas.
//
// # Consistency
//
// An engine decides only from the stream's atomic writes (compare-and-set
// on a key's last sequence, with a Nats-Msg-Id that makes a write sent
// again harmless) and from reads that the stream's leader answers (not
// KV's direct gets, which any replica answers and which can miss a write
// just acknowledged). A write whose outcome is unknown when its call gives
// up (a leader election that outlasts Options.Timeout, a lost reply) is
// resolved in the background: see Open.
//
// # Liveness
//
// Each engine writes a heartbeat key every LivenessWindow/6, which the
// server removes LivenessWindow after the last one. An engine that finds a
// key claimed by another engine waits for it while that engine's heartbeat
// is there, however long its fn runs; once the heartbeat has lapsed (the
// engine was killed, or cut off from the cluster, for a whole window), the
// claim is interrupted: Do returns idem.ErrInterrupted (or runs fn again
// with idem.Options.RetryInterrupted). Engine.Close deletes the heartbeat
// at once. A window shorter than the longest leader election (below) may
// let a live engine's heartbeat lapse during one.
//
// # Waiting for another engine
//
// While it waits, an engine does not poll: it subscribes to the key's
// changes, which the bucket's stream republishes as it stores them
// (RePublish, headers only), reads the key again on a change, and at
// least every LivenessWindow/2 to ask whether the claim's engine is still
// alive. An engine whose connection is closed stops waiting at once, and
// its call returns an error.
//
// # Leader elections
//
// Each bucket is a stream with a leader. When the leader's node stops or
// is cut off, the others elect a new one; meanwhile reads and writes stall:
// 4 to 9 s measured after a hard kill of the leader's process, 20 to 50 ms
// after a clean shutdown, which hands the leadership over first. A Do call
// waits through it (each store operation retries for up to
// Options.Timeout, 20 s by default) and goes on; one that runs out of time
// returns an error. A request in flight when the leader stepped down is
// never answered: it is sent again after a second (at most; each wait
// that runs out doubles the next, up to Options.Timeout/4), so a clean
// change of leader costs the calls it catches about a second.
//
// # Expiry and space
//
// Records expire on the server: each is written with a per-message TTL
// (Nats-TTL) of its own lifetime plus a second, so a bucket needs no sweep
// (Engine.Sweep returns 0). Where a record expired the server leaves a
// delete marker, and Forget writes one; the markers expire in turn after
// the bucket's LimitMarkerTTL (one minute for a bucket Open creates).
//
// # Memory per key, and Buckets
//
// JetStream keeps an index entry in memory for every key of a stream
// (about 200 B each, measured with a million keys): about 5.4 million keys
// per GiB of the servers' memory, on every replica of the stream, besides
// the records themselves on disk. The keys are those of the records not
// yet expired, and the delete markers of the last minute.
//
// A stream is also the unit of the writes' work: its leader orders and
// replicates every write to it. Options.Buckets spreads the records over
// several buckets by a hash of their keys, each a stream with a leader of
// its own, elected among its replicas: the leaders, and so the writes,
// spread over the nodes (as the elections fall, not evenly for sure). On
// a cluster of more nodes than the buckets' replicas, the keys' memory
// and disk spread too; with three replicas on three nodes, every node
// holds every bucket, and as many keys as with one. Each bucket costs a
// stream on each of its replicas; a call touches its key's bucket alone.
// The default, one bucket, suits most services; raise it when the node of
// the stream leader is the bottleneck of the writes, or when the keys
// outgrow the memory of the nodes that hold one bucket. Every engine on
// the records must use the same count, which Open checks.
package idemnats
