package idemgql

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/vektah/gqlparser/v2/ast"
)

// callKey returns the key of a call f of the registered mutation s: from
// @idempotent, from s's key argument, or from both, which must then agree.
// present is false when the call has none.
func (x *Extension) callKey(f *ast.Field, s *fieldSpec, vars map[string]any) (key string, present bool, field []string, err *Error) {
	var dirKey, argKey string
	var dirSet, argSet bool
	if d := f.Directives.ForName(DirectiveName); d != nil {
		v, verr := directiveKey(d, vars)
		if verr != nil {
			return "", false, nil, verr
		}
		if verr := x.checkKey(v, "The idempotency key of @idempotent(key:)", nil); verr != nil {
			return "", false, nil, verr
		}
		dirKey, dirSet = v, true
	}
	if s != nil && s.keyPath != nil && f.Definition != nil {
		raw, ok := lookupPath(f.ArgumentMap(vars), s.keyPath)
		if ok && raw != nil {
			v, isString := keyString(raw)
			if !isString {
				return "", false, nil, &Error{Code: CodeKeyInvalid, Field: s.keyPath,
					Message: fmt.Sprintf("The idempotency key argument %s is not a string.", s.keyArg)}
			}
			if verr := x.checkKey(v, "The idempotency key argument "+s.keyArg, s.keyPath); verr != nil {
				return "", false, nil, verr
			}
			argKey, argSet = v, true
		}
	}
	switch {
	case dirSet && argSet && dirKey != argKey:
		return "", false, nil, &Error{Code: CodeKeyInvalid, Field: s.keyPath,
			Message: fmt.Sprintf("@idempotent(key:) and the argument %s carry two different idempotency keys.", s.keyArg)}
	case dirSet:
		return dirKey, true, nil, nil
	case argSet:
		return argKey, true, s.keyPath, nil
	}
	return "", false, nil, nil
}

// directiveKey returns the value of d's key argument, @idempotent(key:).
func directiveKey(d *ast.Directive, vars map[string]any) (string, *Error) {
	invalid := &Error{Code: CodeKeyInvalid, Message: "@idempotent(key:) is not a string."}
	a := d.Arguments.ForName("key")
	if a == nil || a.Value == nil {
		return "", &Error{Code: CodeKeyInvalid, Message: "@idempotent has no key argument."}
	}
	raw, err := a.Value.Value(vars)
	if err != nil {
		return "", invalid
	}
	s, ok := raw.(string)
	if !ok {
		return "", invalid
	}
	return s, nil
}

// checkKey returns an error if key is empty, longer than MaxKeyLength or
// not printable ASCII. what names where the key came from, for the message.
func (x *Extension) checkKey(key, what string, field []string) *Error {
	var msg string
	switch {
	case key == "":
		msg = what + " is empty."
	case len(key) > x.c.MaxKeyLength:
		msg = fmt.Sprintf("%s is %d bytes long, above the limit of %d.", what, len(key), x.c.MaxKeyLength)
	default:
		for i := 0; i < len(key); i++ {
			if c := key[i]; c < ' ' || c > '~' {
				msg = fmt.Sprintf("%s has a character that is not printable ASCII at byte %d.", what, i)
				break
			}
		}
	}
	if msg == "" {
		return nil
	}
	return &Error{Code: CodeKeyInvalid, Message: msg, Field: field}
}

// lookupPath returns the value at path in args, an argument map.
func lookupPath(args map[string]any, path []string) (any, bool) {
	var v any = args
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[p]; !ok {
			return nil, false
		}
	}
	return v, true
}

// keyString returns v, the value of a String or ID argument, as a string:
// an ID may be given as an integer.
func keyString(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case int64:
		return strconv.FormatInt(v, 10), true
	case int:
		return strconv.Itoa(v), true
	case json.Number:
		return v.String(), true
	}
	return "", false
}
