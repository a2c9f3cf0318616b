//! `weft sql` on a terminal without `-e`/`-f`: an interactive shell, as
//! datafusion-cli and the Trino CLI offer. Line editing and history
//! (`~/.weft_history`, or `WEFT_HISTORY`), statements over several lines
//! ending in `;`, the progress line while a statement runs, and the row
//! count and seconds after each result. `quit`, `exit`, `\q` or Ctrl-D
//! leave; Ctrl-C drops the statement being typed.

use std::path::PathBuf;
use std::time::Instant;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::{print_batches, statements, Format, Session};

fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".weft_history"))
}

/// Whether `buffer` holds a complete statement: it ends with `;` outside
/// quotes and comments.
fn complete(buffer: &str) -> bool {
    let (mut single, mut double, mut last) = (false, false, None);
    let mut chars = buffer.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '-' if !single && !double && chars.peek() == Some(&'-') => {
                // A line comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last = Some((c, single || double));
        }
    }
    matches!(last, Some((';', false)))
}

pub(crate) async fn run(session: &mut Session, format: Format) -> anyhow::Result<()> {
    let mut editor = DefaultEditor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(h);
    }
    eprintln!("Weft SQL shell: end statements with ';', leave with quit or Ctrl-D.");
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "weft> "
        } else {
            "   -> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && matches!(line.trim(), "quit" | "exit" | "\\q") {
                    break;
                }
                if buffer.is_empty() && line.trim().is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !complete(&buffer) {
                    continue;
                }
                let text = std::mem::take(&mut buffer);
                let _ = editor.add_history_entry(text.trim());
                execute(session, &text, format).await;
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        if let Err(e) = editor.save_history(h) {
            eprintln!("cannot save the history to {}: {e}", h.display());
        }
    }
    Ok(())
}

/// Runs every statement of `text`; an error is shown and the shell goes on.
async fn execute(session: &mut Session, text: &str, format: Format) {
    let list = match statements(text) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return;
        }
    };
    for statement in list {
        let started = Instant::now();
        match session.run(&statement).await {
            Ok(batches) => {
                if let Err(e) = print_batches(&batches, format) {
                    eprintln!("error: {e:#}");
                    return;
                }
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                eprintln!(
                    "{rows} row{} in {:.3}s",
                    if rows == 1 { "" } else { "s" },
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn a_statement_ends_with_a_semicolon_outside_quotes_and_comments() {
        assert!(complete("SELECT 1;\n"));
        assert!(complete("SELECT 1\nFROM t\n;  \n"));
        assert!(!complete("SELECT 1\n"));
        assert!(!complete("SELECT ';\n"));
        assert!(complete("SELECT ';';\n"));
        assert!(!complete("SELECT 1 -- done;\n"));
        assert!(!complete("SELECT \"a;\n"));
    }
}
