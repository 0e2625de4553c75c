//! The small SVG chart of an import tag's upstream digests over time: one mark per run,
//! oldest on the left, its shape and colour by outcome (and a text legend, so status is not
//! told by colour alone), each with a `<title>` a screen reader and a hover show.

use airlock_gate::runs::{status_of, Run, Status};

/// XML-escapes text for an attribute or an element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// What a run did, as the chart marks it.
fn outcome(run: &Run) -> (&'static str, &'static str, &'static str) {
    match (status_of(run), run.trigger.as_str()) {
        (Status::Succeeded, "Rollback") => ("rolled back", "#0a58ca", "triangle"),
        (Status::Succeeded, _) => ("promoted", "#1a7f37", "circle"),
        (Status::Failed, _) => ("refused", "#cf222e", "square"),
        (Status::Error, _) => ("error", "#9a6700", "diamond"),
        (Status::Running, _) => ("running", "#57606a", "ring"),
    }
}

/// The chart of `runs` (newest first, as listed), at most the 40 newest.
pub fn svg(runs: &[&Run]) -> String {
    let shown: Vec<&&Run> = runs.iter().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    if shown.is_empty() {
        return String::new();
    }
    let step = 24.0;
    let width = 16.0 + step * shown.len() as f64;
    let mut out = format!(
        "<svg class=\"timeline\" width=\"{width}\" height=\"56\" viewBox=\"0 0 {width} 56\" role=\"img\" aria-label=\"Upstream digests over time, oldest first: {} runs\" xmlns=\"http://www.w3.org/2000/svg\">",
        shown.len()
    );
    out.push_str("<line x1=\"8\" y1=\"24\" x2=\"");
    out.push_str(&format!("{}\" y2=\"24\" stroke=\"#d0d7de\" stroke-width=\"2\"/>", width - 8.0));
    for (n, run) in shown.iter().enumerate() {
        let (word, colour, shape) = outcome(run);
        let x = 16.0 + step * n as f64;
        let digest = run.upstream_digest.as_deref().unwrap_or("no digest");
        let short = digest.strip_prefix("sha256:").map(|h| &h[..h.len().min(12)]).unwrap_or(digest);
        let title = escape(&format!("{} {word}: {short} ({})", run.run_id, airlock_oci::time::rfc3339(run.started)));
        let mark = match shape {
            "circle" => format!("<circle cx=\"{x}\" cy=\"24\" r=\"7\" fill=\"{colour}\"/>"),
            "square" => format!("<rect x=\"{}\" y=\"17\" width=\"14\" height=\"14\" fill=\"{colour}\"/>", x - 7.0),
            "triangle" => format!("<polygon points=\"{},{} {},{} {},{}\" fill=\"{colour}\"/>", x, 16, x - 8.0, 31, x + 8.0, 31),
            "diamond" => format!("<polygon points=\"{x},16 {},24 {x},32 {},24\" fill=\"{colour}\"/>", x + 8.0, x - 8.0),
            _ => format!("<circle cx=\"{x}\" cy=\"24\" r=\"6\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>"),
        };
        out.push_str(&format!("<a href=\"/ui/runs/{}\"><g><title>{title}</title>{mark}</g></a>", escape(&run.run_id)));
    }
    out.push_str("</svg>");
    out.push_str("<p class=\"legend muted\"><span>● promoted</span><span>■ refused</span><span>▲ rolled back</span><span>◆ error</span><span>○ running</span></p>");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn titles_are_escaped() {
        assert_eq!(super::escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
