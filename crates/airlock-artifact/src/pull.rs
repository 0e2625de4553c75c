//! Resolving an `oci://` reference to one file and downloading it: streamed to a hidden partial
//! file, resumed from where an interrupted download stopped, size and digest verified before the
//! file gets its name, decompressed (zstd, gzip, told by magic bytes) when asked.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use airlock_oci::{Descriptor, Digest, Manifest, ManifestKind, Reference};
use airlock_store::Store;
use futures::StreamExt as _;
use serde::Serialize;

use crate::select::{self, Mode, Offer, Verdict, Wanted};
use crate::{describe, ArtifactError, TITLE};

/// What a reference offers and what would be pulled.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    /// The reference as resolved (with the tag it used).
    pub reference: String,
    /// The manifest the reference names (an index or the artifact itself).
    pub digest: String,
    /// Every artifact on offer.
    pub offers: Vec<Offer>,
    /// The artifact chosen, as an index into `offers`.
    #[serde(skip)]
    pub chosen: usize,
    /// Why each offer was or was not chosen.
    pub verdicts: Vec<Verdict>,
    /// The chosen artifact's file.
    #[serde(skip)]
    pub layer: Descriptor,
}

/// Resolves `reference` in `store` to the one file to pull, as Ironic does: a digest names the
/// artifact; a tag (default `latest`, which must be among the repository's tags) names an index
/// to choose from, or a single artifact.
pub async fn resolve(store: &dyn Store, reference: &Reference, wanted: &Wanted, mode: Mode) -> Result<Resolution, ArtifactError> {
    let text = reference.to_string();
    let target = match reference.digest() {
        Some(digest) => digest.to_string(),
        None => {
            let tag = reference.tag().unwrap_or(airlock_oci::DEFAULT_TAG).to_owned();
            match store.resolve(&tag).await {
                Ok(_) => tag,
                Err(e) if e.is_not_found() => {
                    let available = store.list_tags().await.unwrap_or_default();
                    return Err(ArtifactError::TagNotFound { repository: reference.repository_key(), tag, available });
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let top = store.get_manifest(&target).await?;
    match top.kind() {
        ManifestKind::Index { manifests, .. } => {
            let mut offers = Vec::new();
            let mut children: Vec<Manifest> = Vec::new();
            for entry in manifests {
                let child = store.get_manifest(entry.digest().as_ref()).await?;
                offers.push(describe(store, Some(entry), &child).await?);
                children.push(child);
            }
            match select::choose(&offers, wanted, mode) {
                Ok((chosen, verdicts)) => {
                    let layer = single_layer(&children[chosen], &text)?;
                    Ok(Resolution { reference: text, digest: top.digest().to_string(), offers, chosen, verdicts, layer })
                }
                Err(verdicts) => Err(ArtifactError::NoMatch {
                    reference: text,
                    wanted: describe_wanted(wanted, mode),
                    offer: offers
                        .iter()
                        .zip(&verdicts_in_order(&offers, &verdicts))
                        .map(|(o, why)| format!("{} {} {} ({why})", short(&o.digest), o.platform.as_deref().unwrap_or("any platform"), o.disktype.as_deref().unwrap_or("no disktype")))
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
            }
        }
        ManifestKind::Image { .. } => {
            let offer = describe(store, None, &top).await?;
            select::accept_single(&offer, wanted).map_err(|reason| ArtifactError::NotSingleFile { reference: text.clone(), reason })?;
            let layer = single_layer(&top, &text)?;
            let verdicts = vec![Verdict { digest: offer.digest.clone(), reason: "chosen: the reference names this artifact".into() }];
            Ok(Resolution { reference: text, digest: top.digest().to_string(), offers: vec![offer], chosen: 0, verdicts, layer })
        }
    }
}

fn verdicts_in_order(offers: &[Offer], verdicts: &[Verdict]) -> Vec<String> {
    offers.iter().map(|o| verdicts.iter().find(|v| v.digest == o.digest).map(|v| v.reason.clone()).unwrap_or_default()).collect()
}

fn describe_wanted(wanted: &Wanted, mode: Mode) -> String {
    let mut parts = vec![format!("{} deployment", if mode == Mode::Local { "local" } else { "http" })];
    if let Some(arch) = &wanted.arch {
        parts.push(format!("architecture {arch}"));
    }
    if let Some(disktype) = &wanted.disktype {
        parts.push(format!("disktype {disktype}"));
    }
    parts.join(", ")
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

fn single_layer(manifest: &Manifest, reference: &str) -> Result<Descriptor, ArtifactError> {
    match manifest.kind() {
        ManifestKind::Image { layers, .. } if layers.len() == 1 => Ok(layers[0].clone()),
        ManifestKind::Image { layers, .. } => Err(ArtifactError::NotSingleFile { reference: reference.to_owned(), reason: format!("{} has {} layers", manifest.digest(), layers.len()) }),
        ManifestKind::Index { .. } => Err(ArtifactError::NotSingleFile { reference: reference.to_owned(), reason: format!("{} is an index inside an index", manifest.digest()) }),
    }
}

/// The file name to write: the layer's title (its last path component only), else the digest.
/// A title that could not be an ordinary file name here (`.`, `..`, control characters such as
/// a newline, over 255 bytes, a leading `-` that tools would take for a flag) is not used.
pub fn file_name(layer: &Descriptor) -> String {
    let title = layer.annotations().as_ref().and_then(|a| a.get(TITLE)).map(|t| t.rsplit('/').next().unwrap_or("").to_owned());
    let usable = |t: &String| !t.is_empty() && t != "." && t != ".." && t.len() <= 255 && !t.starts_with('-') && !t.chars().any(char::is_control);
    match title.filter(usable) {
        Some(title) => title,
        None => layer.digest().digest().to_owned(),
    }
}

/// What a pull wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    /// The file written.
    pub file: String,
    /// The layer's digest (verified).
    pub digest: String,
    /// Bytes in the layer.
    pub size: u64,
    /// Bytes fetched by this run (less than `size` after a resume).
    pub fetched: u64,
    /// Whether it resumed a partial download.
    pub resumed: bool,
    /// `zstd` or `gzip` when it was decompressed.
    pub decompressed: Option<&'static str>,
}

/// Downloads `layer` into `dir`, resuming a partial file of an earlier run; verifies size and
/// digest before the file takes its name; a file that fails verification is removed.
pub async fn download(store: &dyn Store, layer: &Descriptor, dir: &Path, decompress: bool) -> Result<Pulled, ArtifactError> {
    let mut file = PartialFile::open(dir, &file_name(layer), layer.digest(), Some(layer.size()))?;
    let resumed = file.len() > 0;
    let mut fetched = 0u64;
    if file.len() < layer.size() {
        let stream = store.get_blob(layer, file.len()).await?;
        fetched = file.append(stream.map(|chunk| chunk.map_err(ArtifactError::from))).await?;
    }
    let final_path = file.finish()?;
    let mut pulled = Pulled { file: final_path.display().to_string(), digest: layer.digest().to_string(), size: layer.size(), fetched, resumed, decompressed: None };
    if decompress {
        if let Some((kind, path)) = decompress_file(&final_path)? {
            pulled.decompressed = Some(kind);
            pulled.file = path.display().to_string();
        }
    }
    Ok(pulled)
}

/// A download in progress: written to a hidden `.NAME.airlock-partial` beside its final name,
/// hashed as it grows, and given its name only once its size and digest check out (removed
/// otherwise). A partial file an interrupted run left is hashed and continued.
pub(crate) struct PartialFile {
    final_path: PathBuf,
    partial: PathBuf,
    file: std::fs::File,
    hasher: airlock_oci::DigestHasher,
    expected: Digest,
    /// Bytes in the file so far.
    len: u64,
    /// The size the content must have, when it is known beforehand.
    size: Option<u64>,
}

impl PartialFile {
    /// Opens `dir/.NAME.airlock-partial` for content `expected` of `size` bytes (when known),
    /// continuing what an earlier run left there unless it is already too long.
    pub(crate) fn open(dir: &Path, name: &str, expected: &Digest, size: Option<u64>) -> Result<PartialFile, ArtifactError> {
        std::fs::create_dir_all(dir).map_err(ArtifactError::io("cannot create", dir))?;
        let final_path = dir.join(name);
        let partial = dir.join(format!(".{name}.airlock-partial"));
        let mut hasher = airlock_oci::DigestHasher::new(expected.algorithm())
            .ok_or_else(|| ArtifactError::Invalid(format!("{expected}: airlock verifies sha256 and sha512 digests only")))?;
        let len = match std::fs::metadata(&partial) {
            Ok(meta) if size.is_none_or(|size| meta.len() <= size) => meta.len(),
            Ok(_) => {
                std::fs::remove_file(&partial).map_err(ArtifactError::io("cannot remove", &partial))?;
                0
            }
            Err(_) => 0,
        };
        if len > 0 {
            let mut existing = std::fs::File::open(&partial).map_err(ArtifactError::io("cannot read", &partial))?;
            std::io::copy(&mut existing, &mut HashWriter(&mut hasher)).map_err(ArtifactError::io("cannot read", &partial))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&partial).map_err(ArtifactError::io("cannot write", &partial))?;
        Ok(PartialFile { final_path, partial, file, hasher, expected: expected.clone(), len, size })
    }

    /// Bytes in the file so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `chunks` (hashing them); returns how many bytes came. More than the known size
    /// is an error, and the partial file is removed.
    pub(crate) async fn append(&mut self, chunks: impl futures::Stream<Item = Result<bytes::Bytes, ArtifactError>>) -> Result<u64, ArtifactError> {
        let mut chunks = std::pin::pin!(chunks);
        let mut fetched = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if let Some(size) = self.size.filter(|size| self.len + chunk.len() as u64 > *size) {
                let _ = std::fs::remove_file(&self.partial);
                return Err(self.mismatch(format!("more than the {size} bytes expected")));
            }
            self.hasher.update(&chunk);
            self.file.write_all(&chunk).map_err(ArtifactError::io("cannot write", &self.partial))?;
            self.len += chunk.len() as u64;
            fetched += chunk.len() as u64;
        }
        Ok(fetched)
    }

    /// Flushes the file to disk and checks size and digest: the file then takes its name (and
    /// the path is returned), or it is removed.
    pub(crate) fn finish(self) -> Result<PathBuf, ArtifactError> {
        self.file.sync_all().map_err(ArtifactError::io("cannot write", &self.partial))?;
        let reason = match self.size {
            Some(size) if self.len != size => Some(format!("{} bytes arrived, {size} expected", self.len)),
            _ => {
                let actual = self.hasher.clone().finish();
                (actual != self.expected).then(|| format!("the bytes hash to {actual}"))
            }
        };
        if let Some(reason) = reason {
            let _ = std::fs::remove_file(&self.partial);
            return Err(self.mismatch(reason));
        }
        std::fs::rename(&self.partial, &self.final_path).map_err(ArtifactError::io("cannot rename to", &self.final_path))?;
        Ok(self.final_path)
    }

    fn mismatch(&self, reason: String) -> ArtifactError {
        ArtifactError::Verification { file: self.final_path.display().to_string(), expected: self.expected.to_string(), reason }
    }
}

struct HashWriter<'a>(&'a mut airlock_oci::DigestHasher);
impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decompresses `path` in place of itself when its magic bytes say zstd or gzip: the result
/// drops a `.zst`/`.zstd`/`.gz` suffix, is written to a temporary name first, and the
/// compressed file is removed. `None` when it is not compressed.
pub fn decompress_file(path: &Path) -> Result<Option<(&'static str, PathBuf)>, ArtifactError> {
    let mut magic = [0u8; 4];
    let read = {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path).map_err(ArtifactError::io("cannot read", path))?;
        file.read(&mut magic).map_err(ArtifactError::io("cannot read", path))?
    };
    let kind = match &magic[..read] {
        [0x28, 0xb5, 0x2f, 0xfd] => "zstd",
        [0x1f, 0x8b, ..] => "gzip",
        _ => return Ok(None),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let stem = [".zst", ".zstd", ".gz"].iter().find_map(|s| name.strip_suffix(s)).filter(|s| !s.is_empty());
    let out_name = match stem {
        Some(stem) => stem.to_owned(),
        None => format!("{name}.decompressed"),
    };
    let out = path.with_file_name(&out_name);
    let temp = path.with_file_name(format!(".{out_name}.airlock-partial"));
    let result = (|| -> std::io::Result<()> {
        let input = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut output = std::fs::File::create(&temp)?;
        match kind {
            "zstd" => zstd::stream::copy_decode(input, &mut output)?,
            _ => {
                let mut decoder = flate2::read::MultiGzDecoder::new(input);
                std::io::copy(&mut decoder, &mut output)?;
            }
        }
        output.sync_all()?;
        std::fs::rename(&temp, &out)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(ArtifactError::Io { action: "cannot decompress", path: path.display().to_string(), source });
    }
    std::fs::remove_file(path).map_err(ArtifactError::io("cannot remove", path))?;
    Ok(Some((kind, out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_and_gzip_are_told_by_their_magic() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"a disk image, compressed".repeat(100);
        let zst = dir.path().join("disk.raw.zst");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let (kind, out) = decompress_file(&zst).unwrap().unwrap();
        assert_eq!((kind, out.file_name().unwrap().to_str().unwrap()), ("zstd", "disk.raw"));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(!zst.exists());
        let gz = dir.path().join("kernel");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&data).unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        let (kind, out) = decompress_file(&gz).unwrap().unwrap();
        assert_eq!((kind, out.file_name().unwrap().to_str().unwrap()), ("gzip", "kernel.decompressed"));
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"not compressed").unwrap();
        assert!(decompress_file(&plain).unwrap().is_none());
    }

    #[test]
    fn file_names_come_from_titles_never_from_paths() {
        let mut layer = Descriptor::new("application/octet-stream".into(), 1, airlock_oci::digest_of(b"x", None));
        assert_eq!(file_name(&layer), layer.digest().digest());
        layer.set_annotations(Some([(TITLE.to_owned(), "../../etc/passwd".to_owned())].into()));
        assert_eq!(file_name(&layer), "passwd");
        for hostile in ["a/..", "with\nnewline", "-rf", &"n".repeat(300), "x/"] {
            layer.set_annotations(Some([(TITLE.to_owned(), hostile.to_owned())].into()));
            assert_eq!(file_name(&layer), layer.digest().digest(), "{hostile:?}");
        }
    }
}
