package main

// TestREADME keeps README.md true: it runs the README's commands in order,
// as a reader would, and compares each response with the one the README
// shows.
//
// The README's fenced blocks are read as follows:
//
//   - A ```sh block whose first line is "go -C examples/shopify run . FLAGS"
//     (re)starts the service with FLAGS, on a free port instead of -addr's;
//     a -dir is replaced by a temporary directory (the same one for the same
//     path), a -nats URL by that of a NATS server the test starts.
//   - A ```sh block with curl commands is sent: each curl command becomes
//     an HTTP request to the service, run in order, or concurrently for
//     those ending with & (until a "wait"). The next fenced block is what
//     they print: JSON documents, or, for curl -i, an HTTP response.
//   - Other blocks are prose for people, and are not run.
//
// The commands are parsed, not given to a shell, so that the test needs
// neither bash nor curl: a small subset of the shell (words, '…' and "…"
// quoting, backslash line continuations, <<'EOF' here-documents, & and
// wait) and of curl's options (-s, -S, -i, -X, -H, -d, --data-binary with
// a string or @- for the here-document). Anything else fails the test, so
// that the README cannot drift into commands the test would skip. Where
// bash is installed, each block is also checked to be valid shell with
// bash -n.
//
// Responses compare field by field, as JSON; fields that hold the time of
// the run (createdAt, completedAt, updatedAt, created_at) need only be
// there in both. An HTTP response compares its status and header fields
// too, all but Date and Content-Length. The responses of concurrent
// commands may come in any order, and each only has to match one of those
// shown: which request runs first, or whether they overlapped at all, is
// up to the scheduler.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/idemkv/idem/idemnats"
	"github.com/idemkv/idem/internal/testproc"
)

// runPrefix starts the README's command lines that run the service.
const runPrefix = "go -C examples/shopify run ."

// readmeAddrs are the addresses the README's commands use for the service.
var readmeAddrs = []string{"localhost:8080", "127.0.0.1:8080"}

// timeFields are the JSON fields that hold the time of the run.
var timeFields = map[string]bool{"createdAt": true, "completedAt": true, "updatedAt": true, "created_at": true}

func TestREADME(t *testing.T) {
	t.Parallel()
	blocks := readmeBlocks(t, "README.md")
	var (
		s        *service
		dirs     = map[string]string{} // the README's -dir paths, to temporary directories
		natsURL  string
		requests int
	)
	for i := 0; i < len(blocks); i++ {
		b := blocks[i]
		if b.lang != "sh" {
			continue
		}
		switch {
		case strings.HasPrefix(b.text, runPrefix):
			args, err := runArgs(b.text)
			if err != nil {
				t.Fatalf("README.md:%d: %v", b.line, err)
			}
			for j := 0; j < len(args); j++ {
				switch args[j] {
				case "-dir":
					d, ok := dirs[args[j+1]]
					if !ok {
						d = t.TempDir()
						dirs[args[j+1]] = d
					}
					args[j+1] = d
				case "-nats":
					if natsURL == "" {
						natsURL = startNATS(t)
					}
					args[j+1] = natsURL
				}
			}
			if s != nil {
				s.stop()
			}
			s = startService(t, args...)

		case strings.Contains(b.text, "curl "):
			checkShellSyntax(t, b)
			cmds, err := parseShell(b.text)
			if err != nil {
				t.Fatalf("README.md:%d: %v", b.line, err)
			}
			if i+1 == len(blocks) || blocks[i+1].lang == "sh" {
				t.Fatalf("README.md:%d: a block of curl commands without the block of their output after it", b.line)
			}
			want := blocks[i+1]
			i++
			if s == nil {
				t.Fatalf("README.md:%d: curl commands before any %q line", b.line, runPrefix)
			}
			requests += runCurlBlock(t, s, b, cmds, want)
		}
	}
	if requests == 0 {
		t.Fatal("README.md has no curl commands")
	}
	t.Logf("%d requests of README.md sent and their responses compared", requests)
}

