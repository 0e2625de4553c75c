//! Choosing the artifact to pull from what a tag offers, as Ironic does (seed 002): disk types
//! ranked by the deployment mode, then the first whose architecture matches (with the
//! `x86_64`/`amd64` and `aarch64`/`arm64` aliases) and that is a single file.

use serde::Serialize;

/// How the disk image will be deployed; decides which disk types are preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Downloaded and converted locally: QCOW2 first.
    Local,
    /// Streamed by the deploy agent over HTTP: raw first.
    Http,
}

/// The rank of a `disktype` annotation (lower is preferred); `None` for an unknown type.
pub fn priority(mode: Mode, disktype: &str) -> Option<u32> {
    let table: [(&str, u32); 4] = match mode {
        Mode::Local => [("qcow2", 1), ("qemu", 2), ("raw", 3), ("applehv", 4)],
        Mode::Http => [("raw", 1), ("applehv", 2), ("qcow2", 3), ("qemu", 4)],
    };
    table.iter().find(|(name, _)| *name == disktype).map(|(_, rank)| *rank)
}

/// The disk format a `disktype` stands for: `qemu` is QCOW2, `applehv` is raw.
pub fn disk_format(disktype: &str) -> &str {
    match disktype {
        "qemu" => "qcow2",
        "applehv" => "raw",
        other => other,
    }
}

/// The names an architecture goes by.
pub fn arch_aliases(arch: &str) -> Vec<&str> {
    match arch {
        "x86_64" | "amd64" => vec!["x86_64", "amd64"],
        "aarch64" | "arm64" => vec!["aarch64", "arm64"],
        other => vec![other],
    }
}

/// One artifact on offer.
#[derive(Debug, Clone, Serialize)]
pub struct Offer {
    /// The manifest digest.
    pub digest: String,
    /// `os/architecture[/variant]`, when known.
    pub platform: Option<String>,
    /// The architecture, when known.
    #[serde(skip)]
    pub architecture: Option<String>,
    /// The `disktype` annotation.
    pub disktype: Option<String>,
    /// How many layers (files) the manifest has.
    pub layers: usize,
    /// The size of its file, when it has one.
    pub size: Option<u64>,
    /// The file name (`org.opencontainers.image.title`), when it has one.
    pub title: Option<String>,
}

/// What the caller asks for.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// The node's architecture.
    pub arch: Option<String>,
    /// Only this disk format (`qcow2` also takes `qemu`; `raw` also takes `applehv`).
    pub disktype: Option<String>,
}

/// Why an offer was or was not chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The offer's digest.
    pub digest: String,
    /// Chosen, or why not.
    pub reason: String,
}

/// The offer to pull from an index, with the reasoning for every offer; `Err` with the reasons
/// when none qualifies.
pub fn choose(offers: &[Offer], wanted: &Wanted, mode: Mode) -> Result<(usize, Vec<Verdict>), Vec<Verdict>> {
    let rank = |offer: &Offer| offer.disktype.as_deref().and_then(|d| priority(mode, d)).unwrap_or(100);
    let mut order: Vec<usize> = (0..offers.len()).collect();
    order.sort_by_key(|i| rank(&offers[*i]));
    let mut verdicts = Vec::new();
    let mut chosen = None;
    for i in order {
        let offer = &offers[i];
        let reason = if chosen.is_some() {
            "a preferred artifact was chosen first".to_owned()
        } else if let Some(why) = refuse(offer, wanted, mode) {
            why
        } else {
            chosen = Some(i);
            let disktype = offer.disktype.as_deref().unwrap_or("");
            let mut why = format!("chosen: disktype {disktype} ranks {} for {} deployment", rank(offer), mode_name(mode));
            if let (Some(want), Some(have)) = (&wanted.arch, &offer.architecture) {
                why.push_str(&format!(", architecture {have} matches {want}"));
            }
            why
        };
        verdicts.push(Verdict { digest: offer.digest.clone(), reason });
    }
    match chosen {
        Some(i) => Ok((i, verdicts)),
        None => Err(verdicts),
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Local => "local",
        Mode::Http => "http",
    }
}

