//! The web console's files, embedded at build time from `web/`.
//!
//! `index.html` contains the placeholder [`NONCE_PLACEHOLDER`], which the server
//! replaces with the nonce of each response's Content-Security-Policy.

/// One file the console serves.
#[derive(Debug)]
pub struct Asset {
    /// The path below `/assets/`, or `index.html`.
    pub path: &'static str,
    pub content_type: &'static str,
    /// A quoted strong entity tag derived from the content.
    pub etag: &'static str,
    pub body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The text in `index.html` that stands for the per-response nonce.
pub const NONCE_PLACEHOLDER: &str = "{{CSP_NONCE}}";

/// Returns the asset at `path`, if there is one.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

/// Returns the console's page with `nonce` in place of the placeholder.
pub fn index_html(nonce: &str) -> String {
    let page = find("index.html").expect("web/src/index.html is embedded");
    String::from_utf8_lossy(page.body).replace(NONCE_PLACEHOLDER, nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_include_page_and_terminal() {
        assert!(index_html("abc").contains("nonce=\"abc\""), "index.html carries the nonce placeholder");
        for path in ["app.js", "style.css", "vendor/xterm.mjs", "vendor/xterm.css", "vendor/addon-fit.mjs"] {
            let asset = find(path).unwrap_or_else(|| panic!("{path} is embedded"));
            assert!(!asset.body.is_empty());
            assert!(asset.etag.starts_with('"'), "{}", asset.etag);
            assert_eq!(asset.etag.len(), 26, "{}", asset.etag);
        }
        assert!(find("../Cargo.toml").is_none());
    }
}
