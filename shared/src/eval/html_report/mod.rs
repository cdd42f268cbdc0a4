//! report.html: one self-contained page (inline CSS, JS and SVG; no network request, works from
//! `file://`) with an evaluation's summary table, its charts, each iteration's training curves
//! and a sample browser. [`render_html`] turns an [`HtmlReport`] into the page; the same inputs
//! give the same bytes. Charts come in as SVG text drawn by [`crate::eval::line_chart_svg`].

mod browser_data;
mod train_curves;

pub use browser_data::{browser_json, encode, BrowserData, BrowserPrompt};
pub use train_curves::train_curve_charts;

/// A table of already formatted cells; `numeric` columns align right.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

/// A titled group of charts (SVG documents), with a sentence that says what they show.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSection {
    pub heading: String,
    pub note: String,
    pub charts: Vec<String>,
    /// Shown folded (the training curves: one section per iteration).
    pub folded: bool,
}

/// Everything on the page.
#[derive(Debug, Clone)]
pub struct HtmlReport<'a> {
    pub title: &'a str,
    /// Judge, baseline and how to read the numbers: plain text.
    pub intro: &'a str,
    pub table: Table,
    pub sections: Vec<ChartSection>,
    /// [`browser_json`] encoded by [`encode`].
    pub browser_data: String,
}

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn table_html(t: &Table) -> String {
    let cell = |tag: &str, i: usize, text: &str| {
        let class = if t.numeric.get(i).copied().unwrap_or(false) {
            " class=\"num\""
        } else {
            ""
        };
        format!("<{tag}{class}>{}</{tag}>", escape_html(text))
    };
    let mut html = String::from("<table class=\"summary\"><thead><tr>");
    for (i, h) in t.headers.iter().enumerate() {
        html.push_str(&cell("th", i, h));
    }
    html.push_str("</tr></thead><tbody>\n");
    for row in &t.rows {
        html.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            html.push_str(&cell("td", i, c));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>\n");
    html
}

fn section_html(s: &ChartSection) -> String {
    let charts: String = s
        .charts
        .iter()
        .map(|svg| format!("<figure class=\"chart\">{svg}</figure>\n"))
        .collect();
    let (open, close) = if s.folded {
        (
            format!(
                "<details class=\"section\"><summary><h3>{}</h3></summary>",
                escape_html(&s.heading)
            ),
            "</details>",
        )
    } else {
        (
            format!(
                "<section class=\"section\"><h2>{}</h2>",
                escape_html(&s.heading)
            ),
            "</section>",
        )
    };
    format!(
        "{open}\n<p class=\"note\">{}</p>\n<div class=\"charts\">\n{charts}</div>{close}\n",
        escape_html(&s.note)
    )
}

/// The page. User-controlled text (model names, prompts, responses) reaches it only escaped,
/// or inside the base64 data block.
pub fn render_html(report: &HtmlReport) -> String {
    let title = escape_html(report.title);
    let sections: String = report.sections.iter().map(section_html).collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <h1>{title}</h1>\n<p class=\"intro\">{intro}</p>\n<h2>Summary</h2>\n{table}{sections}\
         <section class=\"section\" id=\"browser\"><h2>Samples</h2>\n\
         <p class=\"note\">Pick a prompt (search its id or text). Each model's K samples are \
         sorted by P(win) against the baseline; the first model's samples stay beside the \
         others. The address (#prompt=ID) keeps the choice.</p>\n\
         <div id=\"app\"><p id=\"status\">Loading the samples…</p></div>\n</section>\n\
         </main>\n<script type=\"application/octet-stream\" id=\"data\">{data}</script>\n\
         <script>\n{SCRIPT}</script>\n</body>\n</html>\n",
        intro = escape_html(report.intro),
        table = table_html(&report.table),
        data = report.browser_data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped_and_the_page_is_whole() {
        let page = render_html(&HtmlReport {
            title: "RSPO <evaluation>",
            intro: "judge `a&b`",
            table: Table {
                headers: vec!["model".into(), "win rate %".into()],
                numeric: vec![false, true],
                rows: vec![vec!["</script><b>".into(), "50.0".into()]],
            },
            sections: vec![ChartSection {
                heading: "iter-1: training".into(),
                note: "per step".into(),
                charts: vec!["<svg></svg>".into()],
                folded: true,
            }],
            browser_data: "QUJD".into(),
        });
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        assert!(page.contains("<title>RSPO &lt;evaluation&gt;</title>"));
        assert!(page.contains("<td>&lt;/script&gt;&lt;b&gt;</td><td class=\"num\">50.0</td>"));
        assert!(page.contains("judge `a&amp;b`"));
        assert!(page.contains("<figure class=\"chart\"><svg></svg></figure>"));
        assert!(page.contains("id=\"data\">QUJD</script>"));
        // No request leaves the page: no external source, link or import.
        for needle in ["src=", "href=", "@import", "http://", "https://", "fetch("] {
            assert!(!page.contains(needle), "{needle} in the page");
        }
    }
}
