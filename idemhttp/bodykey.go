package idemhttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// JSONKey returns an Options.Key function that takes the idempotency key
// from a member of a JSON request body, named by path: the names of the
// object members that lead to it, joined by dots. JSONKey("unique_token")
// reads {"unique_token": "k"}; JSONKey("payment.unique_token") reads
// {"payment": {"unique_token": "k", "amount": "10.00"}}, as Shopify's REST
// API took it. Names compare exactly (encoding/json's Unmarshal into a
// struct also matches other cases; JSONKey does not). A name with a dot in
// it, or an array element, cannot be reached: write an Options.Key of your
// own. JSONKey panics if path is empty or has an empty name.
//
// The function returns:
//
//   - the member's value, if it is a JSON string, with its escapes decoded
//     ("caf\u00e9" is "café", which the middleware refuses, as it does any
//     key that is not printable ASCII);
//   - no key ("", nil) if the body is empty (or white space) or null, or
//     the member is missing, or it or an object on its path is null, as
//     many encoders write a field that is not set: the request passes
//     through, or gets 400 with Options.Required;
//   - an error, which the middleware answers with 400 (ProblemKeyInvalid),
//     if the body is not one valid JSON value, if the member or an object
//     on its path is there twice (parsers disagree on which one counts: the
//     handler's could read another key than the middleware), if the member
//     is not a string or is the empty string, or if a value on its path is
//     not an object.
//
// The body is read as JSON whatever its Content-Type, as most Go handlers
// read theirs (and as curl -d labels any body, JSON included,
// application/x-www-form-urlencoded): a key in a JSON body is never
// missed for want of a header, and a body that is not JSON, such as a
// form, gets 400. For an endpoint that also takes other media types, write
// an Options.Key that calls this function for JSON bodies only.
//
// The whole body is checked (with json.Valid, which allocates nothing),
// but only the member names on the path, and the key, are decoded: the
// function allocates little more than the key, whatever the size of the
// body.
func JSONKey(path string) func(r *http.Request, body []byte) (string, error) {
	if path == "" {
		panic("idemhttp: JSONKey called with an empty path")
	}
	names := strings.Split(path, ".")
	for _, n := range names {
		if n == "" {
			panic(fmt.Sprintf("idemhttp: JSONKey path %q has an empty member name", path))
		}
	}
	return func(_ *http.Request, body []byte) (string, error) {
		return jsonKey(body, names)
	}
}

// jsonKey walks body to the member that names lead to; see JSONKey.
func jsonKey(body []byte, names []string) (string, error) {
	s := &jsonScanner{b: body}
	s.space()
	if s.i == len(body) {
		return "", nil // an empty body: no member, no key
	}
	if !json.Valid(body) {
		err := json.Unmarshal(body, new(json.RawMessage)) // for the details
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return "", fmt.Errorf("the request body is not valid JSON: %v (at byte %d)", err, syntax.Offset)
		}
		return "", fmt.Errorf("the request body is not valid JSON: %v", err)
	}
	// From here on, body is valid JSON: the scanner need not check it.
	switch c := body[s.i]; c {
	case 'n':
		return "", nil // null: no member
	case '{':
		return s.object(names, 0)
	default:
		return "", fmt.Errorf("the request body is %s, not a JSON object", kindOf(c))
	}
}

// jsonScanner reads valid JSON: it finds where values begin and end, and
// decodes only the strings it needs.
type jsonScanner struct {
	b []byte
	i int // the next byte to read
}

// object reads the members of the object at s.i, up to and including its
// closing brace, and returns the key that names[depth:] lead to in it.
func (s *jsonScanner) object(names []string, depth int) (string, error) {
	var (
		key   string
		found bool
	)
	s.i++ // {
	for {
		s.space()
		if s.b[s.i] == '}' {
			s.i++
			return key, nil
		}
		name := s.str()
		s.space()
		s.i++ // :
		s.space()
		if !equalString(name, names[depth]) {
			s.skip()
		} else {
			if found {
				return "", fmt.Errorf("%s is in the request body twice", pathTo(names, depth))
			}
			found = true
			last := depth == len(names)-1
			switch c := s.b[s.i]; {
			case c == 'n': // null: as if missing
				s.skip()
			case c == '"' && last:
				v := decodeString(s.str())
				if v == "" {
					return "", fmt.Errorf("%s in the request body is the empty string", pathTo(names, depth))
				}
				key = v
			case c == '{' && !last:
				k, err := s.object(names, depth+1)
				if err != nil {
					return "", err
				}
				key = k
			default:
				want := "an object"
				if last {
					want = "a string"
				}
				return "", fmt.Errorf("%s in the request body is %s, not %s", pathTo(names, depth), kindOf(c), want)
			}
		}
		s.space()
		if s.b[s.i] == ',' {
			s.i++
		}
	}
}

// space skips white space.
func (s *jsonScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// str reads the string at s.i and returns it as written, quotes included.
func (s *jsonScanner) str() []byte {
	start := s.i
	for s.i++; ; s.i++ {
		switch s.b[s.i] {
		case '\\':
			s.i++ // the escaped byte: \" does not end the string
		case '"':
			s.i++
			return s.b[start:s.i]
		}
	}
}

// skip reads the value at s.i.
func (s *jsonScanner) skip() {
	depth := 0
	for {
		switch s.b[s.i] {
		case '"':
			s.str()
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			depth--
			s.i++
		case ' ', '\t', '\r', '\n', ',', ':': // between the elements of an object or array
			s.i++
		default: // a number, true, false or null
			for s.i < len(s.b) && !isEnd(s.b[s.i]) {
				s.i++
			}
		}
		if depth == 0 {
			return
		}
	}
}

// isEnd reports whether c ends a number or a literal.
func isEnd(c byte) bool {
	switch c {
	case ' ', '\t', '\r', '\n', ',', ']', '}':
		return true
	}
	return false
}

// equalString reports whether the JSON string raw, quotes included, is s
// decoded.
func equalString(raw []byte, s string) bool {
	if isPlain(raw) {
		return string(raw[1:len(raw)-1]) == s
	}
	return decodeString(raw) == s
}

// decodeString returns the JSON string raw, quotes included, decoded.
func decodeString(raw []byte) string {
	if isPlain(raw) {
		return string(raw[1 : len(raw)-1])
	}
	// Escapes, or bytes that may not be valid UTF-8 (which encoding/json
	// replaces with U+FFFD): as encoding/json decodes them.
	var v string
	json.Unmarshal(raw, &v) // cannot fail: raw is a valid JSON string
	return v
}

// isPlain reports whether the JSON string raw is its own content between
// its quotes: it has no escape, and only ASCII.
func isPlain(raw []byte) bool {
	for _, c := range raw {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// pathTo returns the path to names[depth], as JSONKey's argument spells it.
func pathTo(names []string, depth int) string {
	return strings.Join(names[:depth+1], ".")
}

// kindOf names the kind of the JSON value that starts with c.
func kindOf(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}
