//! A browser profile's `[transfer]` section: which data may cross between
//! the user's device and the remote browser. Every switch is off unless the
//! profile turns it on.

use serde::{Deserialize, Serialize};

use crate::ByteSize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTransfer {
    downloads: Option<Downloads>,
    download_limit: Option<ByteSize>,
    #[serde(default)]
    uploads: bool,
    upload_limit: Option<ByteSize>,
    #[serde(default)]
    clipboard_in: bool,
    #[serde(default)]
    clipboard_out: bool,
    clipboard_limit: Option<ByteSize>,
    #[serde(default)]
    printing: bool,
    #[serde(default)]
    automation: bool,
}

/// The handling of a file that a page downloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downloads {
    /// The browser refuses it; the refusal is audited.
    #[default]
    Deny,
    /// It is saved inside the session and listed, but never leaves it.
    Keep,
    /// It is saved inside the session and its owner may fetch it through
    /// the API.
    Fetch,
}

/// The data-transfer policy of a browser session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferSettings {
    pub downloads: Downloads,
    /// The largest file a page may download; larger ones are cancelled.
    pub download_limit: ByteSize,
    /// Whether the user may give a page files from their device.
    pub uploads: bool,
    /// The largest file the user may upload.
    pub upload_limit: ByteSize,
    /// Whether the user may paste text from their device into the page.
    pub clipboard_in: bool,
    /// Whether the user may copy text from the page to their device.
    pub clipboard_out: bool,
    /// The maximum text size of one paste or copy.
    pub clipboard_limit: ByteSize,
    /// Whether the user may print a page to a PDF on their device.
    pub printing: bool,
    /// Whether the session's owner may drive the browser over the DevTools
    /// protocol, as Playwright and Puppeteer do.
    pub automation: bool,
}

impl Default for TransferSettings {
    fn default() -> Self {
        TransferSettings::from_raw(RawTransfer::default()).expect("the defaults are valid")
    }
}

/// The largest value each size limit may have.
const MAX_DOWNLOAD: ByteSize = ByteSize::gib(4);
const MAX_UPLOAD: ByteSize = ByteSize::gib(1);
const MAX_CLIPBOARD: ByteSize = ByteSize::mib(1);

impl TransferSettings {
    pub(crate) fn from_raw(raw: RawTransfer) -> Result<TransferSettings, (String, String)> {
        let download_limit = raw.download_limit.unwrap_or(ByteSize::mib(100));
        let upload_limit = raw.upload_limit.unwrap_or(ByteSize::mib(10));
        let clipboard_limit = raw.clipboard_limit.unwrap_or(ByteSize::kib(64));
        for (key, value, max) in [
            ("transfer.download_limit", download_limit, MAX_DOWNLOAD),
            ("transfer.upload_limit", upload_limit, MAX_UPLOAD),
            ("transfer.clipboard_limit", clipboard_limit, MAX_CLIPBOARD),
        ] {
            if value.as_bytes() == 0 || value > max {
                return Err((key.into(), format!("= {value} is out of range: allowed is 1 byte to {max}")));
            }
        }
        Ok(TransferSettings {
            downloads: raw.downloads.unwrap_or_default(),
            download_limit,
            uploads: raw.uploads,
            upload_limit,
            clipboard_in: raw.clipboard_in,
            clipboard_out: raw.clipboard_out,
            clipboard_limit,
            printing: raw.printing,
            automation: raw.automation,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::Profile;

    use super::*;

    fn browser_profile(transfer: &str) -> Result<Profile, String> {
        let base = include_str!("../profiles/browser.toml").split("[transfer]").next().unwrap();
        Profile::parse("b", &format!("{base}\n[transfer]\n{transfer}\n")).map_err(|e| e.to_string())
    }

    #[test]
    fn everything_is_denied_by_default() {
        let transfer = TransferSettings::default();
        assert_eq!(transfer.downloads, Downloads::Deny);
        assert!(!transfer.uploads);
        assert!(!transfer.clipboard_in);
        assert!(!transfer.clipboard_out);
        assert!(!transfer.printing);
        assert!(!transfer.automation);
        let profile = browser_profile("").unwrap();
        assert_eq!(profile.browser.unwrap().transfer, TransferSettings::default());
        // The built-in profile allows paste only.
        let built_in = Profile::parse("browser", include_str!("../profiles/browser.toml")).unwrap().browser.unwrap().transfer;
        assert_eq!(built_in, TransferSettings { clipboard_in: true, ..TransferSettings::default() });
    }

    #[test]
    fn switches_and_limits_parse() {
        let profile = browser_profile("downloads = \"fetch\"\ndownload_limit = \"5MiB\"\nuploads = true\nclipboard_out = true\nclipboard_limit = \"1KiB\"\nautomation = true").unwrap();
        let transfer = profile.browser.unwrap().transfer;
        assert_eq!(transfer.downloads, Downloads::Fetch);
        assert_eq!(transfer.download_limit, ByteSize::mib(5));
        assert!(transfer.uploads);
        assert!(transfer.clipboard_out);
        assert!(transfer.automation);
        assert!(!transfer.printing);
        assert_eq!(transfer.clipboard_limit, ByteSize::kib(1));
    }

    #[test]
    fn errors_name_the_key() {
        for (line, key) in [
            ("downloads = \"always\"", "downloads"),
            ("clipboard_limit = \"2MiB\"", "transfer.clipboard_limit"),
            ("upload_limit = \"0\"", "transfer.upload_limit"),
            ("copy = true", "copy"),
        ] {
            let error = browser_profile(line).unwrap_err();
            assert!(error.contains(key), "{line}: {error}");
        }
        let job = include_str!("../profiles/default.toml");
        let error = Profile::parse("j", &format!("{job}\n[transfer]\nuploads = true\n")).unwrap_err().to_string();
        assert!(error.contains("only for profiles of kind \"browser\""), "{error}");
    }
}
