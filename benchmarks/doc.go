// Package benchmarks compares idem with the usual way of making a call
// idempotent with Redis, on the same machine and in the same run.
//
// It is a module of its own (with a replace directive to the repository's
// root), so that the Redis client it needs never becomes a dependency of idem.
// It has no code besides its benchmarks, in redis_test.go.
//
// # The two sides
//
// Both make the same trivial fn (it returns a 100-byte value) idempotent
// under a 16-byte fingerprint, with a TTL of 24 hours:
//
//   - idem: Engine.Do on a fresh engine in b.TempDir(), with the background
//     sweeper off.
//   - Redis: a redis-server on 127.0.0.1 with the append-only file on, through
//     go-redis v9 with a pool of 128 connections. A call claims its key with
//     SET key <in-flight> NX GET PX ttl; if the key was free it runs fn and
//     stores the result with SET key <result> XX PX ttl, otherwise the GET
//     part of the same command has returned the stored record, which is
//     replayed (its fingerprint compared first). Folding the GET of a retry
//     into the claim (Redis 7.0 and later) saves a round trip; on an older
//     server the claim and the GET are two commands.
//
// The comparisons are idem SyncNone with Redis appendfsync everysec (neither
// syncs before answering), and idem SyncAll with Redis appendfsync always
// (both sync before answering), at 1 and 64 concurrent callers:
//
//   - BenchmarkNewKey: every call has a new key: claim, fn, store.
//   - BenchmarkReplay: every call is a retry of a completed key, out of a
//     preloaded set.
//
// Each reports ops/s besides sec/op.
//
// # Running
//
// run.sh does everything: it installs redis-server (from Debian's packages)
// and benchstat if they are missing, starts redis-server on a free loopback
// port with appendfsync everysec and then always, runs both sides against
// each, prints the comparisons with benchstat and the ratios idem/Redis, and
// stops the server:
//
//	./run.sh                      # COUNT=6 BENCHTIME=1s
//	COUNT=10 BENCHTIME=2s ./run.sh
//
// By hand, the Redis side needs IDEM_REDIS_ADDR (host:port) and
// IDEM_REDIS_APPENDFSYNC (the server's appendfsync, which names the
// benchmarks: impl=redis-everysec); without IDEM_REDIS_ADDR the Redis
// benchmarks skip and only idem's run:
//
//	go test -run '^$' -bench .
package benchmarks
