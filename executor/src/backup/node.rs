//! Building tree nodes from what the filesystem says about an entry.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::format::mode::go_from_unix;
use crate::format::time::GoTime;
use crate::format::tree::{Node, NodeType, Xattr};

/// uid/gid -> name lookups, cached (the walker asks for the same few IDs constantly).
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                let mut buf = vec![0 as libc::c_char; 4096];
                let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
                let mut out = std::ptr::null_mut();
                let r = unsafe {
                    libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out)
                };
                if r == 0 && !out.is_null() {
                    unsafe { CStr::from_ptr(pw.pw_name) }
                        .to_string_lossy()
                        .into_owned()
                } else {
                    String::new()
                }
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                let mut buf = vec![0 as libc::c_char; 4096];
                let mut gr: libc::group = unsafe { std::mem::zeroed() };
                let mut out = std::ptr::null_mut();
                let r = unsafe {
                    libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out)
                };
                if r == 0 && !out.is_null() {
                    unsafe { CStr::from_ptr(gr.gr_name) }
                        .to_string_lossy()
                        .into_owned()
                } else {
                    String::new()
                }
            })
            .clone()
    }
}

pub fn node_from_metadata(name: &[u8], path: &Path, m: &Metadata, names: &mut Names) -> Node {
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let node_type = if ft.is_dir() {
        NodeType::Dir
    } else if ft.is_symlink() {
        NodeType::Symlink
    } else if ft.is_file() {
        NodeType::File
    } else if ft.is_block_device() {
        NodeType::Dev
    } else if ft.is_char_device() {
        NodeType::Chardev
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else if ft.is_socket() {
        NodeType::Socket
    } else {
        NodeType::Irregular
    };
    let mtime = GoTime::from_unix(m.mtime(), m.mtime_nsec() as u32);
    let mut n = Node {
        name: name.to_vec(),
        node_type,
        mode: go_from_unix(m.mode()),
        mtime,
        // Like restic without --with-atime: atime mirrors mtime, so metadata-only reads
        // do not make every tree differ.
        atime: mtime,
        ctime: GoTime::from_unix(m.ctime(), m.ctime_nsec() as u32),
        uid: m.uid(),
        gid: m.gid(),
        user: names.user(m.uid()),
        group: names.group(m.gid()),
        inode: m.ino(),
        device_id: m.dev(),
        ..Default::default()
    };
    match node_type {
        NodeType::File => {
            n.size = m.size();
            n.links = m.nlink();
            n.content = Some(Vec::new());
        }
        NodeType::Symlink => {
            n.links = m.nlink();
            if let Ok(t) = std::fs::read_link(path) {
                use std::os::unix::ffi::OsStrExt;
                n.set_link_target(t.as_os_str().as_bytes());
            }
        }
        NodeType::Dev | NodeType::Chardev => {
            n.links = m.nlink();
            n.device = m.rdev();
        }
        _ => {}
    }
    if node_type != NodeType::Symlink {
        n.extended_attributes = read_xattrs(path);
    }
    n
}

fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok()??;
            Some(Xattr {
                name: name.to_string_lossy().into_owned(),
                value,
            })
        })
        .collect()
}
