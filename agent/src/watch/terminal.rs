//! stdout for `watch`, through crossterm: on a terminal, the alternate screen with the cursor
//! hidden, every frame redrawn in place and coloured by its lines' [`Tone`]; otherwise (a pipe, a
//! file, tests) every frame printed after a `--- <time>` line, without escape codes.

use std::{
    fmt::Write as _,
    io::{self, IsTerminal, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use crossterm::{
    cursor::{Hide, MoveTo, Show},
    queue,
    style::{Color, ContentStyle, Print, Stylize},
    terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen},
};

use super::{layout::Line, model::Tone};

/// Width given to frames when stdout is not a terminal.
pub(super) const PIPE_WIDTH: usize = 200;
/// Size assumed when a terminal does not say its own.
const FALLBACK_SIZE: (usize, usize) = (80, 24);

/// How a tone looks on a terminal: marked rows bold, critical lines red, warning lines yellow.
fn style(tone: Tone) -> ContentStyle {
    let s = ContentStyle::new();
    match tone {
        Tone::Normal => s,
        Tone::Mark => s.bold(),
        Tone::Warning => s.bold().with(Color::DarkYellow),
        Tone::Critical => s.bold().with(Color::DarkRed),
    }
}

/// The line's text with its tone's escape codes (none for a normal line).
fn paint(line: &Line) -> String {
    style(line.tone).apply(line.text.as_str()).to_string()
}

/// stdout: the alternate screen on a terminal (left on drop, even on error), plain frames otherwise.
pub(super) struct Screen {
    pub tty: bool,
    on_alternate: bool,
    out: io::Stdout,
}

impl Screen {
    pub fn new() -> io::Result<Screen> {
        let out = io::stdout();
        let tty = out.is_terminal();
        let mut s = Screen {
            tty,
            on_alternate: false,
            out,
        };
        if tty {
            queue!(
                s.out,
                EnterAlternateScreen,
                Hide,
                MoveTo(0, 0),
                Clear(ClearType::All)
            )?;
            s.on_alternate = true;
            queue!(s.out, Print("waiting for the first interval…"))?;
            s.out.flush()?;
        }
        Ok(s)
    }

    /// Width and height for the next frame.
    pub fn size(&self) -> (usize, Option<usize>) {
        if self.tty {
            let (w, h) = terminal::size()
                .ok()
                .filter(|&(w, h)| w > 0 && h > 0)
                .map_or(FALLBACK_SIZE, |(w, h)| (w.into(), h.into()));
            (w, Some(h))
        } else {
            (PIPE_WIDTH, None)
        }
    }

    pub fn frame(&mut self, time: SystemTime, lines: &[Line]) -> io::Result<()> {
        if self.tty {
            // Home, then each line cleared to its end, then the rest of the screen: no flicker,
            // and no newline after the last line, so the screen never scrolls.
            queue!(self.out, MoveTo(0, 0))?;
            for (i, l) in lines.iter().enumerate() {
                if i > 0 {
                    queue!(self.out, Print("\r\n"))?;
                }
                queue!(self.out, Print(paint(l)), Clear(ClearType::UntilNewLine))?;
            }
            queue!(
                self.out,
                Clear(ClearType::UntilNewLine),
                Clear(ClearType::FromCursorDown)
            )?;
        } else {
            // Whole seconds, or milliseconds for sub-second intervals.
            let subsec = time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let stamp = if subsec == 0 {
                humantime::format_rfc3339_seconds(time).to_string()
            } else {
                humantime::format_rfc3339_millis(time).to_string()
            };
            let mut buf = format!("--- {stamp}\n");
            for l in lines {
                let _ = writeln!(buf, "{}", l.text);
            }
            self.out.write_all(buf.as_bytes())?;
        }
        self.out.flush()
    }

    pub fn leave(&mut self) {
        if self.on_alternate {
            self.on_alternate = false;
            let _ = queue!(self.out, Show, LeaveAlternateScreen);
            let _ = self.out.flush();
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tones_are_coloured_and_normal_lines_left_alone() {
        assert_eq!(paint(&Line::plain("read")), "read");
        let critical = paint(&Line::new(Tone::Critical, "critical x"));
        let warning = paint(&Line::new(Tone::Warning, "warning x"));
        let mark = paint(&Line::new(Tone::Mark, "▲ read"));
        for (painted, text) in [
            (&critical, "critical x"),
            (&warning, "warning x"),
            (&mark, "▲ read"),
        ] {
            assert!(painted.starts_with('\x1b'), "{painted:?}");
            assert!(painted.contains(text), "{painted:?}");
            // Back to normal after the line.
            assert!(painted.ends_with("\x1b[0m"), "{painted:?}");
        }
        // Bold everywhere; red and yellow differ; a mark has no colour.
        assert!(
            [&critical, &warning, &mark]
                .iter()
                .all(|p| p.contains("\x1b[1m"))
        );
        assert_ne!(
            critical.replace("critical", ""),
            warning.replace("warning", "")
        );
        assert!(!mark.contains("38;"), "{mark:?}");
        // The tone is the line's, not its text's.
        assert_eq!(paint(&Line::plain("critical x")), "critical x");
    }
}
