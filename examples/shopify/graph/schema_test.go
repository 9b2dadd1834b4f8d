package graph_test

import (
	"os"
	"strings"
	"testing"

	"github.com/idemkv/idem/idemgql"
)

// TestDirectiveSDL checks that the schema declares @idempotent as idemgql
// does (idemgql's Validate checks it too, when the server starts).
func TestDirectiveSDL(t *testing.T) {
	b, err := os.ReadFile("idempotent.graphqls")
	if err != nil {
		t.Fatal(err)
	}
	var sdl []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			sdl = append(sdl, l)
		}
	}
	if got := strings.Join(sdl, "\n"); got != idemgql.DirectiveSDL {
		t.Errorf("idempotent.graphqls declares\n\t%s\nidemgql.DirectiveSDL is\n\t%s", got, idemgql.DirectiveSDL)
	}
}
