// Command idem is the idem command-line tool of the root module (cmd/idem)
// with one more place for a database: --nats URL, the NATS server (or
// cluster) that holds an idemnats bucket. stats, ls, get, interrupted and
// forget take --nats URL [--bucket B] instead of a directory, and read and
// forget the bucket's records while the services' engines use them, with
// the same output as on a directory (but stats, which shows the bucket's
// stream instead of Pebble's figures). Every other command, flag and
// message is cmd/idem's. It lives in the idemnats module so that the root
// module, and its idem command, pull no NATS dependency.
//
// Usage:
//
//	cd idemnats && go run ./cmd/idem stats --nats nats://127.0.0.1:4222
//	go -C idemnats run ./cmd/idem interrupted --nats nats://127.0.0.1:4222 --bucket orders
//
// --bucket is idemnats's Options.Bucket: idem (idemnats.DefaultBucket) if
// not given. The bucket's count of buckets (Options.Buckets) is read from
// the bucket itself. A user and password, or a token, go in the URL
// (nats://user:password@host:4222); --creds FILE, or $NATS_CREDS, is a
// credentials file (a user JWT and its seed).
//
// # Opening a bucket for inspection
//
// A bucket that does not exist is refused: the command does not create
// one (idemnats.Open would), nor one of the buckets named after it that the
// count of buckets calls for. On a bucket that exists, the command opens an
// engine with idemnats.Open, one more among the services' engines, and
// closes it when it is done. Opening writes the engine's heartbeat, and
// Close deletes it (leaving a delete marker, which the server removes after
// the bucket's LimitMarkerTTL, a minute for a bucket that idemnats
// created). That does not disturb the other engines: an engine reads a
// heartbeat only to learn whether the engine that holds a key's claim is
// alive, and this one claims no key (the commands never call Do); its
// heartbeat is a key of its own (h.<owner>), and reading the records takes
// no lock that the engines' calls wait on. A command that is killed before
// it closes the engine leaves its heartbeat to lapse by itself, after the
// liveness window. The engine's forget (ForgetInterrupted, unless
// --any-state) deletes a key only if it is still interrupted when the
// delete is written: a compare-and-set on the record's revision, so that a
// key that another engine took meanwhile is left alone.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemnats"
	"github.com/idemkv/idem/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, extension(os.Getenv(credsEnv)))
	stop()
	os.Exit(code)
}

// credsEnv is the environment variable of --creds's default, as the nats
// command has it.
const credsEnv = "NATS_CREDS"

// extension returns the extension that adds --nats, --bucket and --creds
// to the commands, with creds as --creds's default.
func extension(creds string) *cli.Extension {
	return &cli.Extension{
		Flag:     "nats",
		Usage:    "work on the records of the idemnats bucket on the NATS server at `URL` instead of a\ndirectory, e.g. nats://127.0.0.1:4222 (a comma-separated list for a cluster; a user\nand password, or a token, in the URL)",
		Synopsis: "--nats URL [--bucket B]",
		About: `stats, ls, get, interrupted and forget take --nats URL instead of a
directory: they work on the records of an idemnats bucket on the NATS server
at URL (--bucket, idem by default), which they open as one more engine beside
the services' engines, while these run: a key whose fn an engine is running
is in-flight, and one whose engine died (its heartbeat lapsed) is
interrupted. A bucket that does not exist is refused, not created.`,
		Params: []cli.Param{
			{Name: "bucket", Default: idemnats.DefaultBucket, Usage: "with --nats, the bucket `B` (idemnats.Options.Bucket)"},
			{Name: "creds", Default: creds, Usage: "with --nats, the NATS credentials `FILE` (a user JWT and its seed); $" + credsEnv + " if set"},
		},
		Open: open,
	}
}

