package cli

import "testing"

// TestNothingToList checks that ls and interrupted write no table header
// when there is nothing to list, and say so on standard error.
func TestNothingToList(t *testing.T) {
	dir := makeExpiringDB(t, 1) // no interrupted keys
	for _, tt := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"interrupted", dir}, "idem interrupted: no interrupted keys\n"},
		{[]string{"interrupted", dir, "--json"}, ""},
		{[]string{"ls", dir, "--prefix", "nothing"}, "idem ls: no live records match\n"},
		{[]string{"ls", dir, "--state", "failed", "--json"}, ""},
	} {
		r := mustRun(t, exitOK, tt.args...)
		if r.stdout != "" || r.stderr != tt.stderr {
			t.Errorf("idem %q: stdout %q, stderr %q; want no stdout, stderr %q", tt.args, r.stdout, r.stderr, tt.stderr)
		}
	}
}