// block is a fenced code block of the README.
type block struct {
	lang string
	text string
	line int // of the opening fence
}

func readmeBlocks(t *testing.T, name string) []block {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks []block
		cur    *block
		buf    strings.Builder
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(l, "```"):
			cur = &block{lang: strings.TrimPrefix(l, "```"), line: n}
			buf.Reset()
		case cur != nil && l == "```":
			cur.text = buf.String()
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			buf.WriteString(l)
			buf.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: a fenced block that is not closed", name, cur.line)
	}
	return blocks
}

// runArgs returns the service's flags of a run block, without -addr.
func runArgs(text string) ([]string, error) {
	cmds, err := parseShell(text)
	if err != nil {
		return nil, err
	}
	if len(cmds) != 1 {
		return nil, fmt.Errorf("a block that runs the service has %d commands, want 1", len(cmds))
	}
	words := cmds[0].args
	if len(words) < 5 || strings.Join(words[:5], " ") != runPrefix {
		return nil, fmt.Errorf("%q does not start with %q", strings.Join(words, " "), runPrefix)
	}
	var args []string
	for i := 5; i < len(words); i++ {
		switch w := words[i]; {
		case w == "-addr":
			i++
		case w == "-dir" || w == "-nats" || w == "-latency":
			if i+1 == len(words) {
				return nil, fmt.Errorf("%s without its value", w)
			}
			args = append(args, w, words[i+1])
			i++
		case strings.HasPrefix(w, "-"):
			args = append(args, w)
		default:
			return nil, fmt.Errorf("unexpected argument %q", w)
		}
	}
	return args, nil
}

// startNATS starts a NATS server with JetStream for the README's -nats,
// and returns its URL.
func startNATS(t *testing.T) string {
	t.Helper()
	node, err := idemnats.StartNode(idemnats.NodeConfig{Dir: t.TempDir(), Listen: "127.0.0.1:0", NoSyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Shutdown)
	return node.ClientURL()
}

// checkShellSyntax checks, if bash is installed, that a block is valid
// shell.
func checkShellSyntax(t *testing.T, b block) {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if out, err := testproc.CommandContext(t, ctx, bash, "-n", "-c", b.text).CombinedOutput(); err != nil {
		t.Errorf("README.md:%d: bash -n: %v\n%s", b.line, err, out)
	}
}

// shellCmd is a command of a README block.
type shellCmd struct {
	args       []string
	stdin      *string // the here-document, if any
	background bool    // ends with &
}

// parseShell parses the commands of a block: see TestREADME for the subset
// of the shell it takes.
func parseShell(text string) ([]shellCmd, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	var cmds []shellCmd
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		for strings.HasSuffix(l, `\`) && i+1 < len(lines) {
			i++
			l = l[:len(l)-1] + " " + lines[i]
		}
		args, tag, bg, err := splitWords(l)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", l, err)
		}
		if len(args) == 0 {
			if tag != "" || bg {
				return nil, fmt.Errorf("%q: no command", l)
			}
			continue
		}
		c := shellCmd{args: args, background: bg}
		if tag != "" {
			var body strings.Builder
			for i++; i < len(lines) && lines[i] != tag; i++ {
				body.WriteString(lines[i])
				body.WriteByte('\n')
			}
			if i == len(lines) {
				return nil, fmt.Errorf("a here-document not ended by %q", tag)
			}
			s := body.String()
			c.stdin = &s
		}
		cmds = append(cmds, c)
	}
	return cmds, nil
}

// splitWords splits a command line into words; it returns the tag of a
// here-document (<<'EOF'), and whether the line ends with &.
func splitWords(l string) (words []string, heredoc string, background bool, err error) {
	var (
		w     strings.Builder
		inW   bool // a word is started, maybe empty ('')
		runes = []rune(l)
	)
	end := func() {
		if inW {
			words = append(words, w.String())
		}
		w.Reset()
		inW = false
	}
	for i := 0; i < len(runes); i++ {
		c := runes[i]
		if background {
			if c != ' ' && c != '\t' {
				return nil, "", false, errors.New("something after &: only one command per line")
			}
			continue
		}
		switch {
		case c == ' ' || c == '\t':
			end()
		case c == '#' && !inW:
			i = len(runes) // a comment
		case c == '\'':
			j := slices.Index(runes[i+1:], '\'')
			if j < 0 {
				return nil, "", false, errors.New("unterminated '")
			}
			w.WriteString(string(runes[i+1 : i+1+j]))
			i += 1 + j
			inW = true
		case c == '"':
			inW = true
			for i++; ; i++ {
				if i == len(runes) {
					return nil, "", false, errors.New(`unterminated "`)
				}
				c := runes[i]
				if c == '"' {
					break
				}
				if c == '$' || c == '`' {
					return nil, "", false, errors.New("expansions ($, `) are not supported")
				}
				if c == '\\' && i+1 < len(runes) && strings.ContainsRune("\"\\$`", runes[i+1]) {
					i++
					c = runes[i]
				}
				w.WriteRune(c)
			}
		case c == '\\':
			if i+1 == len(runes) {
				return nil, "", false, errors.New(`a \ at the end of the line`)
			}
			i++
			w.WriteRune(runes[i])
			inW = true
		case c == '<' && !inW && strings.HasPrefix(string(runes[i:]), "<<'"):
			j := slices.Index(runes[i+3:], '\'')
			if j <= 0 {
				return nil, "", false, errors.New("a here-document tag that is not 'QUOTED'")
			}
			if heredoc != "" {
				return nil, "", false, errors.New("two here-documents")
			}
			heredoc = string(runes[i+3 : i+3+j])
			i += 3 + j
		case c == '&':
			if i+1 < len(runes) && runes[i+1] == '&' {
				return nil, "", false, errors.New("&& is not supported: one command per line")
			}
			end()
			background = true
		case strings.ContainsRune("|;<>()$`*?[]{}~", c):
			return nil, "", false, fmt.Errorf("%q is not supported", c)
		default:
			w.WriteRune(c)
			inW = true
		}
	}
	end()
	return words, heredoc, background, nil
}

