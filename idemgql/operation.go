package idemgql

import (
	"fmt"
	"slices"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// checkOperation checks opCtx's operation before it runs (see
// MutateOperationContext).
func (x *Extension) checkOperation(opCtx *graphql.OperationContext) *gqlerror.Error {
	s := x.schema.Load()
	if s == nil {
		return gqlError(x.notValidated(), nil, nil)
	}
	op := opCtx.Operation
	w := &opWalker{x: x, doc: opCtx.Doc, vars: opCtx.Variables, op: op.Operation, seen: map[seenFragment]bool{}}
	return w.walk(op.SelectionSet, op.Operation == ast.Mutation, nil)
}

// opWalker walks an operation's selections, fragments included.
type opWalker struct {
	x    *Extension
	doc  *ast.QueryDocument
	vars map[string]any
	op   ast.Operation
	seen map[seenFragment]bool // the fragments walked already
}

// seenFragment is a fragment walked at the root of a mutation, or below.
type seenFragment struct {
	name string
	root bool
}

// walk checks the selections of set, with path the path of the field they
// belong to; root is true for the root selections of a mutation.
func (w *opWalker) walk(set ast.SelectionSet, root bool, path ast.Path) *gqlerror.Error {
	for _, sel := range set {
		switch sel := sel.(type) {
		case *ast.Field:
			p := append(slices.Clip(path), ast.PathName(sel.Alias))
			if err := w.field(sel, root, p); err != nil {
				return err
			}
			if err := w.walk(sel.SelectionSet, false, p); err != nil {
				return err
			}
		case *ast.InlineFragment:
			if err := w.walk(sel.SelectionSet, root, path); err != nil {
				return err
			}
		case *ast.FragmentSpread:
			k := seenFragment{sel.Name, root}
			if w.seen[k] {
				continue
			}
			w.seen[k] = true
			def := sel.Definition
			if def == nil && w.doc != nil {
				def = w.doc.Fragments.ForName(sel.Name)
			}
			if def == nil {
				continue
			}
			if err := w.walk(def.SelectionSet, root, path); err != nil {
				return err
			}
		}
	}
	return nil
}

// field checks f, at path.
func (w *opWalker) field(f *ast.Field, root bool, path ast.Path) *gqlerror.Error {
	d := f.Directives.ForName(DirectiveName)
	if !root {
		if d == nil {
			return nil
		}
		var msg string
		if w.op != ast.Mutation {
			msg = fmt.Sprintf("@idempotent is allowed only on a root field of a mutation, and %q is in a %s: a %s has no effect to repeat.", f.Alias, w.op, w.op)
		} else {
			msg = fmt.Sprintf("@idempotent is allowed only on a root field of a mutation, and %q is nested in %q: its mutation runs first, unprotected.", f.Alias, path[:len(path)-1].String())
		}
		return gqlError(&Error{Code: CodeUnsupportedPlacement, Message: msg}, path, position(f, d))
	}
	s := w.x.fields[f.Name]
	if s == nil {
		if d == nil {
			return nil
		}
		return gqlError(&Error{Code: CodeUnsupportedMutation,
			Message: fmt.Sprintf("The mutation %q does not support @idempotent: the server has not registered it as idempotent.", f.Name)},
			path, position(f, d))
	}
	if !included(f, w.vars) {
		return nil
	}
	_, present, _, err := w.x.callKey(f, s, w.vars)
	if err != nil {
		return gqlError(err, path, position(f, d))
	}
	if !present && s.required {
		return gqlError(requiredError(f.Name, s), path, position(f, nil))
	}
	return nil
}

// requiredError is the error for a call without a key of s, a mutation
// registered with Required.
func requiredError(name string, s *fieldSpec) *Error {
	msg := fmt.Sprintf("The mutation %q requires an idempotency key: @idempotent(key:)", name)
	if s.keyArg != "" {
		msg += " or the argument " + s.keyArg
	}
	return &Error{Code: CodeKeyRequired, Message: msg + ".", Field: s.keyPath}
}

// included reports whether f is executed under @skip and @include.
func included(f *ast.Field, vars map[string]any) bool {
	for _, d := range f.Directives {
		if d.Name != "skip" && d.Name != "include" {
			continue
		}
		a := d.Arguments.ForName("if")
		if a == nil || a.Value == nil {
			continue
		}
		v, err := a.Value.Value(vars)
		if b, ok := v.(bool); err == nil && ok && b == (d.Name == "skip") {
			return false
		}
	}
	return true
}

// position returns the position of d, or else of f.
func position(f *ast.Field, d *ast.Directive) *ast.Position {
	if d != nil && d.Position != nil {
		return d.Position
	}
	return f.Position
}

// gqlError returns e as a GraphQL error, at path and pos if known.
func gqlError(e *Error, path ast.Path, pos *ast.Position) *gqlerror.Error {
	g := &gqlerror.Error{
		Err:        e,
		Message:    e.Message,
		Path:       path,
		Extensions: map[string]any{"code": e.Code},
	}
	if pos != nil && pos.Line > 0 {
		g.Locations = []gqlerror.Location{{Line: pos.Line, Column: pos.Column}}
	}
	return g
}
