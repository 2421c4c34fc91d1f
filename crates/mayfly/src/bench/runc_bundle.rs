//! The runc side of `mayfly bench`: a temporary OCI bundle with the same
//! mounts as Mayfly's sandbox, and cleanup of the containers run from it.

use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Namespaces of each bench container. The bench runs as root, so the
/// containers get no user namespace, unlike Mayfly's sandbox, which has one.
pub const NAMESPACES: [&str; 5] = ["pid", "mount", "network", "ipc", "uts"];

/// Empty directories in the root filesystem, which serve as mount points.
const MOUNT_POINTS: [&str; 4] = ["usr", "proc", "dev", "tmp"];

/// Symbolic links of a merged-/usr layout, as link name and target.
const USR_MERGE_LINKS: [(&str, &str); 4] = [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")];

/// Builds the OCI runtime configuration (config.json) that runs `argv` as
/// root in a read-only root filesystem with /usr bound read-only, a fresh
/// /proc and tmpfs on /dev and /tmp. runc 1.1.5 creates its default device
/// nodes (null, zero, full, random, urandom, tty) in the /dev tmpfs.
pub fn config(argv: &[&str]) -> Value {
    let namespaces: Vec<Value> = NAMESPACES.iter().map(|name| json!({ "type": name })).collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": argv,
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/"
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "mayfly-bench",
        "mounts": [
            { "destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro", "nosuid", "nodev"] },
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }
        ],
        "linux": { "namespaces": namespaces }
    })
}

/// A temporary directory that contains an OCI bundle (`bundle/`) and the
/// runc state root (`runc-state/`). Dropping it deletes any container left
/// in the state root and removes the directory.
///
/// NOTE: a bench killed by a signal (such as Ctrl-C) skips the drop, so the
/// directory `mayfly-bench-*` in the temporary directory stays, and so does
/// a container that was running at that moment.
pub struct RuncBundle {
    runc: PathBuf,
    directory: PathBuf,
    next_container: u32,
    removed: bool,
}

impl RuncBundle {
    /// Creates the bundle for running `argv` with the runc binary at `runc`.
    pub fn create(runc: PathBuf, argv: &[&str]) -> Result<Self, String> {
        let directory = create_private_directory()?;
        let bundle = RuncBundle { runc, directory, next_container: 0, removed: false };
        bundle.populate(argv)?;
        Ok(bundle)
    }

    fn bundle_dir(&self) -> PathBuf {
        self.directory.join("bundle")
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.bundle_dir().join("rootfs")
    }

    fn state_dir(&self) -> PathBuf {
        self.directory.join("runc-state")
    }

