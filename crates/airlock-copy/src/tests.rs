//! Engine invariants, checked on folders through a store that records the order of writes.

use std::sync::{Arc, Mutex};

use airlock_oci::{digest_of, media_type, Descriptor, Digest, Manifest};
use airlock_store::layout::LayoutStore;
use airlock_store::{BlobStream, MountSource, PutManifestOutcome, Result, Store};
use async_trait::async_trait;
use bytes::Bytes;

use crate::{CopyOptions, Copier, NoProgress};

/// A store that forwards to a folder and records each write.
struct Recording {
    inner: LayoutStore,
    writes: Mutex<Vec<String>>,
}

impl std::fmt::Display for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "recording {}", self.inner)
    }
}

#[async_trait]
impl Store for Recording {
    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        self.inner.resolve(reference).await
    }
    async fn get_manifest(&self, reference: &str) -> Result<Manifest> {
        self.inner.get_manifest(reference).await
    }
    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<PutManifestOutcome> {
        let what = match tag {
            Some(tag) => format!("tag {tag}"),
            None => format!("manifest {}", manifest.digest()),
        };
        self.writes.lock().unwrap().push(what);
        self.inner.put_manifest(manifest, tag).await
    }
    async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        self.inner.blob_exists(digest).await
    }
    async fn get_blob(&self, descriptor: &Descriptor, offset: u64) -> Result<BlobStream> {
        self.inner.get_blob(descriptor, offset).await
    }
    async fn put_blob(&self, descriptor: &Descriptor, body: BlobStream) -> Result<()> {
        self.inner.put_blob(descriptor, body).await?;
        self.writes.lock().unwrap().push(format!("blob {}", descriptor.digest()));
        Ok(())
    }
    async fn mount_blob(&self, descriptor: &Descriptor, from: &MountSource) -> Result<bool> {
        self.inner.mount_blob(descriptor, from).await
    }
    async fn list_tags(&self) -> Result<Vec<String>> {
        self.inner.list_tags().await
    }
    async fn referrers(&self, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>> {
        self.inner.referrers(subject, artifact_type).await
    }
    async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        self.inner.delete_manifest(digest).await
    }
}

async fn put_blob(store: &dyn Store, bytes: &'static [u8], media_type: &str) -> Descriptor {
    let descriptor = Descriptor::new(media_type.into(), bytes.len() as u64, digest_of(bytes, None));
    let body: BlobStream = Box::pin(futures::stream::iter(vec![Ok(Bytes::from_static(bytes))]));
    store.put_blob(&descriptor, body).await.unwrap();
    descriptor
}

async fn put_image(store: &dyn Store, layer: &'static [u8], arch: &str) -> Manifest {
    let config = put_blob(store, b"{\"architecture\":\"x\",\"os\":\"linux\"}", "application/vnd.oci.image.config.v1+json").await;
    let layer = put_blob(store, layer, "application/vnd.oci.image.layer.v1.tar").await;
    let document = serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
        "config": config, "layers": [layer], "annotations": {"arch": arch},
    });
    let manifest = Manifest::parse(serde_json::to_vec(&document).unwrap(), None).unwrap();
    store.put_manifest(&manifest, None).await.unwrap();
    manifest
}

#[tokio::test]
async fn children_before_parents_and_tags_last() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let source = LayoutStore::new(source_dir.path());
    let amd = put_image(&source, b"amd64 layer", "amd64").await;
    let arm = put_image(&source, b"arm64 layer", "arm64").await;
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_INDEX,
        "manifests": [
            {"mediaType": media_type::OCI_MANIFEST, "digest": amd.digest(), "size": amd.bytes().len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": media_type::OCI_MANIFEST, "digest": arm.digest(), "size": arm.bytes().len(), "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    });
    let index = Manifest::parse(serde_json::to_vec(&index).unwrap(), None).unwrap();
    source.put_manifest(&index, Some("v1")).await.unwrap();

    let target = Recording { inner: LayoutStore::new(target_dir.path()), writes: Mutex::new(Vec::new()) };
    let copier = Copier::new(CopyOptions::new(), Arc::new(NoProgress));
    let tags = vec!["v1".to_owned(), "stable".to_owned()];
    let report = copier.copy(&source, "v1", &target, &tags).await.unwrap();
    assert_eq!(&report.digest, index.digest());

    let writes = target.writes.lock().unwrap().clone();
    let position = |what: &str| writes.iter().position(|w| w == what).unwrap_or_else(|| panic!("{what} never written: {writes:?}"));
    for image in [&amd, &arm] {
        let airlock_oci::ManifestKind::Image { config, layers, .. } = image.kind() else { panic!() };
        let manifest_at = position(&format!("manifest {}", image.digest()));
        for blob in std::iter::once(config).chain(layers) {
            assert!(position(&format!("blob {}", blob.digest())) < manifest_at, "{writes:?}");
        }
        assert!(manifest_at < position("tag v1"), "{writes:?}");
    }
    // The index is written under its tags, last, and not before them by digest.
    assert!(!writes.contains(&format!("manifest {}", index.digest())), "{writes:?}");
    assert_eq!(&writes[writes.len() - 2..], ["tag v1", "tag stable"], "tags come last: {writes:?}");
    // The bytes at the target are the source's.
    assert_eq!(target.get_manifest("stable").await.unwrap().bytes(), index.bytes());
}

#[tokio::test]
async fn a_missing_blob_fails_the_copy_before_any_tag() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let source = LayoutStore::new(source_dir.path());
    let image = put_image(&source, b"some layer", "amd64").await;
    source.put_manifest(&image, Some("v1")).await.unwrap();
    let airlock_oci::ManifestKind::Image { layers, .. } = image.kind() else { panic!() };
    let layer = layers[0].digest();
    std::fs::remove_file(source_dir.path().join("blobs/sha256").join(layer.digest())).unwrap();

    let target = Recording { inner: LayoutStore::new(target_dir.path()), writes: Mutex::new(Vec::new()) };
    let copier = Copier::new(CopyOptions::new(), Arc::new(NoProgress));
    let error = copier.copy(&source, "v1", &target, &["v1".to_owned()]).await.unwrap_err();
    assert!(error.to_string().contains(&format!("blob {layer} not found")), "{error}");
    let writes = target.writes.lock().unwrap().clone();
    assert!(writes.iter().all(|w| !w.starts_with("tag") && !w.starts_with("manifest")), "{writes:?}");
    assert!(target.list_tags().await.unwrap().is_empty());
}
