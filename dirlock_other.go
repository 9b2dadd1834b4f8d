//go:build !unix

package idem

import "os"

// fileID reports no identity: on this platform directories are told apart
// by their resolved paths.
func fileID(os.FileInfo) (dev, ino uint64, ok bool) { return 0, 0, false }
