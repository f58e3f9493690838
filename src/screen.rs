//! The screen of a container's terminal: a terminal emulator (the `vt100` crate) fed with
//! every output byte in order and sized as the PTY is, so that a client attaching to a
//! TTY container can first be sent one redraw of what the terminal shows (instead of a
//! blank screen until the program happens to print, or raw bytes that start
//! mid-sequence). Sans I/O: the server feeds it and asks it for redraws.

/// The largest screen modelled, rows and columns (a larger terminal is modelled at most
/// this large: its redraw then shows the top left of it), and the smallest: one column
/// could not hold a wide character.
pub const MAX_SIZE: (u16, u16) = (300, 800);
const MIN_SIZE: (u16, u16) = (1, 2);

fn bounded(rows: u16, columns: u16) -> (u16, u16) {
    (
        rows.clamp(MIN_SIZE.0, MAX_SIZE.0),
        columns.clamp(MIN_SIZE.1, MAX_SIZE.1),
    )
}

/// A terminal's screen, as its output so far made it.
pub struct Screen {
    parser: vt100::Parser,
}

/// What a cell shows: its text, whether it is bold or inverse, and its colours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub bold: bool,
    pub inverse: bool,
    pub foreground: vt100::Color,
    pub background: vt100::Color,
}

/// Leaves the alternate screen (restoring the cursor saved on entering it), and enters it.
const LEAVE_ALTERNATE: &[u8] = b"\x1b[?1049l";
const ENTER_ALTERNATE: &[u8] = b"\x1b[?1049h";

impl Screen {
    /// A blank screen of `rows` x `columns` (within [`MAX_SIZE`]), without scrollback.
    pub fn new(rows: u16, columns: u16) -> Screen {
        let (rows, columns) = bounded(rows, columns);
        Screen {
            parser: vt100::Parser::new(rows, columns, 0),
        }
    }

    /// The next output bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    /// The terminal's new size (rows, columns), as the PTY was just set.
    pub fn resize(&mut self, rows: u16, columns: u16) {
        let (rows, columns) = bounded(rows, columns);
        self.parser.screen_mut().set_size(rows, columns);
    }

    /// Rows and columns.
    pub fn size(&self) -> (u16, u16) {
        self.parser.screen().size()
    }

    /// Bytes that make a terminal of this size show this screen: contents with their
    /// attributes, the cursor's position and visibility, and the input modes that matter
    /// to what a client sends (application keypad and cursor keys, bracketed paste,
    /// mouse reporting). On the alternate screen (a full-screen program), the normal
    /// screen is drawn first and the alternate one entered, so that the program's exit
    /// from it shows what it showed in the container.
    pub fn redraw(&self) -> Vec<u8> {
        let screen = self.parser.screen();
        let mut out = Vec::with_capacity(usize::from(screen.size().0) * usize::from(screen.size().1) + 256);
        if screen.alternate_screen() {
            // The normal screen, as leaving the alternate one would show it.
            let (rows, columns) = screen.size();
            let mut normal = vt100::Parser::new(rows, columns, 0);
            *normal.screen_mut() = screen.clone();
            normal.process(LEAVE_ALTERNATE);
            out.extend_from_slice(&normal.screen().contents_formatted());
            out.extend_from_slice(ENTER_ALTERNATE);
        } else {
            // (A terminal left on its alternate screen by what ran in it before.)
            out.extend_from_slice(LEAVE_ALTERNATE);
        }
        out.extend_from_slice(&screen.state_formatted());
        out
    }

    /// What each cell shows, row by row (for comparing two screens).
    pub fn cells(&self) -> Vec<Vec<Cell>> {
        let screen = self.parser.screen();
        let (rows, columns) = screen.size();
        (0..rows)
            .map(|r| {
                (0..columns)
                    .map(|c| match screen.cell(r, c) {
                        Some(cell) => Cell {
                            text: cell.contents().to_string(),
                            bold: cell.bold(),
                            inverse: cell.inverse(),
                            foreground: cell.fgcolor(),
                            background: cell.bgcolor(),
                        },
                        None => Cell::default(),
                    })
                    .collect()
            })
            .collect()
    }

    /// The cursor: row, column, and whether it is hidden; and whether the alternate
    /// screen is in use.
    pub fn cursor(&self) -> (u16, u16, bool, bool) {
        let screen = self.parser.screen();
        let (row, column) = screen.cursor_position();
        (row, column, screen.hide_cursor(), screen.alternate_screen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full-screen program's output: the normal screen, then positioned, coloured text
    /// on the alternate screen, application cursor keys and bracketed paste on.
    fn session() -> Vec<u8> {
        let mut out = b"$ ls\r\nfile-a  file-b\r\n$ top\r\n".to_vec();
        out.extend_from_slice(b"\x1b[?1049h\x1b[H\x1b[2J\x1b[?1h\x1b[?2004h");
        for row in 1..=10 {
            out.extend_from_slice(format!("\x1b[{row};{}H\x1b[1;3{}mrow {row}\x1b[0m", row * 2, row % 8).as_bytes());
        }
        out.extend_from_slice(b"\x1b[5;40H\x1b[7m inverse \x1b[27m\x1b[?25l\x1b[12;7H");
        out
    }

    /// Whether two screens show the same: cells, cursor, alternate screen, input modes.
    fn same(a: &Screen, b: &Screen) -> bool {
        let modes = |s: &Screen| s.parser.screen().input_mode_formatted();
        a.cells() == b.cells() && a.cursor() == b.cursor() && modes(a) == modes(b)
    }

    #[test]
    fn a_redraw_makes_a_fresh_terminal_show_the_same_screen() {
        let output = session();
        // Whatever the split, the model is the same as one fed all at once.
        for split in [1, 7, 100, output.len()] {
            let mut model = Screen::new(24, 80);
            for piece in output.chunks(split) {
                model.feed(piece);
            }
            let mut fresh = Screen::new(24, 80);
            fresh.feed(&model.redraw());
            assert!(same(&model, &fresh), "split {split}");
            // And the live output after the redraw goes on the same on both.
            let more = b"\x1b[3;3Hmore\x1b[?1049l$ ";
            model.feed(more);
            fresh.feed(more);
            assert!(
                same(&model, &fresh),
                "after leaving the alternate screen, split {split}"
            );
            assert!(fresh.parser.screen().contents().contains("file-a  file-b"));
        }
    }

    #[test]
    fn resizes_follow_the_pty() {
        let mut model = Screen::new(24, 80);
        model.feed(b"hello");
        model.resize(40, 120);
        assert_eq!(model.size(), (40, 120));
        model.resize(0, 0);
        assert_eq!(model.size(), (1, 2));
        model.resize(u16::MAX, u16::MAX);
        assert_eq!(model.size(), MAX_SIZE);
    }
}
