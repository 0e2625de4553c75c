//! Pushing files as ORAS does (one layer per file, titled; an empty config, or a platform config
//! as `oras push --artifact-platform` writes), and assembling pushed artifacts into an index.

use std::path::{Path, PathBuf};

use airlock_oci::{Descriptor, Manifest};
use airlock_store::Store;
use tokio::io::AsyncReadExt;

use crate::{ArtifactError, DEFAULT_ARTIFACT_TYPE, DEFAULT_FILE_MEDIA_TYPE, DISKTYPE, TITLE};

const CHUNK: usize = 256 * 1024;

/// A file to push and its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The file.
    pub path: PathBuf,
    /// Its layer media type (ORAS's default when `None`).
    pub media_type: Option<String>,
}

/// `PATH[:MEDIATYPE]`, as `oras push` takes files; a colon starts a media type only when a `/`
/// follows it, so paths with colons still work.
pub fn parse_file(arg: &str) -> FileSpec {
    match arg.rsplit_once(':') {
        Some((path, media_type)) if media_type.contains('/') && !path.is_empty() && !Path::new(arg).exists() => {
            FileSpec { path: path.into(), media_type: Some(media_type.to_owned()) }
        }
        _ => FileSpec { path: arg.into(), media_type: None },
    }
}

/// What else goes into an artifact manifest.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// `artifactType` (ORAS's default when `None`).
    pub artifact_type: Option<String>,
    /// Manifest annotations.
    pub annotations: Vec<(String, String)>,
    /// `os/arch[/variant]`, written into a config as ORAS's `--artifact-platform` does.
    pub platform: Option<String>,
}

/// The sha256 and size of a file, read in chunks.
pub(crate) async fn hash_file(path: &Path) -> Result<(airlock_oci::Digest, u64), ArtifactError> {
    let mut file = tokio::fs::File::open(path).await.map_err(ArtifactError::io("cannot read", path))?;
    let mut hasher = airlock_oci::DigestHasher::sha256();
    let mut buffer = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).await.map_err(ArtifactError::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

async fn put_bytes(store: &dyn Store, media_type: &str, bytes: Vec<u8>) -> Result<Descriptor, ArtifactError> {
    let descriptor = Descriptor::new(media_type.into(), bytes.len() as u64, airlock_oci::digest_of(&bytes, None));
    if !store.blob_exists(descriptor.digest()).await? {
        let body = bytes::Bytes::from(bytes);
        store.put_blob(&descriptor, Box::pin(futures::stream::once(async move { Ok(body) }))).await?;
    }
    Ok(descriptor)
}

fn annotations_json(pairs: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    pairs.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect()
}

/// Pushes `files` as one artifact and tags it `tag`; returns the manifest.
pub async fn push_files(store: &dyn Store, tag: &str, files: &[FileSpec], options: &PushOptions) -> Result<Manifest, ArtifactError> {
    if files.is_empty() {
        return Err(ArtifactError::Invalid("name at least one file to push".into()));
    }
    let mut layers = Vec::new();
    for file in files {
        let name = file.path.file_name().and_then(|n| n.to_str()).ok_or_else(|| ArtifactError::Invalid(format!("`{}` names no file", file.path.display())))?;
        let (digest, size) = hash_file(&file.path).await?;
        let media_type = file.media_type.clone().unwrap_or_else(|| DEFAULT_FILE_MEDIA_TYPE.to_owned());
        let descriptor = Descriptor::new(media_type.as_str().into(), size, digest);
        if !store.blob_exists(descriptor.digest()).await? {
            let opened = tokio::fs::File::open(&file.path).await.map_err(ArtifactError::io("cannot read", &file.path))?;
            store.put_blob(&descriptor, airlock_store::file_body(opened, file.path.display().to_string())).await?;
        }
        let mut layer = serde_json::to_value(&descriptor).expect("descriptors serialize");
        layer["annotations"] = serde_json::json!({ TITLE: name });
        layers.push(layer);
    }
    let config = match &options.platform {
        Some(platform) => {
            let parts: Vec<&str> = platform.split('/').collect();
            let (os, arch) = match parts.as_slice() {
                [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => (*os, *arch),
                _ => return Err(ArtifactError::Invalid(format!("`--platform {platform}`: expected os/arch[/variant]"))),
            };
            let mut config = serde_json::json!({"architecture": arch, "os": os});
            if let [_, _, variant] = parts.as_slice() {
                config["variant"] = serde_json::json!(variant);
            }
            put_bytes(store, "application/vnd.oci.image.config.v1+json", serde_json::to_vec(&config).expect("JSON")).await?
        }
        None => put_bytes(store, "application/vnd.oci.empty.v1+json", b"{}".to_vec()).await?,
    };
    let mut annotations = annotations_json(&options.annotations);
    annotations.entry("org.opencontainers.image.created").or_insert_with(|| serde_json::json!(airlock_oci::time::rfc3339(airlock_oci::time::now())));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": options.artifact_type.clone().unwrap_or_else(|| DEFAULT_ARTIFACT_TYPE.to_owned()),
        "config": config,
        "layers": layers,
        "annotations": annotations,
    });
    let manifest = Manifest::parse(serde_json::to_vec_pretty(&manifest).expect("JSON"), Some("application/vnd.oci.image.manifest.v1+json"))
        .map_err(|e| ArtifactError::Invalid(e.to_string()))?;
    store.put_manifest(&manifest, Some(tag)).await?;
    Ok(manifest)
}

