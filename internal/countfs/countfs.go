// Package countfs is a vfs.FS that counts the fsyncs and the bytes written
// of the files it opens for writing. cmd/idem's bench and the engine's
// benchmarks use it: Pebble's metrics have neither figure.
package countfs

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// FS counts the fsyncs and the bytes written of the files it opens for
// writing (and of the directories Pebble syncs).
type FS struct {
	vfs.FS
	syncs   atomic.Uint64 // Sync, SyncData, and SyncTo calls that synced the whole file
	written atomic.Uint64 // bytes passed to Write and WriteAt
}

var _ vfs.FS = (*FS)(nil)

// New returns an FS over fs.
func New(fs vfs.FS) *FS { return &FS{FS: fs} }

// Syncs returns the number of fsyncs so far: Sync, SyncData, and the SyncTo
// calls that synced the whole file.
func (fs *FS) Syncs() uint64 { return fs.syncs.Load() }

// Written returns the bytes written so far.
func (fs *FS) Written() uint64 { return fs.written.Load() }

func (fs *FS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &file{File: f, fs: fs}, nil
}

func (fs *FS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.Create(name, category))
}

func (fs *FS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, category, opts...))
}

func (fs *FS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.ReuseForWrite(oldname, newname, category))
}

func (fs *FS) OpenDir(name string) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenDir(name))
}

// Unwrap returns the wrapped FS, for vfs.Root.
func (fs *FS) Unwrap() vfs.FS { return fs.FS }

// file counts a file's syncs and writes into its FS.
type file struct {
	vfs.File
	fs *FS
}

func (f *file) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	f.fs.written.Add(uint64(n))
	return n, err
}

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	f.fs.written.Add(uint64(n))
	return n, err
}

func (f *file) Sync() error {
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

func (f *file) SyncData() error {
	f.fs.syncs.Add(1)
	return f.File.SyncData()
}

// SyncTo counts only the calls that synced the whole file: the others ask
// the OS to start writing a range back, without waiting for it.
func (f *file) SyncTo(length int64) (bool, error) {
	full, err := f.File.SyncTo(length)
	if full {
		f.fs.syncs.Add(1)
	}
	return full, err
}