// curlRequest is a curl command, as an HTTP request.
type curlRequest struct {
	method  string
	url     string
	header  http.Header
	body    []byte
	include bool // -i: the output has the status line and header fields
}

// parseCurl parses a curl command: see TestREADME for the options it
// takes.
func parseCurl(c shellCmd, base string) (*curlRequest, error) {
	if c.args[0] != "curl" {
		return nil, fmt.Errorf("%q: only curl commands (and wait) may be in a block of requests", c.args[0])
	}
	r := &curlRequest{header: http.Header{}}
	hasBody := false
	next := func(i *int) (string, error) {
		if *i+1 == len(c.args) {
			return "", fmt.Errorf("%s without its value", c.args[*i])
		}
		*i++
		return c.args[*i], nil
	}
	for i := 1; i < len(c.args); i++ {
		a := c.args[i]
		switch {
		case a == "-X" || a == "--request":
			v, err := next(&i)
			if err != nil {
				return nil, err
			}
			r.method = v
		case a == "-H" || a == "--header":
			v, err := next(&i)
			if err != nil {
				return nil, err
			}
			name, value, ok := strings.Cut(v, ":")
			if !ok {
				return nil, fmt.Errorf("header %q without a colon", v)
			}
			r.header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		case a == "-d" || a == "--data" || a == "--data-binary":
			v, err := next(&i)
			if err != nil {
				return nil, err
			}
			if hasBody {
				return nil, errors.New("several -d: not supported")
			}
			hasBody = true
			switch {
			case v == "@-":
				if c.stdin == nil {
					return nil, fmt.Errorf("%s @- without a here-document", a)
				}
				body := *c.stdin
				if a != "--data-binary" { // curl -d @file drops the line breaks
					body = strings.NewReplacer("\r", "", "\n", "").Replace(body)
				}
				r.body = []byte(body)
			case strings.HasPrefix(v, "@"):
				return nil, fmt.Errorf("%s %s: only @- is supported", a, v)
			default:
				r.body = []byte(v)
			}
		case a == "--silent" || a == "--show-error" || a == "--include":
			r.include = r.include || a == "--include"
		case strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(a) > 1 && strings.Trim(a[1:], "sSi") == "":
			r.include = r.include || strings.Contains(a, "i")
		case strings.HasPrefix(a, "-"):
			return nil, fmt.Errorf("curl option %s is not supported by this test", a)
		default:
			if r.url != "" {
				return nil, fmt.Errorf("two URLs: %s and %s", r.url, a)
			}
			u := strings.TrimPrefix(a, "http://")
			found := false
			for _, addr := range readmeAddrs {
				if rest, ok := strings.CutPrefix(u, addr); ok && (rest == "" || rest[0] == '/') {
					r.url, found = base+rest, true
				}
			}
			if !found {
				return nil, fmt.Errorf("the URL %s is not the service's (%s)", a, strings.Join(readmeAddrs, " or "))
			}
		}
	}
	if r.url == "" {
		return nil, errors.New("no URL")
	}
	if r.method == "" {
		r.method = http.MethodGet
		if hasBody {
			r.method = http.MethodPost
		}
	}
	if hasBody && r.header.Get("Content-Type") == "" {
		r.header.Set("Content-Type", "application/x-www-form-urlencoded") // as curl
	}
	return r, nil
}

