//! `airlock demo`: seed 004's gated import, end to end, on the embedded registry.
//!
//! One registry plays all three of the seed's: `upstream/` (the public registry, where the
//! demo publishes a generated `node:15-alpine`-like image), `staging/` (quarantine) and
//! `base-artifacts/` (what teams build from). The gate is a policy that forbids
//! `BACKGROUND_COLOR=RED`, as the seed's `test.sh` does; the dependent writes the rebuild it
//! would start for `dev-team-a/hello-world` into `rebuilds.log`.

use std::process::ExitCode;
use std::sync::Arc;

use airlock_gate::Trigger;
use airlock_oci::{Descriptor, Manifest, Reference};
use airlock_store::remote::{Access, Registries};
use airlock_store::Store;
use anyhow::Context as _;

use crate::args::{DemoArgs, Global, Output};
use crate::commands::{registry_options, Result};
use crate::output;

const AIRLOCK_YAML: &str = r#"# airlock.yaml, written by `airlock demo`. Your own looks like this: every upstream
# image your teams build FROM is an import; airlock brings each upstream change in through
# the gates and moves the stable tag only when all of them pass.
imports:
  - name: node                                   # what `airlock import node`, `runs` and `rollback` call it
    source: {registry}/upstream/node             # upstream: in real life docker.io/library/node
    tags: [15-alpine]                            # the upstream tags to follow
    staging: {registry}/staging/node             # quarantine: candidates wait here, teams never pull it
    target: {registry}/base-artifacts/node       # what teams build FROM: 15-alpine moves only after the gates
    unique_tag: "{{tag}}-{{run_id}}"             # every promotion also gets a tag that never moves (rollback points)
    gates:                                       # run in order against the staged candidate
      - name: validate-base-image
        policy:                                  # checks the image's configuration; `test:` would run a container
          forbid_env: {BACKGROUND_COLOR: [red]}
          require_env: {NODE_VERSION: 15-alpine}
    dependents:                                  # told after a promotion, so they rebuild on the new base
      - name: dev-team-a/hello-world
        command: [sh, -c, 'echo "rebuild dev-team-a/hello-world FROM $AIRLOCK_TARGET@$AIRLOCK_NEW_DIGEST (run $AIRLOCK_RUN_ID)" >> "{dir}/rebuilds.log"']
"#;

