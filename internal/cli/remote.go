package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/idemkv/idem"
	"github.com/idemkv/idem/idemhttp"
)

// remote is a database that a running service has open, read and changed
// through its admin handler (idemhttp.AdminHandler): the commands work on
// it as on a directory, with the same output.
type remote struct {
	ctx    context.Context
	base   *url.URL // the handler's URL, ending with a slash
	client *http.Client
	auth   string // the Authorization header's value; "" for none

	zeros []byte // see records
}

// authEnv is the environment variable whose value, if set, remote sends as
// the Authorization header of its requests: a token is not given on the
// command line, where other users of the machine could see it.
const authEnv = "IDEM_AUTHORIZATION"

// newRemote returns the remote database of the admin handler at rawURL,
// whose requests end with ctx. client is the HTTP client; nil means one of
// its own.
func newRemote(ctx context.Context, rawURL string, client *http.Client) (*remote, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url %s: want the http:// or https:// URL of the service's admin handler, as http://127.0.0.1:9090/idem", rawURL)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		if u.RawPath != "" {
			u.RawPath += "/"
		}
	}
	u.RawQuery, u.Fragment = "", ""
	if client == nil {
		client = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
		}}
	}
	return &remote{ctx: ctx, base: u, client: client, auth: os.Getenv(authEnv)}, nil
}

// endpoint returns the URL of the endpoint at path (already escaped) under
// the handler, with query q.
func (r *remote) endpoint(path string, q url.Values) string {
	u := *r.base
	u.RawPath = r.base.EscapedPath() + path
	if p, err := url.PathUnescape(u.RawPath); err == nil {
		u.Path = p
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// escapeKey escapes key for a path segment: "/" too, and a key of dots,
// which a ServeMux would clean away as "." and ".." segments.
func escapeKey(key string) string {
	if strings.Trim(key, ".") == "" {
		return strings.Repeat("%2E", len(key))
	}
	return url.PathEscape(key)
}

// A problemError is an error the admin handler answered with: an RFC 9457
// problem. It matches the engine's errors that its type stands for, so that
// the commands tell them apart as they do an engine's.
type problemError struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	url    string
}

func (p *problemError) Error() string {
	return fmt.Sprintf("%s: %s (HTTP %d from %s)", p.Title, p.Detail, p.Status, p.url)
}

func (p *problemError) Is(target error) bool {
	switch p.Type {
	case idemhttp.ProblemAdminNoRecord:
		return target == idem.ErrNotFound
	case idemhttp.ProblemInFlight:
		return target == idem.ErrInFlight
	case idemhttp.ProblemUnavailable:
		return target == idem.ErrClosed
	}
	return false
}

// call sends a request to the endpoint at path and decodes the JSON answer
// into v. A problem answer is a *problemError; any other answer that is not
// the handler's JSON says so.
func (r *remote) call(method, path string, q url.Values, v any) error {
	u := r.endpoint(path, q)
	req, err := http.NewRequestWithContext(r.ctx, method, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if r.auth != "" {
		req.Header.Set("Authorization", r.auth)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if ctxErr := r.ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return fmt.Errorf("cannot reach the service at %s: %w", r.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", u, err)
	}
	media, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case media == "application/problem+json":
		p := &problemError{url: u}
		if err := json.Unmarshal(body, p); err == nil && p.Type != "" {
			return p
		}
	case resp.StatusCode == http.StatusOK && media == "application/json":
		dec := json.NewDecoder(bytes.NewReader(body))
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("the answer of %s is not what the admin handler writes: %w", u, err)
		}
		return nil
	}
	return fmt.Errorf("%s answered %s with %s, not the admin handler's JSON: is the URL where idemhttp's admin handler is mounted (with http.StripPrefix)? %s",
		u, resp.Status, orNone(media), firstWords(body))
}

func orNone(media string) string {
	if media == "" {
		return "no Content-Type"
	}
	return media
}

// firstWords returns the start of a body, for a message.
func firstWords(body []byte) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	if s == "" {
		return "(empty body)"
	}
	return "Body: " + strconv.Quote(s)
}

