//! Property: for generated manifests of every kind the registry accepts (images and artifacts,
//! with and without `mediaType`, indexes nested and ambiguous, referrers), every descriptor a tag
//! reaches after the pushes is still there after `gc`, whatever else was swept.

use std::collections::BTreeSet;
use std::sync::Arc;

use airlock_oci::{Digest, Manifest};
use airlock_registry::Storage;
use proptest::prelude::*;

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_IMAGE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One generated push: a manifest over blobs (or over earlier manifests), as a client sends it.
#[derive(Debug, Clone)]
enum Push {
    /// An image or artifact manifest over `layers` fresh blobs; `declared` puts `mediaType` in
    /// the body; `ambiguous` adds an empty `manifests` key; `subject` points at an earlier push.
    Image { layers: u8, docker: bool, declared: bool, ambiguous: bool, artifact: bool, subject: Option<usize> },
    /// An index over earlier pushes (by position modulo their count).
    Index { children: Vec<usize>, docker: bool, declared: bool, ambiguous: bool },
}

fn push_strategy() -> impl Strategy<Value = Push> {
    prop_oneof![
        (0u8..3, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), proptest::option::of(0usize..8))
            .prop_map(|(layers, docker, declared, ambiguous, artifact, subject)| Push::Image { layers, docker, declared, ambiguous, artifact, subject }),
        (proptest::collection::vec(0usize..8, 0..3), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(children, docker, declared, ambiguous)| Push::Index { children, docker, declared, ambiguous }),
    ]
}

fn blob_bytes(seed: usize) -> Vec<u8> {
    format!("blob {seed}").into_bytes()
}

async fn put_blob(storage: &Storage, repository: &str, bytes: Vec<u8>) -> serde_json::Value {
    let digest = airlock_oci::digest_of(&bytes, None);
    let size = bytes.len();
    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
    storage.put_blob(repository, &digest, body).await.unwrap();
    serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest.to_string(), "size": size})
}

/// Pushes each generated manifest (skipping what the registry refuses, as a client would see
/// an error) and returns every digest reachable from what was accepted, read as accepted.
async fn push_all(storage: &Storage, pushes: &[Push]) -> BTreeSet<String> {
    let repository = "gen/repo";
    let mut accepted: Vec<(Manifest, Option<String>)> = Vec::new();
    let mut reachable = BTreeSet::new();
    for (n, push) in pushes.iter().enumerate() {
        let (body, content_type) = match push {
            Push::Image { layers, docker, declared, ambiguous, artifact, subject } => {
                let media_type = if *docker { DOCKER_IMAGE } else { IMAGE };
                let config_type = if *artifact { "application/vnd.example.thing.v1+json" } else { "application/vnd.oci.image.config.v1+json" };
                let mut config = put_blob(storage, repository, blob_bytes(n * 100)).await;
                config["mediaType"] = config_type.into();
                let mut layer_list = Vec::new();
                for l in 0..*layers {
                    layer_list.push(put_blob(storage, repository, blob_bytes(n * 100 + 1 + l as usize)).await);
                }
                let mut body = serde_json::json!({"schemaVersion": 2, "config": config, "layers": layer_list});
                if *declared {
                    body["mediaType"] = media_type.into();
                }
                if *ambiguous {
                    body["manifests"] = serde_json::json!([]);
                }
                if let (Some(subject), false) = (subject, accepted.is_empty()) {
                    let (target, _) = &accepted[subject % accepted.len()];
                    body["subject"] = serde_json::to_value(target.descriptor()).unwrap();
                }
                (body, media_type)
            }
            Push::Index { children, docker, declared, ambiguous } => {
                let media_type = if *docker { DOCKER_LIST } else { INDEX };
                let entries: Vec<serde_json::Value> = if accepted.is_empty() {
                    Vec::new()
                } else {
                    children.iter().map(|c| serde_json::to_value(accepted[c % accepted.len()].0.descriptor()).unwrap()).collect()
                };
                let mut body = serde_json::json!({"schemaVersion": 2, "manifests": entries});
                if *declared {
                    body["mediaType"] = media_type.into();
                }
                if *ambiguous {
                    let config = put_blob(storage, repository, blob_bytes(n * 100 + 50)).await;
                    body["config"] = config;
                }
                (body, media_type)
            }
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        // As the route parses a push: the Content-Type decides when the body declares nothing.
        let Ok(manifest) = Manifest::parse(bytes, Some(content_type)) else { continue };
        let tag = format!("t{n}");
        if storage.put_manifest(repository, Some(&tag), &manifest).await.is_ok() {
            accepted.push((manifest, Some(tag)));
        }
    }
    // What the accepted pushes reach, each read as it was accepted.
    let mut stack: Vec<Manifest> = accepted.iter().map(|(m, _)| m.clone()).collect();
    while let Some(manifest) = stack.pop() {
        if !reachable.insert(manifest.digest().to_string()) {
            continue;
        }
        match manifest.kind() {
            airlock_oci::ManifestKind::Image { config, layers, .. } => {
                reachable.extend(std::iter::once(config).chain(layers).map(|d| d.digest().to_string()));
            }
            airlock_oci::ManifestKind::Index { manifests, .. } => {
                for child in manifests {
                    let found = accepted.iter().find(|(m, _)| m.digest() == child.digest()).map(|(m, _)| m.clone());
                    stack.extend(found);
                }
            }
        }
    }
    reachable
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_descriptor_reachable_after_push_survives_gc(pushes in proptest::collection::vec(push_strategy(), 1..8), orphans in 0usize..3) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = Arc::new(Storage::new(dir.path()));
            let reachable = push_all(&storage, &pushes).await;
            let mut swept = Vec::new();
            for o in 0..orphans {
                let orphan = put_blob(&storage, "gen/repo", format!("orphan {o}").into_bytes()).await;
                swept.push(orphan["digest"].as_str().unwrap().to_owned());
            }
            let report = storage.gc(false, std::time::Duration::ZERO).await.unwrap();
            for digest in &reachable {
                let digest: Digest = airlock_oci::parse_digest(digest).unwrap();
                let kept = storage.blob_size("gen/repo", &digest).await.is_ok() || storage.get_manifest("gen/repo", digest.as_ref()).await.is_ok();
                prop_assert!(kept, "{digest} was swept: {report:?}, pushes {pushes:?}");
            }
            for orphan in &swept {
                let digest: Digest = airlock_oci::parse_digest(orphan).unwrap();
                prop_assert!(storage.blob_size("gen/repo", &digest).await.is_err(), "orphan {orphan} kept");
            }
            Ok(())
        })?;
    }
}
