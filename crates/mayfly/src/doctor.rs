//! `mayfly doctor`: what this host supports and what each profile needs.

use mayfly_core::{ExitCode, Landlock};
use mayfly_sandbox::host::{self, Check};
use mayfly_sandbox::init_program::InitProgram;
use mayfly_sandbox::spec::LandlockMode;
use serde_json::json;

use crate::cli::DoctorArgs;
use mayfly_control::profiles;

/// Formats one check. A missing optional feature is "absent", not "MISSING",
/// because no job profile needs it.
fn line(name: &str, check: &Check, required: bool) -> String {
    let mark = match (check.available, required) {
        (true, _) => "ok     ",
        (false, true) => "MISSING",
        (false, false) => "absent ",
    };
    format!("  {mark} {name:<16} {}", check.detail)
}

pub fn main(args: DoctorArgs) -> i32 {
    let report = host::inspect();
    let directory = args.profiles.profiles_dir.as_deref();
    let mut profile_results = Vec::new();
    let mut any_missing = false;
    if let Some(path) = directory.filter(|d| !d.is_dir()) {
        eprintln!("mayfly: the profiles directory {} does not exist or is not a directory; check --profiles-dir or MAYFLY_PROFILES_DIR", path.display());
        return ExitCode::USAGE;
    }
    for name in profiles::names(directory) {
        let loaded = profiles::load(&name, directory).map_err(|e| e.to_string());
        match loaded.and_then(|profile| profiles::check_on_host(&profile).map(|()| profile)) {
            Ok(profile) => {
                let mode = match profile.landlock {
                    Landlock::Required => LandlockMode::Required,
                    Landlock::IfAvailable => LandlockMode::IfAvailable,
                };
                let missing = host::missing_for_job(&report, mode);
                any_missing |= !missing.is_empty();
                profile_results.push(json!({
                    "name": name,
                    "source": profiles::source(&name, directory),
                    "kind": profile.kind,
                    "landlock": profile.landlock,
                    "ready": missing.is_empty(),
                    "missing": missing,
                }));
            }
            Err(error) => {
                any_missing = true;
                profile_results.push(json!({ "name": name, "source": profiles::source(&name, directory), "ready": false, "error": error }));
            }
        }
    }

    let init = match mayfly_sandbox::init_program::init_program() {
        InitProgram::Separate { path, .. } => Check { available: true, detail: format!("{} (build {})", path.display(), mayfly_sandbox::init_program::BUILD_ID) },
        InitProgram::SameBinary { reason } => Check { available: false, detail: format!("this binary runs as the init of a server's sandboxes, about half a millisecond slower per sandbox: {reason}") },
    };

    if args.json {
        let report = json!({ "host": report, "init_program": { "separate": init.available, "detail": init.detail }, "profiles": profile_results });
        println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
    } else {
        println!("host: Linux {} on {}", report.kernel, report.architecture);
        println!("{}", line("namespaces", &report.namespaces, true));
        println!("{}", line("cgroups", &report.cgroups, true));
        println!("{}", line("swap accounting", &report.swap_accounting, true));
        println!("{}", line("seccomp", &report.seccomp, true));
        println!("{}", line("landlock", &report.landlock, true));
        println!("{}", line("kvm", &report.kvm, false));
        println!("{}", line("chromium", &report.chromium, false));
        println!("{}", line("init program", &init, false));
        let root = Check { available: report.running_as_root, detail: "the native backend needs root".into() };
        println!("{}", line("root", &root, true));
        println!("profiles:");
        for profile in &profile_results {
            let name = profile["name"].as_str().unwrap_or_default();
            let source = profile["source"].as_str().unwrap_or_default();
            if let Some(error) = profile.get("error") {
                // TOML errors span several lines; indent them under the profile.
                let error = error.as_str().unwrap_or_default().trim_end().replace('\n', "\n          ");
                println!("  INVALID {name} ({source}): {error}");
            } else if profile["ready"].as_bool() == Some(true) {
                println!("  ready   {name} ({source})");
            } else {
                let missing: Vec<String> = profile["missing"]
                    .as_array()
                    .map(|items| items.iter().filter_map(|m| m["protection"].as_str().map(String::from)).collect())
                    .unwrap_or_default();
                println!("  BLOCKED {name} ({source}): needs {}", missing.join(", "));
            }
        }
    }
    if any_missing {
        ExitCode::PROTECTION_MISSING
    } else {
        0
    }
}
