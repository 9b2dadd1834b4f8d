package idemhttp

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// EngineKey returns the key under which the middleware stores the response
// to a request with the client's key in scope (Options.Scope; "" without
// one): the scope's length in decimal, a colon, the scope, then the key, as
// "5:acme1" + key. The length makes the combination unambiguous: scope "a"
// with key "bc" and scope "ab" with key "c" never meet. Use it to find a
// key's record with the engine's Lookup, or to Forget a key that reports
// its outcome as unknown once it has been reconciled.
func EngineKey(scope, key string) string {
	return strconv.Itoa(len(scope)) + ":" + scope + key
}

// errKeyList is the error for a key header that holds a list: what a
// client sending several keys, or a proxy merging several header lines into
// one, makes.
var errKeyList = errors.New("it holds a comma-separated list, as several header lines merged into one do; send one key, quoted if it has a comma")

// parseKey returns the idempotency key carried by the values of the key
// header: one value (one header line), either a Structured Field string
// (quoted, as the IETF draft specifies) or a bare token of visible ASCII
// characters other than a comma. The key must be 1 to max bytes of
// printable ASCII.
func parseKey(values []string, max int) (string, error) {
	if len(values) > 1 {
		return "", fmt.Errorf("it is on %d lines; send it on one, with one key", len(values))
	}
	v := strings.Trim(values[0], " \t")
	var key string
	if strings.HasPrefix(v, `"`) {
		k, err := parseSFString(v)
		if err != nil {
			return "", err
		}
		key = k
	} else {
		if strings.Contains(v, ",") {
			return "", errKeyList
		}
		for i := 0; i < len(v); i++ {
			if c := v[i]; c <= ' ' || c > '~' {
				return "", fmt.Errorf("the key has a character that is not visible ASCII at byte %d", i)
			}
		}
		key = v
	}
	switch {
	case key == "":
		return "", errors.New("the key is empty")
	case len(key) > max:
		return "", fmt.Errorf("the key is %d bytes long, above the limit of %d", len(key), max)
	}
	return key, nil
}

// checkKey checks a key that Options.Key returned as parseKey checks one
// from the header: 1 to max bytes of printable ASCII (space to tilde).
func checkKey(key string, max int) error {
	switch {
	case key == "":
		return errors.New("the key is empty")
	case len(key) > max:
		return fmt.Errorf("the key is %d bytes long, above the limit of %d", len(key), max)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < ' ' || c > '~' {
			return fmt.Errorf("the key has a character that is not printable ASCII at byte %d", i)
		}
	}
	return nil
}

// parseSFString parses v, which starts with a double quote, as a Structured
// Field string (RFC 8941, section 3.3.3): printable ASCII between double
// quotes, in which only `\"` and `\\` are escapes. Nothing may follow the
// closing quote (the draft defines no parameters).
func parseSFString(v string) (string, error) {
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i == len(v) || v[i] != '"' && v[i] != '\\' {
				return "", errors.New(`the quoted key has an invalid escape: only \" and \\ are allowed`)
			}
			b.WriteByte(v[i])
		case c == '"':
			if rest := strings.TrimLeft(v[i+1:], " \t"); strings.HasPrefix(rest, ",") {
				return "", errKeyList
			}
			if i != len(v)-1 {
				return "", errors.New("the quoted key is followed by other characters")
			}
			return b.String(), nil
		case c < ' ' || c > '~':
			return "", fmt.Errorf("the key has a character that is not printable ASCII at byte %d", i)
		default:
			b.WriteByte(c)
		}
	}
	return "", errors.New("the quoted key has no closing quote")
}

// RequestFingerprint is the default Options.Fingerprint: the SHA-256 of the
// request's method, escaped path, raw query and body, each preceded by its
// length, so that no two different requests share their input. A key reused
// with another method, path, query or body is refused with 422.
func RequestFingerprint(r *http.Request, body []byte) ([]byte, error) {
	h := sha256.New()
	var n [8]byte
	for _, s := range [][]byte{[]byte(r.Method), []byte(r.URL.EscapedPath()), []byte(r.URL.RawQuery), body} {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write(s)
	}
	return h.Sum(nil), nil
}
