//! Deterministic test content, built here byte by byte (valid tar layers, OCI configs, manifests,
//! indexes, referrers) and pushed with plain HTTP requests, so fixtures never depend on the code
//! under test.

use super::proxy::runtime;
use super::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob { media_type: media_type.into(), digest: sha256(&bytes), bytes }
    }

    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// A manifest (image, index or artifact) and the blobs and child manifests it needs.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<Blob>,
    pub children: Vec<Fixture>,
}

impl Fixture {
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.manifest.len()})
    }
}

/// Pseudo-random bytes from a seed (xorshift): the same seed gives the same bytes.
pub fn noise(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// A valid uncompressed tar layer holding one file of `size` pseudo-random bytes.
pub fn layer(seed: u64, size: usize) -> Blob {
    let mut builder = tar::Builder::new(Vec::new());
    let data = noise(seed, size);
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder.append_data(&mut header, format!("data-{seed}.bin"), data.as_slice()).expect("tar entry");
    Blob::new(LAYER_TAR, builder.into_inner().expect("tar"))
}

/// An image for `arch` with these layers.
pub fn image(arch: &str, layers: &[Blob]) -> Fixture {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = Blob::new("application/vnd.oci.image.config.v1+json", serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers.iter().cloned());
    Fixture { media_type: OCI_MANIFEST.into(), digest: sha256(&manifest), manifest, blobs, children: vec![] }
}

/// An index of images with their platforms (`arch`, `variant`).
pub fn index(entries: &[(&Fixture, &str, Option<&str>)]) -> Fixture {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(image, arch, variant)| {
            let mut descriptor = image.descriptor();
            let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(variant) = variant {
                platform["variant"] = serde_json::json!(variant);
            }
            descriptor["platform"] = platform;
            descriptor
        })
        .collect();
    let document = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests, "annotations": {"org.example": "kept"}});
    let manifest = serde_json::to_vec(&document).unwrap();
    Fixture {
        media_type: OCI_INDEX.into(),
        digest: sha256(&manifest),
        manifest,
        blobs: vec![],
        children: entries.iter().map(|(image, _, _)| (*image).clone()).collect(),
    }
}

/// An artifact that refers to `subject` (a signature, an SBOM): empty config, one payload layer.
pub fn referrer(subject: &Fixture, artifact_type: &str, payload: &[u8]) -> Fixture {
    let empty = Blob::new("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let layer = Blob::new("application/octet-stream", payload.to_vec());
    let document = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": empty.descriptor(), "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
    });
    let manifest = serde_json::to_vec(&document).unwrap();
    Fixture { media_type: OCI_MANIFEST.into(), digest: sha256(&manifest), manifest, blobs: vec![empty, layer], children: vec![] }
}

/// Pushes a fixture (children and blobs first) to `host/repository`, tagged when `tag` is given.
/// `authorization` is a ready header value for registries that need one.
pub fn push(host: &str, repository: &str, fixture: &Fixture, tag: Option<&str>, authorization: Option<&str>) {
    let host = host.to_owned();
    let repository = repository.to_owned();
    let fixture = fixture.clone();
    let tag = tag.map(str::to_owned);
    let authorization = authorization.map(str::to_owned);
    runtime().block_on(async move {
        let client = reqwest::Client::new();
        push_async(&client, &host, &repository, &fixture, tag.as_deref(), authorization.as_deref()).await;
    });
}

fn push_async<'a>(
    client: &'a reqwest::Client,
    host: &'a str,
    repository: &'a str,
    fixture: &'a Fixture,
    tag: Option<&'a str>,
    authorization: Option<&'a str>,
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        let with_auth = |request: reqwest::RequestBuilder| match authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        };
        for child in &fixture.children {
            push_async(client, host, repository, child, None, authorization).await;
        }
        for blob in &fixture.blobs {
            let start = with_auth(client.post(format!("http://{host}/v2/{repository}/blobs/uploads/"))).send().await.expect("POST upload");
            assert_eq!(start.status(), 202, "POST upload");
            let location = start.headers()["location"].to_str().unwrap().to_owned();
            let location = if location.starts_with('/') { format!("http://{host}{location}") } else { location };
            let separator = if location.contains('?') { '&' } else { '?' };
            let put = with_auth(client.put(format!("{location}{separator}digest={}", blob.digest)))
                .header("content-type", "application/octet-stream")
                .body(blob.bytes.clone())
                .send()
                .await
                .expect("PUT blob");
            assert_eq!(put.status(), 201, "PUT blob {}", blob.digest);
        }
        let reference = tag.map(str::to_owned).unwrap_or_else(|| fixture.digest.clone());
        let put = with_auth(client.put(format!("http://{host}/v2/{repository}/manifests/{reference}")))
            .header("content-type", &fixture.media_type)
            .body(fixture.manifest.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = put.status();
        assert_eq!(status, 201, "PUT manifest: {}", put.text().await.unwrap_or_default());
    })
}

/// Pushes `referrers` of `subject` the way clients do against a registry without the referrers
/// API: each by digest, then an index of them at the tag `sha256-<hex>`.
pub fn push_referrers(host: &str, repository: &str, subject: &Fixture, referrers: &[&Fixture], authorization: Option<&str>) {
    let mut entries = Vec::new();
    for referrer in referrers {
        push(host, repository, referrer, None, authorization);
        let document: serde_json::Value = serde_json::from_slice(&referrer.manifest).unwrap();
        let mut descriptor = referrer.descriptor();
        descriptor["artifactType"] = document["artifactType"].clone();
        entries.push(descriptor);
    }
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})).unwrap();
    let fixture = Fixture { media_type: OCI_INDEX.into(), digest: sha256(&index), manifest: index, blobs: vec![], children: vec![] };
    let tag = subject.digest.replace(':', "-");
    push(host, repository, &fixture, Some(&tag), authorization);
}

/// The same image in Docker's schema 2 media types, and a Docker manifest list of such images.
pub fn docker_image(arch: &str, layers: &[Blob]) -> Fixture {
    let mut layers: Vec<Blob> = layers.to_vec();
    for layer in &mut layers {
        layer.media_type = "application/vnd.docker.image.rootfs.diff.tar".into();
    }
    let oci = image(arch, &layers);
    let mut config = oci.blobs[0].clone();
    config.media_type = "application/vnd.docker.container.image.v1+json".into();
    let document = serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&document).unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers);
    Fixture { media_type: DOCKER_MANIFEST.into(), digest: sha256(&manifest), manifest, blobs, children: vec![] }
}

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub fn docker_list(entries: &[(&Fixture, &str)]) -> Fixture {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(image, arch)| {
            let mut descriptor = image.descriptor();
            descriptor["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
            descriptor
        })
        .collect();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": manifests})).unwrap();
    Fixture {
        media_type: DOCKER_LIST.into(),
        digest: sha256(&manifest),
        manifest,
        blobs: vec![],
        children: entries.iter().map(|(image, _)| (*image).clone()).collect(),
    }
}
