//! The viewer's input, as the attach WebSocket carries it, and the checks
//! it passes before it reaches the browser.

use serde::Deserialize;

/// One input message from a viewer.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    Mouse { action: MouseAction, x: f64, y: f64, #[serde(default)] button: Button, #[serde(default)] buttons: u32, #[serde(default)] click_count: u32, #[serde(default)] modifiers: u32 },
    Wheel { x: f64, y: f64, delta_x: f64, delta_y: f64, #[serde(default)] modifiers: u32 },
    /// A touch screen's contacts: all that touch the screen after the
    /// change, or for `end` and `cancel` the ones that left.
    Touch { action: TouchAction, points: Vec<TouchPoint>, #[serde(default)] modifiers: u32 },
    Key { action: KeyAction, key: String, code: String, #[serde(default)] text: String, #[serde(default)] key_code: u32, #[serde(default)] modifiers: u32 },
    /// Text typed without a key of its own: a finished IME composition or
    /// a dead-key character.
    Text { text: String },
    /// The text of an IME composition in progress; empty text cancels it.
    Compose { text: String, #[serde(default)] selection_start: u32, #[serde(default)] selection_end: u32 },
    /// Text from the user's clipboard; the profile must allow clipboard_in.
    Paste { text: String },
    /// Asks for the page's selected text for the user's clipboard; the
    /// profile must allow clipboard_out.
    Copy,
    Navigate { url: String },
    /// The viewer's screen area changed: the page's viewport follows it.
    Viewport { width: u32, height: u32 },
    Back,
    Forward,
    Reload,
    /// Opens a tab, on `url` or a blank page, and shows it.
    NewTab { #[serde(default)] url: Option<String> },
    /// Shows the tab with this id.
    SwitchTab { id: String },
    /// Closes the tab with this id; closing the last one opens a blank tab.
    CloseTab { id: String },
    /// Releases every key, button and touch the viewer holds down, such as
    /// when it loses focus.
    ReleaseAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MouseAction {
    Move,
    Down,
    Up,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Button {
    #[default]
    None,
    Left,
    Middle,
    Right,
}

impl Button {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Button::None => "none",
            Button::Left => "left",
            Button::Middle => "middle",
            Button::Right => "right",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    Down,
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TouchAction {
    Start,
    Move,
    End,
    Cancel,
}

impl TouchAction {
    pub(crate) fn event_type(self) -> &'static str {
        match self {
            TouchAction::Start => "touchStart",
            TouchAction::Move => "touchMove",
            TouchAction::End => "touchEnd",
            TouchAction::Cancel => "touchCancel",
        }
    }
}

/// One finger on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchPoint {
    pub x: f64,
    pub y: f64,
    pub id: u32,
}

/// The maximum number of fingers in one touch message.
pub const MAX_TOUCH_POINTS: usize = 10;

/// The smallest and largest viewport side a viewer may set, in pixels.
pub const VIEWPORT: (u32, u32) = (200, 4096);

/// The largest text a `text` or `compose` message may carry; longer text
/// is a paste, which the profile governs.
pub const MAX_TYPED_TEXT: usize = 1024;

/// Checks an address the viewer asks to open: http, https or about:blank.
pub fn check_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url == "about:blank" {
        return Ok(url.to_string());
    }
    if url.len() > 2048 || url.chars().any(char::is_control) {
        return Err("the address is longer than 2048 characters or contains control characters".into());
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(url.to_string());
    }
    if url.contains("://") || url.starts_with("javascript:") || url.starts_with("data:") || url.starts_with("file:") {
        return Err(format!("only http and https addresses can be opened, not {url:?}"));
    }
    Ok(format!("https://{url}"))
}

/// Checks a position the viewer sends: a finite number of pixels.
pub(crate) fn check_point(x: f64, y: f64) -> Result<(), String> {
    let limit = f64::from(VIEWPORT.1) * 2.0;
    if !x.is_finite() || !y.is_finite() || x.abs() > limit || y.abs() > limit {
        return Err(format!("the position ({x}, {y}) is outside the page; send pixels within the viewport"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_url_allows_only_web_addresses() {
        assert_eq!(check_url("about:blank").unwrap(), "about:blank");
        assert_eq!(check_url("http://127.0.0.1:8080/a").unwrap(), "http://127.0.0.1:8080/a");
        assert_eq!(check_url("example.com/path").unwrap(), "https://example.com/path");
        for bad in ["javascript:alert(1)", "file:///etc/passwd", "data:text/html,hi", "chrome://settings", "view-source:http://x"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_messages_parse() {
        let mouse: Input = serde_json::from_str(r#"{"type":"mouse","action":"down","x":10.5,"y":20,"button":"left","buttons":1,"click_count":1}"#).unwrap();
        assert!(matches!(mouse, Input::Mouse { action: MouseAction::Down, button: Button::Left, .. }));
        let key: Input = serde_json::from_str(r#"{"type":"key","action":"down","key":"@","code":"KeyQ","text":"@","modifiers":6}"#).unwrap();
        assert!(matches!(key, Input::Key { modifiers: 6, .. }));
        let touch: Input = serde_json::from_str(r#"{"type":"touch","action":"start","points":[{"x":1,"y":2,"id":0}]}"#).unwrap();
        assert!(matches!(touch, Input::Touch { action: TouchAction::Start, ref points, .. } if points.len() == 1));
        let tab: Input = serde_json::from_str(r#"{"type":"switch_tab","id":"ABC"}"#).unwrap();
        assert!(matches!(tab, Input::SwitchTab { ref id } if id == "ABC"));
        assert!(matches!(serde_json::from_str::<Input>(r#"{"type":"new_tab"}"#).unwrap(), Input::NewTab { url: None }));
        assert!(matches!(serde_json::from_str::<Input>(r#"{"type":"copy"}"#).unwrap(), Input::Copy));
        assert!(serde_json::from_str::<Input>(r#"{"type":"eval","code":"x"}"#).is_err());
    }

    #[test]
    fn positions_must_be_finite_and_near_the_page() {
        assert!(check_point(10.0, 20.0).is_ok());
        assert!(check_point(f64::NAN, 0.0).is_err());
        assert!(check_point(0.0, 1e12).is_err());
    }
}