// output is what a curl command printed.
type output struct {
	include bool
	status  string // "HTTP/1.1 202 Accepted", with include
	header  http.Header
	body    []byte
}

// send sends the request, and returns what curl would print.
func (r *curlRequest) send() (output, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, bytes.NewReader(r.body))
	if err != nil {
		return output{}, err
	}
	req.Header = r.header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return output{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return output{}, err
	}
	return output{include: r.include, status: resp.Proto + " " + resp.Status, header: resp.Header, body: body}, nil
}

// runCurlBlock runs the curl commands of b and compares what they print
// with want; it returns the number of requests sent.
func runCurlBlock(t *testing.T, s *service, b block, cmds []shellCmd, want block) int {
	t.Helper()
	var (
		outs       []output
		mu         sync.Mutex // guards outs, errs
		errs       []error
		wg         sync.WaitGroup
		concurrent bool
		sent       int
	)
	for _, c := range cmds {
		if len(c.args) == 1 && c.args[0] == "wait" {
			wg.Wait()
			continue
		}
		r, err := parseCurl(c, s.url)
		if err != nil {
			t.Fatalf("README.md:%d: %v", b.line, err)
		}
		sent++
		if !c.background {
			wg.Wait()
			o, err := r.send()
			if err != nil {
				t.Fatalf("README.md:%d: %s %s: %v", b.line, r.method, r.url, err)
			}
			outs = append(outs, o)
			continue
		}
		concurrent = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := r.send()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			outs = append(outs, o)
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("README.md:%d: %v", b.line, errs)
	}

	wantOuts, err := parseOutputs(want)
	if err != nil {
		t.Fatalf("README.md:%d: %v", want.line, err)
	}
	if len(wantOuts) != len(outs) {
		t.Errorf("README.md:%d: shows %d responses; the commands printed %d", want.line, len(wantOuts), len(outs))
		return sent
	}
	for i, got := range outs {
		if !concurrent {
			if diffs := compareOutputs(wantOuts[i], got); len(diffs) > 0 {
				t.Errorf("README.md:%d: response %d differs from README.md:%d:\n\t%s\nthe service printed:\n%s",
					b.line, i+1, want.line, strings.Join(diffs, "\n\t"), got.String())
			}
			continue
		}
		// Concurrent requests: each response must be one of those shown.
		matched := slices.ContainsFunc(wantOuts, func(w expectedOutput) bool { return len(compareOutputs(w, got)) == 0 })
		if !matched {
			t.Errorf("README.md:%d: a response of the concurrent requests is none of those of README.md:%d:\n%s", b.line, want.line, got.String())
		}
	}
	return sent
}

