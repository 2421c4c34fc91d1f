//! Loading profiles: the built-in ones and a directory the user points at.

use std::path::Path;

use mayfly_core::profile::{validate_name, BUILT_IN};
use mayfly_core::{Profile, ProfileError};

/// Returns the file a profile is loaded from, or `built-in`.
pub fn source(name: &str, directory: Option<&Path>) -> String {
    match directory.map(|d| d.join(format!("{name}.toml"))) {
        Some(path) if path.exists() => path.display().to_string(),
        _ => "built-in".into(),
    }
}

/// Returns the message a client gets about a profile file that does not load.
/// The load error stays in the server's log, because it can quote any line
/// of the file, secrets in `[environment]` too.
pub fn unusable_message(name: &str) -> String {
    format!("profile {name:?} is invalid on this server, so no session can use it; the server's log names the problem, and an operator must fix the profile file")
}

/// Loads a profile by name. A file `NAME.toml` in `directory` takes precedence
/// over a built-in profile of the same name.
pub fn load(name: &str, directory: Option<&Path>) -> Result<Profile, ProfileError> {
    validate_name(name)?;
    if let Some(directory) = directory {
        if !directory.is_dir() {
            return Err(ProfileError::Directory { path: directory.display().to_string() });
        }
        let path = directory.join(format!("{name}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return Profile::parse(name, &text).map_err(|error| match error {
                    ProfileError::Syntax { name, message } => ProfileError::Syntax { name, message: format!("{}: {message}", path.display()) },
                    other => other,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(ProfileError::Syntax { name: name.into(), message: format!("failed to read {}: {error}", path.display()) })
            }
        }
    }
    if let Some((_, text)) = BUILT_IN.iter().find(|(built_in, _)| *built_in == name) {
        return Profile::parse(name, text);
    }
    Err(ProfileError::NotFound {
        name: name.into(),
        built_in: BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        directory: match directory {
            Some(d) => format!(", and {} has no {name}.toml", d.display()),
            None => "; use --profiles-dir to load profiles from a directory".into(),
        },
    })
}

/// Lists the names of every profile: built-in ones and those in `directory`.
pub fn names(directory: Option<&Path>) -> Vec<String> {
    let mut names: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
    if let Some(entries) = directory.and_then(|d| std::fs::read_dir(d).ok()) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Checks what a profile names on this host: its timezone file and the
/// sources of its mounts. Parsing cannot, because it performs no I/O.
pub fn check_on_host(profile: &Profile) -> Result<(), String> {
    let zone = Path::new("/usr/share/zoneinfo").join(&profile.timezone);
    if !zone.is_file() {
        return Err(format!(
            "profile {:?}: sandbox.timezone {:?} is not in /usr/share/zoneinfo; use a name such as UTC or Europe/Berlin (install the tzdata package if none exist)",
            profile.name, profile.timezone
        ));
    }
    for mount in &profile.mounts {
        if !mount.source.exists() {
            return Err(format!("profile {:?}: sandbox.mounts source {} does not exist", profile.name, mount.source.display()));
        }
    }
    Ok(())
}
