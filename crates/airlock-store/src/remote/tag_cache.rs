//! What each tag pointed at when last seen, kept between runs, so that looking at a tag again
//! is a conditional `HEAD` (`If-None-Match: "<digest>"`).
//!
//! Why: a registry answers a conditional `HEAD` whose digest still matches with `304` before it
//! reads or parses the manifest (distribution checks the ETag right after resolving the tag), so
//! a warm sync or a watch poll costs each registry less, and an object-store backed registry one
//! read less per tag. The cache is only ever a guess: a tag is never taken to point anywhere
//! unless the registry itself says so, by `304` for the guessed digest or by `200` with another.
//! A lost, stale or corrupt cache costs speed, never correctness.
//!
//! One small file per repository (`<sha256 of registry/repository>.json`), read when a command
//! first looks at a tag of that repository and written back only if something changed: a user
//! mirroring thousands of repositories pays for the ones a command touches, not for all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use airlock_oci::Descriptor;
use sha2::Digest as _;

/// Repository files kept at most; beyond, the least recently written go first. Registries on
/// loopback come and go with their ports (the demo, tests, CI jobs), and a guess cache must
/// not grow without bound.
const MAX_FILES: usize = 5000;

/// Tag → descriptor last answered for it, per repository (keyed `registry/repository`).
#[derive(Debug, Default)]
pub struct TagCache {
    /// Where the files live; `None`: memory only.
    dir: Option<PathBuf>,
    repositories: Mutex<HashMap<String, Repository>>,
}

#[derive(Debug, Default)]
struct Repository {
    tags: HashMap<String, Descriptor>,
    changed: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    version: u32,
    /// `registry/repository`, so that a file is never read for another repository.
    repository: String,
    tags: HashMap<String, Descriptor>,
}

impl TagCache {
    /// A cache that lives in memory only.
    pub fn in_memory() -> Self {
        TagCache::default()
    }

    /// A cache kept in `dir`, one file per repository.
    pub fn in_dir(dir: PathBuf) -> Self {
        TagCache { dir: Some(dir), repositories: Mutex::default() }
    }

    pub(crate) fn get(&self, repository: &str, tag: &str) -> Option<Descriptor> {
        self.with_repository(repository, |entries| entries.tags.get(tag).cloned())
    }

    /// Whether anything is remembered of `repository`'s tags.
    pub(crate) fn knows(&self, repository: &str) -> bool {
        self.with_repository(repository, |entries| !entries.tags.is_empty())
    }

    pub(crate) fn put(&self, repository: &str, tag: &str, descriptor: Descriptor) {
        self.with_repository(repository, |entries| {
            if entries.tags.get(tag) != Some(&descriptor) {
                entries.tags.insert(tag.to_owned(), descriptor);
                entries.changed = true;
            }
        })
    }

    pub(crate) fn forget(&self, repository: &str, tag: &str) {
        self.with_repository(repository, |entries| {
            if entries.tags.remove(tag).is_some() {
                entries.changed = true;
            }
        })
    }

    /// Forgets every tag of `repository` that pointed at `digest` (its manifest was deleted).
    pub(crate) fn forget_digest(&self, repository: &str, digest: &airlock_oci::Digest) {
        self.with_repository(repository, |entries| {
            let before = entries.tags.len();
            entries.tags.retain(|_, descriptor| descriptor.digest() != digest);
            entries.changed |= entries.tags.len() != before;
        });
    }

    fn with_repository<T>(&self, repository: &str, f: impl FnOnce(&mut Repository) -> T) -> T {
        let mut repositories = self.repositories.lock().expect("tag cache lock");
        let entries = repositories.entry(repository.to_owned()).or_insert_with(|| Repository {
            tags: self.dir.as_deref().map(|dir| read(&file_of(dir, repository), repository)).unwrap_or_default(),
            changed: false,
        });
        f(entries)
    }

    /// Writes back every repository whose entries changed: a temporary file, then a rename, so
    /// a reader sees the old or the new file, never half of one (no fsync: a file lost to a
    /// crash is an empty guess). Two airlocks saving one repository at once: the last one wins,
    /// which a guess cache can afford.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut repositories = self.repositories.lock().expect("tag cache lock");
        let mut wrote = false;
        for (repository, entries) in repositories.iter_mut().filter(|(_, entries)| entries.changed) {
            let file = File { version: 1, repository: repository.clone(), tags: entries.tags.clone() };
            let bytes = serde_json::to_vec(&file).expect("a tag cache serialises");
            write_replacing(&file_of(dir, repository), &bytes)?;
            entries.changed = false;
            wrote = true;
        }
        if wrote {
            prune(dir, MAX_FILES)?;
        }
        Ok(())
    }
}

