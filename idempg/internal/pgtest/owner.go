package pgtest

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
)

// owner is the user that initdb and postgres run as, and that owns their
// directories, when it is not the current user.
type owner struct {
	uid, gid int
}

// serverOwner returns the user to run the servers as, found once per test
// binary: nil for the current user, or the postgres user when the tests
// run as root, which PostgreSQL refuses.
var serverOwner = sync.OnceValues(func() (*owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: the tests run as root, which PostgreSQL refuses, "+
			"and there is no postgres user to run it as (%v): create one, or run the tests as another user", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("pgtest: user postgres: uid %q: %v", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("pgtest: user postgres: gid %q: %v", u.Gid, err)
	}
	return &owner{uid: uid, gid: gid}, nil
})

// chown makes path o's; it does nothing for the current user (o == nil).
func (o *owner) chown(path string) error {
	if o == nil {
		return nil
	}
	return os.Lchown(path, o.uid, o.gid)
}

// maxParent is the longest directory to make the temporary directory in:
// a socket's path (sockaddr_un) has at most 103 bytes on macOS, 107 on
// Linux, and pgtest's socket paths are the parent's and about 40 more
// (/pgtest-1234567890/12/.s.PGSQL.5432).
const maxParent = 60

// makeBase makes the temporary directory of the test binary's servers,
// owned by o, in os.TempDir or else /tmp: the first that o can reach (every
// directory above it searchable by others, when o is not the current user)
// and that is short enough for the sockets' paths.
func makeBase(o *owner) (string, error) {
	var tried []string
	for _, parent := range []string{os.TempDir(), "/tmp"} {
		if len(parent) > maxParent || (o != nil && !searchable(parent)) {
			tried = append(tried, parent)
			continue
		}
		dir, err := os.MkdirTemp(parent, "pgtest-")
		if err != nil {
			return "", fmt.Errorf("pgtest: %v", err)
		}
		if err := o.chown(dir); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pgtest: %v", err)
		}
		return dir, nil
	}
	return "", fmt.Errorf("pgtest: no directory for the servers: %q too long (over %d bytes) "+
		"or not searchable by others: set TMPDIR", tried, maxParent)
}

// searchable reports whether dir and every directory above it let others
// (the postgres user) pass through. It looks at the permissions for
// others only, which is what matters for a root-owned directory.
func searchable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// copyTree copies the directory tree src to dst, which must not exist,
// keeping modes, and makes the copy o's. It copies directories and regular
// files only, which is all a cluster that initdb made holds.
func copyTree(src, dst string, o *owner) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := os.Mkdir(to, fi.Mode().Perm()); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if err := copyFile(path, to, fi.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("pgtest: copying %s: not a directory or a regular file: %v", path, fi.Mode())
		}
		return o.chown(to)
	})
}

// copyFile copies the regular file src to a new file dst with mode perm.
func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