// String formats o as curl prints it.
func (o output) String() string {
	var b strings.Builder
	if o.include {
		b.WriteString(o.status + "\n")
		names := make([]string, 0, len(o.header))
		for n := range o.header {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			for _, v := range o.header[n] {
				fmt.Fprintf(&b, "%s: %s\n", n, v)
			}
		}
		b.WriteString("\n")
	}
	b.Write(o.body)
	return b.String()
}

// expectedOutput is a response as the README shows it.
type expectedOutput struct {
	status string      // with an HTTP response
	header http.Header // with an HTTP response
	body   any         // the JSON, decoded
}

// parseOutputs parses a block of output: an HTTP response (```http), or
// JSON documents one after the other.
func parseOutputs(b block) ([]expectedOutput, error) {
	text := b.text
	var e expectedOutput
	if b.lang == "http" {
		status, rest, ok := strings.Cut(text, "\n")
		if !ok {
			return nil, errors.New("an http block without a body")
		}
		e.status = status
		tp := textproto.NewReader(bufio.NewReader(strings.NewReader(rest)))
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			return nil, fmt.Errorf("the http block's header fields: %w", err)
		}
		e.header = http.Header(h)
		i := strings.Index(rest, "\n\n")
		if i < 0 {
			return nil, errors.New("an http block without a blank line before its body")
		}
		text = rest[i+2:]
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var outs []expectedOutput
	for {
		var v any
		err := dec.Decode(&v)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("the output block is not JSON: %w", err)
		}
		o := e
		o.body = v
		outs = append(outs, o)
	}
	if b.lang == "http" && len(outs) != 1 {
		return nil, fmt.Errorf("an http block with %d bodies, want 1", len(outs))
	}
	return outs, nil
}

// compareOutputs returns the differences between a response shown and one
// printed.
func compareOutputs(want expectedOutput, got output) []string {
	var diffs []string
	if want.status != "" || got.include {
		if !got.include {
			return []string{"the README shows the status and header fields (curl -i), the command does not print them"}
		}
		if want.status == "" {
			return []string{"the command prints the status and header fields (curl -i), the README does not show them"}
		}
		if want.status != got.status {
			diffs = append(diffs, fmt.Sprintf("status: %q, want %q", got.status, want.status))
		}
		skip := map[string]bool{"Date": true, "Content-Length": true}
		for n, vs := range want.header {
			if !skip[n] && !slices.Equal(vs, got.header[n]) {
				diffs = append(diffs, fmt.Sprintf("header %s: %q, want %q", n, got.header[n], vs))
			}
		}
		for n, vs := range got.header {
			if _, ok := want.header[n]; !ok && !skip[n] {
				diffs = append(diffs, fmt.Sprintf("header %s: %q, not in the README", n, vs))
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(got.body))
	dec.UseNumber()
	var body any
	if err := dec.Decode(&body); err != nil {
		return append(diffs, fmt.Sprintf("the response is not JSON: %v", err))
	}
	return append(diffs, compareJSON("", want.body, body)...)
}

// compareJSON returns the differences between two decoded JSON values.
func compareJSON(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %s, want an object", pathOr(path), brief(got))}
		}
		var diffs []string
		keys := make([]string, 0, len(w)+len(g))
		for k := range w {
			keys = append(keys, k)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			wv, wok := w[k]
			gv, gok := g[k]
			p := path + "." + k
			switch {
			case !gok:
				diffs = append(diffs, fmt.Sprintf("%s: missing", p))
			case !wok:
				diffs = append(diffs, fmt.Sprintf("%s: %s, not in the README", p, brief(gv)))
			case timeFields[k]:
				if (wv == nil) != (gv == nil) {
					diffs = append(diffs, fmt.Sprintf("%s: %s, want %s", p, brief(gv), brief(wv)))
				}
			default:
				diffs = append(diffs, compareJSON(p, wv, gv)...)
			}
		}
		return diffs
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %s, want %s", pathOr(path), brief(got), brief(want))}
		}
		var diffs []string
		for i := range w {
			diffs = append(diffs, compareJSON(path+"["+strconv.Itoa(i)+"]", w[i], g[i])...)
		}
		return diffs
	default:
		if want != got {
			return []string{fmt.Sprintf("%s: %s, want %s", pathOr(path), brief(got), brief(want))}
		}
		return nil
	}
}

