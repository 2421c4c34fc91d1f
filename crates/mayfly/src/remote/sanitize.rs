//! Keeps a session's output from making the local terminal type. Some
//! escape sequences request a report from the terminal (its title, a
//! setting, its answerback string), and the terminal replies by writing to
//! its own input, where the local shell would read it as typed once the
//! client has exited. Others write to the local clipboard. The filter drops
//! those and passes everything else unchanged, across chunk boundaries.

/// The kind of sequence the filter is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    Escape,
    /// A control sequence; the parameters so far are kept.
    Csi,
    /// An operating system command; its number so far is kept.
    Osc,
    OscEscape,
    /// A device control string, dropped whole.
    Dcs,
    DcsEscape,
}

pub struct Sanitizer {
    state: State,
    held: Vec<u8>,
}

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
const ENQ: u8 = 0x05;
/// Held sequences longer than this are passed on as they are, so that a
/// stray escape cannot make the filter hold output back for ever.
const MAX_HELD: usize = 4096;

/// OSC numbers that only set something on screen: window titles (0, 1, 2)
/// and hyperlinks (8). Every other OSC is dropped.
fn harmless_osc(held: &[u8]) -> bool {
    let body = &held[2..];
    let number: Vec<u8> = body.iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    let rest = &body[number.len()..];
    matches!(number.as_slice(), b"0" | b"1" | b"2" | b"8") && rest.first() == Some(&b';') && !rest.contains(&b'?')
}

/// CSI sequences that ask for a report: window title and icon label
/// (`CSI 20 t`, `CSI 21 t`).
fn reporting_csi(held: &[u8]) -> bool {
    let Some(&last) = held.last() else { return false };
    let params = &held[2..held.len() - 1];
    last == b't' && (params == b"20" || params == b"21")
}

impl Sanitizer {
    pub fn new() -> Sanitizer {
        Sanitizer { state: State::Text, held: Vec::new() }
    }

    pub fn filter(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            self.step(byte, &mut out);
            if self.held.len() > MAX_HELD && matches!(self.state, State::Csi | State::Osc | State::OscEscape) {
                out.append(&mut self.held);
                self.state = State::Text;
            }
        }
        out
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Text => match byte {
                ESC => {
                    self.held.push(byte);
                    self.state = State::Escape;
                }
                ENQ => {}
                _ => out.push(byte),
            },
            State::Escape => {
                self.held.push(byte);
                self.state = match byte {
                    b'[' => State::Csi,
                    b']' => State::Osc,
                    b'P' => State::Dcs,
                    _ => {
                        out.append(&mut self.held);
                        State::Text
                    }
                };
            }
            State::Csi => {
                self.held.push(byte);
                if (0x40..=0x7e).contains(&byte) {
                    if !reporting_csi(&self.held) {
                        out.extend_from_slice(&self.held);
                    }
                    self.held.clear();
                    self.state = State::Text;
                }
            }
            State::Osc => match byte {
                BEL => {
                    self.held.push(byte);
                    self.finish_osc(out);
                }
                ESC => {
                    self.held.push(byte);
                    self.state = State::OscEscape;
                }
                _ => self.held.push(byte),
            },
            State::OscEscape => {
                self.held.push(byte);
                if byte == b'\\' {
                    self.finish_osc(out);
                } else {
                    self.state = State::Osc;
                }
            }
            State::Dcs => {
                if byte == ESC {
                    self.state = State::DcsEscape;
                }
            }
            State::DcsEscape => {
                if byte == b'\\' {
                    self.held.clear();
                    self.state = State::Text;
                } else if byte != ESC {
                    self.state = State::Dcs;
                }
            }
        }
    }

    fn finish_osc(&mut self, out: &mut Vec<u8>) {
        if harmless_osc(&self.held) {
            out.extend_from_slice(&self.held);
        }
        self.held.clear();
        self.state = State::Text;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut sanitizer = Sanitizer::new();
        chunks.iter().flat_map(|c| sanitizer.filter(c)).collect()
    }

    #[test]
    fn ordinary_output_and_colours_pass() {
        let text = b"hello \x1b[1;31mred\x1b[0m \x1b]0;my title\x07done\r\n";
        assert_eq!(run(&[text]), text.to_vec());
        assert_eq!(run(&[b"\x1b[2", b"J\x1b", b"[H"]), b"\x1b[2J\x1b[H".to_vec(), "sequences split across chunks");
    }

    #[test]
    fn reports_clipboard_writes_and_answerback_are_dropped() {
        assert_eq!(run(&[b"a\x1b[21tb"]), b"ab".to_vec(), "title report");
        assert_eq!(run(&[b"a\x1b]52;c;ZXZpbA==\x07b"]), b"ab".to_vec(), "clipboard write");
        assert_eq!(run(&[b"a\x1b]5", b"2;c;x\x1b\\b"]), b"ab".to_vec(), "clipboard write split, with ST");
        assert_eq!(run(&[b"a\x1bP$qm\x1b\\b"]), b"ab".to_vec(), "DECRQSS");
        assert_eq!(run(&[b"a\x05b"]), b"ab".to_vec(), "ENQ answerback");
        assert_eq!(run(&[b"a\x1b]10;?\x07b"]), b"ab".to_vec(), "colour query");
        assert_eq!(run(&[b"a\x1b]2;?\x07b"]), b"ab".to_vec(), "a title with a query mark");
    }
}