pub async fn demo(global: &Global, args: &DemoArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
            dir.canonicalize().with_context(|| format!("cannot resolve `{}`", dir.display()))?
        }
        None => {
            temp = tempfile::Builder::new().prefix("airlock-demo").tempdir().context("cannot create a temporary folder")?;
            temp.path().to_path_buf()
        }
    };
    let root = dir.join("registry");
    let served = Arc::new(airlock_registry::Registry { storage: airlock_registry::Storage::new(&root), auth: None, notifier: None, allow_delete: true, mirror: None, private_credential: None });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1")?;
    let address = listener.local_addr().context("cannot read the bound address")?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(airlock_registry::serve(listener, served, None, async {
        let _ = stopped.await;
    }));
    let text = global.output == Output::Text && !global.quiet;
    let say = |line: String| {
        if text {
            output::data(&line);
        }
    };
    say(format!("airlock demo: the embedded registry serves {address} from {}\n", root.display()));

    let config_path = dir.join("airlock.yaml");
    let yaml = AIRLOCK_YAML.replace("{registry}", &address).replace("{dir}", &dir.display().to_string());
    std::fs::write(&config_path, yaml).with_context(|| format!("cannot write `{}`", config_path.display()))?;
    say(format!("the import is described in {} (read it: it is what you would write)\n", config_path.display()));
    let config = airlock_gate::config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pipeline = crate::gate::pipeline(global, config, false).await?;
    let import = pipeline.config.imports[0].clone();
    let registries = Registries::new(registry_options(global))?;
    let upstream: Reference = format!("{address}/upstream/node:15-alpine").parse().expect("a valid reference");
    let upstream_store = airlock_gate::open_store(&registries, &upstream, Access::Push).await;

    // 1. A good upstream image, imported by hand.
    let good = publish(upstream_store.as_ref(), "Orange").await?;
    say(format!("1. published upstream/node:15-alpine with BACKGROUND_COLOR=Orange: {good}"));
    let first = pipeline.import(&import, Trigger::Manual, false).await;
    for outcome in &first {
        say(format!("   airlock import node -> {} (run {})", outcome.action.replace('_', " "), outcome.run_id.as_deref().unwrap_or("-")));
    }
    // The promotion told the dependent: its line belongs here, under the promotion.
    let rebuilt_first = std::fs::read_to_string(dir.join("rebuilds.log")).unwrap_or_default();
    say(format!("   the dependent was told to rebuild ({}):", rebuilt_first.lines().count()));
    for line in rebuilt_first.lines() {
        say(format!("     {line}"));
    }
    // 2. A bad update, noticed as an image update.
    let bad = publish(upstream_store.as_ref(), "RED").await?;
    say(format!("2. upstream updated node:15-alpine with BACKGROUND_COLOR=RED: {bad}"));
    let second = pipeline.import(&import, Trigger::ImageUpdate, false).await;
    for outcome in &second {
        say(format!(
            "   airlock import node -> {} (run {}): {}",
            outcome.action.replace('_', " "),
            outcome.run_id.as_deref().unwrap_or("-"),
            outcome.reason.as_deref().unwrap_or("")
        ));
    }
    let target = airlock_gate::open_store(&registries, &import.target, Access::Pull).await;
    let stable = target.resolve("15-alpine").await.context("cannot read base-artifacts/node:15-alpine")?.digest().to_string();
    let rebuilds = std::fs::read_to_string(dir.join("rebuilds.log")).unwrap_or_default();
    let told_again = rebuilds.lines().count() - rebuilt_first.lines().count();
    say(format!("   the dependent was told nothing ({told_again} more rebuilds): the refused digest never reached base-artifacts"));
    say(format!("3. base-artifacts/node:15-alpine serves {stable}{}", if stable == good.to_string() { " (the validated digest)" } else { "" }));

    let runs = pipeline.runs.list(None, 20).await?;
    let failed = second.iter().find_map(|o| o.run_id.clone());
    let promoted = first.iter().find_map(|o| o.run_id.clone()).unwrap_or_default();
    // What to try next: each works as printed while `--keep` holds the registry open (a test
    // runs them). Rolling back names the promotion to return to, the only one there is.
    let file = config_path.display();
    let try_next = [
        format!("airlock runs list -f {file}"),
        format!("airlock runs logs -f {file}"),
        format!("airlock tags {address}/base-artifacts/node"),
        format!("airlock inspect {address}/base-artifacts/node:15-alpine"),
        format!("skopeo inspect --tls-verify=false docker://{address}/base-artifacts/node:15-alpine"),
        format!("airlock rollback node -f {file} --to {promoted}"),
    ];
    match global.output {
        Output::Json => output::json(&serde_json::json!({
            "registry": address,
            "folder": dir.display().to_string(),
            "good_digest": good.to_string(),
            "bad_digest": bad.to_string(),
            "stable_digest": stable,
            "rebuilds": rebuilds.lines().collect::<Vec<_>>(),
            "results": first.iter().chain(&second).collect::<Vec<_>>(),
            "runs": runs,
            "config": config_path.display().to_string(),
            "try": if args.keep { try_next.to_vec() } else { Vec::new() },
        })),
        Output::Text if !global.quiet => {
            let mut text = format!("\n{}", crate::gate::runs_table(&runs));
            if let Some(run_id) = &failed {
                let db = &pipeline.runs;
                if let (Some(run), Ok((log, gates))) = (db.get(run_id).await?, db.logs(run_id).await) {
                    text.push_str(&format!("\nairlock runs logs {run_id}\n{}", crate::gate::render_logs(&run, &log, &gates)));
                }
            }
            text.push_str(&format!("\ndone in {:.1}s.", started.elapsed().as_secs_f64()));
            output::data(&text);
        }
        Output::Text => {}
    }
    if args.keep {
        say(format!("\nThe registry keeps running at {address} until Ctrl-C. Try:\n  {}", try_next.join("\n  ")));
        crate::commands::shutdown_signal().await;
    } else if args.dir.is_none() {
        say("\nRun `airlock demo --keep` to explore the registry, or `--dir DIR` to keep the folder.".to_owned());
    }
    let _ = stop.send(());
    let _ = server.await;
    let ok = stable == good.to_string() && rebuilds.lines().count() == 1 && second.iter().all(|o| o.failed());
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Pushes a `node:15-alpine`-like image whose config sets `BACKGROUND_COLOR` to `color`.
async fn publish(store: &dyn Store, color: &str) -> Result<airlock_oci::Digest> {
    let layer = tar(&[
        ("etc/", None),
        ("etc/os-release", Some(b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.12.1\n".as_slice())),
        ("app/", None),
        ("app/background-color", Some(color.as_bytes())),
    ]);
    let layer_digest = airlock_oci::digest_of(&layer, None);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": airlock_gate::time::rfc3339(airlock_gate::time::now()),
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NODE_VERSION=15-alpine", format!("BACKGROUND_COLOR={color}")], "Cmd": ["node"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
        "history": [{"created_by": format!("ENV BACKGROUND_COLOR {color}")}],
    });
    let config = serde_json::to_vec(&config).expect("JSON values serialize");
    let config_descriptor = Descriptor::new("application/vnd.oci.image.config.v1+json".into(), config.len() as u64, airlock_oci::digest_of(&config, None));
    let layer_descriptor = Descriptor::new("application/vnd.oci.image.layer.v1.tar".into(), layer.len() as u64, layer_digest);
    for (descriptor, bytes) in [(&config_descriptor, config), (&layer_descriptor, layer)] {
        let body = bytes::Bytes::from(bytes);
        store.put_blob(descriptor, Box::pin(futures::stream::once(async move { Ok(body) }))).await?;
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_descriptor, "layers": [layer_descriptor],
    });
    let manifest = Manifest::parse(serde_json::to_vec(&manifest).expect("JSON values serialize"), Some("application/vnd.oci.image.manifest.v1+json"))
        .expect("a valid image manifest");
    store.put_manifest(&manifest, Some("15-alpine")).await?;
    Ok(manifest.digest().clone())
}

/// A ustar archive of folders (`None`) and files.
fn tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in entries {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let (mode, size, kind) = match content {
            Some(bytes) => (b"0000644\0", bytes.len(), b'0'),
            None => (b"0000755\0", 0, b'5'),
        };
        header[100..108].copy_from_slice(mode);
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = kind;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        if let Some(bytes) = content {
            out.extend_from_slice(bytes);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}
