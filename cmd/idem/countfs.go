package main

import (
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// countingFS is a vfs.FS that counts the fsyncs and the bytes written of
// the files it opens for writing (and of the directories Pebble syncs). The
// engine's Stats has neither figure, so bench gives the engine this FS.
type countingFS struct {
	vfs.FS
	syncs   atomic.Uint64 // Sync, SyncData, and SyncTo calls that synced the whole file
	written atomic.Uint64 // bytes passed to Write and WriteAt
}

var _ vfs.FS = (*countingFS)(nil)

func (fs *countingFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &countingFile{File: f, fs: fs}, nil
}

func (fs *countingFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.Create(name, category))
}

func (fs *countingFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenReadWrite(name, category, opts...))
}

func (fs *countingFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return fs.wrap(fs.FS.ReuseForWrite(oldname, newname, category))
}

func (fs *countingFS) OpenDir(name string) (vfs.File, error) {
	return fs.wrap(fs.FS.OpenDir(name))
}

// Unwrap returns the wrapped FS, for vfs.Root.
func (fs *countingFS) Unwrap() vfs.FS { return fs.FS }

// countingFile counts a file's syncs and writes into its countingFS.
type countingFile struct {
	vfs.File
	fs *countingFS
}

func (f *countingFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	f.fs.written.Add(uint64(n))
	return n, err
}

func (f *countingFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	f.fs.written.Add(uint64(n))
	return n, err
}

func (f *countingFile) Sync() error {
	f.fs.syncs.Add(1)
	return f.File.Sync()
}

func (f *countingFile) SyncData() error {
	f.fs.syncs.Add(1)
	return f.File.SyncData()
}

// SyncTo counts only the calls that synced the whole file: the others ask
// the OS to start writing a range back, without waiting for it.
func (f *countingFile) SyncTo(length int64) (bool, error) {
	full, err := f.File.SyncTo(length)
	if full {
		f.fs.syncs.Add(1)
	}
	return full, err
}
