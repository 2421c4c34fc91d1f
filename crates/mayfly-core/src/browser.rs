//! A browser profile's `[browser]` section.

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBrowser {
    start_url: Option<String>,
    width: Option<crate::WholeNumber>,
    height: Option<crate::WholeNumber>,
    locale: Option<String>,
    viewer_grace: Option<crate::Ttl>,
    #[serde(default)]
    watermark: bool,
}

/// The settings Chromium starts with in a browser session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrowserSettings {
    /// The page the first tab opens.
    pub start_url: String,
    /// The viewport in CSS pixels until the viewer sets its own.
    pub width: u32,
    pub height: u32,
    /// The language of the browser's interface and its `Accept-Language`,
    /// such as `en-US` or `de-DE`.
    pub locale: String,
    /// How long the session runs on without a viewer in control before it
    /// is ended; the time starts at creation and whenever the viewer leaves.
    pub viewer_grace: crate::Ttl,
    /// Whether the viewer shows the user's name and the session id over
    /// the page, so screenshots and photos of it can be traced.
    pub watermark: bool,
    /// The data-transfer policy between the user's device and the browser.
    pub transfer: crate::transfer::TransferSettings,
}

/// The smallest and largest viewport side, in pixels.
pub const VIEWPORT: (u32, u32) = (200, 4096);

/// Checks a locale tag: a language of 2 or 3 letters, then optional
/// subtags of letters and digits, joined by `-`.
fn valid_locale(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl BrowserSettings {
    pub(crate) fn from_raw(raw: RawBrowser, transfer: crate::transfer::RawTransfer) -> Result<BrowserSettings, (String, String)> {
        let start_url = raw.start_url.unwrap_or_else(|| "about:blank".into());
        let scheme_ok = ["http://", "https://"].iter().any(|s| start_url.starts_with(s)) || start_url == "about:blank";
        if !scheme_ok || start_url.len() > 2048 || start_url.chars().any(char::is_control) {
            return Err(("browser.start_url".into(), format!("= {start_url:?} must be about:blank or an http:// or https:// address of at most 2048 characters")));
        }
        let side = |key: &str, value: Option<crate::WholeNumber>, default: u32| {
            let Some(value) = value else { return Ok(default) };
            match value.to_u32() {
                Some(side) if (VIEWPORT.0..=VIEWPORT.1).contains(&side) => Ok(side),
                _ => Err((key.to_string(), format!("= {value} is out of range: allowed is {} to {} pixels", VIEWPORT.0, VIEWPORT.1))),
            }
        };
        let width = side("browser.width", raw.width, 1280)?;
        let height = side("browser.height", raw.height, 800)?;
        let locale = raw.locale.unwrap_or_else(|| "en-US".into());
        if !valid_locale(&locale) {
            return Err(("browser.locale".into(), format!("= {locale:?} is not a language tag such as en-US or de-DE")));
        }
        let viewer_grace = raw.viewer_grace.unwrap_or(crate::Ttl::from_secs(120));
        if viewer_grace < crate::Ttl::from_secs(2) || viewer_grace > crate::Ttl::from_secs(86_400) {
            return Err(("browser.viewer_grace".into(), format!("= {viewer_grace} is out of range: allowed is 2s to 1d")));
        }
        let transfer = crate::transfer::TransferSettings::from_raw(transfer)?;
        Ok(BrowserSettings { start_url, width, height, locale, viewer_grace, watermark: raw.watermark, transfer })
    }
}

#[cfg(test)]
mod tests {
    use crate::Profile;

    #[test]
    fn built_in_browser_profile_parses() {
        let profile = Profile::parse("browser", include_str!("../profiles/browser.toml")).unwrap();
        let browser = profile.browser.unwrap();
        assert_eq!(browser.start_url, "about:blank");
        assert_eq!(browser.locale, "en-US");
        assert_eq!((browser.width, browser.height), (1280, 800));
    }

    #[test]
    fn browser_errors_name_the_key() {
        let base = include_str!("../profiles/browser.toml").replace("[browser]", "[browser_unused]");
        let base = base.split("[browser_unused]").next().unwrap().to_string();
        let cases = [
            ("start_url = \"file:///etc/passwd\"", "browser.start_url"),
            ("width = 10", "browser.width"),
            ("height = -800", "browser.height = -800 is out of range: allowed is 200 to 4096 pixels"),
            ("locale = \"english please\"", "browser.locale"),
        ];
        for (line, key) in cases {
            let error = Profile::parse("b", &format!("{base}\n[browser]\n{line}\n")).unwrap_err().to_string();
            assert!(error.contains(key), "{line}: {error}");
        }
        let job = include_str!("../profiles/default.toml");
        let error = Profile::parse("j", &format!("{job}\n[browser]\n")).unwrap_err().to_string();
        assert!(error.contains("only for profiles of kind \"browser\""), "{error}");
    }
}