/// Why `offer` cannot be chosen, if it cannot.
fn refuse(offer: &Offer, wanted: &Wanted, mode: Mode) -> Option<String> {
    if let (Some(want), Some(have)) = (&wanted.arch, &offer.architecture) {
        if !arch_aliases(want).contains(&have.as_str()) {
            return Some(format!("architecture {have} is not {want}"));
        }
    }
    let Some(disktype) = offer.disktype.as_deref() else {
        return Some("no disktype annotation: not a disk image".into());
    };
    if priority(mode, disktype).is_none() {
        return Some(format!("disktype {disktype} is not a disk image type (qcow2, qemu, raw, applehv)"));
    }
    if let Some(want) = &wanted.disktype {
        if disk_format(disktype) != disk_format(want) {
            return Some(format!("disktype {disktype} is not {want}"));
        }
    }
    if offer.layers != 1 {
        return Some(format!("{} layers: a single-file artifact is required", offer.layers));
    }
    None
}

/// Whether a single artifact (not in an index) fits what is wanted; `Err` says why not.
pub fn accept_single(offer: &Offer, wanted: &Wanted) -> Result<(), String> {
    if let (Some(want), Some(have)) = (&wanted.arch, &offer.architecture) {
        if !arch_aliases(want).contains(&have.as_str()) {
            return Err(format!("its architecture is {have}, not {want}"));
        }
    }
    if let (Some(want), Some(have)) = (&wanted.disktype, &offer.disktype) {
        if disk_format(have) != disk_format(want) {
            return Err(format!("its disktype is {have}, not {want}"));
        }
    }
    if offer.layers != 1 {
        return Err(format!("it has {} layers; a single-file artifact is required", offer.layers));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(digest: &str, arch: &str, disktype: &str) -> Offer {
        Offer {
            digest: digest.into(),
            platform: Some(format!("linux/{arch}")),
            architecture: Some(arch.into()),
            disktype: Some(disktype.into()),
            layers: 1,
            size: Some(1),
            title: None,
        }
    }

    fn pick(offers: &[Offer], arch: &str, disktype: Option<&str>, mode: Mode) -> Option<String> {
        let wanted = Wanted { arch: Some(arch.into()), disktype: disktype.map(str::to_owned) };
        choose(offers, &wanted, mode).ok().map(|(i, _)| offers[i].digest.clone())
    }

    #[test]
    fn the_seed_tables_for_each_mode_and_alias() {
        let offers = [offer("raw-amd64", "amd64", "raw"), offer("qcow2-amd64", "x86_64", "qcow2"), offer("raw-arm64", "arm64", "raw"), offer("qemu-arm64", "aarch64", "qemu")];
        assert_eq!(pick(&offers, "x86_64", None, Mode::Local).as_deref(), Some("qcow2-amd64"));
        assert_eq!(pick(&offers, "amd64", None, Mode::Http).as_deref(), Some("raw-amd64"));
        assert_eq!(pick(&offers, "aarch64", None, Mode::Local).as_deref(), Some("qemu-arm64"));
        assert_eq!(pick(&offers, "arm64", None, Mode::Http).as_deref(), Some("raw-arm64"));
        assert_eq!(pick(&offers, "amd64", Some("raw"), Mode::Local).as_deref(), Some("raw-amd64"), "an explicit disktype wins over the table");
        assert_eq!(pick(&offers, "s390x", None, Mode::Local), None);
    }

    #[test]
    fn applehv_counts_as_raw_and_multi_layer_manifests_are_skipped() {
        let mut multi = offer("multi", "amd64", "raw");
        multi.layers = 3;
        let offers = [multi, offer("applehv", "amd64", "applehv")];
        let wanted = Wanted { arch: Some("amd64".into()), disktype: Some("raw".into()) };
        let (i, verdicts) = choose(&offers, &wanted, Mode::Http).unwrap();
        assert_eq!(offers[i].digest, "applehv");
        assert!(verdicts.iter().any(|v| v.reason.contains("3 layers")), "{verdicts:?}");
    }
}
