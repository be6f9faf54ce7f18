//! A digest of file trees (paths, types, modes, contents, symlink targets) so a test can prove
//! that a command changed nothing on any node. fleetup's own record of the last run that locked
//! a node ([`crate::lock::generation_path`]) is left out: every run that takes the locks writes
//! it, also one refused after that.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

use crate::lock::GENERATION_FILE;
use sha2::{Digest, Sha256};

/// SHA-256 over every entry under each `(label, root)`, in a fixed order. Symlinks are not
/// followed: their target is hashed. A missing root hashes as missing, not as an error.
pub fn tree_digest<'a>(
    roots: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for (label, root) in roots {
        h.update(format!("root {label}\0").as_bytes());
        if std::fs::symlink_metadata(root).is_err() {
            h.update(b"missing\0");
            continue;
        }
        walk(&mut h, root, Path::new(""))?;
    }
    Ok(hex::encode(h.finalize()))
}

fn walk(h: &mut Sha256, root: &Path, rel: &Path) -> anyhow::Result<()> {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path)
        .with_context(|| format!("cannot stat `{}`", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let name = rel.to_string_lossy();
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&path)
            .with_context(|| format!("cannot read link `{}`", path.display()))?;
        h.update(format!("l {name} -> {}\0", target.to_string_lossy()).as_bytes());
    } else if ft.is_dir() {
        h.update(format!("d {name} {mode:o}\0").as_bytes());
        let mut children: Vec<_> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot list `{}`", path.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list `{}`", path.display()))?;
        children.sort();
        for child in children.into_iter().filter(|c| c != GENERATION_FILE) {
            walk(h, root, &rel.join(child))?;
        }
    } else if ft.is_file() {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
        h.update(format!("f {name} {mode:o} {}\0", bytes.len()).as_bytes());
        h.update(&bytes);
    } else {
        // Sockets, fifos: their presence and mode only.
        h.update(format!("o {name} {mode:o}\0").as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_of_content_mode_name_or_link_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "one").unwrap();
        std::os::unix::fs::symlink("a/b/f", root.join("link")).unwrap();
        let digest = || tree_digest([("node-1", root.as_path())]).unwrap();
        let base = digest();
        assert_eq!(base, digest(), "stable when nothing changes");

        std::fs::write(root.join("a/b/f"), "two").unwrap();
        let content = digest();
        assert_ne!(content, base);

        std::fs::set_permissions(root.join("a/b/f"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let mode = digest();
        assert_ne!(mode, content);

        std::fs::remove_file(root.join("link")).unwrap();
        std::os::unix::fs::symlink("a/b", root.join("link")).unwrap();
        let link = digest();
        assert_ne!(link, mode);

        std::fs::create_dir(root.join("a/empty")).unwrap();
        assert_ne!(digest(), link, "a new empty dir counts");

        let relabelled = tree_digest([("node-2", root.as_path())]).unwrap();
        assert_ne!(relabelled, digest());
        let missing = tree_digest([("node-1", dir.path().join("nope").as_path())]).unwrap();
        assert_ne!(missing, digest());
    }
}
