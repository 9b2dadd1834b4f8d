package pgtest

// SetLibGlob sets the pattern of the directories that the search for the
// server binaries tries after PATH; for the test of the skip, in a child
// process, before the first search.
func SetLibGlob(glob string) { libGlob = glob }
