package idem

// OpenPebbleStore opens the Pebble store in dir as a plain Store, for the
// tests of package idem_test that run the engine's generic paths (New) on
// a real store.
func OpenPebbleStore(dir string, opts *Options) (Store, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return openStore(dir, o)
}

// ReadFirst makes e, on a shared store, read before it claims, as if its
// recent calls had all found a record (until its calls say otherwise).
func ReadFirst(e *Engine) { e.mix.v.Store(mixOne) }
