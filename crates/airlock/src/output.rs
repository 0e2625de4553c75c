//! The only module that prints. stdout carries data (text or `-o json`); stderr carries errors,
//! hints and progress. A closed stdout (`airlock tags x | head`) ends the run quietly.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

/// Prints data lines to stdout.
pub fn data(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout.write_all(text.as_bytes()).and_then(|()| {
        if text.ends_with('\n') || text.is_empty() {
            Ok(())
        } else {
            stdout.write_all(b"\n")
        }
    });
    exit_on_broken_pipe(result.and_then(|()| stdout.flush()));
}

/// Prints bytes exactly (`inspect --raw`).
pub fn raw(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    exit_on_broken_pipe(stdout.write_all(bytes).and_then(|()| stdout.flush()));
}

/// Prints one JSON document.
pub fn json(value: &impl serde::Serialize) {
    data(&serde_json::to_string_pretty(value).expect("CLI output serialises"));
}

fn exit_on_broken_pipe(result: std::io::Result<()>) {
    if let Err(error) = result {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `error: …`, one `caused by:` line per source, then the hint after a blank line.
pub fn error(error: &anyhow::Error, hint: Option<&str>) {
    let mut text = format!("error: {}\n", headline(error));
    for cause in error.chain().skip(1) {
        text.push_str(&format!("  caused by: {cause}\n"));
    }
    if let Some(hint) = hint {
        text.push_str(&format!("\nhint: {hint}\n"));
    }
    eprint!("{text}");
}

/// The first line of an error: its top message, and when a connection could not be made, why
/// in words (the cause would otherwise sit a few `caused by` lines down).
fn headline(error: &anyhow::Error) -> String {
    let problem = error.chain().find_map(|cause| cause.downcast_ref::<airlock_store::Error>()).and_then(airlock_store::Error::connection_problem);
    match problem {
        Some(problem) if !error.to_string().contains(&problem) => format!("{error}: {problem}"),
        _ => error.to_string(),
    }
}

/// A failure as `-o json` prints it on stdout: `{"error": {"message", "causes", "hint",
/// "exit_code"}}`.
pub fn json_error(error: &anyhow::Error, hint: Option<&str>, exit_code: u8) {
    let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
    json(&serde_json::json!({"error": {"message": headline(error), "causes": causes, "hint": hint, "exit_code": exit_code}}));
}

/// A question on stderr, the answer to be typed on the same line.
pub fn prompt(text: &str) {
    use std::io::Write as _;
    eprint!("{text}");
    let _ = std::io::stderr().flush();
}

/// A line for people on stderr (notes that are not data).
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// A table for people, in the manner of `az acr task list-runs -o table` (the run lists of the
/// seeds): a header, a rule, the rows, columns as wide as their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = header.iter().enumerate().map(|(i, h)| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(h.len())).collect();
    let line = |cells: Vec<&str>| {
        let joined: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", joined.join("  ").trim_end())
    };
    let mut text = line(header.to_vec());
    text.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(String::as_str).collect()));
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

/// A digest as tables show it: `sha256:` and the first twelve hex digits; `-` for none.
pub fn short_digest(digest: Option<&str>) -> String {
    digest.map(|d| d.chars().take(19).collect()).unwrap_or_else(|| "-".into())
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
