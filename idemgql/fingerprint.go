package idemgql

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"strconv"

	"github.com/vektah/gqlparser/v2/ast"
)

// fingerprintVersion begins every fingerprint's input: a change of the
// canonical form changes it, so that old records are told apart.
const fingerprintVersion = "idemgql/1"

// fingerprint returns the fingerprint of f, a call of a mutation field: the
// SHA-256 of the field's name and its arguments, coerced by their schema
// types and encoded as JSON with sorted object keys, without the key
// argument at keyPath. The selection set, the alias and @idempotent are not
// part of it: a retry may select other fields of the same result.
//
// Coercion makes the forms of one value equal: an Int as a literal or a
// variable, a Float written 1 or 1.0, an ID as a number or a string, a list
// of one given as its element, an input field or an argument left out and
// given as its default.
func fingerprint(schema *ast.Schema, f *ast.Field, vars map[string]any, keyPath []string) ([]byte, error) {
	args := map[string]any{}
	if f.Definition != nil {
		raw := f.ArgumentMap(vars)
		for _, def := range f.Definition.Arguments {
			if v, ok := raw[def.Name]; ok {
				args[def.Name] = coerce(schema, v, def.Type, 0)
			}
		}
	}
	if keyPath != nil {
		deletePath(args, keyPath)
	}
	b, err := json.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("idemgql: encoding the arguments of %s for its fingerprint: %w", f.Name, err)
	}
	h := sha256.New()
	h.Write([]byte(fingerprintVersion))
	h.Write([]byte{0})
	h.Write([]byte(f.Name))
	h.Write([]byte{0})
	h.Write(b)
	return h.Sum(nil), nil
}

// maxCoerceDepth bounds the nesting coerce follows; deeper values are taken
// as they are (the parser limits a document's nesting long before).
const maxCoerceDepth = 64

// coerce returns v, a value of GraphQL type t as ArgumentMap gives it, in a
// canonical form.
func coerce(schema *ast.Schema, v any, t *ast.Type, depth int) any {
	if v == nil || t == nil || depth > maxCoerceDepth {
		return v
	}
	if t.Elem != nil {
		if l, ok := v.([]any); ok {
			out := make([]any, len(l))
			for i, e := range l {
				out[i] = coerce(schema, e, t.Elem, depth+1)
			}
			return out
		}
		return []any{coerce(schema, v, t.Elem, depth+1)}
	}
	def := schema.Types[t.NamedType]
	if def == nil {
		return v
	}
	switch def.Kind {
	case ast.InputObject:
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		out := make(map[string]any, len(def.Fields))
		for _, fd := range def.Fields {
			if fv, ok := m[fd.Name]; ok {
				out[fd.Name] = coerce(schema, fv, fd.Type, depth+1)
			} else if fd.DefaultValue != nil {
				if dv, err := fd.DefaultValue.Value(nil); err == nil {
					out[fd.Name] = coerce(schema, dv, fd.Type, depth+1)
				}
			}
		}
		return out
	case ast.Scalar:
		switch t.NamedType {
		case "Int":
			if n, ok := toInt(v); ok {
				return n
			}
		case "Float":
			if n, ok := toFloat(v); ok {
				return n
			}
		case "ID":
			if s, ok := keyString(v); ok {
				return s
			}
		}
	}
	return v
}

func toInt(v any) (int64, bool) {
	switch v := v.(type) {
	case int64:
		return v, true
	case int:
		return int64(v), true
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return n, true
		}
		if f, err := v.Float64(); err == nil && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return int64(f), true
		}
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return int64(v), true
		}
	}
	return 0, false
}

func toFloat(v any) (float64, bool) {
	switch v := v.(type) {
	case float64:
		return v, true
	case int64:
		return float64(v), true
	case int:
		return float64(v), true
	case json.Number:
		if f, err := strconv.ParseFloat(v.String(), 64); err == nil {
			return f, true
		}
	}
	return 0, false
}

// deletePath removes the value at path from args. The maps along the path
// are copied, not changed: they may be the request's variables.
func deletePath(args map[string]any, path []string) {
	m := args
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			return
		}
		next = maps.Clone(next)
		m[p] = next
		m = next
	}
	delete(m, path[len(path)-1])
}
