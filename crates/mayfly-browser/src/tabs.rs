//! The browser's tabs: the pages the driver is attached to, which one is
//! in front, and the keys and buttons the viewer has pressed in it.

use std::collections::BTreeMap;

use serde::Serialize;

/// A tab as viewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TabInfo {
    /// The page's DevTools target id; opaque to viewers.
    pub id: String,
    pub url: String,
    pub title: String,
}

/// The open tabs in the order they were opened, and the one in front.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tabs {
    pub tabs: Vec<TabInfo>,
    pub active: Option<String>,
}

/// The maximum number of open tabs in a session. Popups beyond it are
/// closed.
pub const MAX_TABS: usize = 20;

/// One page the driver is attached to.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub target: String,
    /// The flattened DevTools session on the page.
    pub session: String,
    pub url: String,
    pub title: String,
    /// Set once the page has its user agent, language and viewport.
    pub ready: bool,
    pub crashed: bool,
}

/// Keys, buttons and fingers the viewer has down, so all can be released.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Keys by code (or by key when the code is empty): key, code and
    /// virtual key code.
    pub keys: BTreeMap<String, (String, String, u32)>,
    /// Mouse buttons held down, by name, and where the mouse last was.
    pub buttons: Vec<&'static str>,
    pub mouse: (f64, f64),
    /// Whether a finger is on the screen.
    pub touching: bool,
}

#[derive(Debug)]
pub(crate) struct State {
    pub pages: Vec<Page>,
    pub active: Option<String>,
    pub viewport: (u32, u32),
    pub held: Held,
}

impl State {
    pub fn new(viewport: (u32, u32)) -> State {
        State { pages: Vec::new(), active: None, viewport, held: Held::default() }
    }

    pub fn page(&self, target: &str) -> Option<&Page> {
        self.pages.iter().find(|p| p.target == target)
    }

    pub fn page_mut(&mut self, target: &str) -> Option<&mut Page> {
        self.pages.iter_mut().find(|p| p.target == target)
    }

    pub fn active_page(&self) -> Option<&Page> {
        self.active.as_deref().and_then(|t| self.page(t))
    }

    /// Returns the session of the page in front, once it is ready.
    pub fn active_session(&self) -> Option<String> {
        self.active_page().filter(|p| p.ready).map(|p| p.session.clone())
    }

    pub fn by_session(&self, session: &str) -> Option<&Page> {
        self.pages.iter().find(|p| p.session == session)
    }

    pub fn by_session_mut(&mut self, session: &str) -> Option<&mut Page> {
        self.pages.iter_mut().find(|p| p.session == session)
    }

    /// Removes a page; returns whether it was the one in front.
    pub fn remove(&mut self, target: &str) -> bool {
        self.pages.retain(|p| p.target != target);
        if self.active.as_deref() == Some(target) {
            self.active = None;
            return true;
        }
        false
    }

    /// Returns the page to show after the one in front closed: the newest ready one.
    pub fn successor(&self) -> Option<String> {
        self.pages.iter().rev().find(|p| p.ready).map(|p| p.target.clone())
    }

    pub fn tabs(&self) -> Tabs {
        Tabs {
            tabs: self.pages.iter().map(|p| TabInfo { id: p.target.clone(), url: p.url.clone(), title: p.title.clone() }).collect(),
            active: self.active.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(target: &str, ready: bool) -> Page {
        Page { target: target.into(), session: format!("s-{target}"), url: String::new(), title: String::new(), ready, crashed: false }
    }

    #[test]
    fn successor_is_newest_ready_page() {
        let mut state = State::new((800, 600));
        state.pages = vec![page("a", true), page("b", true), page("c", false)];
        state.active = Some("b".into());
        assert_eq!(state.active_session().as_deref(), Some("s-b"));
        assert!(state.remove("b"));
        assert_eq!(state.successor().as_deref(), Some("a"));
        assert!(!state.remove("c"));
        assert_eq!(state.tabs().tabs.len(), 1);
    }
}