func pathOr(p string) string {
	if p == "" {
		return "the response"
	}
	return p
}

// brief formats a JSON value for a message.
func brief(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 120 {
		return string(b[:117]) + "..."
	}
	return string(b)
}

// TestParseShell checks the parser of TestREADME on the forms the README
// uses, and that it refuses what it does not take.
func TestParseShell(t *testing.T) {
	t.Parallel()
	cmds, err := parseShell("curl -si localhost:8080/a.json \\\n  -H 'Content-Type: application/json' --data-binary @- <<'EOF' &\n{\"a\": \"it's\"}\nEOF\ncurl -s \"localhost:8080/b\" -d 'x y'&\nwait\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) != 3 {
		t.Fatalf("%d commands, want 3: %+v", len(cmds), cmds)
	}
	want := []string{"curl", "-si", "localhost:8080/a.json", "-H", "Content-Type: application/json", "--data-binary", "@-"}
	if c := cmds[0]; !slices.Equal(c.args, want) || !c.background || c.stdin == nil || *c.stdin != "{\"a\": \"it's\"}\n" {
		t.Errorf("first command: %q background %v stdin %v", c.args, c.background, c.stdin)
	}
	if c := cmds[1]; !slices.Equal(c.args, []string{"curl", "-s", "localhost:8080/b", "-d", "x y"}) || !c.background || c.stdin != nil {
		t.Errorf("second command: %q background %v", c.args, c.background)
	}
	if c := cmds[2]; !slices.Equal(c.args, []string{"wait"}) || c.background {
		t.Errorf("third command: %q", c.args)
	}
	r, err := parseCurl(cmds[0], "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if r.method != http.MethodPost || r.url != "http://127.0.0.1:1/a.json" || !r.include ||
		r.header.Get("Content-Type") != "application/json" || string(r.body) != "{\"a\": \"it's\"}\n" {
		t.Errorf("curl: %+v", r)
	}
	for _, bad := range []string{
		"curl -s localhost:8080 | jq .",
		"curl -s localhost:8080 && echo done",
		"curl -s localhost:8080; echo",
		"curl -s \"localhost:8080/$path\"",
		"curl -s localhost:8080 <<EOF\nx\nEOF",
		"curl -s localhost:8080 <<'EOF'\nx\n",
		"curl -s 'localhost:8080",
	} {
		if _, err := parseShell(bad); err == nil {
			t.Errorf("%q: parsed; want an error", bad)
		}
	}
	for _, bad := range []string{
		"curl -s example.com/a",
		"curl -s -o out localhost:8080/a",
		"curl -s -d @file localhost:8080/a",
		"curl -s",
	} {
		cmds, err := parseShell(bad)
		if err != nil {
			t.Fatalf("%q: %v", bad, err)
		}
		if _, err := parseCurl(cmds[0], "http://127.0.0.1:1"); err == nil {
			t.Errorf("%q: parsed; want an error", bad)
		}
	}
	if _, err := runArgs(runPrefix + " -addr 127.0.0.1:8080 -latency 2s -nowait\n"); err != nil {
		t.Error(err)
	}
	if args, _ := runArgs(runPrefix + " -addr 127.0.0.1:8080 -dir /tmp/x\n"); !slices.Equal(args, []string{"-dir", "/tmp/x"}) {
		t.Errorf("runArgs: %q", args)
	}
}
