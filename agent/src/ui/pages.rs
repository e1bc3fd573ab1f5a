//! Local pages the tray opens: "What is collected…" (PRIVACY.md, built into the agent) and
//! "Show my recent data" (the transparency file, exactly as sent).
//!
//! Owns turning them into plain HTML files in the agent's data directory and handing a file
//! to the desktop's opener (`xdg-open`, `open`, `start`). Never fetches anything: both pages
//! are self-contained, with no scripts, styles or images from elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::state::{self, Recent, StateError};

/// PRIVACY.md as it was when this agent was built: the page says what this very build does.
pub const PRIVACY_MD: &str = include_str!("../../../PRIVACY.md");

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{}</title><style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;\
         padding:0 1em;line-height:1.45}}pre{{white-space:pre-wrap;background:#f4f4f4;padding:.6em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;\
         vertical-align:top}}</style></head><body>\n{body}\n</body></html>\n",
        escape(title)
    )
}

/// A plain rendering of the privacy notice: headings, paragraphs, lists, tables and code
/// blocks; everything else is shown as written (escaped, never interpreted as HTML).
pub fn privacy_html(markdown: &str) -> String {
    let mut out = String::new();
    let mut para: Vec<&str> = Vec::new();
    let mut in_code = false;
    let mut in_list = false;
    let flush = |para: &mut Vec<&str>, out: &mut String| {
        if !para.is_empty() {
            out.push_str(&format!("<p>{}</p>\n", escape(&para.join(" "))));
            para.clear();
        }
    };
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            flush(&mut para, &mut out);
            out.push_str(if in_code { "</pre>\n" } else { "<pre>" });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&escape(line));
            out.push('\n');
            continue;
        }
        let t = line.trim();
        let item = t.strip_prefix("- ").or_else(|| t.strip_prefix("* "));
        if in_list && item.is_none() && (t.is_empty() || !line.starts_with(' ')) {
            out.push_str("</ul>\n");
            in_list = false;
        }
        if t.is_empty() {
            flush(&mut para, &mut out);
        } else if let Some(h) = t.strip_prefix('#') {
            flush(&mut para, &mut out);
            let level = 1 + h.chars().take_while(|c| *c == '#').count();
            let text = h.trim_start_matches('#').trim();
            out.push_str(&format!("<h{level}>{}</h{level}>\n", escape(text)));
        } else if let Some(i) = item {
            flush(&mut para, &mut out);
            if !in_list {
                out.push_str("<ul>\n");
                in_list = true;
            }
            out.push_str(&format!("<li>{}</li>\n", escape(i)));
        } else if in_list {
            // A list item's continuation line.
            out.push_str(&format!("<div>{}</div>\n", escape(t)));
        } else if t.starts_with('|') {
            flush(&mut para, &mut out);
            if t.trim_matches(|c| c == '|' || c == '-' || c == ' ')
                .is_empty()
            {
                continue;
            }
            let cells: Vec<String> = t
                .trim_matches('|')
                .split('|')
                .map(|c| format!("<td>{}</td>", escape(c.trim())))
                .collect();
            out.push_str(&format!("<table><tr>{}</tr></table>\n", cells.concat()));
        } else {
            para.push(t);
        }
    }
    flush(&mut para, &mut out);
    if in_list {
        out.push_str("</ul>\n");
    }
    if in_code {
        out.push_str("</pre>\n");
    }
    page("Cadence: what is collected", &out)
}

/// The transparency page: every record kept, newest first, payload exactly as sent.
pub fn recent_html(dir: &Path) -> Result<String, StateError> {
    let recs = Recent::load(dir)?;
    let mut body = format!(
        "<h1>Your recent data</h1>\n<p>The last {} records this agent sealed for your \
         organization's verifier, newest first, exactly as they were sent (before encryption). \
         The same list: <code>cadence-agent show</code>. Kept in <code>{}</code>.</p>\n",
        recs.len(),
        escape(&dir.join("recent.jsonl").display().to_string())
    );
    if recs.is_empty() {
        body.push_str("<p>Nothing has been sent yet.</p>\n");
    }
    for r in recs.iter().rev() {
        body.push_str(&format!(
            "<h2>#{} {} — sealed at {} ms since 1970</h2>\n<pre>{}</pre>\n",
            r.seq,
            escape(&r.kind),
            r.sealed_at_ms,
            escape(&r.payload)
        ));
    }
    Ok(page("Cadence: your recent data", &body))
}

/// Writes a page into the data directory and returns its path.
pub fn write_page(dir: &Path, name: &str, html: &str) -> Result<PathBuf, StateError> {
    let path = dir.join(name);
    state::write_atomic(&path, html.as_bytes(), true)?;
    Ok(path)
}

/// Hands `path` to the desktop's opener; does not wait for it.
pub fn open(path: &Path) -> std::io::Result<()> {
    let mut c = if cfg!(windows) {
        let mut c = Command::new("cmd");
        c.args(["/C", "start", ""]);
        c
    } else if cfg!(target_os = "macos") {
        Command::new("open")
    } else {
        Command::new("xdg-open")
    };
    let mut child = c
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Reaped on its own thread: the opener may linger while the browser starts.
    std::thread::spawn(move || child.wait());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_privacy_page_is_escaped_and_complete() {
        let h = privacy_html(
            "# Title\n\nSome <b>text</b> & more\n- one\n- two\n\n| a | b |\n|---|---|\n| c | d |\n```\ncode <x>\n```\n",
        );
        assert!(h.contains("<h1>Title</h1>"));
        assert!(h.contains("Some &lt;b&gt;text&lt;/b&gt; &amp; more"));
        assert!(h.contains("<li>one</li>") && h.contains("<li>two</li>"));
        assert!(h.contains("<td>c</td>"));
        assert!(h.contains("code &lt;x&gt;"));
        let real = privacy_html(PRIVACY_MD);
        assert!(real.contains("What is never collected"));
    }

    #[test]
    fn the_recent_page_shows_payloads_escaped() {
        let dir = std::env::temp_dir().join(format!("cadence-pages-{}", std::process::id()));
        state::ensure_dir(&dir).unwrap();
        state::Recent::push(
            &dir,
            state::RecentRecord {
                seq: 3,
                kind: "features".into(),
                sealed_at_ms: 9,
                payload: "{\"x\":\"<script>\"}".into(),
            },
        )
        .unwrap();
        let h = recent_html(&dir).unwrap();
        assert!(h.contains("#3 features"));
        assert!(h.contains("&lt;script&gt;") && !h.contains("<script>"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
