//! `airlock push`, `pull` and `artifacts`: OCI artifacts by `oci://` reference.

use std::sync::Arc;

use airlock_artifact::{pull as download, push as upload, Mode, Wanted};
use airlock_oci::Reference;
use airlock_store::remote::{Access, Credential, Registries, Secret};
use airlock_store::Store;

use crate::args::{ArtifactAuthArgs, ArtifactsArgs, DeployMode, Global, Output, PullArgs, PushArgs, SelectArgs};
use crate::commands::{parse_creds, parse_reference, registry_options, usage, Failure, Result};
use crate::output;

/// The store of `reference`, with the artifact commands' ways to authenticate.
async fn store(global: &Global, auth: &ArtifactAuthArgs, reference: &Reference, access: Access) -> Result<Arc<dyn Store>> {
    let mut options = registry_options(global);
    if let Some(secret) = &auth.pull_secret {
        if !secret.is_file() {
            return Err(usage(format!("the pull secret `{}` is not a file", secret.display())));
        }
        options.credential_files = airlock_store::remote::CredentialFiles::discover(Some(secret));
    }
    if let Reference::Registry(registry) = reference {
        let credential = match (&auth.bearer_token, parse_creds(auth.creds.as_deref())?) {
            (Some(token), _) => Some(Credential::BearerToken(Secret::new(token))),
            (None, basic) => basic,
        };
        if let Some(credential) = credential {
            options.explicit_credentials.insert(registry.registry.clone(), credential);
        }
    }
    let registries = Registries::new(options)?;
    Ok(airlock_gate::open_store(&registries, reference, access).await)
}

fn key_values(pairs: &[String], flag: &str) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| usage(format!("`{flag} {p}`: expected KEY=VALUE"))))
        .collect()
}

pub(crate) fn failure(error: airlock_artifact::ArtifactError) -> Failure {
    let exit_code = if matches!(error, airlock_artifact::ArtifactError::Invalid(_)) { 2 } else { 1 };
    Failure::from(anyhow::Error::new(error)).with_exit_code(exit_code)
}

pub async fn push(global: &Global, args: &PushArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    if reference.digest().is_some() {
        return Err(usage(format!("`{}` names a digest; push to a tag", args.reference)));
    }
    let tag = reference.tag().unwrap_or(airlock_oci::DEFAULT_TAG).to_owned();
    let store = store(global, &args.auth, &reference, Access::Push).await?;
    let show = !global.quiet && global.verbose == 0 && global.output == Output::Text;
    let progress = crate::progress::for_transfer(show, "push");
    let store = crate::progress::Reporting::wrap(store, progress.clone());
    let manifest = if args.index {
        let entries = args.items.iter().map(|i| upload::parse_entry(i)).collect::<Result<Vec<_>, _>>().map_err(failure)?;
        upload::push_index(store.as_ref(), &tag, &entries).await.map_err(failure)?
    } else {
        let files: Vec<upload::FileSpec> = args.items.iter().map(|i| upload::parse_file(i)).collect();
        // A file named on the command line that is not there is the user's input (exit 2).
        if let Some(absent) = files.iter().find(|f| !f.path.is_file()) {
            return Err(usage(format!("`{}` is not a file to push", absent.path.display())));
        }
        let options = upload::PushOptions { artifact_type: args.artifact_type.clone(), annotations: key_values(&args.annotations, "--annotation")?, platform: args.platform.clone() };
        upload::push_files(store.as_ref(), &tag, &files, &options).await.map_err(failure)?
    };
    drop(store);
    drop(progress);
    match global.output {
        Output::Json => output::json(&serde_json::json!({"reference": reference.with_tag(&tag).to_string(), "digest": manifest.digest().to_string(), "media_type": manifest.media_type()})),
        Output::Text if !global.quiet => output::data(&format!("Pushed {}\nDigest: {}", reference.with_tag(&tag), manifest.digest())),
        Output::Text => {}
    }
    Ok(())
}

fn wanted(select: &SelectArgs) -> (Wanted, Mode) {
    let mode = match select.mode {
        DeployMode::Local => Mode::Local,
        DeployMode::Http => Mode::Http,
    };
    (Wanted { arch: select.arch.clone(), disktype: select.disktype.clone() }, mode)
}

pub async fn pull(global: &Global, args: &PullArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let store = store(global, &args.auth, &reference, Access::Pull).await?;
    let (wanted, mode) = wanted(&args.select);
    let resolution = download::resolve(store.as_ref(), &reference, &wanted, mode).await.map_err(failure)?;
    let show = !global.quiet && global.verbose == 0 && global.output == Output::Text;
    let progress = crate::progress::for_transfer(show, "pull");
    let reporting = crate::progress::Reporting::wrap(store.clone(), progress.clone());
    let pulled = download::download(reporting.as_ref(), &resolution.layer, &args.dir, args.decompress).await.map_err(failure)?;
    drop(reporting);
    drop(progress);
    let chosen = &resolution.offers[resolution.chosen];
    match global.output {
        Output::Json => output::json(&serde_json::json!({
            "reference": resolution.reference, "manifest": chosen.digest, "platform": chosen.platform, "disktype": chosen.disktype,
            "file": pulled.file, "digest": pulled.digest, "size": pulled.size, "fetched": pulled.fetched, "resumed": pulled.resumed,
            "decompressed": pulled.decompressed,
        })),
        Output::Text if !global.quiet => {
            let mut text = format!("{} -> {} ({}, {} verified", resolution.reference, pulled.file, output::bytes(pulled.size), pulled.digest);
            if pulled.resumed {
                text.push_str(&format!(", resumed: {} fetched", output::bytes(pulled.fetched)));
            }
            if let Some(kind) = pulled.decompressed {
                text.push_str(&format!(", {kind} decompressed"));
            }
            text.push(')');
            output::data(&text);
        }
        Output::Text => {}
    }
    Ok(())
}

pub async fn artifacts(global: &Global, args: &ArtifactsArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let store = store(global, &args.auth, &reference, Access::Pull).await?;
    let (wanted, mode) = wanted(&args.select);
    // When nothing fits, the error lists what there is and why each was refused.
    let resolution = download::resolve(store.as_ref(), &reference, &wanted, mode).await.map_err(failure)?;
    match global.output {
        Output::Json => output::json(&serde_json::json!({
            "reference": resolution.reference, "digest": resolution.digest, "offers": resolution.offers,
            "chosen": resolution.offers[resolution.chosen].digest, "verdicts": resolution.verdicts,
        })),
        Output::Text => {
            let rows: Vec<Vec<String>> = resolution
                .offers
                .iter()
                .map(|o| {
                    vec![
                        output::short_digest(Some(&o.digest)),
                        o.platform.clone().unwrap_or_else(|| "-".into()),
                        o.disktype.clone().unwrap_or_else(|| "-".into()),
                        o.size.map(output::bytes).unwrap_or_else(|| format!("{} layers", o.layers)),
                        o.title.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let mut text = output::table(&["DIGEST", "PLATFORM", "DISKTYPE", "SIZE", "TITLE"], &rows);
            let chosen = &resolution.offers[resolution.chosen];
            text.push_str(&format!("\npull would choose {} ({})\n", chosen.digest, chosen.title.as_deref().unwrap_or("untitled")));
            for verdict in &resolution.verdicts {
                text.push_str(&format!("  {}: {}\n", output::short_digest(Some(&verdict.digest)), verdict.reason));
            }
            output::data(&text);
        }
    }
    Ok(())
}
