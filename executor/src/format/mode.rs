//! Go `os.FileMode` (what restic stores in `mode`) <-> Unix `st_mode`.

pub const MODE_DIR: u32 = 1 << 31;
pub const MODE_SYMLINK: u32 = 1 << 27;
pub const MODE_DEVICE: u32 = 1 << 26;
pub const MODE_NAMED_PIPE: u32 = 1 << 25;
pub const MODE_SOCKET: u32 = 1 << 24;
pub const MODE_SETUID: u32 = 1 << 23;
pub const MODE_SETGID: u32 = 1 << 22;
pub const MODE_CHAR_DEVICE: u32 = 1 << 21;
pub const MODE_STICKY: u32 = 1 << 20;

pub fn go_from_unix(st: u32) -> u32 {
    let mut m = st & 0o777;
    m |= match st & libc::S_IFMT {
        libc::S_IFDIR => MODE_DIR,
        libc::S_IFLNK => MODE_SYMLINK,
        libc::S_IFBLK => MODE_DEVICE,
        libc::S_IFCHR => MODE_DEVICE | MODE_CHAR_DEVICE,
        libc::S_IFIFO => MODE_NAMED_PIPE,
        libc::S_IFSOCK => MODE_SOCKET,
        _ => 0,
    };
    if st & libc::S_ISUID != 0 {
        m |= MODE_SETUID;
    }
    if st & libc::S_ISGID != 0 {
        m |= MODE_SETGID;
    }
    if st & libc::S_ISVTX != 0 {
        m |= MODE_STICKY;
    }
    m
}

/// Permission and special bits for chmod (the file type comes from the node type).
pub fn unix_perm_from_go(m: u32) -> u32 {
    let mut st = m & 0o777;
    if m & MODE_SETUID != 0 {
        st |= libc::S_ISUID;
    }
    if m & MODE_SETGID != 0 {
        st |= libc::S_ISGID;
    }
    if m & MODE_STICKY != 0 {
        st |= libc::S_ISVTX;
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_values() {
        assert_eq!(go_from_unix(libc::S_IFREG | 0o644), 420);
        assert_eq!(go_from_unix(libc::S_IFDIR | 0o755), 2147484141);
        assert_eq!(go_from_unix(libc::S_IFLNK | 0o777), 134218239);
        assert_eq!(go_from_unix(libc::S_IFIFO | 0o644), 33554852);
        assert_eq!(go_from_unix(libc::S_IFREG | 0o4755), 8389101);
        assert_eq!(go_from_unix(libc::S_IFREG | 0o2755), 4194797);
        assert_eq!(go_from_unix(libc::S_IFDIR | 0o1777), 2148532735);
        assert_eq!(unix_perm_from_go(2148532735), 0o1777);
        assert_eq!(unix_perm_from_go(8389101), 0o4755);
    }
}