// open opens an engine on the bucket that req names.
func open(ctx context.Context, req cli.Request) (*cli.Source, error) {
	bucket, where := req.Params["bucket"], redact(req.Value)
	opts := []nats.Option{nats.Name("idem command")}
	if creds := req.Params["creds"]; creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(req.Value, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", where, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	n, err := bucketCount(ctx, js, bucket, where)
	if err != nil {
		nc.Close()
		return nil, err
	}
	e, err := idemnats.Open(nc, &idemnats.Options{
		Bucket:  bucket,
		Buckets: n,
		Engine: &idem.Options{
			// Any key that a service can store, as cmd/idem opens a
			// directory with no limit.
			MaxKeySize:    maxKeySize(bucket, n),
			SweepInterval: -1,
			Logger:        slog.New(slog.NewTextHandler(req.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		},
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &cli.Source{
		Engine:  e,
		Name:    fmt.Sprintf("bucket %s on %s", bucket, where),
		Figures: func() ([]cli.Figure, error) { return figures(ctx, js, bucket, n) },
		Close: func() error {
			err := e.Close()
			nc.Close()
			return err
		},
	}, nil
}

// countKey is the KV key of bucket 0 that holds the count of buckets of
// the records (idemnats.Options.Buckets), which the first engine writes.
const countKey = "m.buckets"

// bucketCount returns the count of buckets of the records whose bucket 0
// is bucket, and an error if it, or one of the buckets it counts, does not
// exist: idemnats.Open would create it.
func bucketCount(ctx context.Context, js jetstream.JetStream, bucket, where string) (int, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return 0, fmt.Errorf("no bucket %s at %s (the first engine that opens it creates it; is --bucket right?)", bucket, where)
	}
	if err != nil {
		return 0, fmt.Errorf("bucket %s at %s: %w", bucket, where, err)
	}
	n := 1
	switch ent, err := kv.Get(ctx, countKey); {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// No engine has opened it yet: Open checks the rest.
	case err != nil:
		return 0, fmt.Errorf("reading the count of buckets of bucket %s: %w", bucket, err)
	default:
		if n, err = strconv.Atoi(string(ent.Value())); err != nil || n < 1 || n > idemnats.MaxBuckets {
			return 0, fmt.Errorf("bucket %s holds %q as its count of buckets (KV key %s), not a count", bucket, ent.Value(), countKey)
		}
	}
	for i := 1; i < n; i++ {
		name := bucket + "-" + strconv.Itoa(i)
		if _, err := js.KeyValue(ctx, name); err != nil {
			return 0, fmt.Errorf("bucket %s holds records spread over %d buckets, and bucket %s: %w", bucket, n, name, err)
		}
	}
	return n, nil
}

// maxKeySize returns the longest key that idemnats accepts on the n buckets
// named after bucket: that whose subjects fit in 3,072 bytes, base64url
// encoded, under the longest prefix of a record's subjects, the watch
// subject of the longest bucket name (see Options.Engine of idemnats:
// 2,289 bytes for the bucket idem). idemnats.Open refuses a larger
// MaxKeySize, which the tests would see.
func maxKeySize(bucket string, n int) int {
	name := bucket
	if n > 1 {
		name += "-" + strconv.Itoa(n-1)
	}
	prefix := max(len("$KV."+name+".r."), len("_IDEM.WATCH."+name+".r."))
	return (3072 - prefix) / 4 * 3
}

// figures returns what stats shows of the buckets' streams.
func figures(ctx context.Context, js jetstream.JetStream, bucket string, n int) ([]cli.Figure, error) {
	var (
		msgs, bytes uint64
		streams     []string
		info        *jetstream.StreamInfo
	)
	for i := range n {
		name := bucket
		if i > 0 {
			name += "-" + strconv.Itoa(i)
		}
		st, err := js.Stream(ctx, "KV_"+name)
		if err != nil {
			return nil, fmt.Errorf("reading the stream of bucket %s: %w", name, err)
		}
		in := st.CachedInfo()
		if i == 0 {
			info = in
		}
		msgs += in.State.Msgs
		bytes += in.State.Bytes
		streams = append(streams, in.Config.Name)
	}
	replicas := fmt.Sprintf("%d", info.Config.Replicas)
	note := strings.ToLower(info.Config.Storage.String()) + " storage"
	if info.Cluster != nil && info.Cluster.Leader != "" {
		note += ", leader " + info.Cluster.Leader
	}
	if n > 1 {
		note += ", of the first stream"
	}
	return []cli.Figure{
		{Name: "expired", Value: "-", Note: "the server removes each record as it expires, by a per-message TTL: there is nothing to sweep"},
		{Name: "streams", Value: strconv.Itoa(n), Note: strings.Join(streams, ", ")},
		{Name: "messages", Value: strconv.FormatUint(msgs, 10), Note: "records, the engines' heartbeats, the count of buckets, and delete markers"},
		{Name: "stored", Value: formatBytes(bytes), Note: fmt.Sprintf("%d bytes: the streams' messages, on each replica", bytes)},
		{Name: "replicas", Value: replicas, Note: note},
	}, nil
}

// formatBytes returns n bytes in binary units, as cmd/idem shows sizes.
func formatBytes(n uint64) string {
	s := fmt.Sprintf("%d B", n)
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v /= 1024
		s = fmt.Sprintf("%.1f %s", v, u)
	}
	return s
}

// redact returns the server URLs of a --nats value without their
// passwords and tokens, for messages.
func redact(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, ok := u.User.Password(); !ok {
				u.User = url.User("xxxxx") // a token
			}
			p = u.Redacted()
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
