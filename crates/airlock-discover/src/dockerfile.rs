//! Images in Dockerfiles: the `FROM` of each stage and `COPY --from=IMAGE`, with `ARG`s
//! substituted, earlier stages and `scratch` left out.

use std::collections::HashMap;

use crate::Found;

/// The base images `text` pulls. `build_args` override the `ARG` defaults, as `--build-arg` does.
pub fn images(text: &str, file: &str, build_args: &[(String, String)]) -> Vec<Found> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut seen_from = false;
    for (line, instruction) in instructions(text) {
        let mut words = instruction.split_whitespace();
        let Some(keyword) = words.next() else { continue };
        let rest: Vec<&str> = words.collect();
        match keyword.to_ascii_uppercase().as_str() {
            // Only ARGs before the first FROM are in scope for FROM lines.
            "ARG" if !seen_from => {
                for declaration in &rest {
                    let (name, default) = match declaration.split_once('=') {
                        Some((name, value)) => (name, Some(value.trim_matches('"').to_owned())),
                        None => (*declaration, None),
                    };
                    let value = build_args.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).or(default);
                    if let Some(value) = value {
                        args.insert(name.to_owned(), value);
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                let operands: Vec<&str> = rest.iter().copied().filter(|w| !w.starts_with("--")).collect();
                let Some(image) = operands.first() else { continue };
                let image = substitute(image, &args);
                let stage = match operands.as_slice() {
                    [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
                    _ => None,
                };
                if !image.eq_ignore_ascii_case("scratch") && !stages.contains(&image.to_ascii_lowercase()) {
                    found.push(Found { image, location: format!("{file}:{line}: FROM") });
                }
                stages.push(stage.unwrap_or_else(|| format!("#{}", stages.len())));
            }
            "COPY" | "ADD" => {
                for flag in &rest {
                    let Some(from) = flag.strip_prefix("--from=") else { continue };
                    let from = substitute(from, &args);
                    let is_stage = stages.contains(&from.to_ascii_lowercase()) || from.parse::<usize>().is_ok_and(|n| n < stages.len());
                    if !is_stage {
                        found.push(Found { image: from, location: format!("{file}:{line}: {} --from", keyword.to_ascii_uppercase()) });
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Instructions with their first line, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (idx, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (continued, body) = match trimmed.strip_suffix('\\') {
            Some(body) => (true, body),
            None => (false, trimmed),
        };
        let entry = current.get_or_insert_with(|| (idx + 1, String::new()));
        entry.1.push(' ');
        entry.1.push_str(body);
        if !continued {
            out.extend(current.take());
        }
    }
    out.extend(current);
    out
}

/// `$NAME`, `${NAME}`, `${NAME:-default}` replaced from `args` (unknown names become empty, as
/// the builder does, unless a default is given).
fn substitute(word: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            let inner: String = chars.by_ref().take_while(|c| *c != '}').collect();
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name.to_owned(), Some(default.to_owned())),
                None => (inner.clone(), None),
            };
            match args.get(&name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(value),
                None => out.push_str(&default.unwrap_or_default()),
            }
        } else {
            let mut name = String::new();
            while let Some(c) = chars.peek().copied().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                name.push(c);
                chars.next();
            }
            out.push_str(args.get(&name).map(String::as_str).unwrap_or(""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_args_and_copy_from() {
        let text = "# syntax=docker/dockerfile:1\nARG REGISTRY=docker.io/library/\nARG GO=1.22\nFROM --platform=$BUILDPLATFORM ${REGISTRY}golang:${GO} AS build\nRUN go build \\\n  ./...\nFROM build AS test\nFROM scratch\nCOPY --from=build /app /app\nCOPY --from=ghcr.io/org/tools:1 /bin/tool /bin/tool\nFROM ${BASE:-alpine:3.20}\n";
        let found = images(text, "Dockerfile", &[]);
        let names: Vec<&str> = found.iter().map(|f| f.image.as_str()).collect();
        assert_eq!(names, ["docker.io/library/golang:1.22", "ghcr.io/org/tools:1", "alpine:3.20"]);
        assert_eq!(found[0].location, "Dockerfile:4: FROM");
        let overridden = images(text, "Dockerfile", &[("GO".into(), "1.23".into())]);
        assert_eq!(overridden[0].image, "docker.io/library/golang:1.23");
    }
}
