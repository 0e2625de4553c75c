//! Images in Kubernetes manifests: what containers name, in any workload kind.
//!
//! A pod spec can sit at many depths (`Pod.spec`, `Deployment.spec.template.spec`,
//! `CronJob.spec.jobTemplate.spec.template.spec`, a `List`'s items, custom workloads), so the
//! walk looks for the three container lists a pod spec has (`containers`, `initContainers`,
//! `ephemeralContainers`) wherever they hold container objects. Any other key named `image` (a
//! ConfigMap's data, a CRD's field) is not an image the deployment pulls.

use crate::Found;

const CONTAINER_LISTS: [(&str, &str); 3] = [("containers", "container"), ("initContainers", "init container"), ("ephemeralContainers", "ephemeral container")];

/// The images of every document in `text` (`---`-separated); `file` names the source in
/// locations, unless a document carries Helm's `# Source:` comment, which names its template.
pub fn images(text: &str, file: &str) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (line, document) in documents(text) {
        let source = document.lines().find_map(|l| l.trim().strip_prefix("# Source: ")).map(str::to_owned).unwrap_or_else(|| file.to_owned());
        if document.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let value: serde_json::Value = serde_saphyr::from_str(document).map_err(|e| {
            let at = e.location().map(|l| format!(":{}:{}", l.line() + line as u64 - 1, l.column())).unwrap_or_default();
            format!("{file}{at}: not valid YAML: {}", e.to_string().lines().next().unwrap_or(""))
        })?;
        walk(&value, &source, None, &mut found);
    }
    Ok(found)
}

/// The documents of a YAML stream with the line each starts on.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            documents.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = idx + 2;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

fn walk(value: &serde_json::Value, source: &str, owner: Option<&str>, found: &mut Vec<Found>) {
    match value {
        serde_json::Value::Object(map) => {
            // The nearest object with a kind and a name owns the containers below it.
            let named = match (map.get("kind").and_then(|k| k.as_str()), map.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str())) {
                (Some(kind), Some(name)) => Some(format!("{kind}/{name}")),
                _ => None,
            };
            let owner = named.as_deref().or(owner);
            for (key, what) in CONTAINER_LISTS {
                let Some(list) = map.get(key).and_then(|l| l.as_array()) else { continue };
                for container in list {
                    let (Some(image), Some(object)) = (container.get("image").and_then(|i| i.as_str()), container.as_object()) else { continue };
                    let name = object.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let location = match owner {
                        Some(owner) => format!("{source}: {owner} {what} `{name}`"),
                        None => format!("{source}: {what} `{name}`"),
                    };
                    found.push(Found { image: image.trim().to_owned(), location });
                }
            }
            for (key, child) in map {
                if CONTAINER_LISTS.iter().any(|(list, _)| list == key) {
                    continue;
                }
                walk(child, source, owner, found);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, source, owner, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_kind_and_container_list() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers: [{name: migrate, image: "registry.example.com/tools/migrate:2"}]
      containers:
        - name: web
          image: nginx:1.25
---
# a comment-only document
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: library/busybox:1.36}]
---
apiVersion: v1
kind: Pod
metadata: {name: debug}
spec:
  containers: [{name: app, image: "app@sha256:0123456789012345678901234567890123456789012345678901234567890123"}]
  ephemeralContainers: [{name: shell, image: busybox}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data:
  image: not-an-image:1
---
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec: {template: {spec: {containers: [{name: pg, image: "postgres:16"}]}}}
"#;
        let found = images(text, "all.yaml").unwrap();
        let names: Vec<&str> = found.iter().map(|f| f.image.as_str()).collect();
        assert_eq!(
            names,
            [
                "nginx:1.25",
                "registry.example.com/tools/migrate:2",
                "library/busybox:1.36",
                "app@sha256:0123456789012345678901234567890123456789012345678901234567890123",
                "busybox",
                "postgres:16"
            ]
        );
        assert_eq!(found[1].location, "all.yaml: Deployment/web init container `migrate`");
        assert_eq!(found[5].location, "all.yaml: StatefulSet/db container `pg`");
    }

    #[test]
    fn helm_source_comments_name_the_template_and_errors_the_line() {
        let text = "---\n# Source: app/templates/deploy.yaml\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: a:1}]}\n";
        assert_eq!(images(text, "helm template").unwrap()[0].location, "app/templates/deploy.yaml: Pod/p container `c`");
        let broken = "kind: Pod\n---\nkind: [Pod\n";
        let error = images(broken, "x.yaml").unwrap_err();
        assert!(error.starts_with("x.yaml:3:") || error.starts_with("x.yaml:4:"), "{error}");
    }
}
