package idempg_test

import (
	"testing"

	"github.com/idemkv/idem/idempg/internal/pgtest"
)

// TestMain stops the tests' shared PostgreSQL server (pgtest) after them.
func TestMain(m *testing.M) { pgtest.Main(m) }
