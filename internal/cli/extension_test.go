package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/idemkv/idem"
)

// storeExtension is an Extension whose flag, --store PATH, names a
// directory, which it opens as an engine of its own: the commands' plumbing
// of an extension, without NATS (idemnats/cmd/idem tests that). It records
// the requests in reqs.
func storeExtension(reqs *[]Request) *Extension {
	return &Extension{
		Flag:     "store",
		Usage:    "the database in `PATH`, through the extension",
		Synopsis: "--store PATH [--tag T]",
		About:    "With --store PATH, through a test extension.",
		Params:   []Param{{Name: "tag", Default: "main", Usage: "the tag `T`"}},
		Open: func(_ context.Context, req Request) (*Source, error) {
			*reqs = append(*reqs, req)
			e, err := idem.Open(req.Value, engineOptions(false, nil))
			if err != nil {
				return nil, err
			}
			return &Source{
				Engine: e,
				Name:   "store " + req.Value,
				Figures: func() ([]Figure, error) {
					return []Figure{{Name: "tag", Value: req.Params["tag"]}, {Name: "note", Value: "x", Note: "a note"}}, nil
				},
			}, nil
		},
	}
}

// runExt runs the command line args in this process with ext.
func runExt(ext *Extension, args ...string) result {
	var stdout, stderr strings.Builder
	code := Main(context.Background(), args, strings.NewReader(""), &stdout, &stderr, ext)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func TestExtension(t *testing.T) {
	dir := makeDB(t)
	var reqs []Request
	ext := storeExtension(&reqs)
	must := func(code int, args ...string) result {
		t.Helper()
		r := runExt(ext, args...)
		if r.code != code {
			t.Fatalf("idem %q: exit status %d, want %d\n%v", args, r.code, code, r)
		}
		return r
	}

	r := must(exitOK, "stats", "--store", dir, "--tag", "t2")
	for _, want := range [][]string{{"database", "store", dir}, {"interrupted", "2"}, {"tag", "t2"}, {"note", "x", "(a", "note)"}} {
		if got := row(r.stdout, want[0]); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("stats: row %q is %q, want %q:\n%s", want[0], got, want, r.stdout)
		}
	}
	for _, no := range []string{"expired", "disk usage", "files", "read amplification"} {
		if row(r.stdout, no) != nil {
			t.Errorf("stats of an extension's database shows %q:\n%s", no, r.stdout)
		}
	}
	if want := "idem stats: 2 interrupted keys: see 'idem interrupted --store " + dir + " --tag t2'\n"; r.stderr != want {
		t.Errorf("stats: stderr %q, want %q", r.stderr, want)
	}
	if len(reqs) != 1 || reqs[0].Value != dir || reqs[0].Params["tag"] != "t2" || reqs[0].Write || reqs[0].Stderr == nil {
		t.Errorf("stats opened %+v", reqs)
	}

	r = must(exitOK, "interrupted", "--store", dir)
	if row(r.stdout, "pay-5") == nil || row(r.stdout, "pay-6") == nil {
		t.Errorf("interrupted:\n%s", r.stdout)
	}
	if want := "reconcile each, then: idem forget --store " + dir + " KEY...\n"; !strings.HasSuffix(r.stderr, want) {
		t.Errorf("interrupted: stderr %q, want it to end with %q", r.stderr, want)
	}
	r = must(exitOK, "get", "--store", dir, "pay-1")
	if !strings.Contains(r.stdout, "receipt:pay-1:12.00 EUR") {
		t.Errorf("get:\n%s", r.stdout)
	}
	must(exitOK, "ls", "--store", dir, "--state", "in-flight") // as with --url

	reqs = nil
	checkOneLine(t, must(exitFailure, "forget", "--store", dir, "pay-1", "--yes"), "not interrupted: pay-1 (completed)")
	r = must(exitOK, "forget", "--store", dir, "pay-5", "--yes")
	if r.stdout != "forgot pay-5 (interrupted)\n" {
		t.Errorf("forget: stdout %q", r.stdout)
	}
	if len(reqs) != 3 || reqs[1].Write || !reqs[2].Write {
		t.Errorf("forget opened %+v, want a read, then a read and a write", reqs)
	}
	r = must(exitOK, "ls", "--store", dir, "--state", "interrupted")
	if row(r.stdout, "pay-5") != nil || row(r.stdout, "pay-6") == nil {
		t.Errorf("after forget:\n%s", r.stdout)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"stats", "--store", dir, "--url", "http://127.0.0.1:1/"}, "idem stats: --url and --store exclude each other\n"},
		{[]string{"ls", dir, "--tag", "x"}, "idem ls: --tag goes with --store\n"},
		{[]string{"get", "--store", dir}, "idem get: want one argument with --store, a key; got 0\n"},
		{[]string{"interrupted", "--store", dir, dir}, "idem interrupted: want no argument with --store; got 1\n"},
		{[]string{"ls", "--store", dir, "--state", "bogus"}, "idem ls: --state must be completed, failed, in-flight, interrupted or corrupt, not \"bogus\"\n"},
	} {
		r := must(exitUsage, tt.args...)
		if !strings.HasPrefix(r.stderr, tt.want) {
			t.Errorf("idem %q: stderr %q, want %q first", tt.args, r.stderr, tt.want)
		}
	}
	must(exitUsage, "sweep", "--store", dir)

	r = must(exitOK, "stats", "-h")
	for _, want := range []string{"Usage: idem stats DIR | stats --url URL|--store PATH [--tag T]\n", "With --store PATH, through a test extension.\n\nExample:", "  -store PATH\n", "  -tag T\n"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stats -h has no %q:\n%s", want, r.stderr)
		}
	}
	if r := must(exitOK, "-h"); !strings.Contains(r.stdout, "\nWith --store PATH, through a test extension.\n\nExit status") {
		t.Errorf("idem -h does not end with the extension's paragraph:\n%s", r.stdout)
	}
	for _, args := range [][]string{{"-h"}, {"stats", "-h"}, {"ls", "-h"}} {
		if r := runExt(nil, args...); strings.Contains(r.stdout+r.stderr, "-store") {
			t.Errorf("idem %q without an extension tells of it:\n%s%s", args, r.stdout, r.stderr)
		}
	}
}
