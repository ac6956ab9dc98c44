//! Detection of a LiteFS FUSE mount from `/proc/self/mountinfo`.
//!
//! LiteFS mounts with FUSE subtype/name `litefs`, which the kernel shows as file-system type
//! `fuse.litefs` (source `litefs`). A directory counts as a LiteFS mount when the innermost
//! mount containing it is such an entry.

use std::path::{Path, PathBuf};

/// One parsed line of `mountinfo` (only the fields this crate needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) mount_point: PathBuf,
    pub(crate) fs_type: String,
    pub(crate) source: String,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl MountEntry {
    pub(crate) fn is_litefs(&self) -> bool {
        self.fs_type == "fuse.litefs"
            || (self.fs_type.starts_with("fuse") && self.source == "litefs")
    }
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only Linux has mountinfo
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                // Three octal digits fit in 9 bits; the kernel only escapes bytes (< 0o400).
                let v = oct
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one `mountinfo` line:
/// `id parent major:minor root mount_point options [optional...] - fs_type source super_opts`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only Linux has mountinfo
pub(crate) fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fs_type = right.next()?;
    let source = right.next().unwrap_or("");
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: unescape(fs_type),
        source: unescape(source),
    })
}

/// The innermost mount containing `path` (which should be canonical). Later lines win among
/// equal mount points because a later mount shadows an earlier one.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only Linux has mountinfo
pub(crate) fn innermost_mount(mountinfo: &str, path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for entry in mountinfo.lines().filter_map(parse_line) {
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let deeper = best.as_ref().is_none_or(|b| {
            entry.mount_point.components().count() >= b.mount_point.components().count()
        });
        if deeper {
            best = Some(entry);
        }
    }
    best
}

/// Whether `path` (canonical) lies on a LiteFS FUSE mount. Always false off Linux or when
/// `/proc` is unreadable.
pub(crate) fn is_litefs_mount(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|info| innermost_mount(&info, path))
            .is_some_and(|e| e.is_litefs())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
25 22 0:23 / /proc rw,nosuid shared:12 - proc proc rw
40 22 259:3 / /var/lib/litefs rw,relatime shared:20 - ext4 /dev/vdb rw
41 22 0:45 / /litefs rw,nosuid,nodev,relatime shared:21 - fuse.litefs litefs rw,user_id=0,group_id=0
42 22 0:46 / /mnt/my\\040dir rw,relatime - fuse sshfs rw
43 22 0:47 / /srv/lfs rw,relatime - fuse litefs rw
";

    #[test]
    fn finds_litefs_fuse_mount() {
        let e = innermost_mount(SAMPLE, Path::new("/litefs")).unwrap();
        assert_eq!(e.fs_type, "fuse.litefs");
        assert!(e.is_litefs());
        assert!(innermost_mount(SAMPLE, Path::new("/litefs/sub"))
            .unwrap()
            .is_litefs());
        assert!(innermost_mount(SAMPLE, Path::new("/srv/lfs"))
            .unwrap()
            .is_litefs());
    }

    #[test]
    fn plain_directories_are_not_litefs() {
        // The data directory is ext4, and "/litefsx" merely shares a string prefix.
        assert!(!innermost_mount(SAMPLE, Path::new("/var/lib/litefs"))
            .unwrap()
            .is_litefs());
        assert_eq!(
            innermost_mount(SAMPLE, Path::new("/litefsx"))
                .unwrap()
                .fs_type,
            "ext4"
        );
        assert!(!innermost_mount(SAMPLE, Path::new("/mnt/my dir"))
            .unwrap()
            .is_litefs());
    }

    #[test]
    fn unescapes_octal() {
        let e = parse_line("42 22 0:46 / /mnt/my\\040dir rw - fuse sshfs rw").unwrap();
        assert_eq!(e.mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn later_mount_shadows_earlier() {
        let info = "1 0 0:1 / / rw - ext4 a rw\n2 1 0:2 / /x rw - ext4 b rw\n3 1 0:3 / /x rw - fuse.litefs litefs rw\n";
        assert!(innermost_mount(info, Path::new("/x")).unwrap().is_litefs());
    }
}