/// Removes the least recently written files beyond `keep`, down to nine tenths of it (so that
/// a full folder is not pruned on every save).
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.ends_with(".json") && !name.starts_with('.')))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    if files.len() <= keep {
        return Ok(());
    }
    files.sort();
    let excess = files.len() - keep * 9 / 10;
    for (_, path) in files.into_iter().take(excess) {
        // Another airlock may have pruned it already.
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn file_of(dir: &Path, repository: &str) -> PathBuf {
    dir.join(format!("{}.json", hex::encode(sha2::Sha256::digest(repository.as_bytes()))))
}

/// The entries of a repository's file; anything unreadable is no entries.
fn read(path: &Path, repository: &str) -> HashMap<String, Descriptor> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<File>(&bytes).ok())
        .filter(|file| file.version == 1 && file.repository == repository)
        .map(|file| file.tags)
        .unwrap_or_default()
}

fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    // Private repositories' names and tags are nobody else's business: the folder is the
    // user's alone.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("cache");
    let temporary = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(byte: u8) -> Descriptor {
        let hex = format!("{byte:02x}").repeat(32);
        Descriptor::new("application/vnd.oci.image.manifest.v1+json".into(), 10, airlock_oci::parse_digest(&format!("sha256:{hex}")).unwrap())
    }

    #[test]
    fn survives_a_save_and_load() {
        let folder = tempfile::tempdir().unwrap();
        let dir = folder.path().join("tags");
        let cache = TagCache::in_dir(dir.clone());
        cache.put("r.example/a/b", "1.0", descriptor(1));
        cache.put("r.example/a/b", "2.0", descriptor(2));
        cache.put("r.example/c", "1.0", descriptor(4));
        cache.forget("r.example/a/b", "2.0");
        cache.save().unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "one file per repository");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let again = TagCache::in_dir(dir);
        assert_eq!(again.get("r.example/a/b", "1.0"), Some(descriptor(1)));
        assert_eq!(again.get("r.example/a/b", "2.0"), None);
        assert_eq!(again.get("r.example/c", "1.0"), Some(descriptor(4)));
    }

    #[test]
    fn a_deleted_manifest_takes_every_tag_on_it_along() {
        let folder = tempfile::tempdir().unwrap();
        let cache = TagCache::in_dir(folder.path().to_path_buf());
        cache.put("r.example/a", "1.0", descriptor(1));
        cache.put("r.example/a", "stable", descriptor(1));
        cache.put("r.example/a", "2.0", descriptor(2));
        cache.save().unwrap();
        let cache = TagCache::in_dir(folder.path().to_path_buf());
        cache.forget_digest("r.example/a", descriptor(1).digest());
        cache.save().unwrap();
        let again = TagCache::in_dir(folder.path().to_path_buf());
        assert_eq!((again.get("r.example/a", "1.0"), again.get("r.example/a", "stable")), (None, None));
        assert_eq!(again.get("r.example/a", "2.0"), Some(descriptor(2)));
    }

    #[test]
    fn the_oldest_files_go_beyond_the_limit() {
        let folder = tempfile::tempdir().unwrap();
        let dir = folder.path().to_path_buf();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for n in 0..12u8 {
            let cache = TagCache::in_dir(dir.clone());
            cache.put(&format!("127.0.0.1:{n}/r"), "1", descriptor(n));
            cache.save().unwrap();
            if n < 6 {
                std::fs::File::options().write(true).open(file_of(&dir, &format!("127.0.0.1:{n}/r"))).unwrap().set_modified(old).unwrap();
            }
        }
        prune(&dir, 10).unwrap();
        let left: Vec<bool> = (0..12u8).map(|n| file_of(&dir, &format!("127.0.0.1:{n}/r")).exists()).collect();
        assert_eq!(left.iter().filter(|kept| **kept).count(), 9, "{left:?}");
        assert!(left[6..].iter().all(|kept| *kept), "the newest stay: {left:?}");
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_an_empty_cache() {
        let folder = tempfile::tempdir().unwrap();
        let dir = folder.path().to_path_buf();
        std::fs::write(file_of(&dir, "r.example/a"), b"{not json").unwrap();
        let cache = TagCache::in_dir(dir.clone());
        assert_eq!(cache.get("r.example/a", "1"), None);
        cache.put("r.example/a", "1", descriptor(3));
        cache.save().unwrap();
        assert_eq!(TagCache::in_dir(dir.clone()).get("r.example/a", "1"), Some(descriptor(3)));
        // A file whose content names another repository is not believed.
        std::fs::copy(file_of(&dir, "r.example/a"), file_of(&dir, "r.example/b")).unwrap();
        assert_eq!(TagCache::in_dir(dir).get("r.example/b", "1"), None);
    }
}
