//! Builds the web console's assets: installs the npm packages that
//! `web/package-lock.json` pins when they are missing or outdated, then
//! embeds the console's own files and the vendored xterm.js files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Files taken from npm packages, as (path under node_modules, served name).
const VENDORED: &[(&str, &str)] = &[
    ("@xterm/xterm/lib/xterm.mjs", "vendor/xterm.mjs"),
    ("@xterm/xterm/css/xterm.css", "vendor/xterm.css"),
    ("@xterm/xterm/LICENSE", "vendor/xterm.LICENSE.txt"),
    ("@xterm/addon-fit/lib/addon-fit.mjs", "vendor/addon-fit.mjs"),
    ("@xterm/addon-fit/LICENSE", "vendor/addon-fit.LICENSE.txt"),
];

/// Written into node_modules after a successful install: a copy of the lock
/// file it installed, so a changed lock file triggers a new install.
const STAMP: &str = ".mayfly-installed-lock.json";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("../../web").canonicalize().expect("the web/ directory exists beside crates/");
    let modules = web.join("node_modules");
    let lock = web.join("package-lock.json");
    for watched in [web.join("src"), lock.clone(), web.join("package.json"), modules.join(STAMP)] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    install_packages(&web, &lock, &modules);

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    collect(&web.join("src"), "", &mut files);
    for (from, name) in VENDORED {
        let path = modules.join(from);
        assert!(path.is_file(), "{} is missing after npm ci; delete web/node_modules and build again", path.display());
        files.push(((*name).to_string(), path));
    }
    files.sort();

    let mut generated = String::from("pub static ASSETS: &[Asset] = &[\n");
    for (name, path) in &files {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let digest = Sha256::digest(&bytes);
        let etag: String = digest[..12].iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let _ = writeln!(
            generated,
            "    Asset {{ path: {name:?}, content_type: {:?}, etag: \"\\\"{etag}\\\"\", body: include_bytes!({:?}) }},",
            content_type(name),
            path.display().to_string(),
        );
    }
    generated.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("assets.rs"), generated).expect("OUT_DIR is writable");
}

/// Runs `npm ci` unless node_modules contains exactly what the lock file pins.
fn install_packages(web: &Path, lock: &Path, modules: &Path) {
    let expected = std::fs::read(lock).unwrap_or_else(|e| panic!("cannot read {}: {e}", lock.display()));
    if std::fs::read(modules.join(STAMP)).is_ok_and(|installed| installed == expected) {
        return;
    }
    println!("cargo:warning=installing the web console's npm packages (npm ci in {})", web.display());
    let result = Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"]).current_dir(web).output();
    match result {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`npm ci` in {} failed ({}); the web console needs its npm packages to build.\n{}{}",
            web.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!(
            "cannot run npm ({error}); building Mayfly's web console needs Node.js 18 or later and npm: on Debian, `apt-get install -y nodejs npm`"
        ),
    }
    std::fs::write(modules.join(STAMP), expected).expect("node_modules is writable after npm ci");
}

/// Adds every file under `dir` to `files`, named by its path below web/src.
fn collect(dir: &Path, prefix: &str, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a readable directory entry");
        let name = entry.file_name().into_string().expect("file names in web/src are valid UTF-8");
        let path = entry.path();
        if path.is_dir() {
            collect(&path, &format!("{prefix}{name}/"), files);
        } else {
            files.push((format!("{prefix}{name}"), path));
        }
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        other => panic!("web/src/{name}: no content type for the extension {other:?}; add one to crates/mayfly-web/build.rs"),
    }
}