// stats returns the service's stats, with the figures of its records if
// withRecords.
func (r *remote) stats(withRecords bool) (*idemhttp.AdminStats, error) {
	q := url.Values{}
	if withRecords {
		q.Set("records", "true")
	}
	var st idemhttp.AdminStats
	if err := r.call(http.MethodGet, "stats", q, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// records yields the live records under prefix (in state, if not ""), a
// page at a time. A page has each value's size, not the value: the Value of
// a completed record is that many zero bytes (a slice of one buffer that
// every record shares), which ls only measures.
func (r *remote) records(prefix, state string) iter.Seq2[idem.Record, error] {
	q := url.Values{}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if state != "" {
		q.Set("state", state)
	}
	return r.pages("records", q)
}

func (r *remote) interrupted() iter.Seq2[idem.Record, error] {
	return r.pages("interrupted", url.Values{})
}

// pages yields the records of the pages of the endpoint at path, asking for
// the largest pages.
func (r *remote) pages(path string, q url.Values) iter.Seq2[idem.Record, error] {
	return func(yield func(idem.Record, error) bool) {
		q.Set("limit", strconv.Itoa(idemhttp.MaxAdminPage))
		for {
			var p idemhttp.AdminPage
			if err := r.call(http.MethodGet, path, q, &p); err != nil {
				yield(idem.Record{}, err)
				return
			}
			for i := range p.Records {
				rec, err := r.record(&p.Records[i])
				if !yield(rec, err) {
					return
				}
			}
			q.Del("after")
			q.Del("after_base64")
			switch {
			case p.NextBase64 != "":
				q.Set("after_base64", p.NextBase64)
			case p.Next != "":
				q.Set("after", p.Next)
			default:
				return
			}
		}
	}
}

// A corruptError is a record that the service cannot decode: it matches
// idem.ErrCorrupt, and reads as the engine's error does.
type corruptError struct{ msg string }

func (e *corruptError) Error() string        { return "idem: " + e.msg }
func (e *corruptError) Is(target error) bool { return target == idem.ErrCorrupt }

// record returns the idem.Record that j, as the admin handler wrote it,
// stands for, or an error matching idem.ErrCorrupt for a corrupt one.
func (r *remote) record(j *idemhttp.AdminRecord) (idem.Record, error) {
	rec := idem.Record{Key: j.Key}
	if j.KeyBase64 != "" {
		k, err := base64.StdEncoding.DecodeString(j.KeyBase64)
		if err != nil {
			return rec, fmt.Errorf("the service sent a key in bad base64: %w", err)
		}
		rec.Key = string(k)
	}
	if j.State == stateCorrupt {
		return rec, &corruptError{j.Error}
	}
	switch j.State {
	case "completed":
		rec.State = idem.StateCompleted
	case "failed":
		rec.State = idem.StateFailed
	case "in-flight":
		rec.State = idem.StateInFlight
	case "interrupted":
		rec.State = idem.StateInterrupted
	default:
		return rec, fmt.Errorf("the service sent a record of key %s in an unknown state %q", displayKey(rec.Key), j.State)
	}
	if j.Created != nil {
		rec.CreatedAt = *j.Created
	}
	if j.Expires != nil {
		rec.ExpiresAt = *j.Expires
	}
	rec.Err = j.Error
	switch {
	case j.Value != nil:
		rec.Value = []byte(*j.Value)
	case j.ValueBase64 != nil:
		v, err := base64.StdEncoding.DecodeString(*j.ValueBase64)
		if err != nil {
			return rec, fmt.Errorf("the service sent the value of key %s in bad base64: %w", displayKey(rec.Key), err)
		}
		rec.Value = v
	case j.ValueSize != nil:
		if n := *j.ValueSize; n > len(r.zeros) {
			r.zeros = make([]byte, n)
		}
		rec.Value = r.zeros[:*j.ValueSize:*j.ValueSize]
	case rec.State == idem.StateCompleted:
		rec.Value = []byte{}
	}
	return rec, nil
}

// lookup returns key's record, with its value.
func (r *remote) lookup(key string) (idem.Record, error) {
	var j idemhttp.AdminRecord
	if err := r.call(http.MethodGet, "records/"+escapeKey(key), nil, &j); err != nil {
		return idem.Record{}, err
	}
	return r.record(&j)
}

// forget forgets key. The handler checks again that the key is interrupted,
// unless anyState: a call may have changed it since lookup.
func (r *remote) forget(key string, anyState bool) error {
	q := url.Values{}
	if anyState {
		q.Set("any_state", "true")
	}
	var j idemhttp.AdminRecord
	return r.call(http.MethodPost, "forget/"+escapeKey(key), q, &j)
}

func (r *remote) close() error {
	r.client.CloseIdleConnections()
	return nil
}

// handlerTransport is an http.RoundTripper that serves the requests with a
// handler in this process: how top reads the stats of the engine it runs
// a load on, through the same admin handler as a service's.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	w := &bufferedResponse{header: http.Header{}}
	t.h.ServeHTTP(w, req)
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		Body:          io.NopCloser(&w.body),
		ContentLength: int64(w.body.Len()),
		Request:       req,
	}, nil
}

// bufferedResponse is the http.ResponseWriter of handlerTransport.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *bufferedResponse) Header() http.Header { return w.header }

func (w *bufferedResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *bufferedResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}