    fn populate(&self, argv: &[&str]) -> Result<(), String> {
        let rootfs = self.rootfs_dir();
        for dir in [self.bundle_dir(), rootfs.clone(), self.state_dir()] {
            std::fs::create_dir(&dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        }
        for name in MOUNT_POINTS {
            let dir = rootfs.join(name);
            std::fs::create_dir(&dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        }
        for (name, target) in USR_MERGE_LINKS {
            let link = rootfs.join(name);
            symlink(target, &link).map_err(|e| format!("failed to create the symbolic link {}: {e}", link.display()))?;
        }
        let path = self.bundle_dir().join("config.json");
        let text = serde_json::to_string_pretty(&config(argv)).expect("a JSON value serializes");
        std::fs::write(&path, text).map_err(|e| format!("failed to write {}: {e}", path.display()))
    }

    /// Returns the command that runs one new container, and the container's id.
    pub fn run_command(&mut self) -> (Command, String) {
        self.next_container += 1;
        let id = format!("mayfly-bench-{}-{}", std::process::id(), self.next_container);
        let mut command = self.runc_command();
        command.arg("run").arg("--bundle").arg(self.bundle_dir()).arg(&id);
        (command, id)
    }

    /// Returns the `runc run` command line with placeholders for the
    /// temporary paths and the container id, for reports.
    pub fn describe_command(runc: &Path) -> String {
        format!("{} --root TMPDIR/runc-state run --bundle TMPDIR/bundle ID", runc.display())
    }

    fn runc_command(&self) -> Command {
        let mut command = Command::new(&self.runc);
        command.arg("--root").arg(self.state_dir());
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    /// Deletes container `id` if `runc run` left it behind, and returns
    /// whether it had to.
    pub fn delete_if_left(&self, id: &str) -> Result<bool, String> {
        let exists = self
            .runc_command()
            .arg("state")
            .arg(id)
            .status()
            .map_err(|e| format!("failed to run `{} state {id}`: {e}", self.runc.display()))?
            .success();
        if !exists {
            return Ok(false);
        }
        self.force_delete(id)?;
        Ok(true)
    }

    fn force_delete(&self, id: &str) -> Result<(), String> {
        let status = self
            .runc_command()
            .args(["delete", "-f", id])
            .status()
            .map_err(|e| format!("failed to run `{} delete -f {id}`: {e}", self.runc.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{} --root {} delete -f {id}` failed with {status}", self.runc.display(), self.state_dir().display()))
        }
    }

    /// Lists the containers in the state root with `runc list -q`.
    fn list_containers(&self) -> Result<Vec<String>, String> {
        let output = self
            .runc_command()
            .args(["list", "-q"])
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| format!("failed to run `{} list -q`: {e}", self.runc.display()))?;
        if !output.status.success() {
            return Err(format!("`{} --root {} list -q` failed with {}", self.runc.display(), self.state_dir().display(), output.status));
        }
        Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
    }

    /// Deletes every container left in the state root, then removes the
    /// temporary directory. Returns the errors, each naming what failed.
    pub fn remove(&mut self) -> Vec<String> {
        if self.removed {
            return Vec::new();
        }
        self.removed = true;
        let mut errors = Vec::new();
        match self.list_containers() {
            Ok(ids) => errors.extend(ids.iter().filter_map(|id| self.force_delete(id).err())),
            Err(error) => errors.push(error),
        }
        if let Err(error) = self.remove_files() {
            errors.push(format!("failed to remove {}: {error}", self.directory.display()));
        }
        errors
    }

    /// Removes the bundle without recursing into the mount points, so a
    /// mount that leaked into the host's mount namespace makes the removal
    /// fail instead of deleting the host's /usr.
    fn remove_files(&self) -> io::Result<()> {
        let rootfs = self.rootfs_dir();
        for (name, _) in USR_MERGE_LINKS {
            remove_if_present(std::fs::remove_file(rootfs.join(name)))?;
        }
        for name in MOUNT_POINTS {
            remove_if_present(std::fs::remove_dir(rootfs.join(name)))?;
        }
        remove_if_present(std::fs::remove_dir(&rootfs))?;
        remove_if_present(std::fs::remove_file(self.bundle_dir().join("config.json")))?;
        remove_if_present(std::fs::remove_dir(self.bundle_dir()))?;
        // The state root contains only runc's state files once every container is deleted.
        remove_if_present(std::fs::remove_dir_all(self.state_dir()))?;
        std::fs::remove_dir(&self.directory)
    }
}

impl Drop for RuncBundle {
    fn drop(&mut self) {
        for error in self.remove() {
            eprintln!("mayfly: runc cleanup: {error}");
        }
    }
}

fn remove_if_present(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates a new directory under the system temporary directory, readable
/// by its owner only.
fn create_private_directory() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut last_error = None;
    for attempt in 0..16u32 {
        let path = base.join(format!("mayfly-bench-{}-{nanos:09}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => return Err(format!("failed to create a temporary directory {}: {error}; set TMPDIR to a writable directory", path.display())),
        }
    }
    Err(format!("failed to create a temporary directory under {}: {}", base.display(), last_error.map(|e| e.to_string()).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_runs_argv_without_terminal() {
        let config = config(&["/bin/true"]);
        assert_eq!(config["process"]["args"], json!(["/bin/true"]));
        assert_eq!(config["process"]["terminal"], json!(false));
        assert_eq!(config["root"]["path"], json!("rootfs"));
        assert_eq!(config["root"]["readonly"], json!(true));
    }

    #[test]
    fn config_mounts_match_sandbox() {
        let config = config(&["/bin/true"]);
        let mounts = config["mounts"].as_array().expect("mounts is an array");
        let destinations: Vec<&str> = mounts.iter().map(|m| m["destination"].as_str().expect("destination is a string")).collect();
        assert_eq!(destinations, ["/usr", "/proc", "/dev", "/tmp"]);

        let usr = &mounts[0];
        assert_eq!(usr["type"], json!("bind"));
        assert_eq!(usr["source"], json!("/usr"));
        let options = usr["options"].as_array().expect("options is an array");
        assert!(options.contains(&json!("ro")), "/usr must be read-only: {options:?}");

        assert_eq!(mounts[1]["type"], json!("proc"));
        assert_eq!(mounts[2]["type"], json!("tmpfs"));
        assert_eq!(mounts[3]["type"], json!("tmpfs"));
    }

    #[test]
    fn config_namespaces_exclude_user() {
        let config = config(&["/bin/true"]);
        let types: Vec<&str> =
            config["linux"]["namespaces"].as_array().expect("namespaces is an array").iter().map(|n| n["type"].as_str().expect("type is a string")).collect();
        assert_eq!(types, ["pid", "mount", "network", "ipc", "uts"]);
        assert!(!types.contains(&"user"));
    }

    #[test]
    fn bundle_layout_and_removal() {
        let mut bundle = RuncBundle::create(PathBuf::from("/nonexistent/runc"), &["/bin/true"]).expect("bundle is created");
        let rootfs = bundle.rootfs_dir();
        for name in MOUNT_POINTS {
            assert!(rootfs.join(name).is_dir(), "{name} is missing");
        }
        for (name, target) in USR_MERGE_LINKS {
            assert_eq!(std::fs::read_link(rootfs.join(name)).expect("link exists"), Path::new(target));
        }
        let written: Value = serde_json::from_str(&std::fs::read_to_string(bundle.bundle_dir().join("config.json")).expect("config.json exists"))
            .expect("config.json is JSON");
        assert_eq!(written, config(&["/bin/true"]));

        let directory = bundle.directory.clone();
        let errors = bundle.remove();
        // With no runc binary, listing containers fails, but the files are still removed.
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(!directory.exists());
    }

    /// Returns the runc binary when the tests that start containers can run.
    fn runc_for_tests() -> Option<PathBuf> {
        let runc = crate::bench::runtime::find_in_path("runc");
        if runc.is_none() || !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: this test needs root and runc in PATH");
            return None;
        }
        runc
    }

    #[test]
    fn delete_if_left_deletes_created_container() {
        let Some(runc) = runc_for_tests() else { return };
        let mut bundle = RuncBundle::create(runc, &["/bin/true"]).expect("bundle is created");
        let (_, id) = bundle.run_command();
        // `runc create` sets the container up and leaves it waiting for `runc start`.
        let created = bundle.runc_command().arg("create").arg("--bundle").arg(bundle.bundle_dir()).arg(&id).status().expect("runc create runs");
        assert!(created.success(), "runc create failed: {created}");

        assert_eq!(bundle.delete_if_left(&id), Ok(true));
        assert_eq!(bundle.delete_if_left(&id), Ok(false));
        let directory = bundle.directory.clone();
        assert_eq!(bundle.remove(), Vec::<String>::new());
        assert!(!directory.exists());
    }

    #[test]
    fn remove_deletes_remaining_containers() {
        let Some(runc) = runc_for_tests() else { return };
        let mut bundle = RuncBundle::create(runc, &["/bin/true"]).expect("bundle is created");
        let (_, id) = bundle.run_command();
        let created = bundle.runc_command().arg("create").arg("--bundle").arg(bundle.bundle_dir()).arg(&id).status().expect("runc create runs");
        assert!(created.success(), "runc create failed: {created}");

        assert_eq!(bundle.list_containers(), Ok(vec![id]));
        let directory = bundle.directory.clone();
        assert_eq!(bundle.remove(), Vec::<String>::new());
        assert!(!directory.exists());
    }
}
