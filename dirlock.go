package idem

import (
	"fmt"
	"path"
	"path/filepath"
	"reflect"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The directories open in this process.
//
// Pebble's directory lock does not keep one process from opening a directory
// twice: its check within the process compares path strings, so a symlink,
// or a relative and an absolute path, get past it; and its fcntl lock belongs
// to the whole process, so the second lock succeeds too, and closing either
// releases both, letting another process in while the first Engine still
// serves. So Open claims the directory here first, by its identity (device
// and inode on the operating system's file system; the file system and the
// cleaned path on others, such as vfs.MemFS), and refuses a directory that
// an Engine of this process already has: Pebble's lock is then only ever
// taken once per directory in the process.
var openDirs struct {
	mu sync.Mutex // protects m
	m  map[dirID]struct{}
}

// dirID identifies a directory: by device and inode when the file system
// reports them (the operating system's, and wrappers of it), else by the
// file system and the directory's cleaned path.
type dirID struct {
	dev, ino uint64
	fs       vfs.FS // nil when dev and ino identify the directory
	path     string
}

// identifyDir returns dir's identity on fs. dir must exist.
func identifyDir(fs vfs.FS, dir string) (dirID, error) {
	fi, err := fs.Stat(dir)
	if err != nil {
		return dirID{}, err
	}
	if dev, ino, ok := fileID(fi); ok {
		return dirID{dev: dev, ino: ino}, nil
	}
	root := vfs.Root(fs)
	if root == vfs.Default {
		// The operating system's file system without inodes: resolve the
		// path instead.
		abs, err := filepath.Abs(dir)
		if err != nil {
			return dirID{}, err
		}
		if abs, err = filepath.EvalSymlinks(abs); err != nil {
			return dirID{}, err
		}
		return dirID{fs: root, path: abs}, nil
	}
	if !reflect.ValueOf(root).Comparable() {
		// A file system that cannot be told apart from another: its own
		// lock is all there is.
		return dirID{}, nil
	}
	// vfs.MemFS has no current directory but the root, and Pebble names its
	// files with PathJoin, which cleans the path: "db", "/db" and "./db/"
	// name the same files.
	return dirID{fs: root, path: path.Clean("/" + dir)}, nil
}

// claimDir records that an Engine of this process opens dir on fs, and
// returns the function that forgets it once that Engine has closed. It
// returns an error matching ErrLocked if an Engine of this process has dir
// open, however the path is spelled.
func claimDir(fs vfs.FS, dir string) (release func(), err error) {
	id, err := identifyDir(fs, dir)
	if err != nil {
		return nil, fmt.Errorf("idem: open %s: %w", dir, err)
	}
	if id == (dirID{}) {
		return func() {}, nil
	}
	openDirs.mu.Lock()
	defer openDirs.mu.Unlock()
	if _, held := openDirs.m[id]; held {
		return nil, fmt.Errorf("%w: %s is open in another Engine of this process", ErrLocked, dir)
	}
	if openDirs.m == nil {
		openDirs.m = make(map[dirID]struct{})
	}
	openDirs.m[id] = struct{}{}
	var once sync.Once
	return func() {
		once.Do(func() {
			openDirs.mu.Lock()
			delete(openDirs.m, id)
			openDirs.mu.Unlock()
		})
	}, nil
}