/// One entry of an index to assemble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// A tag or digest in the same repository.
    pub reference: String,
    /// The entry's platform (default: from the artifact's config).
    pub platform: Option<String>,
    /// The entry's annotations (default `disktype`: the artifact's own).
    pub annotations: Vec<(String, String)>,
}

/// `REF[;platform=OS/ARCH][;KEY=VALUE]…`.
pub fn parse_entry(arg: &str) -> Result<IndexEntry, ArtifactError> {
    let mut parts = arg.split(';');
    let reference = parts.next().unwrap_or("").trim().to_owned();
    if reference.is_empty() {
        return Err(ArtifactError::Invalid(format!("`{arg}`: an index entry starts with a tag or digest")));
    }
    let mut entry = IndexEntry { reference, platform: None, annotations: Vec::new() };
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(|| ArtifactError::Invalid(format!("`{arg}`: `{part}` is not KEY=VALUE")))?;
        if key == "platform" {
            entry.platform = Some(value.to_owned());
        } else {
            entry.annotations.push((key.to_owned(), value.to_owned()));
        }
    }
    Ok(entry)
}

/// Assembles an index of artifacts already in `store` and tags it `tag`.
pub async fn push_index(store: &dyn Store, tag: &str, entries: &[IndexEntry]) -> Result<Manifest, ArtifactError> {
    if entries.is_empty() {
        return Err(ArtifactError::Invalid("name at least one artifact for the index".into()));
    }
    let mut manifests = Vec::new();
    for entry in entries {
        let manifest = store.get_manifest(&entry.reference).await?;
        let offer = crate::describe(store, None, &manifest).await?;
        let mut descriptor = serde_json::to_value(manifest.descriptor()).expect("descriptors serialize");
        let platform = entry.platform.clone().or(offer.platform);
        if let Some(platform) = platform {
            let parts: Vec<&str> = platform.split('/').collect();
            let mut value = serde_json::json!({"os": parts.first().copied().unwrap_or(""), "architecture": parts.get(1).copied().unwrap_or("")});
            if let Some(variant) = parts.get(2) {
                value["variant"] = serde_json::json!(variant);
            }
            descriptor["platform"] = value;
        }
        let mut annotations = entry.annotations.clone();
        if let Some(disktype) = offer.disktype.filter(|_| !annotations.iter().any(|(k, _)| k == DISKTYPE)) {
            annotations.push((DISKTYPE.to_owned(), disktype));
        }
        if !annotations.is_empty() {
            descriptor["annotations"] = serde_json::Value::Object(annotations_json(&annotations));
        }
        manifests.push(descriptor);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let index = Manifest::parse(serde_json::to_vec_pretty(&index).expect("JSON"), Some("application/vnd.oci.image.index.v1+json")).map_err(|e| ArtifactError::Invalid(e.to_string()))?;
    store.put_manifest(&index, Some(tag)).await?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_entries_parse_as_oras_and_the_index_command_write_them() {
        assert_eq!(parse_file("disk.qcow2:application/x-qemu-disk"), FileSpec { path: "disk.qcow2".into(), media_type: Some("application/x-qemu-disk".into()) });
        assert_eq!(parse_file("C:disk"), FileSpec { path: "C:disk".into(), media_type: None });
        let entry = parse_entry("cirros-qcow2;platform=linux/x86_64;disktype=qcow2").unwrap();
        assert_eq!(entry.platform.as_deref(), Some("linux/x86_64"));
        assert_eq!(entry.annotations, [("disktype".to_owned(), "qcow2".to_owned())]);
        assert!(parse_entry(";disktype=raw").is_err());
        assert!(parse_entry("x;nonsense").is_err());
    }
}
