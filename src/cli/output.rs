//! Output: `-o json|yaml`, aligned tables, and colours that appear only on a terminal and
//! never with `NO_COLOR` (anstream decides, by the same rules as cargo and clap).

use std::io::IsTerminal;

use anstream::ColorChoice;
use anstyle::{AnsiColor, Style};
use serde::Serialize;

use super::Error;

/// How a command prints its result.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML on stdout (`Format::Text` is the caller's business).
pub fn print<T: Serialize>(format: Format, value: &T) -> Result<(), Error> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Failed(format!("cannot write JSON: {e}")))?,
        Format::Yaml | Format::Text => serde_saphyr::to_string(value)
            .map_err(|e| Error::Failed(format!("cannot write YAML: {e}")))?,
    };
    print!("{text}");
    Ok(())
}

/// Several objects as one `v1` `List`, as kubectl prints them.
pub fn list<T: Serialize>(items: &[T]) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Styles for one output stream: plain text when that stream may not have colours.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    on: bool,
}

impl Palette {
    /// For stdout.
    pub fn stdout() -> Palette {
        Palette::for_stream(&std::io::stdout())
    }

    /// For stderr.
    pub fn stderr() -> Palette {
        Palette::for_stream(&std::io::stderr())
    }

    /// No colours at all.
    pub fn plain() -> Palette {
        Palette { on: false }
    }

    fn for_stream<S: anstream::stream::RawStream + IsTerminal>(stream: &S) -> Palette {
        Palette {
            on: anstream::AutoStream::choice(stream) != ColorChoice::Never,
        }
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.on {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    /// Success (green, bold).
    pub fn good(&self, text: &str) -> String {
        self.paint(
            Style::new().fg_color(Some(AnsiColor::Green.into())).bold(),
            text,
        )
    }

    /// Failure (red, bold).
    pub fn bad(&self, text: &str) -> String {
        self.paint(
            Style::new().fg_color(Some(AnsiColor::Red.into())).bold(),
            text,
        )
    }

    /// Waiting (yellow).
    pub fn pending(&self, text: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Yellow.into())), text)
    }

    /// Less important (dimmed).
    pub fn dim(&self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }

    /// Emphasis (bold).
    pub fn bold(&self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }

    /// A phase name coloured by what it means.
    pub fn phase(&self, phase: &str) -> String {
        match phase {
            "Active" => self.good(phase),
            "Denied" | "Failed" => self.bad(phase),
            "Pending" => self.pending(phase),
            _ => self.dim(phase),
        }
    }
}

/// A table whose columns are aligned on the plain text; `style` colours one cell after
/// padding, so escape codes never shift the columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as titles).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table as lines, with two spaces between columns; `style(column, cell)` may
    /// colour a padded cell.
    pub fn render(&self, style: impl Fn(usize, &str) -> String) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String], styled: bool| -> String {
            let last = cells.len().saturating_sub(1);
            let mut out = String::new();
            for (i, c) in cells.iter().enumerate() {
                let padded = if i == last {
                    c.clone()
                } else {
                    format!("{c:<width$}  ", width = widths[i])
                };
                if styled {
                    let (text, pad) = padded.split_at(c.len());
                    out.push_str(&style(i, text));
                    out.push_str(pad);
                } else {
                    out.push_str(&padded);
                }
            }
            out.trim_end().to_string()
        };
        let mut out = line(&self.header, false);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r, true));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_plain_text_even_when_coloured() {
        let mut t = Table::new(&["NAME", "PHASE", "LEFT"]);
        t.row(vec!["a".into(), "Active".into(), "12m left".into()]);
        t.row(vec!["longer-name".into(), "Pending".into(), "-".into()]);
        let plain = t.render(|_, c| c.to_string());
        assert_eq!(
            plain,
            "NAME         PHASE    LEFT\na            Active   12m left\nlonger-name  Pending  -\n"
        );
        let on = Palette { on: true };
        let coloured = t.render(|i, c| if i == 1 { on.phase(c) } else { c.to_string() });
        let stripped: String = anstream::adapter::strip_str(&coloured).to_string();
        assert_eq!(stripped, plain);
        assert!(coloured.contains("\x1b["));
    }

    #[test]
    fn a_plain_palette_adds_nothing() {
        let p = Palette::plain();
        assert_eq!(p.bad("error:"), "error:");
        assert_eq!(p.phase("Active"), "Active");
    }
}
